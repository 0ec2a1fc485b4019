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
from conftest import PEAK_WRAPPER
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
    "--steps_per_epoch=4",  # what is checked is what the run writes, not what it learns
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


# --- items 1, 3, 8: data sizes after framing, labels, decoder work, the environment ------------

INPUT_SHAPE = (28, 28, 1)


def _tiny_model_file(tmp_path):
  inputs = keras.Input(INPUT_SHAPE, name="image")
  x = keras.layers.Flatten(name="flatten")(inputs)
  model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="dense")(x))
  path = tmp_path / "tiny.h5"
  model.save(path)
  return path


def test_npz_of_many_tiny_images_is_refused_by_its_size_after_framing(tmp_path):
  from tl_keras import limits
  from tl_keras.data import targets

  count = limits.MAX_FITTED_DATA_BYTES // (28 * 28 * 4) + 1000  # 1x1 images, ~170,000
  x = np.zeros((count, 1, 1), np.uint8)
  y = np.arange(count) % 3
  path = tmp_path / "tiny_images.npz"
  np.savez_compressed(path, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
  assert path.stat().st_size < 600_000
  with pytest.raises(UserError, match="MAX_FITTED_DATA_BYTES"):
    targets.load_target(f"npz:{path}", input_shape=INPUT_SHAPE)
  output_dir = tmp_path / "out"
  result = run_command(
    [
      "-c",
      PEAK_WRAPPER,
      sys.executable,
      "scripts/transfer.py",
      f"--model={_tiny_model_file(tmp_path)}",
      f"--output_dir={output_dir}",
      f"--target=npz:{path}",
    ]
  )
  peak_kib = int(result.stdout.strip().splitlines()[-1].split()[-1])
  result.stdout = ""
  line = _one_error_line(result)
  assert "images fitted to the model's input 28x28x1" in line, line
  assert not output_dir.exists() or not os.listdir(output_dir)
  assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
  print(f"peak RSS {peak_kib / 1024:.0f} MiB")


def test_huge_label_values_are_remapped_without_a_table(tmp_path):
  from tl_keras.data import labeled
  from tl_keras.data import targets

  x = np.zeros((6, 28, 28), np.uint8)
  y = np.array([0, 2**62, 7, 0, 2**62, 7], np.int64)
  path = tmp_path / "labels.npz"
  np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
  target = targets.load_target(f"npz:{path}")
  assert target.class_names == ["0", "7", str(2**62)]
  assert target.y_train.tolist() == [0, 2, 1, 0, 2, 1]
  assert labeled.remap_labels(np.array([7, 5, 9]), [9, 7]).tolist() == [1, -1, 0]
  np.savez(path, x_train=x, y_train=y.astype(np.uint64) + 2**63, x_test=x, y_test=y)
  with pytest.raises(UserError, match="labels must be at most"):
    targets.load_target(f"npz:{path}")


def _jpeg(progressive, extra_scans=0):
  """A 32x32 JPEG from Pillow; `extra_scans` copies of its last scan before EOI."""
  import io

  from PIL import Image

  pixels = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG", progressive=progressive, quality=90)
  data = buffer.getvalue()
  last = data.rindex(b"\xff\xda")
  return data[:-2] + data[last:-2] * extra_scans + data[-2:]


def test_jpeg_with_too_many_scans_is_refused_before_decoding(tmp_path, monkeypatch):
  import tensorflow as tf

  from tl_keras import limits
  from tl_keras.data import folders
  from tl_keras.data import targets

  assert folders._jpeg_scans(_jpeg(False)) == 1
  assert 2 <= folders._jpeg_scans(_jpeg(True)) <= 20
  hostile = _jpeg(True, extra_scans=2 * limits.MAX_JPEG_SCANS)
  assert folders._jpeg_scans(hostile) > limits.MAX_JPEG_SCANS
  root = tmp_path / "target"
  for name in ("a", "b"):
    (root / name).mkdir(parents=True)
    for index in range(3):
      (root / name / f"{index}.jpg").write_bytes(_jpeg(index % 2 == 0))
  target = targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE)  # photos still load
  assert len(target.x_train) + len(target.x_test) == 6
  (root / "b" / "scans.jpg").write_bytes(hostile)
  decoded = []
  decode = tf.io.decode_image
  monkeypatch.setattr(
    tf.io, "decode_image", lambda data, *a, **k: decoded.append(data) or decode(data, *a, **k)
  )
  with pytest.raises(UserError, match=r"scans.jpg is a JPEG of more than 256 scans"):
    targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE)
  sizes = [len(data if isinstance(data, bytes) else data.numpy()) for data in decoded]
  assert len(hostile) not in sizes


def _gif(screen, frames):
  """A GIF of `frames` (width, height) descriptors on a `screen` (width, height)."""
  import struct

  body = b"".join(
    b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00" for w, h in frames
  )
  return (
    b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + bytes(3) + b"\xff" * 3 + body + b";"
  )


def test_gif_canvas_counts_the_widest_by_the_tallest_frame(tmp_path):
  from tl_keras.data import folders
  from tl_keras.data import targets

  wide_and_tall = _gif((1, 1), [(8000, 1), (1, 8000)])
  assert folders._gif_frame_pixels(wide_and_tall) == 2 * 8000 * 8000  # frame areas: 16,000
  assert folders._gif_frame_pixels(_gif((10, 10), [(10, 10)] * 3)) == 300
  root = tmp_path / "target"
  for name in ("a", "b"):
    (root / name).mkdir(parents=True)
    (root / name / "0.png").write_bytes(_png())
  (root / "b" / "canvas.gif").write_bytes(wide_and_tall)
  with pytest.raises(UserError, match="canvas.gif declares .* all frames"):
    targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE)


def _png(value=128):
  import io

  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(np.full((28, 28), value, np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


def test_unlabeled_folder_nested_past_the_recursion_limit(tmp_path, monkeypatch):
  from tl_keras.data import folders

  root = tmp_path / "unlabeled"
  (root / "top").mkdir(parents=True)
  (root / "top" / "0.png").write_bytes(_png())
  deep = str(root)
  for _ in range(300):  # os.makedirs itself recurses
    deep = os.path.join(deep, "d")
    os.mkdir(deep)
  with open(os.path.join(deep, "1.png"), "wb") as f:
    f.write(_png(200))
  expected = [os.path.join(deep, "1.png"), str(root / "top" / "0.png")]
  limit = sys.getrecursionlimit()
  try:
    sys.setrecursionlimit(150)  # the tree is nested deeper than this
    with pytest.raises(RecursionError):  # the control: os.walk recurses once per level
      list(os.walk(root))
    assert folders._files_under(str(root)) == expected
  finally:
    sys.setrecursionlimit(limit)
  images = folders.load_image_tree(str(root), INPUT_SHAPE)
  assert len(images) == 2


def test_tf_config_port_already_taken_is_one_line(tmp_path):
  import socket

  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = {
      "cluster": {"worker": [f"127.0.0.1:{port}", "127.0.0.1:1"]},
      "task": {"type": "worker", "index": 0},
    }
    output_dir = tmp_path / "out"
    result = run_command(
      ["scripts/pipeline.py", "--strategy=multi_worker", f"--output_dir={output_dir}"],
      env={"TF_CONFIG": json.dumps(config)},
    )
  line = _one_error_line(result)
  assert f"port {port} cannot be opened" in line
  assert not output_dir.exists() or not os.listdir(output_dir)


def test_sigterm_removes_tensorflows_temporary_files(small_mnist_dir, tmp_path):
  import signal
  import subprocess

  from conftest import REPO_ROOT
  from conftest import stop
  from conftest import wait_for

  temp = tmp_path / "tmp"
  temp.mkdir()
  out = tmp_path / "out"
  log = tmp_path / "stdout.log"
  with open(log, "w") as stdout:
    process = subprocess.Popen(
      [
        sys.executable,
        "scripts/pretrain.py",
        f"--data_dir={small_mnist_dir}",
        f"--output_dir={out}",
        "--epochs=100",
      ],
      cwd=REPO_ROOT,
      env=dict(os.environ, TMPDIR=str(temp)),
      stdout=stdout,
      stderr=subprocess.PIPE,
      text=True,
    )

    def generated():
      return [
        name for _, _, names in os.walk(temp) for name in names if name.startswith("__autograph")
      ]

    wait_for(lambda: generated(), process, "TensorFlow wrote its autograph files", 300)
    assert stop(process, signal.SIGTERM) == -signal.SIGTERM
  assert os.listdir(temp) == [], list(os.walk(temp))
