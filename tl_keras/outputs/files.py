"""Writing files atomically: under a temporary name in the destination folder, then renamed.

An interrupted run never leaves a half-written file where a good one was. No TensorFlow here,
so plots and reports write their files without it.
"""

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from tl_keras import interrupts
from tl_keras.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str, is_dir: bool = False) -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

  The temporary path is registered with `interrupts`, so a command stopped by a signal
  deletes it; an exception deletes it here. It is new (created with O_EXCL | O_NOFOLLOW by
  `tempfile`), and whatever is at `path` is replaced, a symlink included, never written through.
  """
  folder = os.path.dirname(os.path.abspath(path))
  base = os.path.basename(path)
  with interrupts.uninterrupted():
    if is_dir:
      temp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    else:
      handle, temp = tempfile.mkstemp(
        prefix=f".{base}.", suffix=f".tmp{os.path.splitext(base)[1]}", dir=folder
      )
      os.close(handle)
    interrupts.track(temp)
  try:
    yield temp
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, (0o777 if is_dir else 0o666) & ~umask)  # mkstemp/mkdtemp made it private
    old = temp + ".old"
    with interrupts.uninterrupted():
      if is_dir and os.path.lexists(path):
        # What is there moves aside and is deleted; a symlink only itself, never its target.
        os.rename(path, old)
        interrupts.track(old)
        os.rename(temp, path)
      else:
        os.replace(temp, path)  # replaces a symlink at `path`, never writes through it
      interrupts.untrack(temp)
    if os.path.lexists(old):
      _remove_entry(old)
      interrupts.untrack(old)
  except BaseException:
    if os.path.lexists(temp):
      _remove_entry(temp)
    interrupts.untrack(temp)
    raise


def _remove_entry(path: str) -> None:
  """Deletes the file, symlink (not its target) or folder tree at `path`; `shutil.rmtree`
  works on directory descriptors and never follows the links inside a tree."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def _strict(value: Any) -> Any:
  """`value` with every NaN or infinite float as None: strict JSON, which the bounded reader
  (`untrusted.parse_json`) reads back (a score of degenerate data can be NaN)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {key: _strict(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(item) for item in value]
  return value


def write_json(path: str, payload: dict[str, Any]) -> None:
  """`payload` as strict JSON at `path` (non-finite floats written as null)."""
  with atomic_path(path) as temp, open(temp, "w") as f:
    json.dump(_strict(payload), f, indent=2, sort_keys=True, allow_nan=False)
    f.write("\n")


def prepare_output_dir(output_dir: str) -> str:
  """Creates `output_dir` if needed and checks it is writable; returns it."""
  try:
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=output_dir):
      pass
  except OSError as e:
    raise UserError(
      f"cannot write to output folder {output_dir} ({e.strerror}); choose another --output_dir"
    ) from e
  return output_dir
