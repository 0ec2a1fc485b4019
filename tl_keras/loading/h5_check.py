"""HDF5 (.h5) model files and weights: read as data before Keras opens them.

Refuses links other than hard links, external or virtual storage, datasets that are not numeric,
attributes that are not numbers or strings, and tensors beyond what the file stores. Variable-
length string attributes are first read in a child process with a memory limit.
"""

import os
import resource
import subprocess
import sys
from typing import Any

import h5py

from tl_keras import limits
from tl_keras.errors import UserError
from tl_keras.loading import budgets
from tl_keras.loading import reading
from tl_keras.loading.config_check import parse_config


def _storage_size(attr_id: Any) -> int:
  try:
    return attr_id.get_storage_size()
  except RuntimeError:  # HDF5 reports an empty attribute's size as an error
    return 0


def _attribute_problems(name: str, item: Any) -> list[str]:
  """Attributes of one HDF5 object that are neither numbers nor strings, or too large."""
  problems = []
  for attr in item.attrs:
    attr_id = item.attrs.get_id(attr)
    dtype, shape = attr_id.dtype, attr_id.shape
    if h5py.check_vlen_dtype(dtype) in (str, bytes):
      allowed = True  # read first in a process with a memory limit: read_h5_attributes
    else:
      allowed = dtype.kind in "biufS" and _storage_size(attr_id) <= limits.MAX_CONFIG_BYTES
    if not allowed:
      problems.append(f"attribute {attr} of {name or '/'} holds {dtype} {shape}")
  return problems


def check_h5(handle: Any, max_bytes: int, source: str) -> int:
  """Refuses HDF5 content that reads other files or declares more than it may allocate:
  links other than hard links, external or virtual storage, datasets that are not numeric,
  attributes that are not numbers or strings. Returns the allocation budget its datasets'
  stored bytes allow (see `budgets.budget`)."""
  declared, stored, problems = 0, 0, []

  def visit(name, link):
    if not isinstance(link, h5py.HardLink):
      problems.append(f"{name} is a {type(link).__name__}")

  def visit_object(name, item):
    nonlocal declared, stored
    problems.extend(_attribute_problems(name, item))
    if isinstance(item, h5py.Dataset):
      plist = item.id.get_create_plist()
      if (
        plist.get_layout() not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED)
        or plist.get_external_count()
      ):
        problems.append(f"{name} keeps its data outside this file")
      elif item.dtype.kind not in "biuf" or item.dtype.itemsize > 16:
        problems.append(f"{name} holds {item.dtype}, not numbers")
      else:
        declared += (item.size or 0) * item.dtype.itemsize
        stored += item.id.get_storage_size()

  handle.visititems_links(visit)
  visit_object("", handle)
  handle.visititems(visit_object)
  if problems:
    raise UserError(
      f"refusing to load {source}: {problems[0]}"
      + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
      + "; model weights must be plain numeric arrays stored in the file itself"
    )
  budgets.check_declared(declared, stored, max_bytes, source)
  return budgets.budget(stored, max_bytes)


# visititems stops at the first object whose callback returns anything but None: `read` must
# return None, or only the first object's attributes would be read here (and the rest by Keras).
_READ_ATTRIBUTES = """
import sys, h5py
def read(name, item):
  for key in item.attrs:
    item.attrs[key]
with h5py.File(sys.argv[1], "r") as f:
  read("", f)
  f.visititems(read)
"""


def read_h5_attributes(path: str, source: str) -> None:
  """Reads every attribute of an HDF5 file in a child process limited to
  `limits.MAX_ATTRIBUTE_READ_BYTES` of memory; refuses the file if that is not enough.

  Strings of variable length (Keras stores layer and weight names so) can all point at one
  large string in the file, so reading them can take far more memory than the file holds,
  and nothing in the file says how much before they are read.
  """

  def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (limits.MAX_ATTRIBUTE_READ_BYTES,) * 2)

  try:
    result = subprocess.run(
      [sys.executable, "-c", _READ_ATTRIBUTES, path],
      preexec_fn=limit_memory,
      capture_output=True,
      timeout=120,
      env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
      check=False,
    )
  except subprocess.TimeoutExpired as e:
    raise UserError(f"refusing to load {source}: reading its attributes took over 2 minutes") from e
  if result.returncode:
    raise UserError(
      f"refusing to load {source}: its HDF5 attributes take more than "
      f"{limits.MAX_ATTRIBUTE_READ_BYTES >> 20} MiB to read (or cannot be read)"
    )


def h5_config(path: str, max_bytes: int) -> tuple[Any, int]:
  """The model config of an .h5 file and the variable budget its stored weights allow."""
  try:
    with h5py.File(path, "r") as f:
      budget = check_h5(f, max_bytes, path)
    read_h5_attributes(path, path)
    with h5py.File(path, "r") as f:
      raw = f.attrs.get("model_config")
  except OSError as e:
    raise UserError(
      f"cannot read model file {path}: not a valid HDF5 file (corrupt or "
      "truncated?); re-create it with the pretrain stage"
    ) from e
  except reading.H5_ERRORS as e:
    raise reading.cannot_load(path, e) from e
  if raw is None:
    raise UserError(f"{path} holds weights only, no model; save the whole model as .h5")
  return parse_config(raw, path), budget
