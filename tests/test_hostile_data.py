"""Hostile data (#13): image folders, .npz files, class names and outputs built from them.

Each payload is built here; each test checks a clean refusal (exit 2, one `error:` line,
nothing written) or the intended handling, not merely that nothing crashed.
"""

import csv
import io
import json
import os
import re
import shutil
import struct
import sys
import threading
import zipfile
import zlib

import h5py
import numpy as np
import pytest
from conftest import PEAK_WRAPPER
from conftest import assert_refused
from conftest import first_digits
from conftest import run_command
from conftest import write_image_folder
from conftest import write_npz

from tl_keras import artifacts
from tl_keras import limits
from tl_keras.config import settings
from tl_keras.data import labeled
from tl_keras.data import targets
from tl_keras.errors import UserError
from tl_keras.outputs import model_io
from tl_keras.outputs import report
from tl_keras.stages import transfer

INPUT_SHAPE = (28, 28, 1)
PER_CLASS = 8


@pytest.fixture(scope="module")
def digits(small_mnist_dir):
  """PER_CLASS images of each of the digits 5-7: (images uint8 [N,28,28], labels 0-2)."""
  return first_digits(small_mnist_dir, PER_CLASS)


def _folder(root, digits, names=("five", "six", "seven")):
  images, labels = digits
  return write_image_folder(root, images, labels, list(names))


def _png_bytes(pixels):
  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()


def _png_chunk(kind, payload):
  return (
    struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
  )


def _bomb_png(side=10_000):
  """A grey side x side PNG of zeros, compressed row by row: ~100 KB on disk for 10000."""
  compressor = zlib.compressobj(9)
  row = bytes(side + 1)  # filter byte and pixels
  idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
  header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey
  return (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", header)
    + _png_chunk(b"IDAT", idat)
    + _png_chunk(b"IEND", b"")
  )


def _transfer(source_model, output_dir, *flags):
  return run_command(
    ["scripts/transfer.py", f"--model={source_model[0]}", f"--output_dir={output_dir}", *flags]
  )


def test_fifo_in_a_class_folder_is_skipped_unopened(digits, tmp_path, capsys):
  root = _folder(tmp_path / "target", digits)
  fifo = os.path.join(root, "six", "x.png")
  os.mkfifo(fifo)  # opening it for reading would block until a writer comes
  outcome = {}

  def load():
    try:
      outcome["target"] = targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE)
    except BaseException as e:
      outcome["error"] = e

  thread = threading.Thread(target=load, daemon=True)
  thread.start()
  thread.join(timeout=30)
  if thread.is_alive():  # hung on the FIFO: release it, then fail
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    thread.join(timeout=10)
    pytest.fail("reading the image folder blocked on a FIFO")
  assert "error" not in outcome, outcome.get("error")
  target = outcome["target"]
  assert len(target.x_train) + len(target.x_test) == 3 * PER_CLASS
  warning = capsys.readouterr().err
  assert warning.startswith("warning: skipped 1 file(s)") and fifo in warning


def test_symlinks_out_of_the_folder_are_not_read(digits, tmp_path, capsys, monkeypatch):
  root = _folder(tmp_path / "target", digits)
  outside = tmp_path / "outside"
  outside.mkdir()
  secret = outside / "secret.png"
  secret.write_bytes(_png_bytes(digits[0][0]))  # a valid image: only its place gets it skipped
  os.symlink(secret, os.path.join(root, "five", "leak.png"))
  os.symlink(outside, os.path.join(root, "five", "leak_dir"))
  os.symlink(os.path.join(root, "five", "0.png"), os.path.join(root, "seven", "inside.png"))
  opened = []
  read_regular_file = labeled.read_regular_file
  monkeypatch.setattr(
    labeled,
    "read_regular_file",
    lambda path, *args: opened.append(path) or read_regular_file(path, *args),
  )
  target = targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE)
  # The symlink inside the folder counts; the two pointing out of it are skipped, unread.
  assert len(target.x_train) + len(target.x_test) == 3 * PER_CLASS + 1
  assert not [path for path in opened if path.startswith(str(outside))], opened
  warning = capsys.readouterr().err
  assert warning.startswith("warning: skipped 2 file(s)")
  assert "leak.png" in warning and "leak_dir" in warning and "inside.png" not in warning


def test_decompression_bomb_png_is_refused_before_decoding(
  digits, source_model, tmp_path, monkeypatch
):
  root = _folder(tmp_path / "target", digits)
  bomb = _bomb_png()
  assert len(bomb) < 200_000
  (tmp_path / "target" / "six" / "bomb.png").write_bytes(bomb)
  # In process: refused from the header, TensorFlow's decoder never called on it.
  import tensorflow as tf

  decode = tf.io.decode_image
  decoded = []
  monkeypatch.setattr(
    tf.io,
    "decode_image",
    lambda contents, *a, **k: decoded.append(len(contents)) or decode(contents, *a, **k),
  )
  with pytest.raises(UserError, match="bomb.png declares 100,000,000 pixels"):
    targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE)
  assert len(bomb) not in decoded
  monkeypatch.undo()
  # A GIF is decoded frame by frame: 11 frames of 2000x2000 declare 44 million pixels.
  from PIL import Image

  frames = [np.zeros((2000, 2000), np.uint8) for _ in range(11)]
  for index, frame in enumerate(frames):
    frame[index, index] = 255  # frames that differ, so that Pillow keeps them all
  frames = [Image.fromarray(frame) for frame in frames]
  os.remove(tmp_path / "target" / "six" / "bomb.png")
  frames[0].save(
    tmp_path / "target" / "six" / "frames.gif", save_all=True, append_images=frames[1:]
  )
  with pytest.raises(UserError, match=r"frames.gif declares 44,000,000 pixels .*all frames"):
    targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE)
  (tmp_path / "target" / "six" / "bomb.png").write_bytes(bomb)
  os.remove(tmp_path / "target" / "six" / "frames.gif")
  # From the command line, in a process of its own whose peak memory we read.
  output_dir = tmp_path / "out"
  result = run_command(
    [
      "-c",
      PEAK_WRAPPER,
      sys.executable,
      "scripts/transfer.py",
      f"--model={source_model[0]}",
      f"--output_dir={output_dir}",
      f"--target=dir:{root}",
    ]
  )
  line = assert_refused(result, output_dir, "bomb.png", f"{limits.MAX_IMAGE_PIXELS:,}")
  assert "MAX_IMAGE_PIXELS" in line
  peak_kib = int(result.stdout.strip().splitlines()[-1].split()[-1])
  assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


def test_empty_zero_size_and_truncated_images_are_skipped(digits, tmp_path, capsys):
  root = _folder(tmp_path / "target", digits)
  six = tmp_path / "target" / "six"
  zero_header = struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)
  zero_png = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", zero_header)
    + _png_chunk(b"IDAT", zlib.compress(b""))
    + _png_chunk(b"IEND", b"")
  )
  zero_gif = (
    b"GIF89a"
    + struct.pack("<HHBBB", 0, 0, 0x80, 0, 0)
    + bytes(3)
    + b"\xff" * 3
    + b"\x2c"
    + struct.pack("<HHHHB", 0, 0, 0, 0, 0)
    + b"\x02\x02\x44\x01\x00\x3b"
  )
  digit = _png_bytes(digits[0][0])
  (six / "zero.png").write_bytes(zero_png)
  (six / "zero.gif").write_bytes(zero_gif)
  (six / "empty.png").write_bytes(b"")
  (six / "truncated.png").write_bytes(digit[: len(digit) // 2])
  (six / "header_only.png").write_bytes(digit[:40])
  (six / "thin.png").write_bytes(_png_bytes(np.full((1, 60), 255, np.uint8)))  # padded: 0 rows
  target = targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE, fit="pad")
  assert len(target.x_train) + len(target.x_test) == 3 * PER_CLASS
  warning = capsys.readouterr().err
  assert warning.startswith("warning: skipped 6 file(s)"), warning
  for name in ("zero.png", "zero.gif", "empty.png", "truncated.png", "header_only.png", "thin.png"):
    assert name in warning


def test_class_folder_name_with_a_newline_is_refused(digits, source_model, tmp_path):
  root = _folder(tmp_path / "target", digits, names=("five", "six\nseven", "eight"))
  output_dir = tmp_path / "out"
  line = assert_refused(
    _transfer(source_model, output_dir, f"--target=dir:{root}"),
    output_dir,
    "'six\\nseven'",
    "control character",
    "U+000A",
  )
  assert "class folder in" in line
  with pytest.raises(UserError, match="U\\+0009"):
    labeled.check_class_names(["a", "tab\there"], "test")


def _npz_one_class(folder):
  x, y = np.zeros((4, 28, 28), np.uint8), np.full(4, 3)
  return write_npz(folder / "one.npz", x_train=x, y_train=y, x_test=x, y_test=y)


@pytest.mark.parametrize("kind", ["mnist", "npz", "dir"])
def test_one_class_target_is_refused(kind, digits, source_model, small_mnist_dir, tmp_path):
  if kind == "mnist":
    spec = "mnist:5"
  elif kind == "npz":
    spec = _npz_one_class(tmp_path)
  else:
    images, labels = digits
    write_image_folder(tmp_path / "target", images[labels == 0], labels[labels == 0], ["five"])
    spec = f"dir:{tmp_path / 'target'}"
  output_dir = tmp_path / "out"
  result = _transfer(
    source_model,
    output_dir,
    f"--target={spec}",
    f"--data_dir={small_mnist_dir}",
    "--train_per_class=2",
  )
  assert_refused(result, output_dir, "1 class(es)", "at least two")


def _npy(header):
  buffer = io.BytesIO()
  np.lib.format.write_array_header_1_0(buffer, header)
  return buffer.getvalue()


def _npz_with(path, **members):
  """An .npz of small valid arrays, members replaced by raw bytes where given."""
  x, y = np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 0, 1])
  with zipfile.ZipFile(path, "w") as archive:
    for key, value in dict(x_train=x, y_train=y, x_test=x, y_test=y).items():
      if key in members:
        archive.writestr(f"{key}.npy", members[key])
      else:
        buffer = io.BytesIO()
        np.save(buffer, value)
        archive.writestr(f"{key}.npy", buffer.getvalue())
  return path


def _patch_declared_size(path, member, size):
  """Rewrites the central directory's uncompressed size of `member` (a lie about it)."""
  raw = bytearray(path.read_bytes())
  start = 0
  while True:
    start = raw.index(b"PK\x01\x02", start)
    name_length = struct.unpack_from("<H", raw, start + 28)[0]
    if raw[start + 46 : start + 46 + name_length] == member.encode():
      struct.pack_into("<I", raw, start + 24, size)
      break
    start += 4
  path.write_bytes(bytes(raw))


def test_npz_declaring_a_huge_array_is_refused_before_loading(source_model, tmp_path, monkeypatch):
  huge = {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**5, 10**5)}
  path = _npz_with(tmp_path / "huge.npz", x_train=_npy(huge) + bytes(64))
  assert path.stat().st_size < 10_000
  output_dir = tmp_path / "out"
  assert_refused(
    _transfer(source_model, output_dir, f"--target=npz:{path}"),
    output_dir,
    "x_train declares shape (1000000, 100000, 100000)",
    f"{limits.MAX_DATA_BYTES:,}",
  )
  # The other hostile .npz forms, in process, with np.load never reached.
  monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load reached"))
  for name, members, message in [
    ("huge", {}, "declares shape"),
    (
      "object",
      {"y_train": _npy({"descr": "|O", "fortran_order": False, "shape": (4,)})},
      "numeric arrays only",
    ),
    (
      "record",
      {"y_test": _npy({"descr": [("a", "<i4")], "fortran_order": False, "shape": (4,)})},
      "numeric arrays only",
    ),
    (
      "negative",
      {"x_test": _npy({"descr": "|u1", "fortran_order": False, "shape": (-4, 28, 28)})},
      "negative shape",
    ),
    ("not npy", {"y_train": b"just some bytes"}, "not a .npy array"),
    (
      "long header",
      {"x_train": b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30)},
      "header of 1,073,741,824 bytes",
    ),
  ]:
    target = path if name == "huge" else _npz_with(tmp_path / f"{name}.npz", **members)
    with pytest.raises(UserError, match=message):
      targets.load_target(f"npz:{target}")
  lying = _npz_with(tmp_path / "lying.npz")
  _patch_declared_size(lying, "x_train.npy", 0xFFFFFFF0)
  with pytest.raises(UserError, match="zip entry x_train.npy declares 4,294,967,280 bytes"):
    targets.load_target(f"npz:{lying}")
  monkeypatch.undo()
  flat = tmp_path / "flat.npz"
  x, y = np.zeros((4, 0, 28), np.uint8), np.array([0, 1, 0, 1])
  np.savez(flat, x_train=x, y_train=y, x_test=x, y_test=y)
  with pytest.raises(UserError, match="height and width of at least 1"):
    targets.load_target(f"npz:{flat}")
  thin = np.full((4, 1, 60), 255, np.uint8)
  np.savez(flat, x_train=thin, y_train=y, x_test=thin, y_test=y)
  with pytest.raises(UserError, match="1x60 pixels become empty .* --target_fit=pad"):
    targets.load_target(f"npz:{flat}", input_shape=INPUT_SHAPE, fit="pad")


@pytest.fixture(scope="module")
def hostile_names_run(digits, source_model, small_mnist_dir, tmp_path_factory):
  """transfer.run on a dir: target whose folder names are a formula and a Markdown image."""
  root = tmp_path_factory.mktemp("hostile_names")
  names = ('=HYPERLINK("evil.example","x")', "@SUM(1+1)", "![x](track.png)")
  _folder(root / "target", digits, names=names)
  output_dir = root / "out"
  config = settings.make(
    settings.TransferConfig,
    model=source_model[0],
    target=f"dir:{root / 'target'}",
    output_dir=str(output_dir),
    data_dir=small_mnist_dir,
  )
  return output_dir, transfer.run(config)


def test_formula_class_names_are_escaped_in_predictions_csv(hostile_names_run):
  output_dir, metrics = hostile_names_run
  assert '=HYPERLINK("evil.example","x")' in metrics["classes"]  # names kept as they are
  with open(output_dir / artifacts.PREDICTIONS, newline="") as f:
    text = f.read()
  rows = list(csv.reader(io.StringIO(text)))
  assert rows[0] == ["index", "predicted_class", "confidence", "true_label"]
  truths = {row[3] for row in rows[1:]}
  assert truths == {'\'=HYPERLINK("evil.example","x")', "'@SUM(1+1)", "![x](track.png)"}
  for line, row in zip(text.splitlines()[1:], rows[1:]):
    assert line.startswith(f"{int(row[0])},")  # index: a bare number
    assert 0 <= float(row[2]) <= 1 and f",{row[2]}," in line  # confidence: a bare number
  for cell in [row[1] for row in rows[1:]] + list(truths):
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
  assert [transfer.csv_cell(text) for text in ("-2+3", "+1", "\tx", "\rx", "a=b", "7")] == [
    "'-2+3",
    "'+1",
    "'\tx",
    "'\rx",
    "a=b",
    "7",
  ]


def test_markdown_class_name_adds_no_image_to_the_report(hostile_names_run, tmp_path):
  output_dir, _ = hostile_names_run
  text = (output_dir / artifacts.REPORT).read_text()
  images = [line for line in text.splitlines() if "![" in line]
  assert images == ["![transfer confusion](transfer_confusion.png)"], images
  assert "\\!\\[x\\]\\(track.png\\)" in text
  stages = {
    "transfer": {
      "classes": ["![x](http://evil/track.png)", "<img src=x>", "a|b"],
      "target": "dir:`x`_*y*",
    }
  }
  with open(report.write_report(str(tmp_path), stages, None, settings.report_keys())) as f:
    written = f.read()
  assert not re.search(r"(?<!\\)(\]\(|<img|\|b)", written)  # none left unescaped
  assert "- classes: \\!\\[x\\]\\(http://evil/track.png\\), \\<img src=x\\>, a\\|b" in written
  assert "- target: dir:\\`x\\`\\_\\*y\\*" in written


def test_model_metadata_class_names_with_control_characters_are_refused(source_model, tmp_path):
  hostile = tmp_path / "hostile.h5"
  shutil.copyfile(source_model[0], hostile)
  with h5py.File(hostile, "a") as f:
    metadata = json.loads(f.attrs[artifacts.METADATA_ATTR])
    metadata["class_names"] = ["0", "1", "2\r\n=cmd", "3", "4"]
    f.attrs[artifacts.METADATA_ATTR] = json.dumps(metadata)
  output_dir = tmp_path / "out"
  result = run_command(
    [
      "scripts/transfer.py",
      f"--model={hostile}",
      f"--output_dir={output_dir}",
      "--target=mnist:5-9",
    ]
  )
  assert_refused(result, output_dir, f"model {hostile}", "'2\\r\\n=cmd'", "control character")
  with h5py.File(hostile, "a") as f:
    f.attrs[artifacts.METADATA_ATTR] = json.dumps({"class_names": "01234"})
  with pytest.raises(UserError, match="must be a list of strings"):
    model_io.read_metadata(str(hostile))
  with pytest.raises(UserError, match="names 2 classes but the model has 5 outputs"):
    model_io.class_names_of(_FakeModel(), {"class_names": ["a", "b"]}, str(hostile))


class _FakeModel:
  output_shape = (None, 5)


def test_serving_signature_answers_an_empty_batch(target_model):
  import tensorflow as tf

  output_dir, metrics = target_model
  serve = tf.saved_model.load(str(output_dir / artifacts.SAVED_MODEL_DIR)).signatures[
    "serving_default"
  ]
  classes = len(metrics["classes"])
  for shape in ([0, 28, 28], [0, 28, 28, 1]):
    outputs = serve(images=tf.zeros(shape, tf.uint8))
    assert outputs["probabilities"].shape == (0, classes)
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["class_id"].shape == (0,) and outputs["class_id"].dtype == tf.int64
  # Non-empty batches are unchanged: one image alone and in a batch get the same answer.
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
  batch = serve(images=tf.constant(images))
  single = serve(images=tf.constant(images[:1]))
  assert batch["probabilities"].shape == (3, classes)
  np.testing.assert_allclose(batch["probabilities"][:1], single["probabilities"], atol=1e-5)
