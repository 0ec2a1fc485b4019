"""Target specs: 'mnist:CLASSES', 'npz:PATH' or 'dir:PATH', loaded, fitted and checked; the
unlabelled images of `--unlabeled`, and the source's training images for adaptation."""

import dataclasses
from collections.abc import Sequence

import numpy as np

from tl_keras import limits
from tl_keras.config.choices import FITS
from tl_keras.config.groups import TargetSettings
from tl_keras.config.groups import unlabeled_spec_problem
from tl_keras.data import folders
from tl_keras.data import mnist
from tl_keras.data import npz
from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import UnlabeledImages
from tl_keras.data.labeled import check_class_names
from tl_keras.data.preprocessing import fit_images
from tl_keras.errors import UserError
from tl_keras.errors import warn


def load_target(
  spec: str,
  data_dir: str | None = None,
  input_shape: Sequence[int] | None = None,
  fit: str = "resize",
  test_split: float = 0.2,
  seed: int = 42,
  image_cache: str = "auto",
  framing: dict | None = None,
) -> LabeledData:
  """Loads a target from 'mnist:CLASSES', 'npz:PATH' or 'dir:PATH' (a folder of class folders).

  With `input_shape`, images are fitted to it now (float32 in [0, 1]; see `resolve_fit` for
  `fit` and `framing`), and the target's `fit` says how; 'dir:' targets need it, as their
  images differ in size. `test_split` and `seed` split 'dir:' folders that have no train/ and
  test/; `image_cache` says whether their images are kept in memory or streamed from the files
  (see `folders.load_image_folder`).
  """
  if fit not in FITS:
    raise UserError(f"unknown --target_fit={fit!r}: use one of {', '.join(FITS)}")
  kind, _, arg = spec.partition(":")
  if kind == "mnist":
    target = mnist.mnist_subset(mnist.parse_classes(arg or "all"), data_dir)
  elif kind == "npz" and arg:
    target = npz.load_npz_target(arg)
  elif kind == "dir" and arg:
    if not input_shape:
      raise ValueError("'dir:' targets need input_shape: their images differ in size")
    fit = resolve_fit(fit, None, input_shape, framing)
    target = folders.load_image_folder(
      arg, input_shape, fit, test_split, seed, image_cache, framing
    )
    target.fit = fit
    return target
  else:
    raise UserError(
      f"unknown --target {spec!r}: use 'mnist:CLASSES' (e.g. mnist:5-9), "
      "'npz:PATH' (keys x_train y_train x_test y_test) or 'dir:PATH' (one "
      "subfolder of images per class)"
    )
  if input_shape:
    target.fit = resolve_fit(fit, target.x_train.shape[1:3], input_shape, framing)
    check_fitted_size(target.description, input_shape, target.fit, target.x_train, target.x_test)
    target.x_train = fit_images(target.x_train, input_shape, target.fit, framing=framing)
    target.x_test = fit_images(target.x_test, input_shape, target.fit, framing=framing)
  return target


def check_fitted_size(what: str, input_shape: Sequence[int], fit: str, *arrays) -> None:
  """Refuses image `arrays` that would take more than limits.MAX_FITTED_DATA_BYTES once fitted
  to `input_shape` as float32: the size after framing, not the file's (an .npz of 0.5 MB can
  hold millions of 1x1 images, each 3 KiB at 28x28)."""
  per_image = int(np.prod(input_shape)) * 4
  count = sum(len(x) for x in arrays)
  total = 0
  for x in arrays:  # fit_images keeps an array that already has the input's shape
    shape = tuple(x.shape[1:]) + ((1,) if x.ndim == 3 else ())
    as_is = shape == tuple(input_shape) and fit != "source"
    total += x.nbytes if as_is else len(x) * per_image
  if total > limits.MAX_FITTED_DATA_BYTES:
    raise UserError(
      f"{what}: {count:,} images fitted to the model's input {'x'.join(map(str, input_shape))} "
      f"take {total:,} bytes as float32, more than the limit of "
      f"{limits.MAX_FITTED_DATA_BYTES:,} (tl_keras.limits.MAX_FITTED_DATA_BYTES): use fewer "
      "images, a dir: folder of image files, which is streamed, or a larger --memory_budget_mb"
    )


def resolve_fit(
  fit: str, image_size: Sequence[int] | None, input_shape: Sequence[int], framing: dict | None
) -> str:
  """The fit images of `image_size` (None: of many sizes, as in a folder) get: `fit`, or for
  'auto', 'source' when they differ from the model's input size and the model records its
  source's `framing`, else 'resize'."""
  if fit != "auto":
    if fit == "source" and not framing:
      raise UserError(
        "--target_fit=source frames images as the source model's training images were, but "
        "this model's metadata records no framing (tl-pretrain's models do); use resize or pad"
      )
    return fit
  differs = image_size is None or tuple(image_size) != tuple(input_shape[:2])
  return "source" if framing and differs else "resize"


def prepare_target(
  options: TargetSettings,
  input_shape: Sequence[int],
  data_dir: str | None = None,
  seed: int = 42,
  framing: dict | None = None,
  unlabeled: str = "",
) -> LabeledData:
  """The target `options` describe, fitted to `input_shape`, with its training subset and, for
  an `unlabeled` spec (see `load_unlabeled`), its `unlabeled` images."""
  target = load_target(
    options.target,
    data_dir,
    input_shape,
    options.target_fit,
    options.test_split,
    seed,
    options.image_cache,
    framing,
  )
  rest = None
  if options.train_per_class is not None:
    keep = per_class_indices(target.y_train, target.class_names, options.train_per_class, seed)
    rest = np.setdiff1d(np.arange(len(target.y_train)), keep)
    full, target = target, subset(target, keep, options.train_per_class)
  if unlabeled == "rest":
    if rest is None or not len(rest):
      raise UserError(
        "--unlabeled=rest takes the training images that --train_per_class leaves out, and "
        "there are none: give --train_per_class (0 for no labels at all)"
      )
    target.unlabeled = UnlabeledImages(
      full.x_train[rest], full.y_train[rest], f"the rest of {full.description} (labels dropped)"
    )
  elif unlabeled:
    target.unlabeled = load_unlabeled(
      unlabeled, data_dir, input_shape, options.target_fit, framing, options.image_cache
    )
  check_target(target)
  return target


def load_unlabeled(
  spec: str,
  data_dir: str | None,
  input_shape: Sequence[int],
  fit: str = "auto",
  framing: dict | None = None,
  image_cache: str = "auto",
) -> UnlabeledImages:
  """Unlabelled images from 'dir:PATH' (every image under PATH, at any depth), 'npz:PATH' (key
  x_train, else x) or 'mnist:CLASSES' (the training digits of those classes), fitted to
  `input_shape` as a target's are, whatever their size or channels."""
  kind, _, arg = spec.partition(":")
  labels = None
  if kind == "dir" and arg:
    fit = resolve_fit(fit, None, input_shape, framing)
    images = folders.load_image_tree(arg, input_shape, fit, image_cache, framing)
  elif kind == "npz" and arg:
    images = npz.load_npz_images(arg)
  elif kind == "mnist":
    digits = mnist.mnist_subset(mnist.parse_classes(arg or "all"), data_dir)
    images, labels = digits.x_train, None
  else:
    raise UserError(unlabeled_spec_problem(spec))
  if kind != "dir":
    fit = resolve_fit(fit, images.shape[1:3], input_shape, framing)
    check_fitted_size(f"--unlabeled={spec}", input_shape, fit, images)
    images = fit_images(images, input_shape, fit, framing=framing)
  return UnlabeledImages(images, labels, spec)


def load_source_data(
  spec: str,
  source_names: Sequence[str] | None,
  class_names: Sequence[str],
  data_dir: str | None,
  input_shape: Sequence[int],
  framing: dict | None = None,
  seed: int = 42,
) -> LabeledData:
  """The source's training images (`--source_data`): 'auto' for the MNIST digits the source
  model learnt (`source_names`, from its metadata), or a target spec. Their labels become the
  index of their class name in `class_names` (the target's), -1 for other classes."""
  if spec == "auto":
    if not source_names or not all(name in "0123456789" and name for name in source_names):
      raise UserError(
        "--source_data=auto reads the MNIST digits the source model learnt, but its metadata "
        f"names {'classes ' + ', '.join(list(source_names)[:5]) if source_names else 'none'}: "
        "give --source_data=npz:PATH, dir:PATH or mnist:CLASSES"
      )
    spec = "mnist:" + ",".join(source_names)
  data = load_target(spec, data_dir, input_shape, "auto", 0.2, seed, "auto", framing)
  lookup = np.asarray(
    [list(class_names).index(n) if n in class_names else -1 for n in data.class_names]
  )
  data.y_train, data.y_test = lookup[data.y_train], lookup[data.y_test]
  data.description = f"source data {data.description}"
  return data


def check_target(target: LabeledData) -> None:
  """Refuses a target with fewer than two classes (with training images, unless it has none
  at all, for adaptation without labels): nothing to tell apart (a one-class head scores 0%
  or 100% whatever it learns)."""
  check_class_names(target.class_names, target.description or "target")
  present = len(np.unique(target.y_train)) if len(target.y_train) else target.num_classes
  if target.num_classes < 2 or present < 2:
    raise UserError(
      f"{target.description or 'target'} has {min(present, target.num_classes)} "
      "class(es) with training images; a target needs at least two"
    )


def per_class_indices(
  labels: np.ndarray, class_names: Sequence[str], per_class: int, seed: int
) -> np.ndarray:
  """Sorted indices of a seeded, stratified `per_class` images of each class (all of a class
  that has fewer, with a warning)."""
  rng = np.random.default_rng(seed)
  keep, short = [], []
  for label, name in enumerate(class_names):
    members = np.flatnonzero(labels == label)
    if len(members) < per_class:
      short.append(f"{name} ({len(members)})")
    keep.append(rng.permutation(members)[:per_class])
  if short:
    warn(
      f"fewer than {per_class} training images in class(es) {', '.join(short)}: using all of theirs"
    )
  return np.sort(np.concatenate(keep)).astype(np.int64)


def subset(dataset: LabeledData, keep: np.ndarray, per_class: int) -> LabeledData:
  """`dataset` with only the training images `keep`, `per_class` of each class."""
  return dataclasses.replace(
    dataset,
    x_train=dataset.x_train[keep],
    y_train=dataset.y_train[keep],
    description=f"{dataset.description} ({per_class} per class)",
  )


def subset_per_class(dataset: LabeledData, per_class: int, seed: int) -> LabeledData:
  """`dataset` with a seeded, stratified `per_class` training images of each class."""
  if per_class < 0:
    raise UserError(f"--train_per_class must be at least 0, got {per_class}")
  keep = per_class_indices(dataset.y_train, dataset.class_names, per_class, seed)
  return subset(dataset, keep, per_class)
