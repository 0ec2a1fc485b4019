"""Stochastic weight averaging (Izmailov et al., UAI 2018): the mean of the weights at the end
of the last epochs, from a given epoch on, kept as the model.

BatchNormalization statistics of the mean weights are not the mean of the statistics, so a
layer that trained in training mode has them recomputed on `images` (`adapt_batch_norm`);
tl_keras keeps every BatchNormalization layer frozen in inference mode while finetuning (see
`networks.set_trainable`), so its statistics are the same at every epoch and their mean is
already right.
"""

import numpy as np

from tl_keras.keras_api import keras
from tl_keras.models import networks


class AverageWeights(keras.callbacks.Callback):
  """Keeps the running mean of `model`'s weights at the end of each epoch from `from_epoch`
  (counted from 1 within the fit) on; `apply` puts it into the model."""

  def __init__(self, model: keras.Model, from_epoch: int):
    super().__init__()
    self.averaged = model
    self.from_epoch = from_epoch
    self.count = 0
    self.mean: list[np.ndarray] | None = None

  def on_epoch_end(self, epoch, logs=None):
    if epoch + 1 < self.from_epoch:
      return
    weights = self.averaged.get_weights()
    self.count += 1
    if self.mean is None:
      self.mean = [np.array(w, np.float64) for w in weights]
      return
    for mean, value in zip(self.mean, weights):
      mean += (value - mean) / self.count

  def apply(self, images=None) -> int:
    """Sets the model's weights to the mean (nothing before `from_epoch` was reached) and,
    where BatchNormalization layers trained and `images` are given, recomputes their
    statistics. Returns the number of epochs averaged."""
    if not self.count:
      return 0
    dtypes = [w.dtype for w in self.averaged.get_weights()]
    self.averaged.set_weights([m.astype(d) for m, d in zip(self.mean, dtypes)])
    norms_trained = any(
      isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
      for layer in self.averaged.layers
    )
    if norms_trained and images is not None:
      networks.adapt_batch_norm(self.averaged, images)
    return self.count
