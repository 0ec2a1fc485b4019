"""A hostile training backup in the output folder (red-team findings F1-F3, F5, F6): Keras must
never see one. Its checkpoint clean-up deletes whatever TensorFlow's checkpoint-state file
names (absolute paths, `..`, globs), its end-of-training clean-up empties a linked folder, and
TensorFlow reads the state file whole. Each is refused in one line (exit 2) before training,
and nothing outside the output folder changes; a symlinked logs/ is refused likewise.
"""

import os
import sys

import pytest
from conftest import PEAK_WRAPPER
from conftest import run_command
from conftest import write_npz

from tl_keras import untrusted
from tl_keras.config import settings
from tl_keras.errors import UserError
from tl_keras.training import resume

_MARKER = b"outside the output folder: must survive byte for byte\n"


def _victim(tmp_path):
  """Files outside the output folder named like TensorFlow checkpoints: {path: contents}."""
  victim = tmp_path / "victim"
  files = {}
  for name in ("precious.index", "precious.data-00000-of-00001", "a/ckpt-7.index", "keep.txt"):
    path = victim / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_MARKER + name.encode())
    files[path] = path.read_bytes()
  return victim, files


def _unchanged(files):
  for path, contents in files.items():
    assert path.read_bytes() == contents, path


def _all_kept(victim, files):
  """Every file of `_victim` is there as written, and nothing else."""
  _unchanged(files)
  assert sorted(p.name for p in victim.iterdir()) == [
    "a",
    "keep.txt",
    "precious.data-00000-of-00001",
    "precious.index",
  ]


def _chief(out, stage="finetune", settings_json=False):
  chief = out / ".tl_keras_backup" / stage / "chief"
  chief.mkdir(parents=True)
  if settings_json:
    (chief.parent / resume._BACKUP_SETTINGS_FILENAME).write_text("{}")
  return chief


def _hostile_state(chief, victim):
  (chief / "ckpt-1.index").write_bytes(b"x")
  (chief / "checkpoint").write_text(
    'model_checkpoint_path: "ckpt-1"\n'
    f'all_model_checkpoint_paths: "{victim}/precious"\n'
    f'all_model_checkpoint_paths: "{victim}/*/ckpt-*"\n'
    'all_model_checkpoint_paths: "ckpt-1"\n'
    "all_model_checkpoint_timestamps: 1.0\nlast_preserved_timestamp: 0.5\n"
  )


def _config(out, resume_run=True):
  return settings.make(settings.PretrainConfig, output_dir=str(out), resume=resume_run)


def _refused_line(result, *fragments):
  """The one stderr line `error: ...` of a run that exited 2, holding `fragments`."""
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert "internal error" not in lines[0]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def _finetune(model, out, tmp_path, *flags):
  target = write_npz(tmp_path / "tiny.npz")
  command = [
    "scripts/finetune.py",
    f"--model={model}",
    f"--target={target}",
    f"--output_dir={out}",
    "--epochs=1",
    "--export_formats=",
    *flags,
  ]
  return command


# --- fast: the checks themselves ---------------------------------------------------------


@pytest.mark.parametrize(
  "line",
  [
    'model_checkpoint_path: "/etc/x"',
    'model_checkpoint_path: "../ckpt-1"',
    'model_checkpoint_path: "sub/ckpt-1"',
    'all_model_checkpoint_paths: "ckpt-*"',
    'all_model_checkpoint_paths: "ckpt-[1]"',
    'all_model_checkpoint_paths: "ckpt-?"',
    'all_model_checkpoint_paths: "..\\057x"',
    "all_model_checkpoint_paths: '/tmp/x'",
    'all_model_checkpoint_paths: "a" "/b"',
    'all_model_checkpoint_paths:"/x"',
    "# comment",
    'model_checkpoint_path: ".."',
  ],
)
@pytest.mark.parametrize("settings_json", [False, True], ids=["no_settings", "settings"])
def test_checkpoint_state_naming_anything_but_a_plain_name_is_refused(
  line, settings_json, tmp_path
):
  victim, files = _victim(tmp_path)
  out = tmp_path / "out"
  chief = _chief(out, "pretrain", settings_json)
  (chief / "checkpoint").write_text(line + "\n")
  path = resume.backup_dir(str(out), "pretrain")
  with pytest.raises(UserError, match="not a training backup tl_keras can resume.*remove"):
    resume.prepare_backup(_config(out), path, chief=True)
  _unchanged(files)
  assert (chief / "checkpoint").read_text() == line + "\n"  # refused, not touched


def test_a_backup_keras_wrote_passes(tmp_path):
  out = tmp_path / "out"
  chief = _chief(out, "pretrain", settings_json=True)
  (chief / "ckpt-3.index").write_bytes(b"x")
  (chief / "ckpt-3.data-00000-of-00001").write_bytes(b"x")
  (chief / "checkpoint").write_text(
    'model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-3"\n'
    "all_model_checkpoint_timestamps: 1765115000.25\nlast_preserved_timestamp: 1.7e+09\n"
  )
  resume.check_backup_folder(resume.backup_dir(str(out), "pretrain"))
  resume.check_backup_folder(resume.backup_dir(str(out), "absent"))


def test_noresume_removes_a_hostile_backup_inside_only(tmp_path):
  victim, files = _victim(tmp_path)
  out = tmp_path / "out"
  chief = _chief(out, "pretrain")
  _hostile_state(chief, victim)
  os.symlink(victim, chief / "link")
  path = resume.backup_dir(str(out), "pretrain")
  resume.prepare_backup(_config(out, resume_run=False), path, chief=True)
  assert not os.path.lexists(path)
  _unchanged(files)


def test_walk_tree_refuses_links_special_files_depth_and_count(tmp_path):
  root = tmp_path / "root"
  (root / "a" / "b").mkdir(parents=True)
  assert untrusted.walk_tree(str(tmp_path / "absent"), 4, 10) == []
  assert {name for name, _, _ in untrusted.walk_tree(str(root), 4, 10)} == {"a", "a/b"}
  with pytest.raises(ValueError, match="levels deep"):
    untrusted.walk_tree(str(root), 2, 10)
  with pytest.raises(ValueError, match="more than 1 files"):
    untrusted.walk_tree(str(root), 4, 1)
  os.mkfifo(root / "a" / "fifo")
  with pytest.raises(ValueError, match="fifo is a symbolic link or not a regular file"):
    untrusted.walk_tree(str(root), 4, 10)
  os.remove(root / "a" / "fifo")
  os.symlink(tmp_path, root / "a" / "b" / "link")
  with pytest.raises(ValueError, match="link is a symbolic link"):
    untrusted.walk_tree(str(root), 4, 10)
  with pytest.raises(ValueError, match="not a folder"):
    untrusted.walk_tree(str(root / "a" / "b" / "link"), 4, 10)


# --- slow: the red team's findings, end to end ---------------------------------------------


@pytest.mark.parametrize("settings_json", [False, True], ids=["no_settings", "settings"])
def test_f1_checkpoint_state_naming_files_outside_deletes_nothing(
  settings_json, source_model, tmp_path
):
  victim, files = _victim(tmp_path)
  out = tmp_path / "out"
  for stage in ("finetune", "finetune_warmup"):
    _hostile_state(_chief(out, stage, settings_json), victim)
  result = run_command(_finetune(source_model[0], out, tmp_path))
  line = _refused_line(result, ".tl_keras_backup", "remove that folder")
  assert ("names checkpoint" in line) == settings_json, line
  _unchanged(files)


def test_f2_linked_chief_folder_is_refused_and_its_target_kept(source_model, tmp_path):
  victim, files = _victim(tmp_path)
  out = tmp_path / "out"
  for stage in ("finetune", "finetune_warmup"):
    (out / ".tl_keras_backup" / stage).mkdir(parents=True)
    os.symlink(victim, out / ".tl_keras_backup" / stage / "chief")
  result = run_command(_finetune(source_model[0], out, tmp_path))
  _refused_line(result, "chief is a symbolic link", "remove that folder")
  _all_kept(victim, files)


def test_f5_sparse_huge_checkpoint_state_is_refused_unread(source_model, tmp_path):
  out = tmp_path / "out"
  for stage in ("finetune", "finetune_warmup"):
    with open(_chief(out, stage) / "checkpoint", "wb") as f:
      f.truncate(3 << 30)  # 3 GiB, none of it on disk
  command = [sys.executable, "-c", PEAK_WRAPPER, sys.executable]
  result = run_command(command + _finetune(source_model[0], out, tmp_path))
  _refused_line(result, "3,221,225,472 bytes", "remove that folder")
  peak_kib = int(result.stdout.split("maxrss_kib")[-1])
  assert peak_kib < 2 * 1024 * 1024, peak_kib


def test_f6_chief_a_regular_file_is_one_line(source_model, tmp_path):
  out = tmp_path / "out"
  for stage in ("finetune", "finetune_warmup"):
    (out / ".tl_keras_backup" / stage).mkdir(parents=True)
    (out / ".tl_keras_backup" / stage / "chief").write_text("x")
  result = run_command(_finetune(source_model[0], out, tmp_path))
  _refused_line(result, "chief is a file where Keras keeps folders", "remove that folder")
  assert (out / ".tl_keras_backup" / "finetune" / "chief").read_text() == "x"


@pytest.mark.parametrize("linked", ["logs", "logs/finetune", "logs/finetune/train"])
def test_f3_linked_logs_folder_is_refused_with_tensorboard(linked, source_model, tmp_path):
  victim, files = _victim(tmp_path)
  out = tmp_path / "out"
  (out / linked).parent.mkdir(parents=True)
  os.symlink(victim, out / linked)
  result = run_command(_finetune(source_model[0], out, tmp_path, "--tensorboard"))
  _refused_line(result, "is a symbolic link or not a folder", "remove")
  _all_kept(victim, files)
