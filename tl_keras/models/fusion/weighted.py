"""Fusion by a weighted mean of the members' probabilities: the weights, on the simplex,
minimise the log loss on the validation images (by exponentiated gradient; the loss is convex
in the weights)."""

import numpy as np

from tl_keras.keras_api import keras

_EG_STEPS = 2000
_EG_RATE = 0.5


def fit(probabilities, labels, num_classes, count=None):
  rows = np.arange(len(labels))
  correct = np.stack([p[rows, labels] for p in probabilities]).astype(np.float64)  # [m, N]
  weights = np.full(len(probabilities), 1.0 / len(probabilities))
  for _ in range(_EG_STEPS):
    mixed = np.maximum(weights @ correct, 1e-12)
    gradient = -(correct / mixed).mean(axis=1)
    weights = weights * np.exp(-_EG_RATE * (gradient - gradient.min()))
    weights /= weights.sum()
  return {"weights": weights}


def probabilities(fitted, probabilities):
  return np.tensordot(fitted["weights"], np.stack(probabilities), axes=1)


def combine(outputs, fitted, num_classes):
  """The weighted mean as a fixed linear map: member i's block of the kernel is w_i * I."""
  stacked = keras.layers.Concatenate(name="fusion_concat")(outputs)
  kernel = np.kron(np.asarray(fitted["weights"])[:, None], np.eye(num_classes))
  layer = keras.layers.Dense(num_classes, use_bias=False, name="fusion_weighted")
  fused = layer(stacked)
  layer.set_weights([kernel.astype(np.float32)])
  layer.trainable = False
  return fused


def unconstrained_weights(count, num_classes):
  return 0  # a point on the simplex: the mean stays between the members
