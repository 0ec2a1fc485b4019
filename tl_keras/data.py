"""Datasets: MNIST source splits, target specs, and the shared image preprocessing.

A dataset here is a `LabeledData`: NumPy train/test arrays with integer labels 0..k-1 and
the class name of each label. `preprocess_images` is the one function that maps any target
image batch to a model's input; training, prediction and the exported serving signature
all go through it.
"""

import dataclasses
import io
import os
import re
import stat
import unicodedata
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tl_keras import limits
from tl_keras.errors import UserError
from tl_keras.errors import warn
from tl_keras.keras_api import keras

MNIST_FILENAME = "mnist.npz"
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
DATA_DIR_ENV = "TL_KERAS_DATA_DIR"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# .npy headers tl_keras reads itself before NumPy sees the file (NumPy's own parser's limit).
_MAX_NPY_HEADER_BYTES = 10_000
# Array kinds an .npz target may hold (bool, integers, floats); pickled objects, strings and
# structured records never reach np.load.
_NPZ_DTYPE_KINDS = "biuf"
# How images of another size reach the model's: stretched, or scaled into the box keeping the
# aspect ratio, centred and padded with black (as MNIST centres its digits).
FITS = ("resize", "pad")


@dataclasses.dataclass
class LabeledData:
  """Train/test images (uint8 0-255 or float 0-1) with labels 0..k-1 named by `class_names`."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: List[str]
  description: str = ""

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def metadata(self) -> Dict[str, object]:
    """What a model trained on this data records: class names and the label each maps to."""
    return {"class_names": self.class_names, "dataset": self.description,
            "label_map": {name: index for index, name in enumerate(self.class_names)}}


def parse_classes(spec: str) -> List[int]:
  """Parses '0-4', 'all', or '0,2,4-6' into a sorted list of MNIST digits."""
  spec = spec.strip().lower()
  if spec == "all":
    return list(range(10))
  digits = set()
  for part in spec.split(","):
    match = re.fullmatch(r"\s*(\d)\s*(?:-\s*(\d)\s*)?", part)
    if not match:
      raise UserError(f"invalid class list {spec!r}: use 'all', or digits and ranges "
                      "such as '0-4' or '0,2,4-6'")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) else low
    if high < low:
      raise UserError(f"invalid class range {part.strip()!r} in {spec!r}: start is after end")
    digits.update(range(low, high + 1))
  return sorted(digits)


def find_mnist_file(data_dir: Optional[str] = None) -> str:
  """Returns a path to mnist.npz: `data_dir`, else $TL_KERAS_DATA_DIR, else the Keras cache.

  Downloads into the Keras cache only when neither a folder nor the env var is given.
  """
  folder = data_dir or os.environ.get(DATA_DIR_ENV)
  if folder:
    path = folder if folder.endswith(".npz") else os.path.join(folder, MNIST_FILENAME)
    if not os.path.isfile(path):
      origin = "--data_dir" if data_dir else f"${DATA_DIR_ENV}"
      raise UserError(f"MNIST file not found: {path} (from {origin}); download {MNIST_URL} "
                      "into that folder or point --data_dir at the folder that holds it")
    return path
  try:
    from tl_keras.keras_api import keras  # pylint: disable=g-import-not-at-top
    return keras.utils.get_file(MNIST_FILENAME, origin=MNIST_URL, cache_subdir="datasets")
  except Exception as e:  # pylint: disable=broad-except
    raise UserError("MNIST is not in the Keras cache and could not be downloaded "
                    f"({type(e).__name__}); "
                    f"if offline, download {MNIST_URL} elsewhere and pass --data_dir=FOLDER "
                    f"or set {DATA_DIR_ENV}=FOLDER") from e


def shown(text: str) -> str:
  """`text` for a one-line message: as it is, or quoted with escapes if it holds control
  characters (a newline in a file name must not split the line)."""
  text = str(text)
  return repr(text) if any(unicodedata.category(c).startswith("C") for c in text) else text


def check_class_names(names, origin: str) -> List[str]:
  """`names` as a list of strings; refuses anything but non-empty strings without control or
  format characters (Unicode category C*: newline, tab, bidi overrides, ...), which would
  break class_names.txt, CSV rows and one-line messages. `origin` names where they come from.
  """
  if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
    raise UserError(f"{origin}: class names must be a list of strings, not "
                    f"{type(names).__name__}")
  for name in names:
    if not isinstance(name, str) or not name:
      raise UserError(f"{origin}: class name {repr(name)[:80]} is not a non-empty string")
    bad = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c).startswith("C")})
    if bad:
      short = repr(name if len(name) <= 60 else name[:60] + "...")
      raise UserError(f"{origin}: class name {short} contains control character(s) "
                      f"{', '.join(bad[:5])}; rename it")
  return list(names)


def read_regular_file(path: str, max_bytes: int, what: str = "file") -> Optional[bytes]:
  """The contents of `path` if it is a regular file, else None (FIFOs, sockets, devices and
  folders are never read). Does not follow a symlink at `path`: resolve it first. Opens
  non-blocking, checks the open file, and refuses one over `max_bytes` before reading it.
  """
  flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
  try:
    fd = os.open(path, flags)
  except OSError:
    return None
  try:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
      return None
    if info.st_size > max_bytes:
      raise UserError(f"{what} {shown(path)} has {info.st_size:,} bytes, more than the limit of "
                      f"{max_bytes:,}")
    with os.fdopen(os.dup(fd), "rb") as f:
      contents = f.read(max_bytes + 1)
    if len(contents) > max_bytes:
      raise UserError(f"{what} {shown(path)} grew past the limit of {max_bytes:,} bytes")
    return contents
  finally:
    os.close(fd)


def _npy_header(member, name: str, path: str):
  """(shape, dtype) from the .npy header at the start of zip member `member`, read with a
  bounded length; refuses anything that is not a plain numeric array."""
  from numpy.lib import format as npy_format  # pylint: disable=g-import-not-at-top
  try:
    version = npy_format.read_magic(member)
  except ValueError as e:
    raise UserError(f"{path}: {name} is not a .npy array") from e
  if version not in ((1, 0), (2, 0)):
    raise UserError(f"{path}: {name} has .npy format version {version}; expected 1.0 or 2.0")
  length_bytes = 2 if version == (1, 0) else 4
  length_field = member.read(length_bytes)
  length = int.from_bytes(length_field, "little")
  if len(length_field) != length_bytes or length > _MAX_NPY_HEADER_BYTES:
    raise UserError(f"{path}: {name} has a .npy header of {length:,} bytes; at most "
                    f"{_MAX_NPY_HEADER_BYTES:,} are allowed")
  header = io.BytesIO(length_field + member.read(length))
  read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                 else npy_format.read_array_header_2_0)
  try:
    shape, _, dtype = read_header(header)
  except ValueError as e:
    raise UserError(f"{path}: {name} has an unreadable .npy header ({e})") from e
  if dtype.hasobject or dtype.fields or dtype.subdtype or dtype.kind not in _NPZ_DTYPE_KINDS:
    raise UserError(f"{path}: {name} has dtype {dtype}; an .npz target holds numeric arrays only "
                    "(no objects, strings or records)")
  if any(dim < 0 for dim in shape):
    raise UserError(f"{path}: {name} declares a negative shape {shape}")
  return shape, dtype


def _check_npz_members(archive: zipfile.ZipFile, path: str) -> None:
  """Refuses, from the zip directory and .npy headers alone, an .npz whose arrays would not
  fit limits.MAX_DATA_BYTES (nothing is decompressed beyond the headers)."""
  names = archive.namelist()
  total = 0
  for key in NPZ_KEYS:
    member_name = key if key in names else f"{key}.npy"  # np.load's lookup order
    if member_name not in names:
      continue  # reported as a missing key below
    info = archive.getinfo(member_name)
    if info.file_size > limits.MAX_DATA_BYTES + _MAX_NPY_HEADER_BYTES + 16:
      raise UserError(f"{path}: zip entry {shown(member_name)} declares {info.file_size:,} "
                      f"bytes uncompressed, more than the limit of {limits.MAX_DATA_BYTES:,} "
                      "(tl_keras.limits.MAX_DATA_BYTES)")
    with archive.open(info) as member:
      shape, dtype = _npy_header(member, key, path)
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
    total += nbytes
    if total > limits.MAX_DATA_BYTES:
      raise UserError(f"{path}: {key} declares shape {shape} of {dtype} ({nbytes:,} bytes); the "
                      f"arrays may hold at most {limits.MAX_DATA_BYTES:,} bytes "
                      "(tl_keras.limits.MAX_DATA_BYTES)")


def load_npz(path: str) -> Tuple[np.ndarray, ...]:
  """Loads (x_train, y_train, x_test, y_test) from an .npz file, checking keys and shapes.

  The zip directory and each array's .npy header are checked against limits.MAX_DATA_BYTES
  and for numeric dtypes before NumPy allocates anything.
  """
  if not os.path.isfile(path):
    raise UserError(f"data file not found: {path}")
  try:
    with open(path, "rb") as f:
      if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        raise UserError(f"{path} is not a regular file")
      with zipfile.ZipFile(f) as archive:
        _check_npz_members(archive, path)
      f.seek(0)
      with np.load(f, allow_pickle=False) as npz:
        missing = [k for k in NPZ_KEYS if k not in npz.files]
        if missing:
          raise UserError(f"{path} lacks key(s) {', '.join(missing)}: an .npz target needs "
                          f"{', '.join(NPZ_KEYS)}")
        arrays = tuple(npz[k] for k in NPZ_KEYS)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot read {path} as .npz ({type(e).__name__}: {e})") from e
  for split, x, y in (("train", arrays[0], arrays[1]), ("test", arrays[2], arrays[3])):
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
      raise UserError(f"{path}: x_{split} has shape {x.shape}; expected [N,H,W] or [N,H,W,C] "
                      "with 1 or 3 channels")
    if 0 in x.shape[1:3]:
      raise UserError(f"{path}: x_{split} has shape {x.shape}: images need a height and width "
                      "of at least 1")
    if len(x) != len(y) or y.ndim != 1:
      raise UserError(f"{path}: x_{split} has {len(x)} images but y_{split} has shape {y.shape}")
  return arrays


def mnist_subset(classes: Sequence[int], data_dir: Optional[str] = None) -> LabeledData:
  """MNIST restricted to `classes`, labels remapped to 0..k-1 in the order given."""
  x_train, y_train, x_test, y_test = load_npz(find_mnist_file(data_dir))
  classes = list(classes)
  train_mask, test_mask = np.isin(y_train, classes), np.isin(y_test, classes)
  return LabeledData(
      x_train=x_train[train_mask], y_train=remap_labels(y_train[train_mask], classes),
      x_test=x_test[test_mask], y_test=remap_labels(y_test[test_mask], classes),
      class_names=[str(c) for c in classes],
      description=f"mnist:{format_classes(classes)}")


def remap_labels(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  lookup = np.full(int(max(classes)) + 1, -1, dtype=np.int64)
  lookup[list(classes)] = np.arange(len(classes))
  return lookup[labels]


def format_classes(classes: Sequence[int]) -> str:
  return ",".join(str(c) for c in classes)


@dataclasses.dataclass
class TargetOptions:
  """Which target data to use and how to read it; the CLI flags of the same names fill it."""
  target: str = "mnist:5-9"
  target_fit: str = "resize"
  test_split: float = 0.2  # for dir: targets without train/ and test/ subfolders
  train_per_class: Optional[int] = None  # None: all training images


def load_target(spec: str, data_dir: Optional[str] = None,
                input_shape: Optional[Sequence[int]] = None, fit: str = "resize",
                test_split: float = 0.2, seed: int = 42) -> LabeledData:
  """Loads a target from 'mnist:CLASSES', 'npz:PATH' or 'dir:PATH' (a folder of class folders).

  With `input_shape`, images of another size or channel count are fitted to it now (float32
  in [0, 1]), with `fit` 'resize' or 'pad'; 'dir:' targets need it, as their images differ
  in size. `test_split` and `seed` split 'dir:' folders that have no train/ and test/.
  """
  if fit not in FITS:
    raise UserError(f"unknown --target_fit={fit!r}: use {' or '.join(FITS)}")
  kind, _, arg = spec.partition(":")
  if kind == "mnist":
    target = mnist_subset(parse_classes(arg or "all"), data_dir)
  elif kind == "npz" and arg:
    target = _npz_target(arg)
  elif kind == "dir" and arg:
    if not input_shape:
      raise ValueError("'dir:' targets need input_shape: their images differ in size")
    from tl_keras import image_folder  # pylint: disable=g-import-not-at-top (it imports data)
    return image_folder.load_image_folder(arg, input_shape, fit, test_split, seed)
  else:
    raise UserError(f"unknown --target {spec!r}: use 'mnist:CLASSES' (e.g. mnist:5-9), "
                    "'npz:PATH' (keys x_train y_train x_test y_test) or 'dir:PATH' (one "
                    "subfolder of images per class)")
  if input_shape:
    target.x_train = fit_images(target.x_train, input_shape, fit)
    target.x_test = fit_images(target.x_test, input_shape, fit)
  return target


def prepare_target(options: TargetOptions, input_shape: Sequence[int],
                   data_dir: Optional[str] = None, seed: int = 42) -> LabeledData:
  """The target `options` describe, fitted to `input_shape`, with its training subset."""
  target = load_target(options.target, data_dir, input_shape, options.target_fit,
                       options.test_split, seed)
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
    raise UserError(f"{target.description or 'target'} has {min(present, target.num_classes)} "
                    "class(es) with training images; a target needs at least two")


def split_per_class(labels: np.ndarray, fraction: float,
                    seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Seeded stratified split: (kept indices, held-out indices), `fraction` of each class held.

  Each class keeps at least one example; both index arrays are sorted.
  """
  rng = np.random.default_rng(seed)
  kept, held = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    count = min(int(round(fraction * len(members))), len(members) - 1)
    held.append(members[:count])
    kept.append(members[count:])
  return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


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
    warn(f"fewer than {per_class} training images in class(es) {', '.join(short)}: "
         "using all of theirs")
  keep = np.sort(np.concatenate(keep))
  return dataclasses.replace(
      dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep],
      description=f"{dataset.description} ({per_class} per class)")


def _npz_target(path: str) -> LabeledData:
  x_train, y_train, x_test, y_test = load_npz(path)
  for name, x in (("x_train", x_train), ("x_test", x_test)):
    if len(x) == 0:
      raise UserError(f"{path}: {name} is empty")
    if np.issubdtype(x.dtype, np.floating):
      if not np.isfinite(x).all():
        raise UserError(f"{path}: {name} holds NaN or infinite pixels")
      if x.min() < 0 or x.max() > 1:
        raise UserError(f"{path}: float pixels in {name} must lie in [0, 1] "
                        "(or store uint8 0-255)")
    elif x.dtype != np.uint8:
      raise UserError(f"{path}: {name} has dtype {x.dtype}; use uint8 0-255 or float 0-1")
  for name, y in (("y_train", y_train), ("y_test", y_test)):
    if not np.issubdtype(y.dtype, np.integer):
      raise UserError(f"{path}: {name} must hold integer class labels, not {y.dtype}")
  labels = np.unique(y_train).tolist()
  if labels[0] < 0:
    raise UserError(f"{path}: labels must be non-negative integers, found {labels[0]}")
  unseen = sorted(set(np.unique(y_test).tolist()) - set(labels))
  if unseen:
    raise UserError(f"{path}: y_test has label(s) {unseen} that never occur in y_train, so no "
                    "model could learn them")
  return LabeledData(
      x_train=x_train, y_train=remap_labels(y_train, labels),
      x_test=x_test, y_test=remap_labels(y_test, labels),
      class_names=[str(label) for label in labels], description=f"npz:{path}")


def preprocess_images(images, input_shape: Sequence[int], fit: str = "resize") -> tf.Tensor:
  """Maps an image batch to float32 [N, *input_shape] in [0, 1].

  Accepts uint8 (0-255) or float (0-1) pixels, shaped [N,H,W] or [N,H,W,C] with C of 1 or 3:
  integer pixels are scaled by 1/255, channels converted (RGB<->grey) and the images brought
  to the model's height and width: stretched (`fit='resize'`) or scaled to fit inside keeping
  their aspect ratio, centred and padded with black (`fit='pad'`). Works on NumPy arrays and
  inside tf.function graphs.
  """
  images = tf.convert_to_tensor(images)
  if images.dtype.is_integer:
    images = tf.cast(images, tf.float32) / 255.0
  else:
    images = tf.cast(images, tf.float32)
  if images.shape.rank == 3:
    images = images[..., tf.newaxis]
  height, width, channels = input_shape
  have_channels = images.shape[-1]
  if have_channels != channels:
    if have_channels == 3 and channels == 1:
      images = tf.image.rgb_to_grayscale(images)
    elif have_channels == 1 and channels == 3:
      images = tf.image.grayscale_to_rgb(images)
    else:
      raise UserError(f"cannot map {have_channels}-channel images to a model input of "
                      f"{channels} channels")
  if tuple(images.shape[1:3]) != (height, width):
    if fit == "pad":
      images = tf.image.resize_with_pad(images, height, width, antialias=True)
    else:
      images = tf.image.resize(images, (height, width), antialias=True)
  return images


def fit_images(images: np.ndarray, input_shape: Sequence[int], fit: str = "resize",
               batch_size: int = 1024) -> np.ndarray:
  """`images` fitted to `input_shape` by `preprocess_images` (float32), or as they are if they
  already have that shape."""
  shape = tuple(images.shape[1:]) + ((1,) if images.ndim == 3 else ())
  if shape == tuple(input_shape):
    return images
  try:
    return np.concatenate([preprocess_images(images[start:start + batch_size], input_shape,
                                             fit).numpy()
                           for start in range(0, len(images), batch_size)])
  except tf.errors.InvalidArgumentError as e:  # an image so thin that padding empties it
    raise UserError(f"images of {shape[0]}x{shape[1]} pixels become empty when fitted to "
                    f"{input_shape[0]}x{input_shape[1]} with --target_fit={fit}; use "
                    "--target_fit=resize") from e


def augmentation(seed: Optional[int] = None) -> keras.Sequential:
  """Random shifts (up to 10%), rotations (up to 15 degrees) and zoom (up to 10%), filling
  with black; for training images only."""
  layers = keras.layers
  return keras.Sequential([
      layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
      layers.RandomRotation(15 / 360, fill_mode="constant", seed=seed),
      layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
  ], name="augmentation")


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, input_shape: Sequence[int],
                 shuffle_seed: Optional[int] = None, augment: bool = False) -> tf.data.Dataset:
  """A batched tf.data pipeline of (preprocessed images, labels) for training and evaluation.

  Shuffles each epoch when `shuffle_seed` is given, and with `augment` applies
  `augmentation()`; preprocessing runs per batch.
  """
  dataset = tf.data.Dataset.from_tensor_slices((x, y))
  if shuffle_seed is not None:
    dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
  augmenter = augmentation(shuffle_seed) if augment else None

  def prepare(images, labels):
    images = preprocess_images(images, input_shape)
    return (augmenter(images, training=True) if augmenter else images), labels

  dataset = dataset.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  # The tf.data autotuner stalled model.fit for about 1 s per epoch on 2 CPU cores (MNIST 0-4,
  # two epochs: 10.0 s with it, 7.7 s without); this pipeline is too light to need tuning.
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
