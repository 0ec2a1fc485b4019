"""Model fusion: several classifiers of the same classes combined into one Keras model.

Each member maps images to class probabilities. The methods are named in
`tl_keras.config.methods.FUSION` (the one list); the code of a method NAME is the module
`NAME.py` here, fitted from the members' probabilities on held-out validation images only:

- average: the mean of the members' probabilities;
- weighted: a weighted mean, the weights (on the simplex) minimising the validation log loss;
- stacking: a multinomial logistic regression on all members' probabilities, concatenated
  (`probes.fit_linear_probe`, L2-regularised).

Each module has `fit(probabilities, labels, num_classes, count)` (the fitted parameters),
`probabilities(fitted, probabilities)` (the fusion in NumPy), `combine(outputs, fitted,
num_classes)` (the same with built-in Keras layers) and `unconstrained_weights(count,
num_classes)` (how many weights it fits freely: the more, the more validation images it needs).

`build_fused_model` puts frozen copies of the members, as nested models, under one input and
combines their outputs with built-in layers only, so the fused .h5 passes the safe loader's
allowlists and serves through the usual signature. The caller's models are left as they were.
"""

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from tl_keras.config import methods
from tl_keras.keras_api import keras


def method(name: str) -> ModuleType:
  """The module of the fusion method `name`."""
  if name not in methods.FUSION:
    raise ValueError(f"unknown fusion method {name!r}")
  return importlib.import_module(f"{__name__}.{name}")


def fit_fusion(
  name: str,
  probabilities: Sequence[np.ndarray] | None,
  labels: np.ndarray,
  num_classes: int,
  count: int | None = None,
) -> dict[str, Any]:
  """The fusion parameters of method `name` from the members' validation `probabilities` (one
  [N,k] array each) and the validation `labels`: {"weights": [m]} for average and weighted,
  {"kernel": [m*k, k], "bias": [k]} for stacking. Average needs only the `count` of members."""
  return method(name).fit(probabilities, labels, num_classes, count)


def fused_probabilities(
  name: str, fitted: dict[str, Any], probabilities: Sequence[np.ndarray]
) -> np.ndarray:
  """What the fused model outputs for the members' `probabilities`, computed in NumPy."""
  return method(name).probabilities(fitted, probabilities)


def build_fused_model(
  members: Sequence[keras.Model], name: str, fitted: dict[str, Any]
) -> keras.Model:
  """One model of built-in layers: frozen copies of the members (named member_1, ...) on one
  input, their probabilities combined by method `name` with `fitted` (see `fit_fusion`)."""
  inputs = keras.Input(shape=members[0].input_shape[1:], name="image")
  outputs = [
    _frozen_copy(member, f"member_{index}")(inputs, training=False)
    for index, member in enumerate(members, start=1)
  ]
  fused = method(name).combine(outputs, fitted, outputs[0].shape[-1])
  return keras.Model(inputs, fused, name=f"fused_{name}")


def _frozen_copy(member: keras.Model, name: str) -> keras.Model:
  """`member`'s layers and weights in a new model named `name` (nested models need unique
  names), not trainable; `member` itself keeps its name, layers and trainable flags."""
  copy = keras.models.clone_model(member)
  copy.set_weights(member.get_weights())
  copy._name = name
  copy.trainable = False
  return copy
