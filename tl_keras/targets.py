"""Target specs: 'mnist:CLASSES', 'npz:PATH' or 'dir:PATH', loaded, fitted and checked."""

import dataclasses
from collections.abc import Sequence

import numpy as np

from tl_keras import settings
from tl_keras.datasets import LabeledData
from tl_keras.datasets import check_class_names
from tl_keras.datasets import folders
from tl_keras.datasets import mnist
from tl_keras.datasets import npz
from tl_keras.errors import UserError
from tl_keras.errors import warn
from tl_keras.preprocessing import fit_images


def load_target(
  spec: str,
  data_dir: str | None = None,
  input_shape: Sequence[int] | None = None,
  fit: str = "resize",
  test_split: float = 0.2,
  seed: int = 42,
  image_cache: str = "auto",
) -> LabeledData:
  """Loads a target from 'mnist:CLASSES', 'npz:PATH' or 'dir:PATH' (a folder of class folders).

  With `input_shape`, images of another size or channel count are fitted to it now (float32
  in [0, 1]), with `fit` 'resize' or 'pad'; 'dir:' targets need it, as their images differ
  in size. `test_split` and `seed` split 'dir:' folders that have no train/ and test/;
  `image_cache` says whether their images are kept in memory or streamed from the files
  (see `folders.load_image_folder`).
  """
  if fit not in settings.FITS:
    raise UserError(f"unknown --target_fit={fit!r}: use {' or '.join(settings.FITS)}")
  kind, _, arg = spec.partition(":")
  if kind == "mnist":
    target = mnist.mnist_subset(mnist.parse_classes(arg or "all"), data_dir)
  elif kind == "npz" and arg:
    target = npz.load_npz_target(arg)
  elif kind == "dir" and arg:
    if not input_shape:
      raise ValueError("'dir:' targets need input_shape: their images differ in size")
    return folders.load_image_folder(arg, input_shape, fit, test_split, seed, image_cache)
  else:
    raise UserError(
      f"unknown --target {spec!r}: use 'mnist:CLASSES' (e.g. mnist:5-9), "
      "'npz:PATH' (keys x_train y_train x_test y_test) or 'dir:PATH' (one "
      "subfolder of images per class)"
    )
  if input_shape:
    target.x_train = fit_images(target.x_train, input_shape, fit)
    target.x_test = fit_images(target.x_test, input_shape, fit)
  return target


def prepare_target(
  options: settings.TargetSettings,
  input_shape: Sequence[int],
  data_dir: str | None = None,
  seed: int = 42,
) -> LabeledData:
  """The target `options` describe, fitted to `input_shape`, with its training subset."""
  target = load_target(
    options.target,
    data_dir,
    input_shape,
    options.target_fit,
    options.test_split,
    seed,
    options.image_cache,
  )
  if options.train_per_class is not None:
    target = subset_per_class(target, options.train_per_class, seed)
  check_target(target)
  return target


def check_target(target: LabeledData) -> None:
  """Refuses a target with fewer than two classes with training images: nothing to tell
  apart (a one-class head scores 0% or 100% whatever it learns)."""
  check_class_names(target.class_names, target.description or "target")
  present = len(np.unique(target.y_train))
  if target.num_classes < 2 or present < 2:
    raise UserError(
      f"{target.description or 'target'} has {min(present, target.num_classes)} "
      "class(es) with training images; a target needs at least two"
    )


def subset_per_class(dataset: LabeledData, per_class: int, seed: int) -> LabeledData:
  """`dataset` with a seeded, stratified `per_class` training images of each class."""
  if per_class < 1:
    raise UserError(f"--train_per_class must be at least 1, got {per_class}")
  rng = np.random.default_rng(seed)
  keep, short = [], []
  for label, name in enumerate(dataset.class_names):
    members = np.flatnonzero(dataset.y_train == label)
    if len(members) < per_class:
      short.append(f"{name} ({len(members)})")
    keep.append(rng.permutation(members)[:per_class])
  if short:
    warn(
      f"fewer than {per_class} training images in class(es) {', '.join(short)}: using all of theirs"
    )
  keep = np.sort(np.concatenate(keep))
  return dataclasses.replace(
    dataset,
    x_train=dataset.x_train[keep],
    y_train=dataset.y_train[keep],
    description=f"{dataset.description} ({per_class} per class)",
  )
