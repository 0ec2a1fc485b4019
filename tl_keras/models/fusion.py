"""Model fusion: several classifiers of the same classes combined into one Keras model.

Each member maps images to class probabilities. `fit_fusion` decides how they combine, from
the members' probabilities on held-out validation images only:

- average: the mean of the members' probabilities;
- weighted: a weighted mean, the weights (on the simplex) minimising the validation log loss;
- stacking: a multinomial logistic regression on all members' probabilities, concatenated
  (`probes.fit_linear_probe`, L2-regularised).

`build_fused_model` puts the members, as nested models, under one input and combines their
outputs with built-in layers only (Average, or Concatenate and a Dense), so the fused .h5
passes the safe loader's allowlists and serves through the usual signature.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras.config import settings
from tl_keras.evaluation import probes
from tl_keras.keras_api import keras

METHODS = settings.FUSION_METHODS
_EG_STEPS = 2000
_EG_RATE = 0.5


def fit_fusion(
  method: str,
  probabilities: Sequence[np.ndarray] | None,
  labels: np.ndarray,
  num_classes: int,
  count: int | None = None,
) -> dict[str, Any]:
  """The fusion parameters of `method` from the members' validation `probabilities` (one
  [N,k] array each) and the validation `labels`: {"weights": [m]} for average and weighted,
  {"kernel": [m*k, k], "bias": [k]} for stacking. Average needs only the `count` of members."""
  if method == "average":
    count = count or len(probabilities)
    return {"weights": np.full(count, 1.0 / count)}
  if method == "weighted":
    return {"weights": _log_loss_weights(probabilities, labels)}
  if method == "stacking":
    kernel, bias = probes.fit_linear_probe(
      np.concatenate(probabilities, axis=1).astype(np.float64), labels, num_classes
    )
    return {"kernel": kernel, "bias": bias}
  raise ValueError(f"unknown fusion method {method!r}")


def _log_loss_weights(probabilities: Sequence[np.ndarray], labels: np.ndarray) -> np.ndarray:
  """Member weights on the simplex minimising the log loss of the weighted mean, by
  exponentiated gradient (the loss is convex in the weights)."""
  rows = np.arange(len(labels))
  correct = np.stack([p[rows, labels] for p in probabilities]).astype(np.float64)  # [m, N]
  weights = np.full(len(probabilities), 1.0 / len(probabilities))
  for _ in range(_EG_STEPS):
    mixed = np.maximum(weights @ correct, 1e-12)
    gradient = -(correct / mixed).mean(axis=1)
    weights = weights * np.exp(-_EG_RATE * (gradient - gradient.min()))
    weights /= weights.sum()
  return weights


def fused_probabilities(
  method: str, fitted: dict[str, Any], probabilities: Sequence[np.ndarray]
) -> np.ndarray:
  """What the fused model outputs for the members' `probabilities`, computed in NumPy."""
  if method == "stacking":
    logits = np.concatenate(probabilities, axis=1) @ fitted["kernel"] + fitted["bias"]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
  return np.tensordot(fitted["weights"], np.stack(probabilities), axes=1)


def build_fused_model(
  members: Sequence[keras.Model], method: str, fitted: dict[str, Any]
) -> keras.Model:
  """One model of built-in layers: the members (renamed member_1, ...) on one input, their
  probabilities averaged, weighted or stacked by `fitted` (see `fit_fusion`)."""
  inputs = keras.Input(shape=members[0].input_shape[1:], name="image")
  outputs = []
  for index, member in enumerate(members, start=1):
    member._name = f"member_{index}"  # nested models need unique names
    member.trainable = False
    outputs.append(member(inputs, training=False))
  num_classes = outputs[0].shape[-1]
  if method == "average":
    fused = keras.layers.Average(name="fusion_average")(outputs)
  else:
    stacked = keras.layers.Concatenate(name="fusion_concat")(outputs)
    if method == "weighted":
      # The weighted mean as a fixed linear map: member i's block of the kernel is w_i * I.
      kernel = np.kron(np.asarray(fitted["weights"])[:, None], np.eye(num_classes))
      layer = keras.layers.Dense(num_classes, use_bias=False, name="fusion_weighted")
      fused = layer(stacked)
      layer.set_weights([kernel.astype(np.float32)])
    else:
      layer = keras.layers.Dense(num_classes, activation="softmax", name="fusion_stacking")
      fused = layer(stacked)
      layer.set_weights(
        [np.asarray(fitted["kernel"], np.float32), np.asarray(fitted["bias"], np.float32)]
      )
    layer.trainable = False
  return keras.Model(inputs, fused, name=f"fused_{method}")
