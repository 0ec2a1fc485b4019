"""The settings of the Python API's calls (`tl_keras.api`), from the same schema as the flags:
the keyword arguments `TransferClassifier.fit(data, ...)` takes and the configs they build,
checked as the flags are. The one door from the API to the whole-command settings."""

from typing import Any

from tl_keras.config import settings
from tl_keras.errors import UserError

# The settings `fit(data, ...)` takes by name, with the settings' defaults: the training groups
# of the finetune config, less those set elsewhere (`compile`, `from_source`, the stage's
# files) or given as objects (`unlabeled` images, a `strategy`).
_FIT_GROUPS = ("train", "finetune", "adapt", "runtime", "head")
_SET_ELSEWHERE = {
  "optimizer",
  "learning_rate",
  "jit_compile",
  "unfreeze",
  "compare_scratch",
  "unlabeled",
  "strategy",
  "resume",
  "tensorboard",
  "features_layer",
  "head_units",
  "head_dropout",
  "head_l2",
}
_HEAD_OPTIONS = ("features_layer", "head_units", "head_dropout", "head_l2")


def fit_options() -> set[str]:
  """The finetune settings `TransferClassifier.fit(data, ...)` takes by name."""
  config = settings.FinetuneConfig()
  groups = [getattr(config, name) for name in _FIT_GROUPS]
  names = {
    field.name
    for owner, field in settings.leaves(config)
    if any(owner is group for group in groups)
  }
  return (names | {"epochs"}) - _SET_ELSEWHERE


def finetune_config(**values) -> Any:
  """A finetune config (`settings.FinetuneConfig`) of `values` by setting name, the rest at
  their defaults, checked as the flags are."""
  config = settings.make(settings.FinetuneConfig, **values)
  settings.validate(config)
  return config


def check_head(options: dict[str, Any]) -> None:
  """Refuses head options (`features_layer`, `head_units`, `head_dropout`, `head_l2`, those of
  `options` named so) that the flags would refuse."""
  head = {name: options[name] for name in _HEAD_OPTIONS if name in options}
  settings.validate(settings.HeadSettings(**head))


def target_settings(unlabeled: str = "", **values) -> Any:
  """The target settings (`settings.TargetSettings`) of `values`, checked as the flags are,
  after refusing an `unlabeled` spec `--unlabeled` would refuse."""
  options = settings.TargetSettings(**values)
  settings.validate(options)
  problem = settings.unlabeled_spec_problem(unlabeled)
  if problem:
    raise UserError(problem)
  return options
