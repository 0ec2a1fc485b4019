"""From a method's name (`config.methods.ADAPTATION`) to its code: the `TERMS` of the module of
that name in this package. A new method is its module here and one line in
`config.methods.ADAPTATION`."""

import importlib

from tl_keras.adaptation import base
from tl_keras.config import methods


def terms(name: str) -> tuple[type[base.Term], ...]:
  """The terms method `name` adds to the labelled loss, in the order they run; none for a
  method that does not use the unlabelled images."""
  if not methods.ADAPTATION[name].uses_unlabeled:
    return ()
  return importlib.import_module(f"{__package__}.{name}").TERMS


def metric_names(name: str) -> tuple[str, ...]:
  """What training with method `name` logs per epoch, in order."""
  return ("loss", "accuracy", *(metric for term in terms(name) for metric in term.METRICS))
