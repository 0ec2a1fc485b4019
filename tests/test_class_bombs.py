"""Quantities a small file sets and memory follows: the number of target classes, a model's
output count and its feature width are counted against the memory budget where they are used
(probes, per-class metrics, confusion matrices, plots, predictions), before allocating."""

import os

import numpy as np
import pytest
from conftest import run_command
from conftest import write_npz

from tl_keras import limits
from tl_keras.data import npz
from tl_keras.errors import UserError
from tl_keras.evaluation import metrics
from tl_keras.outputs import plots


def _class_bomb(path, classes=1_000_000):
  """An .npz of `classes` 1x1 images, each its own class: 5 MB, 10^6 classes."""
  x = np.zeros((classes, 1, 1), np.uint8)
  return write_npz(
    path, x_train=x, y_train=np.arange(classes, dtype=np.int32), x_test=x[:3], y_test=np.arange(3)
  )


def test_an_npz_of_a_million_classes_is_refused_before_its_class_names_exist(tmp_path):
  spec = _class_bomb(tmp_path / "bomb.npz")
  with pytest.raises(UserError, match=r"1,000,000 classes, more than the 16,384") as error:
    npz.load_npz_target(spec.partition(":")[2])
  assert "--memory_budget_mb" in str(error.value)
  with limits.memory_budget(1 << 16):  # a budget 64 times larger allows 64 times the classes
    assert limits.MAX_CLASSES == 64 * 16_384


def test_per_class_metrics_are_counted_in_one_pass_with_the_same_numbers():
  rng = np.random.default_rng(0)
  y_true, y_pred = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
  names = [str(i) for i in range(7)]
  got = metrics.per_class_metrics(y_true, y_pred, names)
  for label, name in enumerate(names):
    hits = int(np.sum((y_pred == label) & (y_true == label)))
    assert got["per_class"][name]["support"] == int(np.sum(y_true == label))
    assert got["per_class"][name]["precision"] == round(hits / np.sum(y_pred == label), 6)


def test_a_confusion_matrix_of_many_classes_is_a_readable_summary():
  classes = 20_000  # a full matrix would be 3.2 GB of int64 and 20,000 tick labels a side
  rng = np.random.default_rng(0)
  y_true = np.concatenate([np.arange(classes), np.full(500, 7)])
  y_pred = np.where(rng.random(len(y_true)) < 0.5, y_true, rng.integers(0, classes, len(y_true)))
  names = [f"class {i}" for i in range(classes)]
  figure = plots.confusion_matrix_figure(y_true, y_pred, names, "many")
  axes = figure.axes[0]
  rows = [tick.get_text() for tick in axes.get_yticklabels()]
  columns = [tick.get_text() for tick in axes.get_xticklabels()]
  assert len(rows) == 30 and "class 7" in rows
  assert len(columns) <= 31 and columns[-1] == "other"
  assert "30 of 20,000 classes" in axes.get_title()
  small = plots.confusion_matrix_figure([0, 1, 2], [0, 2, 2], ["a", "b", "c"], "few")
  assert [tick.get_text() for tick in small.axes[0].get_yticklabels()] == ["a", "b", "c"]


# Three payloads built with Keras: a 28x28 grey model of 3 classes, one of 10^5 outputs, and one
# with a Dense layer 10^5 wide before its 3-class head (about 2 MB each).
_MODELS = """
import sys
from tl_keras.keras_api import keras
from tl_keras.outputs import model_io
def model(width, outputs):
  inputs = keras.Input((28, 28, 1))
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
  if width:
    x = keras.layers.Dense(width, activation="relu")(x)
  return keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(x))
model_io.save_h5(model(0, 3), sys.argv[1] + "/small.h5", {})
model_io.save_h5(model(0, 100_000), sys.argv[1] + "/outputs.h5", {})
model_io.save_h5(model(100_000, 3), sys.argv[1] + "/wide.h5", {})
"""

_COMMAND = """
import resource, sys
from tl_keras import cli
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
  getattr(cli, sys.argv[0] + "_main")()
finally:
  print("PEAK_KB", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
  folder = tmp_path_factory.mktemp("payloads")
  made = run_command(["-c", _MODELS, str(folder)])
  assert made.returncode == 0, made.stderr[-3000:]
  return folder


def _run(command, tmp_path, *flags):
  marker = tmp_path / "marker"
  marker.write_bytes(b"untouched")
  output_dir = tmp_path / "out"
  result = run_command(["-c", _COMMAND, command, f"--output_dir={output_dir}", *flags])
  peak_kb = int(result.stdout.split("PEAK_KB")[1].split()[0])
  assert peak_kb < 2048 * 1024, f"peak {peak_kb >> 10} MiB"
  assert marker.read_bytes() == b"untouched"
  assert not any(ord(c) < 32 and c not in "\n\t" for c in result.stderr + result.stdout)
  return result, output_dir, peak_kb


def _assert_one_line(result, output_dir, *fragments, written=()):
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  assert not output_dir.exists() or set(os.listdir(output_dir)) <= set(written)


@pytest.mark.slow
def test_cli_refuses_a_million_class_npz(payloads, tmp_path):
  spec = _class_bomb(tmp_path / "bomb.npz")
  result, output_dir, _ = _run(
    "transfer", tmp_path, f"--model={payloads}/small.h5", f"--target={spec}"
  )
  _assert_one_line(result, output_dir, "1,000,000 classes")


@pytest.mark.slow
def test_cli_refuses_a_model_of_100000_outputs(payloads, tmp_path):
  spec = write_npz(tmp_path / "t.npz")
  result, output_dir, _ = _run(
    "transfer", tmp_path, f"--model={payloads}/outputs.h5", f"--target={spec}"
  )
  _assert_one_line(result, output_dir, "100,000 classes", "outputs.h5")


@pytest.mark.slow
def test_cli_features_100000_wide_are_refused_past_the_budget(payloads, tmp_path):
  # 1,000 blank images: their features take 1000 x 10^5 x 8 bytes = 763 MiB as float64.
  x = np.zeros((1000, 28, 28), np.uint8)
  spec = write_npz(tmp_path / "t.npz", x_train=x, y_train=np.arange(1000) % 3)
  result, output_dir, _ = _run(
    "transfer", tmp_path, f"--model={payloads}/wide.h5", f"--target={spec}"
  )
  # Refused where the features are taken, before any output file is written.
  _assert_one_line(result, output_dir, "100,000 output values each")


def test_an_npz_of_many_zip_entries_is_refused_before_its_directory_is_parsed(
  tmp_path, monkeypatch
):
  import zipfile

  path = tmp_path / "entries.npz"
  with zipfile.ZipFile(path, "w") as archive:
    for i in range(2000):
      archive.writestr(f"{i}.npy", b"")

  def parse(*args, **kwargs):
    raise AssertionError("the zip directory was parsed")

  monkeypatch.setattr(npz.zipfile, "ZipFile", parse)
  with pytest.raises(UserError, match=r"declares 2,000 entries in [\d,]+ bytes, above the 1,024"):
    npz.load_npz(str(path))


def _any_size_model(grow=False):
  from tl_keras.keras_api import keras

  inputs = keras.Input((None, None, 1))
  x = keras.layers.UpSampling2D(4)(inputs) if grow else inputs
  x = keras.layers.Conv2D(64, 3, padding="same")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_a_model_of_any_input_size_is_counted_at_the_images_fed():
  from tl_keras.loading import budgets
  from tl_keras.models import networks

  model = _any_size_model()
  # Counted at 1 per unknown dimension, this model's convolution is 64 floats an image, and
  # 1024 images a batch; at 2000x2000 its output alone is 977 MiB an image.
  assert budgets.prediction_batch_size(model, 1024) == 1024
  with pytest.raises(UserError, match=r"takes images of any size and, at 2000x2000x1"):
    networks.predict(model, np.zeros((2, 2000, 2000, 1), np.uint8))
  batch = budgets.prediction_batch_size(model, 1024, image_shape=(100, 100, 1))
  assert batch * 100 * 100 * 64 * 4 <= limits.MAX_BATCH_ACTIVATION_BYTES < 1024 * 100 * 100 * 256
  with pytest.raises(UserError, match="up_sampling2d.*cannot be estimated"):
    networks.predict(_any_size_model(grow=True), np.zeros((1, 28, 28, 1), np.uint8))
