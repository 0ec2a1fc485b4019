"""tf.data pipelines for training and evaluation, with optional augmentation, and the paired
labelled and unlabelled streams that adaptation trains on."""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tl_keras.data import augmentation
from tl_keras.data.folders import ImageFiles
from tl_keras.data.preprocessing import preprocess_images

Images = np.ndarray | ImageFiles


def _examples(x: Images, y=None, shuffle_seed: int | None = None) -> tf.data.Dataset:
  """Unbatched images (with labels `y`), shuffled each pass with `shuffle_seed`; `ImageFiles`
  are read from their files in the order an array of them would give."""
  if isinstance(x, ImageFiles):
    return x.dataset(y, shuffle_seed)
  dataset = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
  if shuffle_seed is not None:
    dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
  return dataset


def _untuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
  # The tf.data autotuner stalled model.fit for about 1 s per epoch on 2 CPU cores (MNIST 0-4,
  # two epochs: 10.0 s with it, 7.7 s without); these pipelines are too light to need tuning.
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def _batch_seeds(dataset: tf.data.Dataset, seed: int, stream: int) -> tf.data.Dataset:
  """(batch, [2] int64 seed) pairs: a fresh augmentation seed for every batch, the same in
  every run and on every worker."""
  seeds = tf.data.Dataset.random(seed=seed).map(lambda value: tf.stack([value, stream]))
  return tf.data.Dataset.zip((dataset, seeds))


def make_dataset(
  x: Images,
  y: np.ndarray,
  batch_size: int,
  input_shape: Sequence[int],
  shuffle_seed: int | None = None,
  augment: bool = False,
  num_classes: int | None = None,
  repeat: bool = False,
) -> tf.data.Dataset:
  """A batched tf.data pipeline of (preprocessed images, labels) for training and evaluation.

  Shuffles each epoch when `shuffle_seed` is given, and with `augment` applies
  `augmentation.weak` (seeded by `shuffle_seed`); preprocessing runs per batch. `ImageFiles`
  are read from their files as the batches are needed, in the same order an array of them
  would be. With `num_classes`, labels are one-hot. With `repeat`, passes follow each other
  without end (for a set number of steps per epoch).
  """
  dataset = _examples(x, y, shuffle_seed)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.batch(batch_size)
  if augment:
    dataset = _batch_seeds(dataset, shuffle_seed or 0, 0)

  def prepare(batch, seed=None):
    images, labels = batch
    images = preprocess_images(images, input_shape)
    if seed is not None:
      images = augmentation.weak(images, seed)
    if num_classes:
      labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    return images, labels

  if augment:
    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    dataset = dataset.map(lambda *batch: prepare(batch), num_parallel_calls=tf.data.AUTOTUNE)
  return _untuned(dataset)


def make_adaptation_dataset(
  labeled: tf.data.Dataset,
  unlabeled: Images,
  hidden_labels: np.ndarray | None,
  batch_size: int,
  input_shape: Sequence[int],
  seed: int,
  source: tuple[Images, int] | None = None,
) -> tf.data.Dataset:
  """Training elements for `adaptation.AdaptationModel`: ((images, labels), (weak, strong,
  hidden labels)[, source images]), without end.

  `labeled` is a repeating, batched stream of `make_dataset`. Each element adds `batch_size`
  unlabelled images (shuffled each pass with `seed`), preprocessed and augmented twice:
  `augmentation.weak` (the view that makes pseudo-labels) and `augmentation.strong` (the view
  that learns them). `hidden_labels` are their true labels where known (-1 elsewhere), for
  reporting how often pseudo-labels are right; training never reads them. With `source`,
  (images, batch size) of the source's training images, each element also holds a batch of
  them, preprocessed and weakly augmented, for domain alignment.
  """
  hidden = (
    np.full(len(unlabeled), -1, np.int64) if hidden_labels is None else hidden_labels
  ).astype(np.int64)
  images = _examples(unlabeled, hidden, seed + 1).repeat().batch(batch_size)

  def views(batch, augment_seed):
    pixels, known = batch
    pixels = preprocess_images(pixels, input_shape)
    seeds = tf.random.experimental.stateless_split(augment_seed, 2)
    return augmentation.weak(pixels, seeds[0]), augmentation.strong(pixels, seeds[1]), known

  streams = [labeled, _batch_seeds(images, seed, 1).map(views, num_parallel_calls=2)]
  if source:
    source_images, source_batch = source
    source_batches = _examples(source_images, None, seed + 2).repeat().batch(source_batch)
    streams.append(
      _batch_seeds(source_batches, seed, 2).map(
        lambda batch, augment_seed: augmentation.weak(
          preprocess_images(batch, input_shape), augment_seed
        ),
        num_parallel_calls=2,
      )
    )
  return _untuned(tf.data.Dataset.zip(tuple(streams)))
