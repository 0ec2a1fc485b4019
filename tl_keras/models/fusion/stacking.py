"""Fusion by stacking: a multinomial logistic regression on all members' probabilities,
concatenated (`probes.fit_linear_probe`, L2-regularised), fitted on the validation images."""

import numpy as np

from tl_keras.evaluation import probes
from tl_keras.keras_api import keras


def fit(probabilities, labels, num_classes, count=None):
  kernel, bias = probes.fit_linear_probe(
    np.concatenate(probabilities, axis=1).astype(np.float64), labels, num_classes
  )
  return {"kernel": kernel, "bias": bias}


def probabilities(fitted, probabilities):
  logits = np.concatenate(probabilities, axis=1) @ fitted["kernel"] + fitted["bias"]
  logits -= logits.max(axis=1, keepdims=True)
  exp = np.exp(logits)
  return exp / exp.sum(axis=1, keepdims=True)


def combine(outputs, fitted, num_classes):
  stacked = keras.layers.Concatenate(name="fusion_concat")(outputs)
  layer = keras.layers.Dense(num_classes, activation="softmax", name="fusion_stacking")
  fused = layer(stacked)
  layer.set_weights(
    [np.asarray(fitted["kernel"], np.float32), np.asarray(fitted["bias"], np.float32)]
  )
  layer.trainable = False
  return fused


def unconstrained_weights(count, num_classes):
  return count * num_classes**2
