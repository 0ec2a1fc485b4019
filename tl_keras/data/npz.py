""".npz data files: header checks before NumPy allocates anything, and .npz targets."""

import io
import os
import stat
import zipfile

import numpy as np

from tl_keras import limits
from tl_keras import untrusted
from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import check_class_count
from tl_keras.data.labeled import remap_labels
from tl_keras.data.labeled import shown
from tl_keras.errors import UserError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# .npy headers tl_keras reads itself before NumPy sees the file (NumPy's own parser's limit).
_MAX_NPY_HEADER_BYTES = 10_000
# Array kinds an .npz target may hold (bool, integers, floats); pickled objects, strings and
# structured records never reach np.load.
_NPZ_DTYPE_KINDS = "biuf"


def _npy_header(member, name: str, path: str):
  """(shape, dtype) from the .npy header at the start of zip member `member`, read with a
  bounded length; refuses anything that is not a plain numeric array."""
  from numpy.lib import format as npy_format

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
    raise UserError(
      f"{path}: {name} has a .npy header of {length:,} bytes; at most "
      f"{_MAX_NPY_HEADER_BYTES:,} are allowed"
    )
  header = io.BytesIO(length_field + member.read(length))
  read_header = (
    npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
  )
  try:
    shape, _, dtype = read_header(header)
  except ValueError as e:
    raise UserError(f"{path}: {name} has an unreadable .npy header ({e})") from e
  if dtype.hasobject or dtype.fields or dtype.subdtype or dtype.kind not in _NPZ_DTYPE_KINDS:
    raise UserError(
      f"{path}: {name} has dtype {dtype}; an .npz target holds numeric arrays only "
      "(no objects, strings or records)"
    )
  if any(dim < 0 for dim in shape):
    raise UserError(f"{path}: {name} declares a negative shape {shape}")
  return shape, dtype


def _check_npz_members(archive: zipfile.ZipFile, path: str, keys: tuple[str, ...]) -> None:
  """Refuses, from the zip directory and .npy headers alone, an .npz whose arrays `keys` would
  not fit limits.MAX_DATA_BYTES (nothing is decompressed beyond the headers)."""
  names = archive.namelist()
  total = 0
  for key in keys:
    member_name = key if key in names else f"{key}.npy"  # np.load's lookup order
    if member_name not in names:
      continue  # reported as a missing key below
    info = archive.getinfo(member_name)
    if info.file_size > limits.MAX_DATA_BYTES + _MAX_NPY_HEADER_BYTES + 16:
      raise UserError(
        f"{path}: zip entry {shown(member_name)} declares {info.file_size:,} "
        f"bytes uncompressed, more than the limit of {limits.MAX_DATA_BYTES:,} "
        "(tl_keras.limits.MAX_DATA_BYTES)"
      )
    with archive.open(info) as member:
      shape, dtype = _npy_header(member, key, path)
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
    total += nbytes
    if total > limits.MAX_DATA_BYTES:
      raise UserError(
        f"{path}: {key} declares shape {shape} of {dtype} ({nbytes:,} bytes); the "
        f"arrays may hold at most {limits.MAX_DATA_BYTES:,} bytes "
        "(tl_keras.limits.MAX_DATA_BYTES)"
      )


def _check_zip_directory(f, path: str) -> None:
  """Refuses an .npz whose zip directory declares more entries or bytes than limits allow,
  before zipfile or NumPy parses any of it (a small file can declare millions of entries)."""
  entries, directory = untrusted.zip_directory(f)
  f.seek(0)
  if entries > limits.MAX_NPZ_ENTRIES or directory > limits.MAX_NPZ_DIRECTORY_BYTES:
    raise UserError(
      f"{path}: its zip directory declares {entries:,} entries in {directory:,} bytes, above "
      f"the {limits.MAX_NPZ_ENTRIES:,} entries and {limits.MAX_NPZ_DIRECTORY_BYTES >> 20} MiB "
      "an .npz data file may have"
    )


def _read_arrays(path: str, keys) -> dict[str, np.ndarray]:
  """{key: array} of .npz file `path` for `keys`, a tuple or a function from the names in the
  file to one, checked as `load_npz` says before NumPy allocates them."""
  if not os.path.isfile(path):
    raise UserError(f"data file not found: {path}")
  try:
    with open(path, "rb") as f:
      if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        raise UserError(f"{path} is not a regular file")
      _check_zip_directory(f, path)
      with zipfile.ZipFile(f) as archive:
        if callable(keys):
          keys = keys({name.removesuffix(".npy") for name in archive.namelist()})
        _check_npz_members(archive, path, keys)
      f.seek(0)
      with np.load(f, allow_pickle=False) as npz:
        missing = [k for k in keys if k not in npz.files]
        if missing:
          raise UserError(
            f"{path} lacks key(s) {', '.join(missing)}: an .npz target needs {', '.join(keys)}"
          )
        return {k: npz[k] for k in keys}
  except UserError:
    raise
  except Exception as e:
    raise UserError(f"cannot read {path} as .npz ({type(e).__name__}: {e})") from e


def _check_image_shape(path: str, name: str, x: np.ndarray) -> None:
  if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
    raise UserError(
      f"{path}: {name} has shape {x.shape}; expected [N,H,W] or [N,H,W,C] with 1 or 3 channels"
    )
  if 0 in x.shape[1:3]:
    raise UserError(
      f"{path}: {name} has shape {x.shape}: images need a height and width of at least 1"
    )


def _check_pixels(path: str, name: str, x: np.ndarray) -> None:
  """Refuses an empty image array, and pixels that are neither uint8 nor finite floats in
  [0, 1]."""
  if len(x) == 0:
    raise UserError(f"{path}: {name} is empty")
  if np.issubdtype(x.dtype, np.floating):
    if not np.isfinite(x).all():
      raise UserError(f"{path}: {name} holds NaN or infinite pixels")
    if x.min() < 0 or x.max() > 1:
      raise UserError(f"{path}: float pixels in {name} must lie in [0, 1] (or store uint8 0-255)")
  elif x.dtype != np.uint8:
    raise UserError(f"{path}: {name} has dtype {x.dtype}; use uint8 0-255 or float 0-1")


def load_npz(path: str) -> tuple[np.ndarray, ...]:
  """Loads (x_train, y_train, x_test, y_test) from an .npz file, checking keys and shapes.

  The zip directory and each array's .npy header are checked against limits.MAX_DATA_BYTES
  and for numeric dtypes before NumPy allocates anything.
  """
  arrays = tuple(_read_arrays(path, NPZ_KEYS).values())
  for split, x, y in (("train", arrays[0], arrays[1]), ("test", arrays[2], arrays[3])):
    _check_image_shape(path, f"x_{split}", x)
    if len(x) != len(y) or y.ndim != 1:
      raise UserError(f"{path}: x_{split} has {len(x)} images but y_{split} has shape {y.shape}")
  return arrays


def load_npz_images(path: str) -> np.ndarray:
  """The images of .npz file `path` under key x_train, else x (unlabelled images: any labels
  in the file are not read), checked as a target's are."""
  ((name, images),) = _read_arrays(
    path, lambda names: ("x_train" if "x_train" in names or "x" not in names else "x",)
  ).items()
  _check_image_shape(path, name, images)
  _check_pixels(path, name, images)
  return images


def load_npz_target(path: str) -> LabeledData:
  """The target in .npz file `path`: uint8 or [0, 1] float images, labels remapped to 0..k-1."""
  x_train, y_train, x_test, y_test = load_npz(path)
  for name, x in (("x_train", x_train), ("x_test", x_test)):
    _check_pixels(path, name, x)
  for name, y in (("y_train", y_train), ("y_test", y_test)):
    if not np.issubdtype(y.dtype, np.integer):
      raise UserError(f"{path}: {name} must hold integer class labels, not {y.dtype}")
  labels = np.unique(y_train)
  check_class_count(len(labels), f"{path}: y_train")
  labels = labels.tolist()
  if labels[0] < 0:
    raise UserError(f"{path}: labels must be non-negative integers, found {labels[0]}")
  if max(labels[-1], int(y_test.max(initial=0))) > np.iinfo(np.int64).max:
    raise UserError(f"{path}: labels must be at most {np.iinfo(np.int64).max:,}")
  unseen = sorted(set(np.unique(y_test).tolist()) - set(labels))
  if unseen:
    raise UserError(
      f"{path}: y_test has label(s) {unseen} that never occur in y_train, so no "
      "model could learn them"
    )
  return LabeledData(
    x_train=x_train,
    y_train=remap_labels(y_train, labels),
    x_test=x_test,
    y_test=remap_labels(y_test, labels),
    class_names=[str(label) for label in labels],
    description=f"npz:{path}",
  )
