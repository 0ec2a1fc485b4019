"""Tests of the PNG plots and the Markdown run report."""

import os
import re
import subprocess
import sys
import urllib.parse

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
from matplotlib import ticker

from tl_keras.config import settings
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


def _lines(axes):
  """{label: (x values, y values, line style)} of the lines drawn on `axes`."""
  return {
    line.get_label(): (list(line.get_xdata()), list(line.get_ydata()), line.get_linestyle())
    for line in axes.get_lines()
  }


def _texts(axes_or_figure):
  """The texts drawn on axes or on a figure (a figure's title is its suptitle, not counted)."""
  title = getattr(axes_or_figure, "_suptitle", None)
  return [text.get_text() for text in axes_or_figure.texts if text is not title]


def test_training_curves_show_each_series_in_its_panel():
  history = {
    "loss": [0.9, 0.4, 0.2],
    "accuracy": [0.7, 0.9, 0.95],
    "val_loss": [0.5, 0.3, 0.25],
    "val_accuracy": [0.85, 0.92, 0.94],
  }
  figure = plots.training_curves_figure(history, "pretrain on 0-4")
  assert figure.get_suptitle() == "pretrain on 0-4"
  loss_axes, metric_axes = figure.axes
  for axes, names, label in (
    (loss_axes, ("loss", "val_loss"), "loss"),
    (metric_axes, ("accuracy", "val_accuracy"), "accuracy"),
  ):
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == (label, "epoch", label)
    lines = _lines(axes)
    assert sorted(lines) == sorted(names)
    for name in names:
      # Epochs numbered from 1; validation dashed, training solid.
      assert lines[name] == ([1, 2, 3], history[name], "--" if name.startswith("val_") else "-")
    assert sorted(t.get_text() for t in axes.get_legend().get_texts()) == sorted(names)
  # Accuracy reads in percent; the loss axis is a plain number.
  assert metric_axes.yaxis.get_major_formatter()(0.9, 0) == "90.0%"
  assert not isinstance(loss_axes.yaxis.get_major_formatter(), ticker.PercentFormatter)


def test_training_curves_resumed_single_epoch_other_metrics_and_empty():
  one = plots.training_curves_figure({"loss": [0.3], "auc": [0.9]}, "one epoch", first_epoch=3)
  loss_axes, metric_axes = one.axes
  assert _lines(loss_axes) == {"loss": ([3], [0.3], "-")}
  assert list(loss_axes.get_xticks()) == [3]
  # A metric that is not an accuracy: its own label, no percent axis.
  assert (metric_axes.get_title(), metric_axes.get_ylabel()) == ("metric", "metric")
  assert _lines(metric_axes) == {"auc": ([3], [0.9], "-")}
  assert not isinstance(metric_axes.yaxis.get_major_formatter(), ticker.PercentFormatter)

  empty = plots.training_curves_figure({}, "no epochs")
  for axes in empty.axes:
    assert not axes.get_lines() and _texts(axes) == ["no data"]
    assert axes.get_legend() is None


def test_training_curves_png(tmp_path):
  path = str(tmp_path / "curves.png")
  assert plots.plot_training_curves({"loss": [0.9, 0.4]}, path, "pretrain") == path
  read_png(path)
  assert os.listdir(tmp_path) == ["curves.png"]


def _matrix_axes(figure):
  """The confusion matrix's axes (the other is its colour bar) and the cells' counts."""
  (axes,) = [axes for axes in figure.axes if axes.get_images()]
  (colorbar,) = [other for other in figure.axes if other is not axes]
  assert colorbar.get_ylabel() == "fraction of true class"
  return axes


def test_confusion_matrix_plot_shows_counts_and_row_fractions():
  y_true = np.repeat(np.arange(5), 20)
  y_pred = y_true.copy()
  y_pred[::7] = 0
  counts = plots.confusion_matrix(y_true, y_pred, 5)
  figure = plots.confusion_matrix_figure(y_true, y_pred, DIGITS, "finetune on 5-9")
  axes = _matrix_axes(figure)
  assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == (
    "finetune on 5-9",
    "predicted",
    "true",
  )
  assert [t.get_text() for t in axes.get_xticklabels()] == DIGITS
  assert [t.get_text() for t in axes.get_yticklabels()] == DIGITS
  np.testing.assert_allclose(axes.get_images()[0].get_array(), counts / 20)
  # One count a cell, row by row.
  assert _texts(axes) == [str(count) for count in counts.ravel()]
  assert counts[0, 0] == 20 and counts[1, 0] == 3


def test_confusion_matrix_plot_against_other_classes(tmp_path):
  y_true = np.repeat(np.arange(5), 20)
  figure = plots.confusion_matrix_figure(
    y_true, y_true % 3, DIGITS, "transfer", pred_class_names=["zero", "one", "two"]
  )
  axes = _matrix_axes(figure)
  assert [t.get_text() for t in axes.get_xticklabels()] == ["zero", "one", "two"]
  assert [t.get_text() for t in axes.get_yticklabels()] == DIGITS
  assert axes.get_images()[0].get_array().shape == (5, 3)
  # Long names are turned so they do not overlap.
  assert {t.get_rotation() for t in axes.get_xticklabels()} == {45}
  path = plots.plot_confusion_matrix(
    y_true, y_true % 3, DIGITS, str(tmp_path / "cm.png"), "t", ["zero", "one", "two"]
  )
  read_png(path)
  assert os.listdir(tmp_path) == ["cm.png"]


def _shown(figure):
  """(image titles, images) of the grid's panels that show an image."""
  panels = [axes for axes in figure.axes if axes.get_images()]
  return [axes.get_title() for axes in panels], [axes.get_images()[0] for axes in panels]


@pytest.mark.parametrize(
  "shape, dtype", [((28, 28), np.uint8), ((28, 28, 1), np.float32), ((32, 32, 3), np.uint8)]
)
def test_misclassified_grid(tmp_path, shape, dtype):
  images, y_true, y_pred = images_with_mistakes(40, 7, shape, dtype)
  confidences = np.linspace(0.5, 1.0, 40)
  figure = plots.misclassified_figure(
    images, y_true, y_pred, DIGITS, "finetune mistakes", confidences=confidences
  )
  assert figure.get_suptitle() == "finetune mistakes\n7 of 40 misclassified, showing 7"
  assert len(figure.axes) == 10  # 5 columns, 2 rows
  titles, shown = _shown(figure)
  assert titles == [
    f"pred {DIGITS[(i + 1) % 5]} / true {DIGITS[i % 5]}\n{confidences[i]:.0%}" for i in range(7)
  ]
  for index, image in enumerate(shown):
    expected = images[index].astype(np.float32)
    expected = expected / 255.0 if dtype == np.uint8 else expected
    np.testing.assert_allclose(
      image.get_array(), np.squeeze(expected, -1) if shape[-1] == 1 else expected
    )
  path = plots.plot_misclassified(
    images, y_true, y_pred, DIGITS, str(tmp_path / "wrong.png"), "finetune mistakes"
  )
  read_png(path)
  assert os.listdir(tmp_path) == ["wrong.png"]


def test_misclassified_shows_at_most_max_images():
  images, y_true, y_pred = images_with_mistakes(40, 30)
  figure = plots.misclassified_figure(images, y_true, y_pred, DIGITS, "mistakes", max_images=25)
  titles, _ = _shown(figure)
  assert len(titles) == 25 and len(figure.axes) == 25  # 5 x 5
  assert figure.get_suptitle().endswith("30 of 40 misclassified, showing 25")
  assert "\n" not in titles[0]  # no confidences given


def test_misclassified_without_mistakes(tmp_path):
  images, y_true, _ = images_with_mistakes(10, 0)
  figure = plots.misclassified_figure(images, y_true, y_true, DIGITS, "no mistakes")
  assert not figure.axes
  assert _texts(figure) == [f"{plots.NO_MISTAKES_TEXT} (of 10)"]
  assert figure.get_suptitle() == "no mistakes"
  read_png(plots.plot_misclassified(images, y_true, y_true, DIGITS, str(tmp_path / "w.png"), "x"))


def test_misclassified_compares_names_across_label_sets():
  images, _, _ = images_with_mistakes(3, 0)
  # Target classes 5, 6, 7 against source classes 7, 6: only names that differ are mistakes.
  names = {"class_names": ["5", "6", "7"], "pred_class_names": ["7", "6"]}
  right = plots.misclassified_figure(images, [1, 1, 2], [1, 1, 0], title="transfer", **names)
  assert not right.axes and _texts(right) == [f"{plots.NO_MISTAKES_TEXT} (of 3)"]
  wrong = plots.misclassified_figure(images, [0, 1, 2], [0, 1, 0], title="transfer", **names)
  titles, shown = _shown(wrong)
  assert titles == ["pred 7 / true 5"]
  np.testing.assert_allclose(shown[0].get_array(), images[0] / 255.0)


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


def test_plots_do_not_touch_pyplot_or_the_backend(tmp_path):
  """In a fresh process (here TensorFlow has loaded pyplot already): drawing and saving each
  plot imports no pyplot and leaves the caller's backend as it was."""
  code = """
import sys, matplotlib
matplotlib.use("pdf")
from tl_keras.outputs import plots
plots.plot_training_curves({"loss": [1.0]}, "c.png", "c")
plots.plot_confusion_matrix([0, 1], [1, 1], ["a", "b"], "m.png", "m")
plots.plot_misclassified([[[0]], [[9]]], [0, 1], [1, 1], ["a", "b"], "w.png", "w")
print("matplotlib.pyplot" in sys.modules, matplotlib.get_backend())
"""
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["False", "pdf"]
  assert sorted(os.listdir(tmp_path)) == ["c.png", "m.png", "w.png"]


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
    settings.report_keys(),
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
