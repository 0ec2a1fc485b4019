"""The adaptation and fusion methods by name, and what callers ask of each: the one list of
them (flags' choices and help, the schedule, the API, the trainer, the summary read it). No
TensorFlow here.

A method's code is the module of its name: `tl_keras/adaptation/NAME.py` (its loss terms and
their hooks, composed by the one `train_step` of `adaptation.model.AdaptationModel`) or
`tl_keras/models/fusion/NAME.py`. A new method is that module and one line here.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class AdaptationMethod:
  """How an adaptation method uses the data. `help`: what it does, for --adapt's help."""

  help: str
  uses_unlabeled: bool = True  # False: it trains on the labelled images alone (no module)
  # The source's training images join every batch, even when the target has labels (to align
  # against); without target labels every method trains on them instead.
  needs_source: bool = False
  flags: tuple[str, ...] = ()  # settings of its own (AdaptSettings), shown in the summary
  # It needs no source images even without target labels (the batches' labelled part is then
  # empty): a model someone else trained is enough.
  source_free: bool = False
  # Its default learning rate is the optimizer's times this (a rate given is kept).
  learning_rate_scale: float = 1.0

  def applies(self, num_unlabeled: int) -> bool:
    """Whether it can run with `num_unlabeled` unlabelled images."""
    return num_unlabeled > 0 or not self.uses_unlabeled


ADAPTATION = {
  "self_training": AdaptationMethod(
    "confident pseudo-labels on weakly augmented images teach strongly augmented ones, FixMatch"
  ),
  "align": AdaptationMethod(
    "also a domain classifier trained adversarially on source and target features, DANN",
    needs_source=True,
    flags=("align_weight",),
  ),
  "shot": AdaptationMethod(
    "source-free: the classifier frozen, features trained by information maximisation and "
    "centroid pseudo-labels, SHOT; needs no source images",
    source_free=True,
    # At Adam's 1e-3 the features drift away from the frozen classifier over 4,000 steps. No
    # labels, seed 42, tuned on bench's USPS-like digits (source 89.7%): 1e-3 78.2%, 3e-4
    # 90.6%, 1e-4 94.6%, 3e-5 96.1%, 1e-5 96.4%; confirmed on the scanned digits (source
    # 94.6%): 1e-3 80.3%, 3e-5 94.3%.
    learning_rate_scale=0.03,
  ),
  "none": AdaptationMethod("", uses_unlabeled=False),
}
# --adapt=auto takes the first of these that applies to the data given.
AUTO = "auto"
AUTO_ORDER = ("self_training", "none")


def adaptation_choices() -> tuple[str, ...]:
  return (AUTO, *ADAPTATION)


def choose_adaptation(name: str, num_unlabeled: int) -> str:
  """The method --adapt=`name` runs with `num_unlabeled` unlabelled images."""
  if name != AUTO:
    return name
  return next(each for each in AUTO_ORDER if ADAPTATION[each].applies(num_unlabeled))


def adaptation_help() -> str:
  """The methods for --adapt's help: 'NAME (what it does), ...; auto: ...'."""
  described = [
    f"{name} ({method.help})" if method.help else name for name, method in ADAPTATION.items()
  ]
  rule = ", else ".join(
    f"{name} when --unlabeled is given" if ADAPTATION[name].uses_unlabeled else name
    for name in AUTO_ORDER
  )
  return f"{', '.join(described)}; {AUTO}: {rule}."


@dataclasses.dataclass(frozen=True)
class FusionMethod:
  """How a fusion method combines the members. `help`: for --method's help."""

  help: str
  fitted: bool = True  # fitted on validation images (False: needs none)
  averages_weights: bool = False  # one model of the members' mean weights (else probabilities)


FUSION = {
  "average": FusionMethod("equal weights", fitted=False),
  "weighted": FusionMethod("one weight per member, fitted on the validation images"),
  "stacking": FusionMethod(
    "a logistic regression on all members' probabilities, fitted on the validation images"
  ),
  "soup": FusionMethod(
    "the members' weights averaged into one model of one member's cost; see --soup",
    averages_weights=True,
  ),
}


def fusion_help() -> str:
  """The methods for --method's help: 'NAME (what it does), ... or NAME (...)'."""
  described = [f"{name} ({method.help})" for name, method in FUSION.items()]
  return f"{', '.join(described[:-1])} or {described[-1]}"


def unfitted_fusion() -> str:
  """A fusion method that needs no validation images."""
  return next(name for name, method in FUSION.items() if not method.fitted)
