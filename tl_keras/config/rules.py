"""Cross-field rules, checked once where input enters (the CLI and the stages), before any
work: flags that cannot work together are refused in one line or resolved with a note. No
TensorFlow here."""

from tl_keras.config import methods
from tl_keras.config.commands import COMMAND_CONFIGS
from tl_keras.config.commands import ExportConfig
from tl_keras.config.commands import FuseConfig
from tl_keras.config.commands import RankConfig
from tl_keras.config.groups import EXPORT_FORMATS
from tl_keras.config.groups import KERAS_MODEL_PREFIX
from tl_keras.config.groups import MAX_FUSED_MODELS
from tl_keras.config.groups import AdaptSettings
from tl_keras.config.groups import FuseSettings
from tl_keras.config.groups import HeadSettings
from tl_keras.config.groups import ModelSettings
from tl_keras.config.groups import RuntimeSettings
from tl_keras.config.groups import TargetSettings
from tl_keras.config.groups import unlabeled_spec_problem
from tl_keras.config.schema import flag_name
from tl_keras.config.schema import leaves
from tl_keras.errors import UserError
from tl_keras.ranges import check_value


def export_formats(spec: str, name: str = "formats") -> tuple[str, ...]:
  """'tflite,tflite_int8' -> ('tflite', 'tflite_int8'); '' -> (). Refuses an unknown format
  (a UserError naming flag `name`); repeats count once."""
  formats = tuple(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
  unknown = [part for part in formats if part not in EXPORT_FORMATS]
  if unknown:
    raise UserError(
      f"unknown --{name} format {unknown[0]!r}: use any of {', '.join(EXPORT_FORMATS)}, "
      "separated by commas"
    )
  return formats


def validate(config) -> None:
  """Refuses bad settings with a UserError naming the flag, before anything is written: a
  value outside its choices or range, a non-finite float, then the rules across fields."""
  for owner, field in leaves(config):
    name = flag_name(field) or field.name
    value = getattr(owner, field.name)
    choices = field.metadata.get("choices")
    if choices and value not in choices:
      raise UserError(f"unknown --{name}={value!r}: use one of {', '.join(choices)}")
    check_value(name, value, field.metadata.get("allowed"))
    if field.name in ("formats", "export_formats"):
      export_formats(value, name)
  if isinstance(config, RankConfig):
    config.model_list()
  if isinstance(config, ExportConfig) and not export_formats(config.formats):
    raise UserError(f"--formats is empty: use any of {', '.join(EXPORT_FORMATS)}")
  fuse = getattr(config, "fuse", config)
  if isinstance(fuse, FuseSettings):
    paths = fuse.model_paths()
    if not fuse.models.strip() or not all(paths):
      raise UserError(
        f"invalid --models={fuse.models!r}: name the model files to fuse, separated by commas"
      )
    if not 2 <= len(paths) <= MAX_FUSED_MODELS:
      raise UserError(f"--models names {len(paths)} model(s); fuse 2 to {MAX_FUSED_MODELS}")
  head = getattr(config, "head", config)
  if isinstance(head, HeadSettings) and head.head_init in ("probe", "source") and head.head_units:
    raise UserError(
      f"--head_init={head.head_init} sets the classifier on the source features, so it needs "
      "--head_units=0"
    )
  if isinstance(head, HeadSettings) and head.head_init == "source" and head.features_layer:
    raise UserError(
      "--head_init=source starts from the source classifier, so the head must sit where it "
      "did: drop --features_layer"
    )
  _validate_runtime(config)
  _validate_adaptation(config)


def _validate_runtime(config) -> None:
  """Settings that cannot work together: --input_size on a model other than keras:NAME (which
  has its own input size), and --jit_compile with --deterministic (XLA has no deterministic
  kernel for MaxPool's gradient: TensorFlow stops at the first training step)."""
  load = getattr(config, "load", config)
  if isinstance(load, ModelSettings) and load.input_size is not None:
    if not load.model.startswith(KERAS_MODEL_PREFIX):
      raise UserError(
        f"--input_size is for --model={KERAS_MODEL_PREFIX}NAME backbones; {load.model} has "
        "its own input size: drop --input_size"
      )
  runtime = getattr(config, "runtime", config)
  if isinstance(runtime, RuntimeSettings) and runtime.jit_compile and runtime.deterministic:
    raise UserError(
      "--jit_compile cannot train with --deterministic: XLA has no deterministic kernel for "
      "MaxPool's gradient; pass --nodeterministic (or drop --deterministic) to use XLA, or "
      "drop --jit_compile for identical results with the same --seed"
    )


def notes(config) -> list[str]:
  """What a run does that its flags do not say: the defaults the rules across settings
  chose, one line each, for the CLI to print before any work."""
  runtime = getattr(config, "runtime", None)
  if isinstance(runtime, RuntimeSettings) and runtime.jit_compile and runtime.deterministic is None:
    return [
      "--jit_compile turns op determinism off (XLA has no deterministic kernel for MaxPool's "
      "gradient): runs with the same --seed may differ slightly"
    ]
  return []


def _validate_adaptation(config) -> None:
  """The rules of --unlabeled, --adapt and --train_per_class=0, for configs that have them."""
  target = getattr(config, "target", None)
  adapt = getattr(config, "adapt", None)
  if not isinstance(target, TargetSettings) or target.train_per_class != 0:
    no_labels = False
  elif isinstance(adapt, AdaptSettings):
    no_labels = True
  elif isinstance(config, (ExportConfig, FuseConfig)):
    raise UserError("--train_per_class=0 leaves no training images; give at least 1")
  else:  # transfer: predictions only
    return
  if not isinstance(adapt, AdaptSettings):
    return
  problem = unlabeled_spec_problem(adapt.unlabeled)
  if problem:
    raise UserError(problem)
  method = methods.ADAPTATION[methods.choose_adaptation(adapt.adapt, int(bool(adapt.unlabeled)))]
  if method.uses_unlabeled and not adapt.unlabeled:
    raise UserError(f"--adapt={adapt.adapt} learns from unlabelled images: give --unlabeled")
  if not no_labels:
    return
  if not method.uses_unlabeled:
    raise UserError(
      "--train_per_class=0 leaves no labelled target images: give --unlabeled (e.g. rest) to "
      "adapt without labels, or at least 1 image per class"
    )
  head = config.head
  refused = [
    (head.features_layer, "--features_layer"),
    (head.head_units, "--head_units"),
    (head.head_init not in ("auto", "source"), f"--head_init={head.head_init}"),
    (config.train.validation_split, "--validation_split"),
    (config.finetune.compare_scratch, "--compare_scratch"),
  ]
  given = [name for value, name in refused if value]
  if given:
    raise UserError(
      f"--train_per_class=0 (no target labels) starts the classifier from the source's and "
      f"has no images to validate or train from scratch on: drop {', '.join(given)}"
    )


def report_keys() -> list[str]:
  """The settings report.md lists, in its order."""
  positions = {}
  for config_class in COMMAND_CONFIGS:
    for _, field in leaves(config_class()):
      if field.metadata.get("report") is not None:
        positions[field.name] = field.metadata["report"]
  return sorted(positions, key=positions.get)
