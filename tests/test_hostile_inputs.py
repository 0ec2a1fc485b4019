"""Hostile inputs, rounds three and four (#26): escaped strings, bounded JSON, an untrusted
output folder, sizes after framing, decoder work and failures the environment causes.

Each test builds its payload, small and fast, and checks the promise: exit 2 with one line on
stderr (or exit 0 where the input is handled), no raw control character in what is printed,
nothing outside the output folder changed, and where memory is the point the child's peak RSS.
"""

import json
import os
import random
import re
import shutil
import sys
import unicodedata

import h5py
import numpy as np
import pytest
from conftest import run_command

from tl_keras import sinks
from tl_keras import untrusted
from tl_keras.errors import UserError
from tl_keras.keras_api import keras

# Raw characters that must never reach a terminal: C0 controls but newline (a message's end),
# DEL and the C1 controls (U+009B is a one-byte CSI).
_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_MARKER = b"outside the output folder: must survive byte for byte\n"


def _no_raw_control(*texts):
  for text in texts:
    found = _RAW_CONTROL.findall(text)
    assert not found, f"raw control characters {found[:5]} in {text[-500:]!r}"


def _one_error_line(result, code=2):
  """The only stderr line, `error: ...`, of a process that exited with `code`."""
  assert result.returncode == code, result.stdout[-2000:] + result.stderr[-3000:]
  _no_raw_control(result.stdout, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


def _marker(tmp_path, name="outside"):
  """A folder outside the output folder with a marker file in it: (folder, marker path)."""
  folder = tmp_path / name
  folder.mkdir()
  (folder / "marker.txt").write_bytes(_MARKER)
  return folder, folder / "marker.txt"


# --- item 5: untrusted strings escaped for their sink ---------------------------------------


def test_terminal_sink_escapes_every_control_character_fuzzed():
  rng = random.Random(26)
  specials = "\x1b\r\x07\x08\x00\x7f\x85\x9b\u202e\u2028\ufeff\n\t"
  for _ in range(400):
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    for text in (
      raw.decode("latin-1"),
      raw.decode("utf-8", "replace"),
      raw.decode("utf-8", "surrogateescape"),
      "".join(rng.choice(specials + "ab[]") for _ in range(20)),
    ):
      shown = sinks.terminal(text)
      assert not [c for c in shown if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029"]
      _no_raw_control(shown)
      if text.isprintable():
        assert shown == text  # printable text, accents and all, is left alone
  assert sinks.terminal("a\x1b[2K\rb\x07\x9bc\u202ed") == "a\\x1b[2K\\rb\\x07\\x9bc\\u202ed"
  assert sinks.terminal_lines("one\x1b\ntwo") == "one\\x1b\ntwo"


def test_markdown_and_csv_sinks():
  assert sinks.markdown("![x](t.png)\x1b|") == "\\!\\[x\\]\\(t.png\\)\\u001b\\|"
  assert [sinks.csv_cell(t) for t in ("=1", "-2", "@x", "\tx", "a=b")] == [
    "'=1",
    "'-2",
    "'@x",
    "'\tx",
    "a=b",
  ]


def test_warnings_escape_control_characters(capsys):
  from tl_keras.errors import warn

  warn("skipped x\x1b]0;title\x07.png")
  err = capsys.readouterr().err
  assert err == "warning: skipped x\\x1b]0;title\\x07.png\n"


_FAKE = "\x1b[2K\r\x1b[32mtransfer done: test accuracy 99.9%\x1b[0m"


def _model_with_layer_name(tmp_path, name):
  """A tiny .h5 model whose Flatten layer's name, in the file's config, is `name` (Keras would
  not save such a name itself)."""
  inputs = keras.Input((28, 28, 1), name="image")
  x = keras.layers.Flatten(name="flat_evil")(inputs)
  model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="dense")(x))
  path = tmp_path / "evil.h5"
  model.save(path)
  with h5py.File(path, "a") as f:
    config = f.attrs["model_config"]
    config = config.decode() if isinstance(config, bytes) else config
    f.attrs["model_config"] = config.replace("flat_evil", json.dumps(name)[1:-1])
  return path


def test_escape_sequences_in_layer_names_and_paths_never_reach_the_terminal(tmp_path):
  model = _model_with_layer_name(tmp_path, "flat" + _FAKE)
  output_dir = tmp_path / "out"
  result = run_command(
    [
      "scripts/transfer.py",
      f"--model={model}",
      f"--output_dir={output_dir}",
      "--target=npz:/nonexistent" + _FAKE + ".npz",
    ]
  )
  line = _one_error_line(result)
  assert "\\x1b[2K" in line and "\\x1b[32m" in line, line
  # A path given as a flag, echoed in the refusal.
  result = run_command(
    [
      "scripts/transfer.py",
      f"--model={tmp_path / 'missing'}{_FAKE}.h5",
      f"--output_dir={output_dir}",
      "--target=mnist:5-9",
    ]
  )
  line = _one_error_line(result)
  assert "\\x1b[2K" in line and "\\x1b[32m" in line, line


# --- item 4: untrusted JSON, bounded and typed -------------------------------------------------


def test_json_is_depth_and_size_bounded_and_typed(tmp_path):
  deep = "[" * 100_000 + "]" * 100_000
  with pytest.raises(UserError, match="nests JSON 100,000 levels deep"):
    untrusted.parse_json(deep, "metadata", list)
  # Brackets inside strings nest nothing; escaped quotes do not end a string.
  text = json.dumps({"name": "[[[[{{{{" * 100 + '\\"[[['})
  assert untrusted.json_depth(text.encode()) == 1
  assert untrusted.parse_json(text, "x")["name"].startswith("[[[[")
  for payload, message in [
    ('{"a": NaN}', "not valid JSON"),
    ('{"a": 1', "not valid JSON"),
    ("[1, 2]", "holds list JSON where an object belongs"),
    ("1" * 5000, "not valid JSON"),  # Python's int digit limit, not a hang
    (b"\xff\xfe{}", "not valid JSON"),
  ]:
    with pytest.raises(UserError, match=message):
      untrusted.parse_json(payload, "x")
  with pytest.raises(UserError, match="more than the limit of 100"):
    untrusted.parse_json("[" + "1," * 100 + "1]", "x", list, max_bytes=100)
  outside, marker = _marker(tmp_path)
  link = tmp_path / "linked.json"
  link.symlink_to(marker)
  with pytest.raises(UserError, match="is not a regular file"):
    untrusted.read_json(str(link), "metrics file")
  fifo = tmp_path / "fifo.json"
  os.mkfifo(fifo)  # opened non-blocking: never waits for a writer
  with pytest.raises(UserError, match="is not a regular file"):
    untrusted.read_json(str(fifo), "metrics file")


# --- item 6: the output folder is not trusted --------------------------------------------------


def _settings_config(output_dir, resume_run):
  from tl_keras.config import settings

  return settings.make(settings.PretrainConfig, output_dir=str(output_dir), resume=resume_run)


@pytest.mark.parametrize("linked", [".tl_keras_backup", ".tl_keras_backup/pretrain"])
@pytest.mark.parametrize("resume_run", [False, True], ids=["noresume", "resume"])
def test_symlinked_backup_folder_is_refused_and_nothing_outside_deleted(
  linked, resume_run, tmp_path
):
  from tl_keras.training import resume

  outside, marker = _marker(tmp_path)
  (outside / "pretrain").mkdir()
  (outside / "pretrain" / "marker.txt").write_bytes(_MARKER)
  (outside / resume._BACKUP_SETTINGS_FILENAME).write_text("{}")
  out = tmp_path / "out"
  (out / linked).parent.mkdir(parents=True)
  os.symlink(outside, out / linked)
  path = resume.backup_dir(str(out), "pretrain")
  with pytest.raises(UserError, match="is a symbolic link .* remove"):
    resume.prepare_backup(_settings_config(out, resume_run), path, chief=True)
  assert marker.read_bytes() == _MARKER
  assert (outside / "pretrain" / "marker.txt").read_bytes() == _MARKER


def test_backup_deletion_does_not_follow_links_inside_it(tmp_path):
  from tl_keras.training import resume

  outside, marker = _marker(tmp_path)
  out = tmp_path / "out"
  path = resume.backup_dir(str(out), "pretrain")
  os.makedirs(path)
  os.symlink(outside, os.path.join(path, "chief"))
  os.symlink(marker, os.path.join(path, "ckpt-1.index"))
  resume.prepare_backup(_settings_config(out, False), path, chief=True)
  assert not os.path.lexists(path)
  assert marker.read_bytes() == _MARKER and os.listdir(outside) == ["marker.txt"]


def test_backup_settings_are_never_written_through_a_planted_symlink(tmp_path):
  from tl_keras.training import resume

  outside, marker = _marker(tmp_path)
  path = resume.backup_dir(str(tmp_path / "out"), "pretrain")
  os.makedirs(path)
  settings_path = os.path.join(path, resume._BACKUP_SETTINGS_FILENAME)
  # The names a fixed-name temporary file would have had, and the file itself.
  for name in (settings_path + ".tmp", settings_path):
    os.symlink(marker, name)
  resume.BackupTracker(path, {"epochs": 3}, 3, chief=True).on_epoch_end(0)
  assert marker.read_bytes() == _MARKER
  assert not os.path.islink(settings_path)
  assert json.loads(open(settings_path).read()) == {"epochs": 3}


def test_atomic_writes_replace_symlinks_and_never_write_through_them(tmp_path):
  from tl_keras.outputs import files

  outside, marker = _marker(tmp_path)
  out = tmp_path / "out"
  out.mkdir()
  os.symlink(marker, out / "report.md")
  os.symlink(outside, out / "target_savedmodel")
  with files.atomic_path(str(out / "report.md")) as temp, open(temp, "w") as f:
    f.write("new")
  with files.atomic_path(str(out / "target_savedmodel"), is_dir=True) as temp:
    open(os.path.join(temp, "saved_model.pb"), "w").close()
  assert (out / "report.md").read_text() == "new" and not (out / "report.md").is_symlink()
  assert os.listdir(out / "target_savedmodel") == ["saved_model.pb"]
  assert sorted(os.listdir(out)) == ["report.md", "target_savedmodel"]
  assert marker.read_bytes() == _MARKER and os.listdir(outside) == ["marker.txt"]


def test_remove_inside_stays_inside(tmp_path):
  outside, marker = _marker(tmp_path)
  out = tmp_path / "out"
  (out / "a").mkdir(parents=True)
  os.symlink(outside, out / "a" / "link")
  untrusted.remove_inside(str(out), "a/link")  # the link goes, not what it points to
  assert not os.path.lexists(out / "a" / "link") and marker.read_bytes() == _MARKER
  os.symlink(outside, out / "b")
  with pytest.raises(UserError, match="b is a symbolic link"):
    untrusted.remove_inside(str(out), "b/marker.txt")
  assert marker.read_bytes() == _MARKER


def test_planted_metrics_files_are_left_out_of_the_report(tmp_path, capsys):
  from tl_keras import artifacts
  from tl_keras.outputs import report

  outside, marker = _marker(tmp_path)
  out = tmp_path / "out"
  out.mkdir()
  (out / "source_metrics.json").write_text(
    json.dumps({"test_accuracy": 0.5, "wall_seconds": 1.0, "plots": ["../outside/marker.txt"]})
  )
  (out / "transfer_metrics.json").write_text(json.dumps({"test_accuracy": "99.9%"}))
  (out / "finetune_metrics.json").write_text("[" * 50_000 + "]" * 50_000)
  os.symlink(marker, out / "export_metrics.json")
  (out / "fuse_metrics.json").write_text(
    json.dumps({"per_class": {"a": {"precision": "x"}}, "plots": "x"})
  )
  report.update_report(str(out))
  text = (out / artifacts.REPORT).read_text()
  assert "50.00%" in text and "../" not in text and "99.9" not in text
  warnings = capsys.readouterr().err.splitlines()
  assert len(warnings) == 4 and all(
    w.startswith("warning: left out of report.md") for w in warnings
  )
  assert "test_accuracy" in warnings[0] and "nests JSON" in warnings[1]
  assert marker.read_bytes() == _MARKER


def test_noresume_with_planted_files_in_the_output_folder(small_mnist_dir, tmp_path):
  """A real run: a planted metrics file is left out with a warning (exit 0, not an internal
  error after the work), the planted backup's links are removed, not followed; a symlinked
  backup folder is refused in one line before training."""
  outside, marker = _marker(tmp_path)
  out = tmp_path / "out"
  backup = out / ".tl_keras_backup" / "pretrain"
  backup.mkdir(parents=True)
  os.symlink(outside, backup / "chief")
  (out / "transfer_metrics.json").write_text(
    json.dumps({"test_accuracy": "all", "plots": ["../../etc/passwd"]})
  )
  command = [
    "scripts/pretrain.py",
    f"--data_dir={small_mnist_dir}",
    f"--output_dir={out}",
    "--epochs=1",
    "--noresume",
  ]
  result = run_command(command)
  assert result.returncode == 0, result.stderr[-3000:]
  _no_raw_control(result.stdout, result.stderr)
  assert "warning: left out of report.md" in result.stderr
  assert "internal error" not in result.stderr
  assert "passwd" not in (out / "report.md").read_text()
  assert marker.read_bytes() == _MARKER and os.listdir(outside) == ["marker.txt"]
  shutil.rmtree(out / ".tl_keras_backup", ignore_errors=True)
  os.symlink(outside, out / ".tl_keras_backup")
  line = _one_error_line(run_command(command))
  assert ".tl_keras_backup is a symbolic link" in line
  assert marker.read_bytes() == _MARKER and os.listdir(outside) == ["marker.txt"]

