"""Tests of the PNG plots and the Markdown run report."""

import os
import re
import sys
import urllib.parse

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest

from tl_keras.outputs import files
from tl_keras.outputs import plots
from tl_keras.outputs import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIGITS = [str(d) for d in range(5, 10)]


def read_png(path):
  """Checks `path` is a PNG and returns its pixels, [H, W, 4]."""
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  pixels = matplotlib.image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0
  return pixels


def images_with_mistakes(num_images, num_wrong, shape=(28, 28), dtype=np.uint8):
  """Random images, labels cycling over 5 classes, and predictions wrong on the first few."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(num_images, *shape)).astype(dtype)
  if dtype != np.uint8:
    images /= 255.0
  y_true = np.arange(num_images) % 5
  y_pred = y_true.copy()
  y_pred[:num_wrong] = (y_true[:num_wrong] + 1) % 5
  return images, y_true, y_pred


def test_confusion_matrix_counts():
  y_true = [0, 0, 1, 1, 1, 2]
  y_pred = [0, 1, 1, 1, 2, 0]
  np.testing.assert_array_equal(
    plots.confusion_matrix(y_true, y_pred, 3), [[1, 1, 0], [0, 2, 1], [1, 0, 0]]
  )


def test_confusion_matrix_rectangular_and_empty():
  counts = plots.confusion_matrix([0, 1, 1], [3, 3, 0], num_classes=2, num_pred_classes=4)
  np.testing.assert_array_equal(counts, [[0, 0, 0, 1], [1, 0, 0, 1]])
  np.testing.assert_array_equal(plots.confusion_matrix([], [], 2), np.zeros((2, 2)))


@pytest.mark.parametrize("y_true, y_pred", [([0, 3], [0, 1]), ([0, 1], [0, -1]), ([0], [0, 1])])
def test_confusion_matrix_rejects_bad_labels(y_true, y_pred):
  with pytest.raises(ValueError):
    plots.confusion_matrix(y_true, y_pred, 3)


def test_training_curves(tmp_path):
  history = {
    "loss": [0.9, 0.4, 0.2],
    "accuracy": [0.7, 0.9, 0.95],
    "val_loss": [0.5, 0.3, 0.25],
    "val_accuracy": [0.85, 0.92, 0.94],
  }
  path = str(tmp_path / "curves.png")
  assert plots.plot_training_curves(history, path, "pretrain on 0-4") == path
  assert read_png(path).shape == (320, 800, 4)
  assert os.listdir(tmp_path) == ["curves.png"]


def test_training_curves_single_epoch_and_empty(tmp_path):
  plots.plot_training_curves(
    {"loss": [0.3], "accuracy": [0.9]}, str(tmp_path / "one.png"), "one epoch", first_epoch=3
  )
  plots.plot_training_curves({}, str(tmp_path / "none.png"), "no epochs")
  read_png(tmp_path / "one.png")
  read_png(tmp_path / "none.png")
  assert sorted(os.listdir(tmp_path)) == ["none.png", "one.png"]


def test_confusion_matrix_plot(tmp_path):
  y_true = np.repeat(np.arange(5), 20)
  y_pred = y_true.copy()
  y_pred[::7] = 0
  path = plots.plot_confusion_matrix(
    y_true, y_pred, DIGITS, str(tmp_path / "cm.png"), "finetune on 5-9"
  )
  read_png(path)
  plots.plot_confusion_matrix(
    y_true,
    y_pred % 3,
    DIGITS,
    str(tmp_path / "rect.png"),
    "transfer",
    pred_class_names=["zero", "one", "two"],
  )
  read_png(tmp_path / "rect.png")
  assert sorted(os.listdir(tmp_path)) == ["cm.png", "rect.png"]


@pytest.mark.parametrize(
  "shape, dtype", [((28, 28), np.uint8), ((28, 28, 1), np.float32), ((32, 32, 3), np.uint8)]
)
def test_misclassified_grid(tmp_path, shape, dtype):
  images, y_true, y_pred = images_with_mistakes(40, 7, shape, dtype)
  confidences = np.linspace(0.5, 1.0, 40)
  path = plots.plot_misclassified(
    images,
    y_true,
    y_pred,
    DIGITS,
    str(tmp_path / "wrong.png"),
    "finetune mistakes",
    confidences=confidences,
  )
  # 7 mistakes: 5 columns, 2 rows of 1.5 x 1.7 inches plus the title, at 100 dpi.
  assert read_png(path).shape == (400, 750, 4)
  assert os.listdir(tmp_path) == ["wrong.png"]


def test_misclassified_shows_at_most_max_images(tmp_path):
  images, y_true, y_pred = images_with_mistakes(40, 30)
  path = plots.plot_misclassified(
    images, y_true, y_pred, DIGITS, str(tmp_path / "wrong.png"), "mistakes", max_images=25
  )
  assert read_png(path).shape == (910, 750, 4)  # 5 x 5


def test_misclassified_without_mistakes(tmp_path):
  images, y_true, _ = images_with_mistakes(10, 0)
  path = plots.plot_misclassified(
    images, y_true, y_true, DIGITS, str(tmp_path / "wrong.png"), "no mistakes"
  )
  assert read_png(path).shape == (120, 400, 4)  # the small "no misclassified images" figure


def test_misclassified_compares_names_across_label_sets(tmp_path):
  images, _, _ = images_with_mistakes(3, 0)
  # Target classes 5, 6, 7 against source classes 7, 6: only the first image is wrong.
  path = plots.plot_misclassified(
    images,
    [1, 1, 2],
    [1, 1, 0],
    ["5", "6", "7"],
    str(tmp_path / "wrong.png"),
    "transfer",
    pred_class_names=["7", "6"],
  )
  assert read_png(path).shape == (120, 400, 4)
  plots.plot_misclassified(
    images,
    [0, 1, 2],
    [0, 1, 0],
    ["5", "6", "7"],
    str(tmp_path / "wrong.png"),
    "transfer",
    pred_class_names=["7", "6"],
  )
  assert read_png(path).shape == (230, 350, 4)  # one image, minimum width


def test_misclassified_rejects_mismatched_lengths(tmp_path):
  images, y_true, y_pred = images_with_mistakes(10, 3)
  with pytest.raises(ValueError):
    plots.plot_misclassified(images[:5], y_true, y_pred, DIGITS, str(tmp_path / "w.png"), "x")
  assert not os.listdir(tmp_path)


def test_failed_plot_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
  path = str(tmp_path / "curves.png")
  plots.plot_training_curves({"loss": [1.0]}, path, "first")
  with open(path, "rb") as f:
    before = f.read()

  def broken_savefig(self, fname, **kwargs):
    with open(fname, "wb") as f:
      f.write(PNG_MAGIC)
    raise OSError("disk full")

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
  with pytest.raises(OSError):
    plots.plot_training_curves({"loss": [2.0]}, path, "second")
  assert os.listdir(tmp_path) == ["curves.png"]
  with open(path, "rb") as f:
    assert f.read() == before


def test_plots_do_not_touch_pyplot(tmp_path):
  had_pyplot = "matplotlib.pyplot" in sys.modules
  plots.plot_training_curves({"loss": [1.0]}, str(tmp_path / "c.png"), "c")
  assert had_pyplot or "matplotlib.pyplot" not in sys.modules


PRETRAIN = {
  "test_accuracy": 0.998,
  "wall_seconds": 12.34,
  "train_seconds": 10.0,
  "train_images_per_second": 7654.3,
  "epochs": 3,
  "num_train": 30596,
  "num_test": 5139,
  "classes": ["0", "1", "2", "3", "4"],
  "history": {"loss": [0.2], "accuracy": [0.9]},
  "optimizer": "adam",
  "learning_rate": 0.0010000000474974513,
  "batch_size": 128,
  "strategy": "default",
  "num_replicas": 1,
}
TRANSFER = {
  "test_accuracy": None,
  "mean_confidence": 0.8765,
  "images_per_second": 20000.0,
  "epochs": 0,
  "num_train": 29404,
  "num_test": 4861,
  "classes": DIGITS,
  "target": "mnist:5-9",
  "wall_seconds": 1.5,
}
FINETUNE = {
  **PRETRAIN,
  "test_accuracy": 0.99412,
  "wall_seconds": 20.0,
  "unfreeze": "last:2",
  "target": "mnist:5-9",
  "classes": DIGITS,
}


def section(text, stage):
  """The lines of `text` from "## stage" up to the next section."""
  match = re.search(rf"^## {stage}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
  assert match, f"no {stage} section in:\n{text}"
  return match.group(1)


def test_report(tmp_path):
  output_dir = tmp_path / "run"
  (output_dir / "plots").mkdir(parents=True)
  curves = plots.plot_training_curves(
    PRETRAIN["history"], str(output_dir / "pretrain_curves.png"), "pretrain"
  )
  matrix = plots.plot_confusion_matrix(
    [0, 1], [0, 0], DIGITS[:2], str(output_dir / "plots" / "finetune confusion.png"), "cm"
  )
  path = report.write_report(
    str(output_dir),
    {"pretrain": PRETRAIN, "transfer": TRANSFER, "finetune": FINETUNE},
    {"pretrain": [curves], "finetune": [matrix]},
  )
  assert path == str(output_dir / "report.md")
  with open(path) as f:
    text = f.read()

  assert "| pretrain | 99.80% | 12.3 |" in text
  assert "| transfer | n/a | 1.5 |" in text
  assert "| finetune | 99.41% | 20.0 |" in text
  assert text.index("## pretrain") < text.index("## transfer") < text.index("## finetune")
  pretrain = section(text, "pretrain")
  assert "- optimizer: adam" in pretrain
  assert "- learning rate: 0.001\n" in pretrain
  assert "- test accuracy: 99.80%" in pretrain
  assert "- classes: 0, 1, 2, 3, 4" in pretrain
  assert "- training images/s: 7,654" in pretrain
  transfer = section(text, "transfer")
  assert "- test accuracy: n/a" in transfer
  assert "- mean confidence: 87.65%" in transfer
  assert "- target: mnist:5-9" in transfer
  assert "optimizer" not in transfer
  assert "- unfreeze: last:2" in section(text, "finetune")

  links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)
  assert [title for title, _ in links] == ["pretrain curves", "finetune confusion"]
  for _, link in links:
    assert not os.path.isabs(link)
    read_png(os.path.join(output_dir, urllib.parse.unquote(link)))
  assert "![pretrain curves](pretrain_curves.png)" in pretrain
  assert sorted(os.listdir(output_dir)) == ["plots", "pretrain_curves.png", "report.md"]


def test_report_from_output_dir(tmp_path):
  files.write_json(str(tmp_path / "source_metrics.json"), PRETRAIN)
  files.write_json(str(tmp_path / "finetune_metrics.json"), FINETUNE)
  stages = report.load_stage_metrics(str(tmp_path))
  assert list(stages) == ["pretrain", "finetune"]
  assert stages["finetune"] == FINETUNE
  with open(report.write_report(str(tmp_path), stages)) as f:
    text = f.read()
  assert "## pretrain" in text and "## finetune" in text and "## transfer" not in text
  assert report.load_stage_metrics(str(tmp_path / "missing")) == {}
