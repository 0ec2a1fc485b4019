"""What every adaptation method is made of: the settings a run records, the batch and outputs
the one `train_step` hands its methods' terms, and the `Term` interface they implement."""

import dataclasses
from typing import Any

import numpy as np
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
  teacher: str = "none"  # ema: pseudo-labels from a mean teacher (`teacher`)
  teacher_decay: float = 0.99
  selection: str = "im"  # the label-free criterion that keeps the best epoch (`selection`)

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
  trained when trainable (those of `frozen` excepted). `attach` runs once after construction;
  then per step the train_step calls `prepare` (outside the gradient tape), `inputs`, `loss`
  (inside it), then after the optimizer's step `after_step`; `on_epoch_begin` runs before each
  epoch and `on_epoch_end` after it. `METRICS`: the names it logs (`metrics[name]`, Keras Mean
  metrics it updates), after loss and accuracy in the history, the plots and the summary."""

  METRICS: tuple[str, ...] = ()

  def __init__(self, settings: Adaptation, num_classes: int, feature_size: int, name: str):
    super().__init__(name=name)
    self.settings = settings
    self.num_classes = num_classes
    self.feature_size = feature_size

  def attach(self, model: keras.Model, with_features: keras.Model) -> None:
    """Once, in the strategy's scope: the classifier, and the same graph with the features
    as a first output (for terms that read features outside the gradient tape)."""

  def frozen(self, model: keras.Model) -> list[tf.Variable]:
    """Variables of `model` this term keeps fixed (e.g. a frozen classifier)."""
    return []

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

  def on_epoch_begin(self, epoch: int, watched: "Watched") -> None:
    """Before each epoch, with the current model's outputs on the watched unlabelled images
    (e.g. class centroids in feature space)."""


@dataclasses.dataclass
class Watched:
  """The model's outputs (eval mode) on a fixed, seeded sample of the unlabelled images,
  computed once per state of the weights and shared by the terms' epoch hooks, the label-free
  model selection and the collapse guard."""

  features: np.ndarray  # float32 [N, feature_size]
  probabilities: np.ndarray  # float32 [N, num_classes]
  labels: np.ndarray | None  # their true labels where known (-1 elsewhere), for reports only
