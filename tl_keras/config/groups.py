"""The settings of each component, one dataclass a component (paths, runtime, training,
target, head, source, model, finetune, adaptation, export, fusion), and the values they
allow. A command's config (`commands`) nests the groups it takes. No TensorFlow here."""

import dataclasses
import os
from typing import Any

from tl_keras import artifacts
from tl_keras import limits
from tl_keras.config import methods
from tl_keras.config.choices import CONV_FILTERS
from tl_keras.config.choices import DEFAULT_CONV_FILTERS
from tl_keras.config.choices import DEFAULT_LEARNING_RATES
from tl_keras.config.choices import DEFAULT_PEAK_LEARNING_RATES
from tl_keras.config.choices import FITS
from tl_keras.config.choices import IMAGE_CACHES
from tl_keras.config.choices import LEARNING_RATE
from tl_keras.config.choices import LR_SCHEDULES
from tl_keras.config.choices import OPTIMIZERS
from tl_keras.config.choices import STRATEGIES
from tl_keras.config.schema import setting
from tl_keras.errors import UserError
from tl_keras.ranges import Range

# 'auto': chosen by the label count (see `schedule`); 'source': the source classifier's rows for
# the target's class names (every target class must be a source class).
HEAD_INITS = ("auto", "random", "probe", "source")
CLASS_WEIGHTS = ("none", "balanced")
# TFLite files: float32, dynamic-range (int8 weights), float16 weights, full integer (uint8 in
# and out).
EXPORT_FORMATS = ("tflite", "tflite_dynamic", "tflite_float16", "tflite_int8")
MAX_FUSED_MODELS = 32
# --model=keras:NAME: an ImageNet backbone, the only models --input_size applies to.
KERAS_MODEL_PREFIX = "keras:"

MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536  # 205 MB of 28x28 float32 images in one step; far more for larger inputs
MAX_HEAD_UNITS = 4_096  # the widest classic classifier head (VGG's)
MAX_REPRESENTATIVE_IMAGES = 10_000  # calibration is one forward pass each, no batching

EPOCHS = Range(1, MAX_EPOCHS)
BATCH_SIZE = Range(1, MAX_BATCH_SIZE)
# NumPy's and Python's generators take seeds below 2**32.
SEED = Range(0, 2**32 - 1)


def _epochs(default: int, help_text: str) -> Any:
  return setting(default, help_text, allowed=EPOCHS, report=40)


def _seed(help_text: str) -> Any:
  return setting(42, help_text, allowed=SEED)


def _allow_unsafe() -> Any:
  return setting(
    False,
    "Load models holding Lambda layers, custom classes or graph ops outside the "
    "allowlist. This runs code from the file: only for files you trust.",
  )


def _max_model_mb() -> Any:
  try:  # the budget's share; a bad $TL_KERAS_MEMORY_BUDGET_MB is refused where it is used
    default = limits.MAX_MODEL_BYTES // limits.MIB
  except UserError:
    default = 2 * limits.DEFAULT_MEMORY_BUDGET_MB
  return setting(  # see loading.load_model; the CLI sets an unset one from the budget
    default,
    "Refuse model files that declare more tensor data (weights, constants) than this many MiB.",
    allowed=Range(1, 1 << 20),
  )


def _features_layer() -> Any:
  return setting(
    None,
    "Source layer whose output the new head sits on (its later layers are "
    "dropped); default: the source classifier's input.",
    report=90,
  )


@dataclasses.dataclass
class PathSettings:
  """Where a command reads data and writes its files, and the memory budget it reads them in."""

  output_dir: str = setting(
    artifacts.DEFAULT_OUTPUT_DIR, "Folder for models, metrics and predictions.", free_on_resume=True
  )
  data_dir: str | None = setting(
    None,
    "Folder holding mnist.npz (default: $TL_KERAS_DATA_DIR, then the Keras cache, "
    "downloading there if needed).",
    free_on_resume=True,
  )
  memory_budget_mb: int | None = setting(
    None,
    "Memory budget in MiB that bounds what any input makes tl_keras allocate; every size "
    f"limit is a fixed fraction of it (default: ${limits.BUDGET_ENV}, else "
    f"{limits.DEFAULT_MEMORY_BUDGET_MB}).",
    allowed=Range(*limits.MEMORY_BUDGET_RANGE_MB),
    free_on_resume=True,
  )


@dataclasses.dataclass
class RuntimeSettings:
  """How a training stage runs: seed, devices, resuming, logs."""

  seed: int = _seed("Random seed for initialisation and shuffling.")
  strategy: str = setting(
    "auto",
    "tf.distribute strategy. auto: all GPUs mirrored, one GPU, "
    "else CPU; multi_worker reads TF_CONFIG.",
    choices=STRATEGIES,
    free_on_resume=True,
    report=70,
  )
  resume: bool = setting(
    True,
    "Resume an interrupted run from its last finished epoch; --noresume starts over.",
    free_on_resume=True,
  )
  deterministic: bool | None = setting(
    None,
    "TF op determinism for identical results with the same --seed (default: on, off with "
    "--jit_compile, whose XLA kernels have no deterministic MaxPool gradient); "
    "--nodeterministic may be faster on GPUs.",
    free_on_resume=True,
  )
  mixed_precision: bool = setting(
    False, "Float16 compute on GPUs (classifier layers stay float32); refused on CPU."
  )
  jit_compile: bool = setting(
    False,
    "XLA-compile the training step (faster on GPUs, slower on CPU); turns op determinism off "
    "unless --deterministic is given, which it refuses.",
    free_on_resume=True,
  )

  def op_determinism(self) -> bool:
    """Whether training runs with op determinism: `deterministic`, by default on unless
    `jit_compile` (see `validate`)."""
    return self.deterministic if self.deterministic is not None else not self.jit_compile

  tensorboard: bool = setting(
    False, "Write TensorBoard logs to OUTPUT_DIR/logs/STAGE.", free_on_resume=True
  )


@dataclasses.dataclass
class TrainSettings:
  """How a training stage trains (its epochs are the stage config's)."""

  optimizer: str = setting("adam", "Training optimizer.", choices=OPTIMIZERS, report=20)
  learning_rate: float | None = setting(
    None,
    "Learning rate (default per optimizer: "
    + ", ".join(f"{name} {rate:g}" for name, rate in DEFAULT_LEARNING_RATES.items())
    + "; the peak under --lr_schedule=cosine: "
    + ", ".join(f"{name} {rate:g}" for name, rate in DEFAULT_PEAK_LEARNING_RATES.items())
    + ").",
    allowed=LEARNING_RATE,
    report=30,
  )
  lr_schedule: str = setting(
    "constant",
    "Learning rate within each training phase: constant, or cosine (from --learning_rate "
    "down to 0 over the phase's steps).",
    choices=LR_SCHEDULES,
    report=31,
  )
  batch_size: int | None = setting(
    128, "Global batch size, split over the replicas.", allowed=BATCH_SIZE, report=60
  )
  # When set, the global batch is this times the number of replicas and batch_size is unused.
  per_replica_batch_size: int | None = setting(
    None,
    "Batch size per replica; when set, the global batch is this times the number of "
    "replicas and --batch_size is ignored.",
    allowed=BATCH_SIZE,
  )
  augment: bool | None = setting(
    False, "Random shifts, rotations and zoom of the training images.", report=110
  )
  steps_per_epoch: int | None = setting(
    None,
    "Optimizer steps per epoch, drawn from the repeated, reshuffled training images (default: "
    "one pass over them).",
    allowed=Range(1, 1_000_000),
    report=62,
  )
  validation_split: float = setting(
    0.0,
    "Fraction of each class's training images held out for validation; when set, "
    "training stops early once the validation loss stalls and keeps the best epoch's "
    "weights.",
    allowed=Range(0, 1, real=True, high_open=True),
    report=120,
  )
  patience: int = setting(
    3,
    "With --validation_split: epochs without a better validation loss before stopping.",
    allowed=Range(1, MAX_EPOCHS),
  )
  class_weight: str = setting(
    "none",
    "Loss weight of each class: none, or balanced (n_images / (n_classes * the class's "
    "training images), so rare classes count as much as common ones).",
    choices=CLASS_WEIGHTS,
    report=112,
  )
  average_weights_from_epoch: int = setting(
    0,
    "Stochastic weight averaging (SWA): keep the mean of the weights at the end of each epoch "
    "from this one on (counted within each training phase) as the model; 0: off.",
    allowed=Range(0, MAX_EPOCHS),
  )
  label_smoothing: float = setting(
    0.0,
    "Label smoothing of the cross-entropy loss: the targets become 1 - s + s/k for the true "
    "class and s/k for the others.",
    allowed=Range(0, 1, real=True, high_open=True),
    report=114,
  )


@dataclasses.dataclass
class TargetSettings:
  """Which target data to use and how to read it."""

  target: str = setting(
    "mnist:5-9",
    "Target data: 'mnist:CLASSES' (e.g. mnist:5-9; labels become 0..k-1), "
    "'npz:PATH' (keys x_train y_train x_test y_test; any size, 1 or 3 channels) or 'dir:PATH' "
    "(a folder per class of PNG/JPEG/BMP/GIF images, optionally inside train/ and test/ "
    "folders).",
    report=130,
  )
  target_fit: str = setting(
    "auto",
    "How target images reach the model's input: resize (stretch to its size), pad (keep the "
    "aspect ratio, centre, pad with black), source (frame them as the source's training images "
    "were, from the model's metadata: for MNIST sources, light ink on black, the digit scaled "
    "into a 20x20 box centred by mass); auto: source for images of another size when the model "
    "records a framing, else resize.",
    choices=FITS,
  )
  image_cache: str = setting(
    "auto",
    "For dir: targets: memory keeps the fitted images in memory; none reads them from the files "
    "on every pass (tf.data), so memory does not grow with the folder; auto: memory up to "
    f"half the memory budget ({limits.DEFAULT_MEMORY_BUDGET_MB // 2} MiB by default) of fitted "
    "images, else none.",
    choices=IMAGE_CACHES,
    free_on_resume=True,  # the same images either way
  )
  test_split: float = setting(
    0.2,
    "For dir: targets without train/ and test/ folders: the fraction of each class held "
    "out for testing (seeded).",
    allowed=Range(0, 1, real=True, low_open=True, high_open=True),
  )
  train_per_class: int | None = setting(
    None,
    "Use only this many training images per target class (a seeded, stratified subset); 0 with "
    "--unlabeled: no target labels at all (the target's classes must be source classes).",
    allowed=Range(0, 10_000_000),
  )


@dataclasses.dataclass
class HeadSettings:
  """The new head: where it sits, an optional hidden Dense layer, dropout, L2 weight decay on
  its kernels, and how its classifier starts."""

  features_layer: str | None = _features_layer()
  head_units: int = setting(
    0,
    "Units of a hidden ReLU Dense layer in the new head; 0: the "
    "classifier sits directly on the source features.",
    allowed=Range(0, MAX_HEAD_UNITS),
  )
  head_dropout: float = setting(
    0.0, "Dropout rate in the new head.", allowed=Range(0, 1, real=True, high_open=True)
  )
  head_l2: float = setting(
    0.0, "L2 weight decay on the new head's kernels.", allowed=Range(0, 1, real=True)
  )
  head_init: str = setting(
    "auto",
    "How the new classifier starts: random, probe (a linear probe fitted on the frozen source "
    "features), or source (the source classifier's rows for the target's class names, which "
    "must be source classes); auto: probe with few labelled images or with --unlabeled, source "
    "with no labels, else random.",
    choices=HEAD_INITS,
    report=100,
  )


@dataclasses.dataclass
class SourceSettings:
  """The source CNN pretrain builds and the MNIST digits it learns."""

  source_classes: str = setting(
    "0-4", "MNIST digits to pretrain on: 'all', or digits and ranges such as '0-4' or '0,2,4-6'."
  )
  conv_filters: str = setting(
    ",".join(str(f) for f in DEFAULT_CONV_FILTERS),
    "Filters of each convolution of the source CNN, e.g. 16,32 (fast) or 32,64 (transfers "
    f"better to a few target labels); one to three, each {CONV_FILTERS}.",
    report=10,
  )


@dataclasses.dataclass
class ModelSettings:
  """The source model file and the limits of loading it."""

  model: str = setting(
    os.path.join(artifacts.DEFAULT_OUTPUT_DIR, artifacts.SOURCE_MODEL),
    "Source model: an .h5 or .keras file, a SavedModel folder, a TF Hub handle, or "
    "keras:NAME, an ImageNet backbone from tf_keras.applications (keras:MobileNetV2, "
    "keras:ResNet50, keras:EfficientNetB0, ...; weights from the Keras cache, "
    "$KERAS_HOME/models or ~/.keras/models, downloaded there when online).",
  )
  input_size: int | None = setting(
    None,
    "For --model=keras:NAME: the height and width of its input in pixels (default 224).",
    allowed=Range(32, 1024),
  )
  allow_unsafe_deserialization: bool = _allow_unsafe()
  max_model_mb: int = _max_model_mb()


@dataclasses.dataclass
class FinetuneSettings:
  """Which source layers train and when: with `warmup_epochs`, only the new head trains first;
  then the `unfreeze`d layers join it at `finetune_learning_rate`."""

  unfreeze: str = setting(
    "all",
    "Source layers that train besides the new head: none, all, last:N (the last N "
    "layers with weights) or comma-separated layer names. BatchNormalization layers always "
    "stay frozen, in inference mode.",
    report=80,
  )
  warmup_epochs: int = setting(
    0,
    "Epochs that train only the new head before the --unfreeze'd layers join it.",
    allowed=Range(0, MAX_EPOCHS),
    report=50,
  )
  finetune_learning_rate: float | None = setting(
    None,
    "Learning rate after the warmup epochs (default: a tenth of --learning_rate).",
    allowed=LEARNING_RATE,
  )
  compare_scratch: bool = setting(
    False,
    "Also train the same model from random weights for as "
    "many epochs and report the transfer gain.",
  )


def unlabeled_spec_problem(spec: str) -> str | None:
  """None for a well-formed --unlabeled spec (or none), else the message refusing it."""
  kind, _, path = spec.partition(":")
  if not spec or spec == "rest" or (kind in ("dir", "npz") and path) or kind == "mnist":
    return None
  return (
    f"unknown --unlabeled={spec!r}: use rest, dir:PATH (images at any depth), npz:PATH "
    "(key x_train or x) or mnist:CLASSES"
  )


@dataclasses.dataclass
class AdaptSettings:
  """Unlabelled target images, and how training learns from them (see `adaptation`)."""

  unlabeled: str = setting(
    "",
    "Target images without labels, used in training: rest (the target's training images "
    "--train_per_class left out, labels dropped), dir:PATH (every image under PATH, any "
    "nesting), npz:PATH (key x_train or x) or mnist:CLASSES; default none.",
    report=116,
  )
  adapt: str = setting(
    "auto",
    "How the unlabelled images are used: " + methods.adaptation_help(),
    choices=methods.adaptation_choices(),
    report=115,
  )
  source_data: str = setting(
    "auto",
    "The source's training images, for --adapt=align and for training with "
    "--train_per_class=0: a target spec (mnist:CLASSES, npz:PATH, dir:PATH); auto: MNIST "
    "digits of the source model's classes, from its metadata.",
  )
  unlabeled_ratio: int = setting(
    3, "Unlabelled images per labelled image in each batch.", allowed=Range(1, 64)
  )
  confidence_threshold: float = setting(
    0.95,
    "Self-training: the confidence a weakly augmented unlabelled image needs for its "
    "pseudo-label to count.",
    allowed=Range(0, 1, real=True, low_open=True),
  )
  unlabeled_weight: float = setting(
    1.0, "Weight of the unlabelled (pseudo-label) loss.", allowed=Range(0, 100, real=True)
  )
  align_weight: float = setting(
    0.1,
    "--adapt=align: weight of the domain-adversarial gradient on the features.",
    allowed=Range(0, 100, real=True),
  )
  teacher: str = setting(
    "none",
    "Where self-training's pseudo-labels come from: none (the model being trained) or ema (a "
    "mean teacher, the moving average of its weights, French et al. 2018; kept at the end "
    "when it scores better by --selection).",
    choices=("none", "ema"),
  )
  teacher_decay: float = setting(
    0.99,
    "--teacher=ema: the moving average's decay per optimizer step.",
    allowed=Range(0, 1, real=True, high_open=True),
  )
  selection: str = setting(
    "im",
    "With unlabelled images, which epoch's weights to keep, judged on them without labels: im "
    "(confident and class-balanced predictions, SHOT's information maximisation), snd (soft "
    "neighbourhood density, Saito et al. 2021) or last. Both criteria are recorded per epoch.",
    choices=("im", "snd", "last"),
  )


def _representative_images() -> Any:
  return setting(
    300,
    "Training images, drawn at random (--seed), that calibrate tflite_int8's value ranges.",
    allowed=Range(1, MAX_REPRESENTATIVE_IMAGES),
    free_on_resume=True,
  )


@dataclasses.dataclass
class ExportSettings:
  """TFLite files written after finetuning (see `ExportConfig` for tl-export)."""

  export_formats: str = setting(
    "",
    f"TFLite files to export and evaluate after finetuning: comma-separated, any of "
    f"{', '.join(EXPORT_FORMATS)}; default none (see tl-export).",
    free_on_resume=True,
  )
  representative_images: int = _representative_images()


@dataclasses.dataclass
class FuseSettings:
  """The members of a fusion, how they are combined, and the limits of loading them."""

  models: str = setting(
    "",
    "Comma-separated models to fuse (.h5 or .keras files or SavedModel folders), at least two, "
    "trained for the same classes and taking the same input shape.",
  )
  method: str = setting(
    "average",
    f"How the members' probabilities are combined: {methods.fusion_help()}.",
    choices=tuple(methods.FUSION),
  )
  soup: str = setting(
    "greedy",
    "--method=soup (model soups, Wortsman et al. 2022; members finetuned from one source): "
    "greedy (members by validation accuracy, each kept only if the soup's validation accuracy "
    "does not drop) or uniform (all members' weights, equally).",
    choices=("greedy", "uniform"),
  )
  validation_split: float = setting(
    0.2,
    "Fraction of each class's training images held out (seeded, as tl-finetune's "
    "--validation_split) to fit the weights and score the members; never the test images.",
    allowed=Range(0, 1, real=True, low_open=True, high_open=True),
  )
  allow_unsafe_deserialization: bool = _allow_unsafe()
  max_model_mb: int = _max_model_mb()

  def model_paths(self) -> list[str]:
    """The member models named by `models`, in order."""
    return [path.strip() for path in self.models.split(",")]
