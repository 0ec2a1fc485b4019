"""Resuming interrupted training: per-epoch backups of the training state.

`keras.callbacks.BackupAndRestore` saves model and optimizer after every epoch into
OUTPUT_DIR/.tl_keras_backup/STAGE and restores them when the same run starts again. This
module adds what Keras leaves out: a record of the settings, so that a backup made with other
settings is refused rather than silently restored, a note of the epoch a run resumes from,
and clean-up once training finishes.
"""

import json
import os
import re
import stat
import tempfile
from typing import Any

import tensorflow as tf

from tl_keras import artifacts
from tl_keras import interrupts
from tl_keras import limits
from tl_keras import sinks
from tl_keras import untrusted
from tl_keras.config.schema import recorded_on_resume
from tl_keras.errors import UserError
from tl_keras.keras_api import keras

_BACKUP_SETTINGS_FILENAME = artifacts.BACKUP_SETTINGS
# TensorFlow's checkpoint-state file (a text protobuf) and what it may hold: Keras's
# CheckpointManager writes names relative to its folder (`ckpt-3`), one a line.
_CHECKPOINT_STATE = "checkpoint"
MAX_CHECKPOINT_STATE_BYTES = 16 * 1024
_STATE_PATH_LINE = re.compile(r'(?:model_checkpoint_path|all_model_checkpoint_paths): "([^"\\]*)"')
_STATE_TIME_LINE = re.compile(
  r"(?:all_model_checkpoint_timestamps|last_preserved_timestamp): "
  r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?"
)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# STAGE/chief/ckpt-N_temp/part-...: a save interrupted part way.
_MAX_BACKUP_DEPTH = 4
_MAX_BACKUP_ENTRIES = 1000


def backup_dir(output_dir: str, stage: str) -> str:
  """The folder holding a stage's training-state backup while it trains."""
  return os.path.join(output_dir, artifacts.BACKUP_DIR, stage)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
  """BackupAndRestore that also accepts OneDeviceStrategy, what --strategy=auto picks on one GPU.

  tf_keras leaves it off its list of supported strategies and raises NotImplementedError, but
  a single device checkpoints and restores like the default strategy.
  """

  def __init__(self, backup_dir_path: str):
    super().__init__(backup_dir_path)
    self._supported_strategies += (tf.distribute.OneDeviceStrategy,)


class BackupTracker(keras.callbacks.Callback):
  """Records the epoch fit starts at (past 0 after a restore) and says so before training.

  Goes before `BackupAndRestore` in the callbacks, so the settings file it writes at the end
  of the first epoch is on disk before the first backup.
  """

  def __init__(self, backup_path: str, settings: dict[str, Any], epochs: int, chief: bool):
    super().__init__()
    self._backup_path = backup_path
    self._settings = settings
    self._epochs = epochs
    self._chief = chief
    self._settings_written = False
    self.start_epoch = None

  def _start(self, epoch):
    self.start_epoch = epoch
    if epoch and self._chief:
      print(
        sinks.terminal(
          f"resuming from epoch {epoch} of {self._epochs} (backup in {self._backup_path})"
        ),
        flush=True,
      )

  def on_epoch_begin(self, epoch, logs=None):
    if self.start_epoch is None:
      self._start(epoch)

  def on_epoch_end(self, epoch, logs=None):
    if self._chief and not self._settings_written:
      os.makedirs(self._backup_path, exist_ok=True)
      path = os.path.join(self._backup_path, _BACKUP_SETTINGS_FILENAME)
      # A new file (O_EXCL | O_NOFOLLOW): never one planted there, nor a symlink's target.
      with interrupts.uninterrupted():
        handle, temp = tempfile.mkstemp(
          prefix=f".{_BACKUP_SETTINGS_FILENAME}.", dir=self._backup_path
        )
        interrupts.track(temp)
      with os.fdopen(handle, "w") as f:
        json.dump(self._settings, f, indent=2, sort_keys=True)
      with interrupts.uninterrupted():
        os.replace(temp, path)
        interrupts.untrack(temp)
      self._settings_written = True

  def on_train_end(self, logs=None):
    if self.start_epoch is None:  # the backup already held every epoch
      self._start(self._epochs)


def has_backup(path: str) -> bool:
  """Whether `path` holds a backup of an interrupted run (not only our settings file)."""
  settings_path = os.path.join(path, _BACKUP_SETTINGS_FILENAME)
  try:
    return (
      stat.S_ISDIR(os.lstat(path).st_mode)
      and stat.S_ISREG(os.lstat(settings_path).st_mode)
      and set(os.listdir(path)) != {_BACKUP_SETTINGS_FILENAME}
    )
  except OSError:
    return False


def _checkpoint_names(text: bytes) -> list[str]:
  """The checkpoint names a TensorFlow checkpoint-state file lists, parsed strictly: each
  line one `model_checkpoint_path: "NAME"` or `all_model_checkpoint_paths: "NAME"` or a
  timestamp; anything else (escapes, other quoting, other fields) is a ValueError."""
  names = []
  for line in text.decode("ascii").split("\n"):
    if not line.strip():
      continue
    path = _STATE_PATH_LINE.fullmatch(line)
    if path:
      names.append(path.group(1))
    elif not _STATE_TIME_LINE.fullmatch(line):
      raise ValueError(f"line {line[:80]!r} is not one TensorFlow writes")
  return names


def _check_checkpoint_state(path: str, relative: str) -> None:
  """Refuses (ValueError) a checkpoint-state file naming a checkpoint other than a plain name
  in its own folder: TensorFlow's clean-up deletes what it names, globs and all."""
  contents = untrusted.read_regular_file(
    os.path.join(path, relative), MAX_CHECKPOINT_STATE_BYTES, "checkpoint state"
  )
  if contents is None:
    raise ValueError(f"{relative} is not a regular file")
  try:
    names = _checkpoint_names(contents)
  except UnicodeDecodeError as e:
    raise ValueError(f"{relative} is not text TensorFlow writes") from e
  for name in names:
    if not _PLAIN_NAME.fullmatch(name) or ".." in name:
      raise ValueError(
        f"{relative} names checkpoint {name!r}, not a plain file name inside its folder"
      )


def check_backup_folder(path: str) -> None:
  """Refuses (UserError) a backup folder Keras must not see: one holding anything but real
  folders and regular files of bounded size, files without our settings file, or a
  checkpoint-state file naming checkpoints elsewhere. Walks it without following links and
  changes nothing; an absent folder passes."""
  try:
    entries = untrusted.walk_tree(path, _MAX_BACKUP_DEPTH, _MAX_BACKUP_ENTRIES)
    files = {name: size for name, is_dir, size in entries if not is_dir}
    for name, is_dir, size in entries:
      top = os.sep not in name
      if top and not is_dir and not _is_settings_file(name):
        raise ValueError(f"{name} is a file where Keras keeps folders")
      if top and is_dir and _is_settings_file(name):
        raise ValueError(f"{name} is a folder")
      limit = _file_limit(name)
      if not is_dir and size > limit:
        raise ValueError(f"{name} has {size:,} bytes, more than the limit of {limit:,}")
    if files and _BACKUP_SETTINGS_FILENAME not in files:
      raise ValueError(f"it has no {_BACKUP_SETTINGS_FILENAME}: not a backup tl_keras made")
    for name in files:
      if os.path.basename(name) == _CHECKPOINT_STATE:
        _check_checkpoint_state(path, name)
  except ValueError as e:
    raise UserError(
      f"{path} is not a training backup tl_keras can resume ({e}); remove that folder, or "
      "rerun with --noresume to discard it"
    ) from e


def _is_settings_file(name: str) -> bool:
  """Our settings file, or a temporary one an interruption left (see `BackupTracker`)."""
  return name == _BACKUP_SETTINGS_FILENAME or name.startswith(f".{_BACKUP_SETTINGS_FILENAME}.")


def _file_limit(name: str) -> int:
  """The largest a backup file `name` may be: the checkpoint state a few KiB, a checkpoint
  index a model description, the rest a model's weights with the optimizer's slots."""
  base = os.path.basename(name)
  if base == _CHECKPOINT_STATE:
    return MAX_CHECKPOINT_STATE_BYTES
  if base.endswith(".index") or _is_settings_file(base):
    return limits.MAX_MODEL_DESCRIPTION_BYTES
  return 4 * limits.MAX_MODEL_BYTES


def _output_dir_and_name(path: str) -> tuple[str, str]:
  """(output folder, path of the backup inside it) for `backup_dir`'s `path`."""
  output_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  return output_dir, os.path.relpath(os.path.abspath(path), output_dir)


def prepare_backup(config, path: str, chief: bool) -> dict[str, Any]:
  """Deletes the backup in `path`, or with `config.runtime.resume` checks its settings match
  (all but those free on resume, see `schema.recorded_on_resume`).

  Returns the settings to record beside a new backup. Keras would restore a backup made with
  other settings regardless (learning rate included, or fail on a shape mismatch). The chief
  deletes and writes; every worker restores from the chief's backup, so with several machines
  `path` must be on a file system they share.
  """
  current = json.loads(json.dumps(recorded_on_resume(config)))
  settings_path = os.path.join(path, _BACKUP_SETTINGS_FILENAME)
  # The output folder is input too: a symlink in it is refused, never followed.
  untrusted.check_no_links(*_output_dir_and_name(path))
  if not config.runtime.resume and chief:
    untrusted.remove_inside(*_output_dir_and_name(path))  # never follows a link
  # What Keras will see: its checkpoint clean-up deletes whatever a planted state file names.
  check_backup_folder(path)
  if config.runtime.resume and has_backup(path):
    saved = untrusted.read_json(settings_path, "training backup settings")
    changed = [f"--{k}={saved.get(k)} (now {v})" for k, v in current.items() if saved.get(k) != v]
    if changed:
      raise UserError(
        f"{path} holds an interrupted run with other settings: "
        f"{', '.join(changed)}. Rerun with those to resume it, or add --noresume "
        "to start over"
      )
  return current


def remove_backup(path: str, chief: bool) -> None:
  """Removes what Keras leaves of a finished backup: our settings file and empty folders."""
  if chief:
    try:
      os.remove(os.path.join(path, _BACKUP_SETTINGS_FILENAME))
    except OSError:
      pass
  for folder in (path, os.path.dirname(path)):
    try:
      os.rmdir(folder)
    except OSError:  # not empty (another stage's backup, another worker's files) or absent
      pass
