"""Label-free model selection: with no target labels there is no validation accuracy, so the
epoch kept is the one that scores best on the unlabelled target images by a criterion of their
predictions alone.

- im: the information-maximisation score (Liang et al., ICML 2020, SHOT's objective, there a
  loss): entropy of the mean prediction minus mean per-image entropy, over log(classes). High
  when each image is confidently one class and the classes are all used; 1 at best, and a
  collapse to one class scores at most 0.
- snd: soft neighbourhood density (Saito et al., ICCV 2021): the entropy of each image's
  softmax similarity (temperature 0.05) to the other images' L2-normalised predictions, over
  log(images - 1). High when images sit in dense clusters. Alone it also rewards a collapse
  (every image is every other's neighbour), which the guard (`guard`) catches.
"""

import math

import numpy as np

from tl_keras.keras_api import keras

SND_TEMPERATURE = 0.05
SND_IMAGES = 1000  # the similarity matrix is images x images
_EPSILON = 1e-8


def entropy(probabilities: np.ndarray, axis: int = -1) -> np.ndarray:
  probabilities = np.asarray(probabilities, np.float64)
  return -np.sum(probabilities * np.log(probabilities + _EPSILON), axis=axis)


def im_score(probabilities: np.ndarray) -> float:
  """(H(mean prediction) - mean per-image entropy) / log(classes), in [-1, 1]."""
  probabilities = np.asarray(probabilities, np.float64)
  classes = probabilities.shape[1]
  diversity = entropy(probabilities.mean(axis=0))
  return float((diversity - entropy(probabilities).mean()) / math.log(classes))


def snd(probabilities: np.ndarray, temperature: float = SND_TEMPERATURE) -> float:
  """Soft neighbourhood density of the first `SND_IMAGES` predictions, over log(N - 1)."""
  points = np.asarray(probabilities, np.float64)[:SND_IMAGES]
  if len(points) < 3:
    return 0.0
  points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), _EPSILON)
  logits = points @ points.T / temperature
  np.fill_diagonal(logits, -np.inf)
  logits -= logits.max(axis=1, keepdims=True)
  similarity = np.exp(logits)
  similarity /= similarity.sum(axis=1, keepdims=True)
  return float(entropy(similarity).mean() / math.log(len(points) - 1))


CRITERIA = {"im": im_score, "snd": snd}


class BestEpoch(keras.callbacks.Callback):
  """On the watched unlabelled images of `trainer` (an `AdaptationModel`; the guard logs both
  criteria per epoch), unless `criterion` is "last", keeps the weights of the epoch that
  scores best by it, the starting weights (epoch 0) included, and says which in one line.
  With a mean teacher, its final weights are one more candidate. Epochs the guard stepped
  back from are not candidates."""

  def __init__(self, trainer, criterion: str, log):
    super().__init__()
    self._trainer, self._criterion, self._log = trainer, criterion, log
    self._kept: list[dict] = []
    self._best = None

  def report(self) -> dict:
    return {"selection": self._criterion, "kept": list(self._kept)}

  def _score(self, probabilities) -> float:
    return CRITERIA["im" if self._criterion == "last" else self._criterion](probabilities)

  def on_train_begin(self, logs=None):
    watched = self._trainer.watched()
    self._best = (
      self._score(watched.probabilities),
      0,
      self._trainer.model.get_weights(),
      "student",
    )
    self._epochs = 0

  def on_epoch_end(self, epoch, logs=None):
    self._epochs = epoch + 1
    if self._trainer.guard.fired_at == epoch:
      return
    score = self._score(self._trainer.watched().probabilities)
    if self._criterion == "last" or score > self._best[0]:
      self._best = (score, epoch + 1, self._trainer.model.get_weights(), "student")

  def on_train_end(self, logs=None):
    trainer = self._trainer
    score, epoch, weights, kept = self._best
    if trainer.mean_teacher is not None and self._criterion != "last":
      teacher_score = self._score(trainer.watched_probabilities(trainer.mean_teacher))
      if teacher_score >= score:
        score, epoch, weights, kept = teacher_score, self._epochs, None, "teacher"
        trainer.model.set_weights(trainer.mean_teacher.get_weights())
        trainer.forget_watched()
    if weights is not None and epoch != self._epochs:
      trainer.model.set_weights(weights)
      trainer.forget_watched()
    self._kept.append(
      {"epoch": epoch, "of": self._epochs, "weights": kept, "score": round(score, 5)}
    )
    self._best = None
    if self._criterion != "last":
      self._log(
        f"selection: kept the {kept}'s weights of epoch {epoch} of {self._epochs} "
        f"(by {self._criterion}, {score:.4f}, on unlabelled images)"
      )
