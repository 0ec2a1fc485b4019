"""What every adaptation method is made of: the settings a run records, the batch and outputs
the one `train_step` hands its methods' terms, and the `Term` interface they implement."""

import dataclasses
from typing import Any

import tensorflow as tf

from tl_keras.keras_api import keras


@dataclasses.dataclass
class Adaptation:
  """What an adaptation run does, as recorded in the metrics under `adapt`."""

  method: str  # a name of `config.methods.ADAPTATION`
  confidence_threshold: float
  unlabeled_weight: float
  unlabeled_ratio: int
  align_weight: float
  total_steps: int  # over all phases: the alignment weight's ramp
  adabn: bool = False  # BatchNormalization statistics re-estimated on target images
  distribution_alignment: bool = True

  def as_metrics(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class Batch:
  """One training element of `pipelines.make_adaptation_dataset`."""

  images: tf.Tensor  # labelled
  labels: tf.Tensor  # class indices, or one-hot with label smoothing
  weak: tf.Tensor  # unlabelled, weakly augmented
  strong: tf.Tensor  # the same images, strongly augmented
  hidden: tf.Tensor  # the unlabelled images' labels where known, else -1
  source: tf.Tensor | None  # the source's images, for methods that align against them


@dataclasses.dataclass
class Outputs:
  """The forward pass over the labelled images and every term's `inputs`, concatenated in
  that order: `start` is where the current term's own inputs begin."""

  features: tf.Tensor
  probabilities: tf.Tensor
  labeled_count: tf.Tensor
  start: tf.Tensor


class Term(keras.layers.Layer):
  """One loss of an adaptation method and its hooks. A Keras layer, so that its variables
  (created in `__init__`, inside the strategy's scope) are the model's: checkpointed, and
  trained when trainable. The train_step calls, per step: `prepare` (outside the gradient
  tape), `inputs`, `loss` (inside it), then after the optimizer's step `after_step`; and
  `on_epoch_end` after each epoch. `METRICS`: the names it logs (`metrics[name]`, Keras Mean
  metrics it updates), after loss and accuracy in the history, the plots and the summary."""

  METRICS: tuple[str, ...] = ()

  def __init__(self, settings: Adaptation, num_classes: int, feature_size: int, name: str):
    super().__init__(name=name)
    self.settings = settings
    self.num_classes = num_classes
    self.feature_size = feature_size

  def prepare(self, batch: Batch, model: keras.Model) -> dict[str, tf.Tensor]:
    """What the loss needs computed without gradient (e.g. pseudo-labels by `model`)."""
    return {}

  def inputs(self, batch: Batch) -> list[tf.Tensor]:
    """Images this term adds to the forward pass."""
    return []

  def loss(
    self, batch: Batch, state: dict[str, tf.Tensor], outputs: Outputs, metrics: dict
  ) -> tuple[tf.Tensor | None, tf.Tensor | None]:
    """(loss added to the reported one, loss trained but not reported), either None."""
    return None, None

  def after_step(self) -> None:
    """After the optimizer's step (e.g. a step count)."""

  def on_epoch_end(self, epoch: int) -> None:
    """After each epoch (e.g. labels recomputed over the whole unlabelled set)."""
