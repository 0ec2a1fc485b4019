"""Rank candidate source models for a target before finetuning any of them.

Each candidate's penultimate features (and, with a classifier, its class probabilities) on a
seeded subsample of the target are computed in one pass; every score of this package and the
linear probe then read them, each timed. A candidate that cannot take the target images, or a
score it cannot have (LEEP and NCE need a classifier output), carries the reason instead.
"""

import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras import loading
from tl_keras.config.commands import RANK_BY
from tl_keras.data.labeled import LabeledData
from tl_keras.errors import UserError
from tl_keras.evaluation import probes
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.ranking import hscore
from tl_keras.ranking import knn
from tl_keras.ranking import leep
from tl_keras.ranking import logme
from tl_keras.ranking import nce

# Scores of the features of the target training images, and of the source's predictions on them.
FEATURE_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
  "logme": logme.logme,
  "h_score": hscore.h_score,
  "knn_accuracy": knn.knn_accuracy,
}
PREDICTION_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
  "leep": leep.leep,
  "nce": lambda probabilities, labels: nce.nce(np.argmax(probabilities, axis=1), labels),
}
SCORES = (*FEATURE_SCORES, *PREDICTION_SCORES, "linear_probe_accuracy")
MAX_IMAGES = 1000


def rank_sources(
  candidates: Sequence[str | keras.Model],
  data: LabeledData,
  by: str = RANK_BY,
  max_images: int | None = MAX_IMAGES,
  seed: int = 0,
  features_layer: str | None = None,
  load_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Scores each candidate source for the target `data` and ranks them by the score `by`.

  `candidates`: paths or handles `loading.load_model` takes (with `load_options`, e.g.
  `allow_unsafe`, `max_bytes`, `input_size`) or Keras models. At most `max_images` training
  and as many test images, a seeded draw (`None`: all), are used.

  Returns `{"by", "pick", "num_train", "num_test", "candidates"}`: `candidates` best first
  (those without the score last, in the given order), each `{"model": as given or the
  model's name, SCORE: value or None for every name in SCORES, "seconds": {"load",
  "features", SCORE: seconds}, "reasons": {SCORE: why not}}`; `pick` is the first
  candidate's `model` if it has the score, else None; the counts are the images used.
  """
  if by not in SCORES:
    raise UserError(f"cannot rank by {by!r}: use one of {', '.join(SCORES)}")
  if not len(candidates):
    raise UserError("no candidate models to rank")
  if max_images is not None and max_images < 2:
    raise UserError(f"max_images must be at least 2, got {max_images}")
  rng = np.random.default_rng(seed)
  train = _sample(data.x_train, data.y_train, max_images, rng)
  test = _sample(data.x_test, data.y_test, max_images, rng)
  if len(np.unique(train[1])) < 2:
    raise UserError("ranking sources needs labelled training images of at least 2 classes")
  results = [
    score_candidate(candidate, train, test, features_layer, load_options or {})
    for candidate in candidates
  ]
  ranked = sorted(results, key=lambda result: _order(result[by]))
  pick = ranked[0]["model"] if ranked[0][by] is not None else None
  return {
    "by": by,
    "pick": pick,
    "num_train": len(train[1]),
    "num_test": len(test[1]),
    "candidates": ranked,
  }


def _order(value: float | None) -> tuple[bool, float]:
  """Sort key: scores high to low, then those without one (None or NaN)."""
  missing = value is None or bool(np.isnan(value))
  return missing, 0.0 if missing else -value


def _sample(images, labels: np.ndarray, max_images: int | None, rng: np.random.Generator):
  """(images, labels), at most `max_images` of them drawn by `rng`, in their order."""
  if max_images is None or len(labels) <= max_images:
    return images, np.asarray(labels)
  keep = np.sort(rng.choice(len(labels), max_images, replace=False))
  return images[keep], np.asarray(labels)[keep]


def score_candidate(
  candidate: str | keras.Model,
  train: tuple[Any, np.ndarray],
  test: tuple[Any, np.ndarray],
  features_layer: str | None = None,
  load_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """One candidate's entry of `rank_sources` on (images, labels) `train` and `test`."""
  name = candidate if isinstance(candidate, str) else candidate.name
  result = {"model": name, **dict.fromkeys(SCORES), "seconds": {}, "reasons": {}}
  seconds, reasons = result["seconds"], result["reasons"]
  try:
    start = time.perf_counter()
    model = candidate
    if isinstance(candidate, str):
      model = loading.load_model(candidate, **(load_options or {}))
    networks.image_input_shape(model, name)  # refuses a model that does not take images
    seconds["load"] = time.perf_counter() - start
    start = time.perf_counter()
    features, probabilities, why_not = _features_and_probabilities(model, train[0], features_layer)
    test_features = probes.features_of(model, test[0], features_layer) if len(test[1]) else None
    seconds["features"] = time.perf_counter() - start
  except UserError as error:
    reasons.update(dict.fromkeys(SCORES, str(error)))
    return result
  labels = train[1]
  for score, function in FEATURE_SCORES.items():
    result[score] = _timed(seconds, score, function, features, labels)
  for score, function in PREDICTION_SCORES.items():
    if probabilities is None:
      reasons[score] = why_not
    else:
      result[score] = _timed(seconds, score, function, probabilities, labels)
  if test_features is None:
    reasons["linear_probe_accuracy"] = "the target has no test images"
  else:
    args = (features, labels, test_features, test[1])
    result["linear_probe_accuracy"] = _timed(
      seconds, "linear_probe_accuracy", probes.linear_probe_accuracy, *args
    )
  return result


def _timed(seconds: dict[str, float], score: str, function: Callable, *args) -> float:
  """function(*args) as a float, its time in `seconds[score]`."""
  start = time.perf_counter()
  value = float(function(*args))
  seconds[score] = time.perf_counter() - start
  return value


def _features_and_probabilities(model: keras.Model, images, features_layer: str | None):
  """(features, source class probabilities or None, why None) for `images`.

  A model without a classifier (`networks.classifier_layer`) has no class probabilities. Its
  outputs are taken as probabilities where every row is a distribution, else as logits; a
  single output unit is not a distribution over source classes.
  """
  if networks.classifier_layer(model) is None:
    why = "needs a classifier output: the model's last layer is not a Dense classifier"
    return probes.features_of(model, images, features_layer), None, why
  features, outputs = probes.features_and_outputs(model, images, features_layer)
  if outputs.shape[1] < 2:
    return features, None, "needs class probabilities: the model has a single output unit"
  if not (np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)):
    outputs = np.exp(outputs - outputs.max(axis=1, keepdims=True))  # logits: softmax
    outputs /= outputs.sum(axis=1, keepdims=True)
  return features, outputs, None
