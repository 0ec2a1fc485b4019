"""tf.data pipelines for training and evaluation, with optional augmentation."""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tl_keras.datasets.folders import ImageFiles
from tl_keras.keras_api import keras
from tl_keras.preprocessing import preprocess_images


def augmentation(seed: int | None = None) -> keras.Sequential:
  """Random shifts (up to 10%), rotations (up to 15 degrees) and zoom (up to 10%), filling
  with black; for training images only."""
  layers = keras.layers
  return keras.Sequential(
    [
      layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
      layers.RandomRotation(15 / 360, fill_mode="constant", seed=seed),
      layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
    ],
    name="augmentation",
  )


def make_dataset(
  x: np.ndarray | ImageFiles,
  y: np.ndarray,
  batch_size: int,
  input_shape: Sequence[int],
  shuffle_seed: int | None = None,
  augment: bool = False,
  num_classes: int | None = None,
) -> tf.data.Dataset:
  """A batched tf.data pipeline of (preprocessed images, labels) for training and evaluation.

  Shuffles each epoch when `shuffle_seed` is given, and with `augment` applies
  `augmentation()`; preprocessing runs per batch. `ImageFiles` are read from their files as
  the batches are needed, in the same order an array of them would be. With `num_classes`,
  labels are one-hot.
  """
  if isinstance(x, ImageFiles):
    dataset = x.dataset(y, shuffle_seed)
  else:
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
      dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
  augmenter = augmentation(shuffle_seed) if augment else None

  def prepare(images, labels):
    images = preprocess_images(images, input_shape)
    if num_classes:
      labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    return (augmenter(images, training=True) if augmenter else images), labels

  dataset = dataset.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  # The tf.data autotuner stalled model.fit for about 1 s per epoch on 2 CPU cores (MNIST 0-4,
  # two epochs: 10.0 s with it, 7.7 s without); this pipeline is too light to need tuning.
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
