"""Targets from image folders: one subfolder per class, read into a `labeled.LabeledData`.

The folder holds either `train/` and `test/`, each with one subfolder per class, or the class
subfolders themselves, split into train and test per class with a seeded fraction. Any image
TensorFlow decodes (PNG, JPEG, BMP, GIF: first frame) of any size, colour or grey, is fitted
to the model's input by `preprocessing.decode_and_fit`; files that do not decode are listed
in one warning and skipped.

Every file is checked and decoded once when the folder is read. Small folders are then kept
in memory as arrays; large ones (or any, with image_cache='none') as `ImageFiles`: paths only,
decoded again by tf.data whenever a pass over the data reads them, so memory does not grow
with the folder.

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

from tl_keras import limits
from tl_keras.config.choices import IMAGE_CACHES
from tl_keras.data import labeled
from tl_keras.data import preprocessing
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
  return labeled.check_class_names(names, f"class folder in {labeled.shown(folder)}")


def _inside(path: str, root: str) -> bool:
  return os.path.commonpath([path, root]) == root


def _read_file(path: str, root: str) -> bytes | None:
  """The bytes of `path` if it resolves to a regular file inside `root` (a real path), else
  None; refuses one over limits.MAX_IMAGE_FILE_BYTES."""
  real = os.path.realpath(path)
  if not _inside(real, root):
    return None
  return labeled.read_regular_file(real, limits.MAX_IMAGE_FILE_BYTES, "image file")


def _gif_frame_pixels(contents: bytes) -> int:
  """Pixels TensorFlow's GIF decoder allocates: every frame at the widest frame's width and
  the tallest frame's height (decode_image decodes all frames, even for the first), and at
  least the screen's size. Stops reading past the limit."""
  screen = int.from_bytes(contents[6:8], "little") * int.from_bytes(contents[8:10], "little")
  pos, frames, widest, tallest = 13, 0, 0, 0
  if contents[10] & 0x80:
    pos += 3 * (2 << (contents[10] & 7))
  while pos < len(contents) and frames * max(screen, widest * tallest) <= limits.MAX_IMAGE_PIXELS:
    block = contents[pos]
    if block == 0x21:  # extension: label, then sub-blocks
      pos += 2
    elif block == 0x2C:  # image descriptor, local colour table, LZW code size, sub-blocks
      if pos + 10 > len(contents):
        break
      width, height, flags = struct.unpack_from("<HHB", contents, pos + 5)
      frames, widest, tallest = frames + 1, max(widest, width), max(tallest, height)
      pos += 10
      if flags & 0x80:
        pos += 3 * (2 << (flags & 7))
      pos += 1
    else:  # trailer or garbage: TensorFlow stops there too
      break
    while pos < len(contents) and contents[pos]:
      pos += contents[pos] + 1
    pos += 1
  return frames * max(screen, widest * tallest)


def _jpeg_scans(contents: bytes) -> int:
  """How many scans (SOS markers) a JPEG holds before its end (EOI), walking its segments: a
  progressive JPEG's decoder passes over the whole image once per scan. Stops counting past
  the limit."""
  pos, scans, size = 2, 0, len(contents)
  while pos + 4 <= size and scans <= limits.MAX_JPEG_SCANS:
    if contents[pos] != 0xFF:
      break  # not a marker: the decoder fails here too
    marker = contents[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker == 0xD9:  # EOI
      break
    if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
      pos += 2
      continue
    pos += 2 + int.from_bytes(contents[pos + 2 : pos + 4], "big")
    if marker != 0xDA:
      continue
    scans += 1
    # Entropy-coded data up to the next marker: 0xFF followed by neither 0x00 (a stuffed
    # byte) nor a restart marker.
    while True:
      pos = contents.find(b"\xff", pos)
      if pos < 0 or pos + 1 >= size:
        return scans
      following = contents[pos + 1]
      if following == 0 or 0xD0 <= following <= 0xD7 or following == 0xFF:
        pos += 1 if following == 0xFF else 2
        continue
      break
  return scans


def _check_jpeg_scans(contents: bytes, path: str) -> None:
  scans = _jpeg_scans(contents)
  if scans > limits.MAX_JPEG_SCANS:
    raise UserError(
      f"image {labeled.shown(path)} is a JPEG of more than {limits.MAX_JPEG_SCANS} scans, "
      "each a pass of the decoder over the whole image (tl_keras.limits.MAX_JPEG_SCANS, as "
      "libjpeg-turbo's -maxscans); re-encode or remove it"
    )


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
        elif image.format == "JPEG":
          _check_jpeg_scans(contents, path)
    except Image.DecompressionBombError:  # Pillow's own limit, higher than ours
      pixels = limits.MAX_IMAGE_PIXELS + 1
      declared = f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels"
    except UserError:
      raise
    except Exception:  # any plugin error: not an image we read
      return None
  if pixels > limits.MAX_IMAGE_PIXELS:
    raise UserError(
      f"image {labeled.shown(path)} declares {declared}, more than "
      f"the limit of {limits.MAX_IMAGE_PIXELS:,} (tl_keras.limits.MAX_IMAGE_PIXELS);"
      " shrink or remove it"
    )
  return pixels


def _checked_bytes(path: str, root: str) -> bytes | None:
  """The bytes of `path` if it is a regular file inside `root` within the size limit whose
  header declares an image within the pixel limit, else None (a UserError over a limit)."""
  contents = _read_file(path, root)
  if contents is None or not _declared_pixels(contents, path):
    return None
  return contents


class ImageFiles:
  """Image files of a checked folder, decoded and fitted to `input_shape` when read: a
  stand-in for an image array ([N, *input_shape] float32 in [0, 1]) that holds only paths.

  `len`, `shape`, indexing by index arrays (a subset) and `np.asarray` (reads them all) work
  as on an array; `dataset` streams them through tf.data, reading each file again through the
  same checks as the folder scan (regular file inside the folder, size and pixel limits).
  """

  ndim = 4
  dtype = np.dtype(np.float32)

  def __init__(
    self,
    paths: Sequence[str],
    root: str,
    input_shape: Sequence[int],
    fit: str,
    framing: dict | None = None,
  ):
    self.paths = np.asarray(paths, dtype=object)
    self.root = root
    self.input_shape = tuple(input_shape)
    self.fit = fit
    self.framing = framing

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self), *self.input_shape)

  @property
  def nbytes(self) -> int:
    """What the images would take in memory as an array."""
    return int(np.prod(self.shape)) * self.dtype.itemsize

  def __getitem__(self, index) -> "ImageFiles":
    index = np.asarray(index)
    if index.ndim != 1:
      raise TypeError("ImageFiles take a 1-D index array or mask; np.asarray reads them all")
    return ImageFiles(self.paths[index], self.root, self.input_shape, self.fit, self.framing)

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    images = np.zeros(self.shape, np.float32)
    for index, batch in enumerate(self.dataset().batch(256)):
      images[index * 256 : index * 256 + len(batch)] = batch.numpy()
    return images if dtype is None else images.astype(dtype)

  def _read(self, index) -> bytes:
    path = self.paths[int(index)]
    contents = _checked_bytes(path, self.root)
    if contents is None:
      raise UserError(f"image {labeled.shown(path)} vanished or changed after the folder scan")
    return contents

  def dataset(
    self, labels: np.ndarray | None = None, shuffle_seed: int | None = None
  ) -> tf.data.Dataset:
    """Unbatched fitted images (with `labels`, (image, label) pairs), in order or shuffled each
    epoch with `shuffle_seed`: the order `from_tensor_slices(...).shuffle(len(self), seed)`
    gives an array of the same length, so streamed and in-memory runs see the same batches."""
    indices = np.arange(len(self), dtype=np.int64)
    dataset = tf.data.Dataset.from_tensor_slices(indices if labels is None else (indices, labels))
    if shuffle_seed is not None:
      dataset = dataset.shuffle(len(self), seed=shuffle_seed, reshuffle_each_iteration=True)
    input_shape, fit, framing = self.input_shape, self.fit, self.framing

    def load(index, *label):
      contents = tf.numpy_function(self._read, [index], tf.string, stateful=False)
      image = preprocessing.decode_and_fit(tf.reshape(contents, []), input_shape, fit, framing)
      return (image, *label) if label else image

    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _list_classes(
  folder: str, class_names: Sequence[str], labels: Sequence[int]
) -> list[tuple[str, int, list[str]]]:
  """(class folder, label, the paths in it that may be images) for each class: visible entries other
  than folders (symlinks to folders are kept, and skipped as unreadable later)."""
  listed = []
  for name, label in zip(class_names, labels):
    class_dir = os.path.join(folder, name)
    paths = []
    for filename in _visible_entries(class_dir):
      path = os.path.join(class_dir, filename)
      try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
          continue  # nested folders are not images
      except OSError:
        pass  # vanished: listed as unreadable later
      paths.append(path)
    listed.append((class_dir, label, paths))
  return listed


def _scan_classes(
  listed,
  input_shape: Sequence[int],
  fit: str,
  root: str,
  unreadable: list[str],
  keep: bool,
  framing: dict | None = None,
  what: str = "class folder",
) -> tuple[np.ndarray | list[str], np.ndarray]:
  """Decodes and fits every listed file once, in order: (images [N, *input_shape] float32, or
  with `keep` False the paths of the readable ones; labels). Unreadable files are added to
  `unreadable`; a listed folder (a `what`) without a readable image is a UserError."""
  images, image_labels = [], []
  for class_dir, label, paths in listed:
    count = 0
    for path in paths:
      contents = _checked_bytes(path, root)
      try:
        # Eagerly: a tf.function's graph optimisations change the last bit of some pixels,
        # while tf.data's map (the stream) gives what eager ops give.
        pixels = (
          None
          if contents is None
          else preprocessing.decode_and_fit(contents, input_shape, fit, framing)
        )
      except tf.errors.InvalidArgumentError:  # not an image, empty, or padded to nothing
        pixels = None
      if pixels is None:
        unreadable.append(labeled.shown(path))
        continue
      images.append(pixels.numpy() if keep else path)
      image_labels.append(label)
      count += 1
    if not count:
      raise UserError(f"{what} {class_dir} holds no readable images")
  labels = np.asarray(image_labels, np.int64)
  return (np.stack(images) if keep else images), labels


def load_image_folder(
  path: str,
  input_shape: Sequence[int],
  fit: str = "resize",
  test_split: float = 0.2,
  seed: int = 42,
  image_cache: str = "auto",
  framing: dict | None = None,
) -> labeled.LabeledData:
  """Reads a class-per-subfolder image target, fitted to `input_shape` (float32 in [0, 1]).

  With `train/` and `test/` subfolders they are the splits (test classes must occur in
  train); otherwise each class is split with `test_split` of its images, seeded, for test.
  Every file is checked and decoded once here, so unreadable ones are known now.
  `image_cache`: 'memory' keeps the fitted images as arrays; 'none' keeps only their paths
  (`ImageFiles`, decoded again whenever read: memory does not grow with the folder); 'auto'
  is 'memory' while the images would take at most `limits.MAX_IMAGE_CACHE_BYTES`.
  """
  _check_image_cache(image_cache)
  if not os.path.isdir(path):
    raise UserError(f"target folder not found: {path}")
  present = [name for name in SPLIT_DIRNAMES if os.path.isdir(os.path.join(path, name))]
  if len(present) == 1:
    raise UserError(
      f"{path} has {present[0]}/ but no {({'train', 'test'} - set(present)).pop()}/:"
      " give both, or class folders directly and --test_split"
    )
  root = os.path.realpath(path)
  class_names, listings = _listings(path, present, test_split)
  files = sum(len(paths) for listed in listings for _, _, paths in listed)
  keep = _keep_in_memory(image_cache, files, input_shape)
  unreadable = []
  scanned = []
  for listed in listings:
    images, labels = _scan_classes(listed, input_shape, fit, root, unreadable, keep, framing)
    scanned.append(
      (images if keep else ImageFiles(images, root, input_shape, fit, framing), labels)
    )
  if present:
    (x_train, y_train), (x_test, y_test) = scanned
  else:
    x_train, y_train, x_test, y_test = _split(*scanned[0], path, test_split, seed)
  _warn_unreadable(unreadable)
  return labeled.LabeledData(
    x_train=x_train,
    y_train=y_train,
    x_test=x_test,
    y_test=y_test,
    class_names=class_names,
    description=f"dir:{path}",
  )


def _listings(path: str, present: list[str], test_split: float):
  """(class names, [listing of each split folder]): train/ and test/ when `present`, else the
  class folders of `path` to split by `test_split`."""
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
    return class_names, [
      _list_classes(train_dir, class_names, range(len(class_names))),
      _list_classes(test_dir, test_names, [class_names.index(name) for name in test_names]),
    ]
  if not 0 < test_split < 1:
    raise UserError(f"--test_split must lie between 0 and 1, got {test_split}")
  class_names = _class_dirs(path)
  return class_names, [_list_classes(path, class_names, range(len(class_names)))]


def _split(images, labels, path: str, test_split: float, seed: int):
  """(x_train, y_train, x_test, y_test): each class split with `test_split` of its images,
  seeded, for test."""
  train_index, test_index = labeled.split_per_class(labels, test_split, seed)
  if not len(test_index):
    raise UserError(
      f"{path}: too few images for a test split of {test_split}; add images or "
      "use train/ and test/ subfolders"
    )
  return images[train_index], labels[train_index], images[test_index], labels[test_index]


def load_image_tree(
  path: str,
  input_shape: Sequence[int],
  fit: str = "resize",
  image_cache: str = "auto",
  framing: dict | None = None,
) -> np.ndarray | ImageFiles:
  """Every image under `path`, at any depth, in sorted path order, fitted to `input_shape`:
  unlabelled images (folder names, class folders or not, are ignored). Read through the same
  checks as `load_image_folder` (which also says what `image_cache` does); symlinked folders
  are not followed, hidden entries skipped; a tree without a readable image is a UserError."""
  _check_image_cache(image_cache)
  if not os.path.isdir(path):
    raise UserError(f"--unlabeled folder not found: {path}")
  paths = _files_under(path)
  root = os.path.realpath(path)
  keep = _keep_in_memory(image_cache, len(paths), input_shape)
  unreadable = []
  images, _ = _scan_classes(
    [(path, 0, paths)], input_shape, fit, root, unreadable, keep, framing, "--unlabeled folder"
  )
  _warn_unreadable(unreadable)
  return images if keep else ImageFiles(images, root, input_shape, fit, framing)


def _files_under(path: str) -> list[str]:
  """The visible files under `path` at any depth, in os.walk's sorted top-down order, walked
  with a list rather than recursion (a tree nested deeper than Python's recursion limit is
  fine); symlinked folders are not entered, folders that cannot be listed are skipped."""
  paths, pending = [], [path]
  while pending:
    folder = pending.pop()
    try:
      with os.scandir(folder) as scan:
        entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:  # vanished, unreadable, or its path too long for the system
      continue
    subfolders = []
    for entry in entries:
      try:
        is_folder = entry.is_dir()
      except OSError:
        is_folder = False
      if not is_folder:
        paths.append(entry.path)
      elif not entry.is_symlink():
        subfolders.append(entry.path)
    pending.extend(reversed(subfolders))
  return paths


def _check_image_cache(image_cache: str) -> None:
  if image_cache not in IMAGE_CACHES:
    raise UserError(f"unknown --image_cache={image_cache!r}: use one of {', '.join(IMAGE_CACHES)}")


def _keep_in_memory(image_cache: str, files: int, input_shape: Sequence[int]) -> bool:
  return image_cache == "memory" or (
    image_cache == "auto" and files * int(np.prod(input_shape)) * 4 <= limits.MAX_IMAGE_CACHE_BYTES
  )


def _warn_unreadable(unreadable: list[str]) -> None:
  if unreadable:
    listed = ", ".join(unreadable[:_LISTED_UNREADABLE])
    more = len(unreadable) - _LISTED_UNREADABLE
    warn(
      f"skipped {len(unreadable)} file(s) that are not readable images inside the folder: "
      f"{listed}" + (f" and {more} more" if more > 0 else "")
    )
