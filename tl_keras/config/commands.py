"""Each command's whole config: the component groups it takes, with command-specific
defaults and help. The CLI generates its flags from these. No TensorFlow here."""

import copy
import dataclasses
import os

from tl_keras import artifacts
from tl_keras.config.groups import BATCH_SIZE
from tl_keras.config.groups import EPOCHS
from tl_keras.config.groups import EXPORT_FORMATS
from tl_keras.config.groups import AdaptSettings
from tl_keras.config.groups import ExportSettings
from tl_keras.config.groups import FinetuneSettings
from tl_keras.config.groups import FuseSettings
from tl_keras.config.groups import HeadSettings
from tl_keras.config.groups import ModelSettings
from tl_keras.config.groups import PathSettings
from tl_keras.config.groups import RuntimeSettings
from tl_keras.config.groups import SourceSettings
from tl_keras.config.groups import TargetSettings
from tl_keras.config.groups import TrainSettings
from tl_keras.config.groups import _allow_unsafe
from tl_keras.config.groups import _epochs
from tl_keras.config.groups import _features_layer
from tl_keras.config.groups import _max_model_mb
from tl_keras.config.groups import _representative_images
from tl_keras.config.groups import _seed
from tl_keras.config.schema import group
from tl_keras.config.schema import setting
from tl_keras.config.training import TrainingConfig
from tl_keras.errors import UserError
from tl_keras.ranges import Range

# Finetune's defaults that depend on the data (see `schedule`).
_FEW_LABELS = "with few labelled images or with --unlabeled"
_FINETUNE_EPOCHS_HELP = (
  f"(default: 4, or {_FEW_LABELS}, as many as give enough optimizer steps; see --steps_per_epoch)."
)
_FINETUNE_TRAIN_HELP = {
  "batch_size": f"Global batch size, split over the replicas (default: 128, or 32 {_FEW_LABELS}).",
  "augment": "Random shifts, rotations and zoom of the training images (default: on "
  f"{_FEW_LABELS}, else off).",
  "steps_per_epoch": "Optimizer steps per epoch, drawn from the repeated, reshuffled training "
  f"images (default: one pass over them, or {_FEW_LABELS}, chosen with the epochs so that "
  "training takes enough steps).",
}
# The pipeline's pretrain stage keeps the fixed defaults.
_PIPELINE_TRAIN_HELP = {
  "batch_size": "Global batch size, split over the replicas (default: 128; in finetune, 32 "
  f"{_FEW_LABELS}).",
  "augment": "Random shifts, rotations and zoom of the training images (default: off; in "
  f"finetune, on {_FEW_LABELS}).",
  "steps_per_epoch": _FINETUNE_TRAIN_HELP["steps_per_epoch"],
}


@dataclasses.dataclass
class PretrainConfig(TrainingConfig):
  """tl-pretrain: the source CNN on MNIST digits."""

  epochs: int = _epochs(4, "Training epochs.")
  source: SourceSettings = group(SourceSettings)


@dataclasses.dataclass
class TransferConfig:
  """tl-transfer: predictions of a saved model on the target, before any training."""

  paths: PathSettings = group(PathSettings)
  load: ModelSettings = group(ModelSettings)
  target: TargetSettings = group(TargetSettings)
  seed: int = _seed("Random seed for --train_per_class and --test_split.")
  features_layer: str | None = _features_layer()
  batch_size: int = setting(1024, flag=None, allowed=BATCH_SIZE)  # of prediction


@dataclasses.dataclass
class FinetuneConfig(TrainingConfig):
  """tl-finetune: a new head on the source model, trained on the target."""

  train: TrainSettings = group(TrainSettings, _FINETUNE_TRAIN_HELP, batch_size=None, augment=None)
  epochs: int | None = _epochs(None, f"Training epochs {_FINETUNE_EPOCHS_HELP}")
  load: ModelSettings = group(ModelSettings)
  target: TargetSettings = group(TargetSettings)
  head: HeadSettings = group(HeadSettings)
  finetune: FinetuneSettings = group(FinetuneSettings)
  adapt: AdaptSettings = group(AdaptSettings)
  export: ExportSettings = group(ExportSettings)


@dataclasses.dataclass
class ExportConfig:
  """tl-export: TFLite files of a trained model, each evaluated on the target's test set."""

  paths: PathSettings = group(PathSettings)
  load: ModelSettings = group(
    ModelSettings, model=os.path.join(artifacts.DEFAULT_OUTPUT_DIR, artifacts.TARGET_MODEL)
  )
  target: TargetSettings = group(TargetSettings)
  seed: int = _seed("Random seed for --train_per_class, --test_split and the int8 calibration.")
  formats: str = setting(
    ",".join(EXPORT_FORMATS),
    f"TFLite files to write, comma-separated, any of {', '.join(EXPORT_FORMATS)}: float32, "
    "dynamic-range (int8 weights), float16 weights, full integer (uint8 input and output).",
  )
  representative_images: int = _representative_images()


@dataclasses.dataclass
class PipelineConfig:
  """tl-pipeline: pretrain, transfer and finetune into one output folder (see `stages`)."""

  paths: PathSettings = group(PathSettings)
  runtime: RuntimeSettings = group(RuntimeSettings)
  train: TrainSettings = group(TrainSettings, _PIPELINE_TRAIN_HELP, batch_size=None, augment=None)
  pretrain_epochs: int = setting(4, "Epochs of the pretrain stage.", allowed=EPOCHS)
  finetune_epochs: int | None = setting(
    None, f"Epochs of the finetune stage {_FINETUNE_EPOCHS_HELP}", allowed=EPOCHS
  )
  source: SourceSettings = group(SourceSettings)
  target: TargetSettings = group(TargetSettings)
  head: HeadSettings = group(HeadSettings)
  finetune: FinetuneSettings = group(FinetuneSettings)
  adapt: AdaptSettings = group(AdaptSettings)
  export: ExportSettings = group(ExportSettings)

  def stages(self) -> tuple[PretrainConfig, TransferConfig, FinetuneConfig]:
    """The three stages' configs; transfer and finetune read the model pretrain writes."""
    config = copy.deepcopy(self)
    model = ModelSettings(model=os.path.join(config.paths.output_dir, artifacts.SOURCE_MODEL))
    pretrain_train = copy.deepcopy(config.train)
    defaults = TrainSettings()  # the finetune stage chooses its own by the label count
    if pretrain_train.batch_size is None:
      pretrain_train.batch_size = defaults.batch_size
    if pretrain_train.augment is None:
      pretrain_train.augment = defaults.augment
    return (
      PretrainConfig(
        paths=copy.deepcopy(config.paths),
        runtime=copy.deepcopy(config.runtime),
        train=pretrain_train,
        epochs=config.pretrain_epochs,
        source=config.source,
      ),
      TransferConfig(
        paths=copy.deepcopy(config.paths),
        load=copy.deepcopy(model),
        target=copy.deepcopy(config.target),
        seed=config.runtime.seed,
        features_layer=config.head.features_layer,
      ),
      FinetuneConfig(
        paths=config.paths,
        runtime=config.runtime,
        train=config.train,
        epochs=config.finetune_epochs,
        load=model,
        target=config.target,
        head=config.head,
        finetune=config.finetune,
        adapt=config.adapt,
        export=config.export,
      ),
    )


@dataclasses.dataclass
class FuseConfig:
  """tl-fuse: several models for the same classes combined into one."""

  paths: PathSettings = group(PathSettings)
  fuse: FuseSettings = group(FuseSettings)
  target: TargetSettings = group(TargetSettings)
  seed: int = _seed("Random seed for --train_per_class, --test_split and --validation_split.")


# The scores tl-rank computes (`tl_keras.ranking.rank.SCORES`). RANK_BY, the default of tl-rank
# and rank_sources: the H-score, the best worst case over bench/bench_zoo.py's three targets
# (weighted Kendall tau -0.01, top-1 regret 0.8 points; LogME -0.07 and 0.9; see README).
RANK_SCORES = ("logme", "h_score", "knn_accuracy", "leep", "nce", "linear_probe_accuracy")
RANK_BY = "h_score"


@dataclasses.dataclass
class RankConfig:
  """tl-rank: candidate source models scored for the target before finetuning any of them."""

  paths: PathSettings = group(PathSettings)
  models: str = setting(
    "",
    "Comma-separated candidate source models, each as --model takes it (.h5, .keras, "
    "SavedModel folder, TF Hub handle, keras:NAME at its default input size).",
  )
  target: TargetSettings = group(TargetSettings)
  by: str = setting(RANK_BY, "The score the candidates are ranked by.", choices=RANK_SCORES)
  max_images: int = setting(
    1000,
    "At most this many target training images (and as many test images), a seeded draw, "
    "are scored.",
    allowed=Range(2, 10_000_000),
  )
  seed: int = _seed("Random seed for --train_per_class, --test_split and --max_images.")
  features_layer: str | None = _features_layer()
  allow_unsafe_deserialization: bool = _allow_unsafe()
  max_model_mb: int = _max_model_mb()

  def model_list(self) -> list[str]:
    """The candidates named by `models`, in order; refuses an empty or repeated name."""
    names = [name.strip() for name in self.models.split(",")]
    if not self.models.strip() or not all(names):
      raise UserError(
        f"invalid --models={self.models!r}: name the candidate models, separated by commas"
      )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
      raise UserError(f"--models names {', '.join(repeated)} more than once")
    return names


COMMAND_CONFIGS = (
  PretrainConfig,
  TransferConfig,
  FinetuneConfig,
  PipelineConfig,
  ExportConfig,
  FuseConfig,
  RankConfig,
)
