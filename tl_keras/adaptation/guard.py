"""No collapse: after each epoch, the predicted class distribution on the watched unlabelled
images is checked; when it collapses, the weights step back to the last epoch that passed
(the starting weights at first), adaptation stops, and one line says so.

A collapse is any of: one class takes more than `MAX_SHARE` of the predictions (with at least
`MIN_CLASSES` classes) and `SHARE_RISE` more than it did at the start (a target the source
model already sees as skewed is not blamed on adaptation); the normalised entropy of the mean
prediction falls below `ENTROPY_FLOOR` and `SHARE_RISE` below its start; the label-free
criterion (`selection.im_score`) falls more than `CRITERION_DROP` below its best so far.
"""

import math

import numpy as np

from tl_keras.adaptation import selection
from tl_keras.keras_api import keras

MAX_SHARE = 0.6
MIN_CLASSES = 3
SHARE_RISE = 0.1
ENTROPY_FLOOR = 0.5
CRITERION_DROP = 0.25


def class_shares(probabilities: np.ndarray) -> np.ndarray:
  """The share of images predicted as each class."""
  classes = probabilities.shape[1]
  return np.bincount(probabilities.argmax(axis=1), minlength=classes) / max(1, len(probabilities))


def balance(probabilities: np.ndarray) -> float:
  """Entropy of the mean prediction over log(classes): 1 when all classes are used evenly."""
  return float(selection.entropy(probabilities.mean(axis=0)) / math.log(probabilities.shape[1]))


def collapse_reason(probabilities: np.ndarray, start: dict, best_score: float) -> str | None:
  """Why the predictions count as collapsed (`start`: `state` of the starting model), or None."""
  now = state(probabilities)
  if (
    probabilities.shape[1] >= MIN_CLASSES
    and now["top_share"] > MAX_SHARE
    and now["top_share"] > start["top_share"] + SHARE_RISE
  ):
    return f"class {now['top_class']} takes {now['top_share']:.0%} of the predictions"
  if now["balance"] < ENTROPY_FLOOR and now["balance"] < start["balance"] - SHARE_RISE:
    return f"the mean prediction's normalised entropy fell to {now['balance']:.2f}"
  if now["im_score"] < best_score - CRITERION_DROP:
    return f"the im criterion fell from {best_score:.3f} to {now['im_score']:.3f}"
  return None


def state(probabilities: np.ndarray) -> dict:
  shares = class_shares(probabilities)
  return {
    "top_class": int(shares.argmax()),
    "top_share": float(shares.max()),
    "balance": balance(probabilities),
    "im_score": selection.im_score(probabilities),
  }


class CollapseGuard(keras.callbacks.Callback):
  """Checks `trainer` (an `AdaptationModel`) after each epoch; logs `top_class_share` and the
  label-free criteria `im_score` and `snd` (`selection`) of the epoch's weights. Once it
  fires, training stops and every later fit of the same trainer stops after its first epoch
  without changing the weights it starts with. `events`: one record per collapse."""

  def __init__(self, trainer, log):
    super().__init__()
    self._trainer, self._log = trainer, log
    self.events: list[dict] = []
    self.fired_at = None  # the epoch of this fit it fired at
    self.stopped = False

  def on_train_begin(self, logs=None):
    self.fired_at = None
    self._good = self._trainer.model.get_weights()
    probabilities = self._trainer.watched().probabilities
    self._start = state(probabilities)
    self._best_score = self._start["im_score"]

  def on_epoch_end(self, epoch, logs=None):
    trainer = self._trainer
    if self.stopped:
      trainer.model.set_weights(self._good)
      trainer.forget_watched()
      self.fired_at, trainer.stop_training = epoch, True
      return
    probabilities = trainer.watched().probabilities
    now = state(probabilities)
    if logs is not None:
      logs["top_class_share"] = round(now["top_share"], 5)
      logs["im_score"] = round(now["im_score"], 5)
      logs["snd"] = round(selection.snd(probabilities), 5)
    reason = collapse_reason(probabilities, self._start, self._best_score)
    if reason is None:
      self._good = trainer.model.get_weights()
      self._best_score = max(self._best_score, now["im_score"])
      return
    trainer.model.set_weights(self._good)
    trainer.forget_watched()
    self.fired_at, self.stopped, trainer.stop_training = epoch, True, True
    self.events.append({"epoch": epoch + 1, "reason": reason, "top_share": now["top_share"]})
    self._log(
      f"collapse guard: at epoch {epoch + 1} {reason}; restored the last good weights and "
      "stopped adapting"
    )
