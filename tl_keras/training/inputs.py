"""The training inputs of a run: the labelled split it trains on (with its validation part)
and the tf.data pipelines built from it, with the unlabelled (and source) streams adaptation
adds."""

import dataclasses

import numpy as np
import tensorflow as tf

from tl_keras import adaptation
from tl_keras.config import methods
from tl_keras.config.training import TrainingConfig
from tl_keras.data import pipelines
from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import UnlabeledImages
from tl_keras.data.labeled import split_per_class
from tl_keras.errors import UserError


@dataclasses.dataclass
class AdaptData:
  """What adaptation trains on besides the target's labelled images (see `adaptation`)."""

  settings: adaptation.Adaptation
  unlabeled: UnlabeledImages
  # The source's training images, labels their target class index or -1: the labelled
  # batches when the target has no labels, and with align the source side of the alignment.
  source: LabeledData | None = None


def training_split(dataset: LabeledData, config: TrainingConfig):
  """(training images, their labels, (validation images, labels) or None): with
  `config.train.validation_split`, that seeded, stratified part of the training data is held
  out."""
  x_train, y_train = dataset.x_train, dataset.y_train
  if not config.train.validation_split:
    return x_train, y_train, None
  train_index, validation_index = split_per_class(
    y_train, config.train.validation_split, config.runtime.seed
  )
  if not len(validation_index):
    raise UserError(
      f"--validation_split={config.train.validation_split} holds out no image of "
      f"the {len(y_train)} training images; raise it or drop it"
    )
  return (
    x_train[train_index],
    y_train[train_index],
    (x_train[validation_index], y_train[validation_index]),
  )


def _no_labeled_images(input_shape, num_classes: int | None) -> tf.data.Dataset:
  """Batches of no labelled image, without end: a source-free method without target labels."""
  labels = tf.zeros([0, num_classes]) if num_classes else tf.zeros([0], tf.int64)
  return tf.data.Dataset.from_tensors((tf.zeros([0, *input_shape]), labels)).repeat()


def training_datasets(
  dataset: LabeledData,
  config: TrainingConfig,
  batch_size: int,
  input_shape,
  adapt: AdaptData | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset | None, np.ndarray]:
  """(train, validation or None, training labels) of `training_split`; only the training
  images are shuffled and augmented; labels are one-hot with label smoothing. With
  `config.train.steps_per_epoch` or `adapt` the training images repeat without end; with
  `adapt` each element adds unlabelled images (`pipelines.make_adaptation_dataset`), and a
  target without labelled images takes the source images of its classes in their place."""
  x_train, y_train, held_out = training_split(dataset, config)
  one_hot = dataset.num_classes if config.train.label_smoothing else None
  validation = (
    pipelines.make_dataset(*held_out, batch_size, input_shape, num_classes=one_hot)
    if held_out
    else None
  )
  labeled_x, labeled_y = x_train, y_train
  source_free = adapt and not len(y_train) and methods.ADAPTATION[adapt.settings.method].source_free
  if adapt and not len(y_train) and not source_free:
    mine = np.flatnonzero(adapt.source.y_train >= 0)
    labeled_x, labeled_y = adapt.source.x_train[mine], adapt.source.y_train[mine]
  train = (
    _no_labeled_images(input_shape, one_hot)
    if source_free
    else pipelines.make_dataset(
      labeled_x,
      labeled_y,
      batch_size,
      input_shape,
      shuffle_seed=config.runtime.seed,
      augment=config.train.augment,
      num_classes=one_hot,
      repeat=bool(config.train.steps_per_epoch or adapt),
    )
  )
  if adapt:
    settings_ = adapt.settings
    source = None
    if methods.ADAPTATION[settings_.method].needs_source and len(y_train):
      source = (adapt.source.x_train, batch_size)
    train = pipelines.make_adaptation_dataset(
      train,
      adapt.unlabeled.images,
      adapt.unlabeled.labels,
      batch_size * settings_.unlabeled_ratio,
      input_shape,
      config.runtime.seed,
      source,
    )
  return train, validation, y_train
