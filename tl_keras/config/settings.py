"""Every setting of every command, in one tree of typed dataclasses, and their validation: the
one door to `config/`. `schema` holds the machinery (a leaf `setting` with its flag's help,
choices or `ranges.Range`, resume rule and report.md position; `group`; walking, building and
copying configs), `groups` one settings dataclass per component (paths, runtime, training,
target, head, source, model, finetune, adaptation, export, fusion), `commands` each command's
config built from the groups it takes, and `rules` the checks across fields. The CLI generates
its flags from the command configs, so a new setting is one field in its group. Leaf names are
unique within a config and are the flag names, the keys a resumed run records and the metrics
keys report.md reads. No TensorFlow here: --help and flag errors need none.
"""

from tl_keras.config.choices import FITS
from tl_keras.config.choices import IMAGE_CACHES
from tl_keras.config.commands import _FEW_LABELS
from tl_keras.config.commands import _FINETUNE_EPOCHS_HELP
from tl_keras.config.commands import _FINETUNE_TRAIN_HELP
from tl_keras.config.commands import _PIPELINE_TRAIN_HELP
from tl_keras.config.commands import COMMAND_CONFIGS
from tl_keras.config.commands import RANK_SCORES
from tl_keras.config.commands import ExportConfig
from tl_keras.config.commands import FinetuneConfig
from tl_keras.config.commands import FuseConfig
from tl_keras.config.commands import PipelineConfig
from tl_keras.config.commands import PretrainConfig
from tl_keras.config.commands import RankConfig
from tl_keras.config.commands import TransferConfig
from tl_keras.config.groups import BATCH_SIZE
from tl_keras.config.groups import CLASS_WEIGHTS
from tl_keras.config.groups import EPOCHS
from tl_keras.config.groups import EXPORT_FORMATS
from tl_keras.config.groups import HEAD_INITS
from tl_keras.config.groups import KERAS_MODEL_PREFIX
from tl_keras.config.groups import MAX_BATCH_SIZE
from tl_keras.config.groups import MAX_EPOCHS
from tl_keras.config.groups import MAX_FUSED_MODELS
from tl_keras.config.groups import MAX_HEAD_UNITS
from tl_keras.config.groups import MAX_REPRESENTATIVE_IMAGES
from tl_keras.config.groups import SEED
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
from tl_keras.config.groups import unlabeled_spec_problem
from tl_keras.config.rules import _validate_adaptation
from tl_keras.config.rules import _validate_runtime
from tl_keras.config.rules import export_formats
from tl_keras.config.rules import notes
from tl_keras.config.rules import report_keys
from tl_keras.config.rules import validate
from tl_keras.config.schema import _is_group
from tl_keras.config.schema import _set
from tl_keras.config.schema import as_dict
from tl_keras.config.schema import flag_help
from tl_keras.config.schema import flag_name
from tl_keras.config.schema import group
from tl_keras.config.schema import leaves
from tl_keras.config.schema import make
from tl_keras.config.schema import recorded_on_resume
from tl_keras.config.schema import replace
from tl_keras.config.schema import setting
from tl_keras.config.schema import value_type
from tl_keras.config.training import TrainingConfig

__all__ = [
  "IMAGE_CACHES",
  "FITS",
  "HEAD_INITS",
  "CLASS_WEIGHTS",
  "EXPORT_FORMATS",
  "MAX_FUSED_MODELS",
  "KERAS_MODEL_PREFIX",
  "MAX_EPOCHS",
  "MAX_BATCH_SIZE",
  "MAX_HEAD_UNITS",
  "MAX_REPRESENTATIVE_IMAGES",
  "EPOCHS",
  "BATCH_SIZE",
  "SEED",
  "setting",
  "group",
  "_epochs",
  "_seed",
  "_allow_unsafe",
  "_max_model_mb",
  "_features_layer",
  "PathSettings",
  "RuntimeSettings",
  "TrainSettings",
  "TargetSettings",
  "HeadSettings",
  "SourceSettings",
  "ModelSettings",
  "FinetuneSettings",
  "AdaptSettings",
  "_representative_images",
  "ExportSettings",
  "_FEW_LABELS",
  "_FINETUNE_EPOCHS_HELP",
  "_FINETUNE_TRAIN_HELP",
  "_PIPELINE_TRAIN_HELP",
  "TrainingConfig",
  "PretrainConfig",
  "TransferConfig",
  "FinetuneConfig",
  "ExportConfig",
  "PipelineConfig",
  "FuseSettings",
  "FuseConfig",
  "RANK_SCORES",
  "RankConfig",
  "COMMAND_CONFIGS",
  "_is_group",
  "leaves",
  "flag_name",
  "value_type",
  "flag_help",
  "as_dict",
  "recorded_on_resume",
  "_set",
  "make",
  "replace",
  "export_formats",
  "validate",
  "_validate_runtime",
  "notes",
  "unlabeled_spec_problem",
  "_validate_adaptation",
  "report_keys",
]
