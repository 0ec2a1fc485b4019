"""Reading untrusted files: regular files only, size-bounded, and JSON depth-bounded and typed.

Files in the output folder, data files and model metadata may come from anyone (a folder
downloaded or shared). `read_regular_file` opens without following a symlink and never
blocks on a FIFO or device; `parse_json` refuses text that is too large or nested too deep
before `json.loads` sees it (which recurses once per level: 100,000 levels would be a
RecursionError) and checks the type of what it returns.
"""

import json
import os
import re
import shutil
import stat
import struct
from typing import Any
from typing import BinaryIO

import numpy as np

from tl_keras import limits
from tl_keras.errors import UserError

_EOCD, _ZIP64_LOCATOR, _ZIP64_EOCD = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
# JSON strings (with their escapes), whose brackets do not nest anything.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_TYPE_NAMES = {
  dict: "an object",
  list: "a list",
  str: "a string",
  int: "a number",
  float: "a number",
}


def read_regular_file(path: str, max_bytes: int, what: str = "file") -> bytes | None:
  """The contents of `path` if it is a regular file, else None (FIFOs, sockets, devices,
  folders and symlinks are never read: resolve a path first where links may be followed).
  Opens non-blocking, checks the open file, and refuses one over `max_bytes` before reading.
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
      raise UserError(
        f"{what} {path} has {info.st_size:,} bytes, more than the limit of {max_bytes:,}"
      )
    with os.fdopen(os.dup(fd), "rb") as f:
      contents = f.read(max_bytes + 1)
    if len(contents) > max_bytes:
      raise UserError(f"{what} {path} grew past the limit of {max_bytes:,} bytes")
    return contents
  finally:
    os.close(fd)


def zip_directory(f: BinaryIO) -> tuple[int, int]:
  """(entries, bytes) of the central directory of the zip open as `f`, read from its End Of
  Central Directory record (in the last 64 KiB, and its Zip64 form where the record says so)
  before zipfile parses anything, which it would do for all of a directory before any check;
  (-1, -1) where there is no such record (zipfile then refuses the file)."""
  size = f.seek(0, os.SEEK_END)
  f.seek(max(0, size - (1 << 16) - 22))
  tail = f.read()
  at = tail.rfind(_EOCD)
  if at < 0 or len(tail) - at < 22:
    return -1, -1
  entries, directory = struct.unpack_from("<HI", tail, at + 10)
  locator = at - 20
  if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR:
    (offset,) = struct.unpack_from("<Q", tail, locator + 8)
    f.seek(min(offset, size))
    record = f.read(56)
    if len(record) < 56 or record[:4] != _ZIP64_EOCD:
      return -1, -1
    entries, directory = struct.unpack_from("<QQ", record, 32)
  return entries, directory


def json_depth(text: bytes) -> int:
  """How deep `text`'s arrays and objects nest, counted on the raw text without recursion
  (brackets inside strings do not count; an unterminated string's count as if outside)."""
  stripped = np.frombuffer(_JSON_STRING.sub(b"", text), np.uint8)
  steps = (np.isin(stripped, (ord("["), ord("{"))).astype(np.int64)) - np.isin(
    stripped, (ord("]"), ord("}"))
  )
  return int(np.cumsum(steps).max(initial=0))


def _refuse_constant(name: str):
  raise ValueError(f"{name} is not a JSON number")


def parse_json(
  text: bytes | str,
  what: str,
  expect: type | tuple[type, ...] = dict,
  max_bytes: int = limits.MAX_JSON_BYTES,
  max_depth: int = limits.MAX_JSON_DEPTH,
) -> Any:
  """The JSON value of `text`, of type `expect`; a UserError naming `what` (a file, an
  attribute) for text over `max_bytes`, nested deeper than `max_depth`, not JSON (NaN and
  Infinity included), or of another type."""
  raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
  if len(raw) > max_bytes:
    raise UserError(f"{what} has {len(raw):,} bytes of JSON, more than the limit of {max_bytes:,}")
  depth = json_depth(raw)
  if depth > max_depth:
    raise UserError(f"{what} nests JSON {depth:,} levels deep, more than the limit of {max_depth}")
  try:
    value = json.loads(raw, parse_constant=_refuse_constant)
  except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError included
    raise UserError(f"{what} is not valid JSON ({str(e)[:200]})") from e
  if not isinstance(value, expect):
    expected = _TYPE_NAMES.get(expect, getattr(expect, "__name__", "another type"))
    raise UserError(f"{what} holds {type(value).__name__} JSON where {expected} belongs")
  return value


def read_json(
  path: str,
  what: str = "file",
  expect: type | tuple[type, ...] = dict,
  max_bytes: int = limits.MAX_JSON_BYTES,
) -> Any:
  """The JSON value of file `path` as `parse_json` checks it; a UserError if `path` is not a
  regular file (a symlink, a FIFO) or is missing."""
  contents = read_regular_file(path, max_bytes, what)
  if contents is None:
    raise UserError(f"{what} {path} is not a regular file (a symbolic link, folder or device)")
  return parse_json(contents, f"{what} {path}", expect, max_bytes)


def _link_refused(root: str, relative: str, part: str) -> UserError:
  return UserError(
    f"{os.path.join(root, relative)}: {part} is a symbolic link or not a folder; tl_keras "
    f"writes and deletes only inside the real output folder {root}: remove {part}"
  )


def check_no_links(root: str, relative: str) -> None:
  """Refuses (UserError) if any existing part of `relative` under folder `root` (the output
  folder) is a symbolic link or not a folder: whatever tl_keras writes or deletes there stays
  inside `root`."""
  path = root
  for part in [part for part in relative.split(os.sep) if part]:
    path = os.path.join(path, part)
    if part in (".", ".."):
      raise _link_refused(root, relative, part)
    try:
      info = os.lstat(path)
    except FileNotFoundError:
      return
    if not stat.S_ISDIR(info.st_mode):
      raise _link_refused(root, relative, part)


def walk_tree(path: str, max_depth: int, max_entries: int) -> list[tuple[str, bool, int]]:
  """(path relative to `path`, is a folder, size) of every entry under folder `path`, walked
  without following a symbolic link; [] if `path` is absent. Raises ValueError naming the
  entry that is a link or anything but a folder or regular file, or lies deeper than
  `max_depth`, or past `max_entries` entries. Entries removed while walking are left out."""
  try:
    if not stat.S_ISDIR(os.lstat(path).st_mode):
      raise ValueError(f"{os.path.basename(path)} is a symbolic link or not a folder")
  except FileNotFoundError:
    return []
  found, pending = [], [("", 0)]
  while pending:
    relative, depth = pending.pop()
    try:
      entries = list(os.scandir(os.path.join(path, relative)))
    except (FileNotFoundError, NotADirectoryError):
      continue
    for entry in entries:
      name = os.path.join(relative, entry.name)
      try:
        info = entry.stat(follow_symlinks=False)
      except FileNotFoundError:
        continue
      if stat.S_ISDIR(info.st_mode):
        if depth + 1 >= max_depth:
          raise ValueError(f"{name} lies more than {max_depth} levels deep")
        pending.append((name, depth + 1))
      elif not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{name} is a symbolic link or not a regular file")
      found.append((name, stat.S_ISDIR(info.st_mode), info.st_size))
      if len(found) > max_entries:
        raise ValueError(f"it holds more than {max_entries:,} files and folders")
  return found


def remove_inside(root: str, relative: str) -> None:
  """Deletes `root`/`relative` (a file or a folder tree) if present, without following a
  symbolic link at any level below `root`: the folders on the way are opened with O_NOFOLLOW
  (one that is a link is a UserError), a link at the end is removed itself, and a tree is
  removed by `shutil.rmtree` on directory descriptors, which never follows the links inside."""
  parts = [part for part in relative.split(os.sep) if part]
  if not parts or any(part in (".", "..") for part in parts):
    raise ValueError(f"not a path inside the folder: {relative!r}")
  directory = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
  fd = os.open(root, directory)
  try:
    for part in parts[:-1]:
      try:
        inner = os.open(part, directory | os.O_NOFOLLOW, dir_fd=fd)
      except FileNotFoundError:
        return
      except OSError as e:  # ELOOP, ENOTDIR: a link or a file where a folder belongs
        raise _link_refused(root, relative, part) from e
      os.close(fd)
      fd = inner
    try:
      info = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
      return
    if stat.S_ISDIR(info.st_mode):
      shutil.rmtree(parts[-1], dir_fd=fd, ignore_errors=True)
    else:
      os.unlink(parts[-1], dir_fd=fd)
  finally:
    os.close(fd)
