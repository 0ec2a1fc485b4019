"""Targets from image folders: one subfolder per class, read into a `datasets.LabeledData`.

The folder holds either `train/` and `test/`, each with one subfolder per class, or the class
subfolders themselves, split into train and test per class with a seeded fraction. Any image
TensorFlow decodes (PNG, JPEG, BMP, GIF: first frame) of any size, colour or grey, is fitted
to the model's input by `preprocessing.preprocess_images`; files that do not decode are listed
in one warning and skipped.

The folder is untrusted input: only regular files that resolve to inside it are opened (FIFOs,
devices, sockets and symlinks pointing elsewhere are skipped unread), and each file's size
and its header's pixel count are checked against `limits` before anything is decoded.
"""

import io
import os
import stat
import struct
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tl_keras import datasets
from tl_keras import limits
from tl_keras import preprocessing
from tl_keras.errors import UserError
from tl_keras.errors import warn

SPLIT_DIRNAMES = ("train", "test")
_LISTED_UNREADABLE = 10
# The formats TensorFlow's decode_image reads, as Pillow names them; anything else is skipped.
_FORMATS = ("PNG", "JPEG", "BMP", "GIF")


def _visible_entries(folder: str) -> list[str]:
  return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _class_dirs(folder: str) -> list[str]:
  names = [name for name in _visible_entries(folder) if os.path.isdir(os.path.join(folder, name))]
  if not names:
    raise UserError(
      f"{folder} has no class subfolders: put each class's images in a folder named after the class"
    )
  return datasets.check_class_names(names, f"class folder in {datasets.shown(folder)}")


def _inside(path: str, root: str) -> bool:
  return os.path.commonpath([path, root]) == root


def _read_file(path: str, root: str) -> bytes | None:
  """The bytes of `path` if it resolves to a regular file inside `root` (a real path), else
  None; refuses one over limits.MAX_IMAGE_FILE_BYTES."""
  real = os.path.realpath(path)
  if not _inside(real, root):
    return None
  return datasets.read_regular_file(real, limits.MAX_IMAGE_FILE_BYTES, "image file")


def _gif_frame_pixels(contents: bytes) -> int:
  """Pixels TensorFlow decodes for a GIF: every frame at (at least) the screen's size, as
  decode_image decodes all frames even for the first. Stops counting past the limit."""
  screen = int.from_bytes(contents[6:8], "little") * int.from_bytes(contents[8:10], "little")
  pos, total = 13, 0
  if contents[10] & 0x80:
    pos += 3 * (2 << (contents[10] & 7))
  while pos < len(contents) and total <= limits.MAX_IMAGE_PIXELS:
    block = contents[pos]
    if block == 0x21:  # extension: label, then sub-blocks
      pos += 2
    elif block == 0x2C:  # image descriptor, local colour table, LZW code size, sub-blocks
      if pos + 10 > len(contents):
        break
      width, height, flags = struct.unpack_from("<HHB", contents, pos + 5)
      total += max(screen, width * height)
      pos += 10
      if flags & 0x80:
        pos += 3 * (2 << (flags & 7))
      pos += 1
    else:  # trailer or garbage: TensorFlow stops there too
      break
    while pos < len(contents) and contents[pos]:
      pos += contents[pos] + 1
    pos += 1
  return total


def _declared_pixels(contents: bytes, path: str) -> int | None:
  """The pixel count the image's header declares (Pillow reads headers only), None if it is
  not an image in one of _FORMATS; refuses more than limits.MAX_IMAGE_PIXELS."""
  from PIL import Image  # Pillow comes with matplotlib

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
      with Image.open(io.BytesIO(contents), formats=_FORMATS) as image:
        width, height = image.size
        pixels = width * height
        declared = f"{pixels:,} pixels ({width}x{height})"
        if image.format == "GIF":
          pixels = max(pixels, _gif_frame_pixels(contents))
          declared = f"{pixels:,} pixels ({width}x{height}, all frames)"
    except Image.DecompressionBombError:  # Pillow's own limit, higher than ours
      pixels = limits.MAX_IMAGE_PIXELS + 1
      declared = f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels"
    except Exception:  # any plugin error: not an image we read
      return None
  if pixels > limits.MAX_IMAGE_PIXELS:
    raise UserError(
      f"image {datasets.shown(path)} declares {declared}, more than "
      f"the limit of {limits.MAX_IMAGE_PIXELS:,} (tl_keras.limits.MAX_IMAGE_PIXELS);"
      " shrink or remove it"
    )
  return pixels


def _decode(path: str, root: str) -> np.ndarray | None:
  """The image at `path` as uint8 [H,W,3], None if it is not a readable, non-empty image."""
  contents = _read_file(path, root)
  if contents is None or not _declared_pixels(contents, path):
    return None
  try:
    pixels = tf.io.decode_image(contents, channels=3, expand_animations=False).numpy()
  except (tf.errors.OpError, ValueError):
    return None
  return pixels if pixels.ndim == 3 and pixels.size else None


def _read_classes(
  folder: str,
  class_names: Sequence[str],
  labels: Sequence[int],
  input_shape: Sequence[int],
  fit: str,
  root: str,
  unreadable: list[str],
) -> tuple[np.ndarray, np.ndarray]:
  """Reads the images of each class subfolder, fitted to `input_shape`; labels as given.

  `root` is the real path of the target folder: files must resolve to inside it.
  """
  images, image_labels = [], []
  for name, label in zip(class_names, labels):
    class_dir = os.path.join(folder, name)
    count = 0
    for filename in _visible_entries(class_dir):
      path = os.path.join(class_dir, filename)
      try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
          continue  # nested folders are not images (symlinks to folders are listed below)
      except OSError:
        pass  # vanished: listed as unreadable below
      pixels = _decode(path, root)
      if pixels is None:
        unreadable.append(datasets.shown(path))
        continue
      try:
        images.append(
          preprocessing.preprocess_images(pixels[np.newaxis], input_shape, fit).numpy()[0]
        )
      except tf.errors.InvalidArgumentError:  # so thin that padding scales it to nothing
        unreadable.append(datasets.shown(path))
        continue
      image_labels.append(label)
      count += 1
    if not count:
      raise UserError(f"class folder {class_dir} holds no readable images")
  return np.stack(images), np.asarray(image_labels, np.int64)


def load_image_folder(
  path: str,
  input_shape: Sequence[int],
  fit: str = "resize",
  test_split: float = 0.2,
  seed: int = 42,
) -> datasets.LabeledData:
  """Reads a class-per-subfolder image target, fitted to `input_shape` (float32 in [0, 1]).

  With `train/` and `test/` subfolders they are the splits (test classes must occur in
  train); otherwise each class is split with `test_split` of its images, seeded, for test.
  """
  if not os.path.isdir(path):
    raise UserError(f"target folder not found: {path}")
  present = [name for name in SPLIT_DIRNAMES if os.path.isdir(os.path.join(path, name))]
  if len(present) == 1:
    raise UserError(
      f"{path} has {present[0]}/ but no {({'train', 'test'} - set(present)).pop()}/:"
      " give both, or class folders directly and --test_split"
    )
  root = os.path.realpath(path)
  unreadable = []
  if present:
    train_dir, test_dir = (os.path.join(path, name) for name in SPLIT_DIRNAMES)
    class_names = _class_dirs(train_dir)
    test_names = _class_dirs(test_dir)
    unknown = sorted(set(test_names) - set(class_names))
    if unknown:
      raise UserError(
        f"{test_dir} has class folder(s) {', '.join(unknown)} that {train_dir} "
        "lacks, so no model could learn them"
      )
    x_train, y_train = _read_classes(
      train_dir, class_names, range(len(class_names)), input_shape, fit, root, unreadable
    )
    x_test, y_test = _read_classes(
      test_dir,
      test_names,
      [class_names.index(name) for name in test_names],
      input_shape,
      fit,
      root,
      unreadable,
    )
  else:
    if not 0 < test_split < 1:
      raise UserError(f"--test_split must lie between 0 and 1, got {test_split}")
    class_names = _class_dirs(path)
    images, labels = _read_classes(
      path, class_names, range(len(class_names)), input_shape, fit, root, unreadable
    )
    train_index, test_index = datasets.split_per_class(labels, test_split, seed)
    if not len(test_index):
      raise UserError(
        f"{path}: too few images for a test split of {test_split}; add images or "
        "use train/ and test/ subfolders"
      )
    x_train, y_train, x_test, y_test = (
      images[train_index],
      labels[train_index],
      images[test_index],
      labels[test_index],
    )
  if unreadable:
    listed = ", ".join(unreadable[:_LISTED_UNREADABLE])
    more = len(unreadable) - _LISTED_UNREADABLE
    warn(
      f"skipped {len(unreadable)} file(s) that are not readable images inside the folder: "
      f"{listed}" + (f" and {more} more" if more > 0 else "")
    )
  return datasets.LabeledData(
    x_train=x_train,
    y_train=y_train,
    x_test=x_test,
    y_test=y_test,
    class_names=class_names,
    description=f"dir:{path}",
  )
