"""`.keras` archives: exactly config.json, metadata.json and model.weights.h5, within the size
limits, the weights read as untrusted HDF5 (`h5_check`)."""

import os
import shutil
import tempfile
import zipfile
import zlib
from typing import Any

import h5py

from tl_keras import limits
from tl_keras import untrusted
from tl_keras.errors import UserError
from tl_keras.loading import budgets
from tl_keras.loading import h5_check
from tl_keras.loading import reading
from tl_keras.loading.config_check import parse_config

_MEMBERS = frozenset({"metadata.json", "config.json", "model.weights.h5"})
# The central directory as the End Of Central Directory record declares it: a .keras archive has
# 3 entries (about 200 bytes); zipfile would parse all of a directory before any check.
MAX_ZIP_ENTRIES = 64
MAX_CENTRAL_DIRECTORY_BYTES = 64 * 1024
# What zipfile raises on archives it cannot read (encrypted, unknown compression, truncated).
_ZIP_ERRORS = (RuntimeError, NotImplementedError, ValueError, TypeError, EOFError, zlib.error)


def _check_central_directory(path: str) -> None:
  """Refuses a zip whose central directory declares more entries or bytes than a .keras has."""
  with open(path, "rb") as f:
    entries, directory = untrusted.zip_directory(f)
  if entries > MAX_ZIP_ENTRIES or directory > MAX_CENTRAL_DIRECTORY_BYTES:
    raise UserError(
      f"refusing to load {path}: its zip directory declares {entries:,} entries in "
      f"{directory:,} bytes, above the {MAX_ZIP_ENTRIES} entries and "
      f"{MAX_CENTRAL_DIRECTORY_BYTES >> 10} KiB a .keras archive may have"
    )


def _members(archive: zipfile.ZipFile, path: str, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
  """The archive's members, refused unless exactly `_MEMBERS` within the size limits."""
  members = {info.filename: info for info in archive.infolist()}
  if set(members) != _MEMBERS:
    extra = sorted(set(members) - _MEMBERS)
    raise UserError(
      f"refusing to load {path}: a .keras image model holds exactly "
      f"{', '.join(sorted(_MEMBERS))}" + (f", not {', '.join(extra[:3])}" if extra else "")
    )
  inflated = sum(info.file_size for info in members.values())
  budgets.check_declared(inflated, os.path.getsize(path), max_bytes, path)
  for name in ("metadata.json", "config.json"):
    if members[name].file_size > limits.MAX_CONFIG_BYTES:
      raise UserError(
        f"refusing to load {path}: its {name} is above the "
        f"{limits.MAX_CONFIG_BYTES >> 20} MiB limit"
      )
  return members


def keras_zip_config(path: str, max_bytes: int) -> tuple[Any, int]:
  """The model config of a .keras archive and the variable budget its stored weights allow."""
  try:
    _check_central_directory(path)
    with zipfile.ZipFile(path) as archive:
      members = _members(archive, path, max_bytes)
      config = parse_config(archive.read("config.json"), path)
      untrusted.parse_json(
        archive.read("metadata.json"),
        f"metadata.json of {path}",
        dict,
        limits.MAX_CONFIG_BYTES,
        limits.MAX_CONFIG_DEPTH,
      )
      # HDF5 reads a file on disk far faster than through Python's zip reader.
      with (
        archive.open(members["model.weights.h5"]) as member,
        tempfile.NamedTemporaryFile(suffix=".h5") as copy,
      ):
        shutil.copyfileobj(member, copy)
        copy.flush()
        with h5py.File(copy.name, "r") as h5:
          budget = h5_check.check_h5(h5, max_bytes, path)
        h5_check.read_h5_attributes(copy.name, path)
        return config, budget
  except (zipfile.BadZipFile, OSError, KeyError) as e:
    raise UserError(
      f"cannot read model file {path}: not a valid .keras archive (corrupt or truncated?)"
    ) from e
  except _ZIP_ERRORS as e:
    raise reading.cannot_load(path, e) from e
