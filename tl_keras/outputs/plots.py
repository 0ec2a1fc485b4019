"""PNG plots of a run: training curves, confusion matrix, misclassified images.

Figures are drawn on `matplotlib.figure.Figure` with an Agg canvas rather than through pyplot,
so they leave the caller's matplotlib backend and pyplot's figure list alone and are freed when
each function returns. Every PNG is written under a temporary name and renamed into place.
Each `plot_X` draws with `X_figure`, which returns the Figure unsaved, for tests and for callers
that want to save it in another format.
"""

import math
import os
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tl_keras.outputs.files import atomic_path

DPI = 100
NO_MISTAKES_TEXT = "no misclassified images"
# Above this many classes the per-cell counts no longer fit; the colours still show the matrix.
_MAX_ANNOTATED_CLASSES = 30
# Above this many classes a side, the matrix drawn is a summary: the classes with most test
# images (and the columns they are most predicted as, the rest in one "other" column).
_MAX_PLOTTED_CLASSES = 200
# Characters of a class name shown as a tick label.
_MAX_TICK_LABEL = 40
_GRID_COLUMNS = 5


def _save(figure: Figure, path: str) -> str:
  FigureCanvasAgg(figure)
  with atomic_path(path) as temp:
    figure.savefig(temp, format="png", dpi=DPI)
  figure.clear()
  return os.fspath(path)


def plot_training_curves(
  history: Mapping[str, Sequence[float]], path: str, title: str, first_epoch: int = 1
) -> str:
  """Plots per-epoch loss and accuracy (and any val_* or other metrics) into a PNG at `path`
  (see `training_curves_figure`). Returns `path`."""
  return _save(training_curves_figure(history, title, first_epoch), path)


def training_curves_figure(
  history: Mapping[str, Sequence[float]], title: str, first_epoch: int = 1
) -> Figure:
  """Per-epoch loss and accuracy (and any val_* or other metrics), two panels.

  `history` maps metric names to per-epoch values, as in the metrics files. Names ending in
  "loss" go in the left panel, all others in the right. `first_epoch` numbers the first value:
  pass `resumed_from_epoch + 1` for a resumed run.
  """
  figure = Figure(figsize=(8, 3.2), layout="constrained")
  loss_axes, metric_axes = figure.subplots(1, 2)
  names = list(history)
  loss_names = [name for name in names if name.endswith("loss")]
  metric_names = [name for name in names if not name.endswith("loss")]
  all_accuracy = all("acc" in name for name in metric_names)
  for axes, panel_names, label in (
    (loss_axes, loss_names, "loss"),
    (metric_axes, metric_names, "accuracy" if all_accuracy else "metric"),
  ):
    for name in panel_names:
      values = list(history[name])
      epochs = range(first_epoch, first_epoch + len(values))
      axes.plot(
        epochs,
        values,
        marker="o",
        markersize=3,
        linestyle="--" if name.startswith("val_") else "-",
        label=name,
      )
    if not any(len(history[name]) for name in panel_names):
      axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    else:
      axes.legend(fontsize="small")
    axes.set_title(label)
    axes.set_xlabel("epoch")
    axes.set_ylabel(label)
    if max((len(history[name]) for name in panel_names), default=0) == 1:
      axes.set_xticks([first_epoch])  # the integer locator would tick 0.95, 0.96, ...
    else:
      axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
  if metric_names and all_accuracy:
    metric_axes.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1))
  figure.suptitle(title)
  return figure


def confusion_matrix(
  y_true, y_pred, num_classes: int, num_pred_classes: int | None = None
) -> np.ndarray:
  """Counts of (true, predicted) label pairs: int64 [num_classes, num_pred_classes].

  Row i, column j counts the samples of true class i predicted as class j.
  `num_pred_classes` defaults to `num_classes`; it differs when predictions come from another
  label set, such as the source classes in the transfer stage.
  """
  num_pred_classes = num_classes if num_pred_classes is None else num_pred_classes
  y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
  y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
  if len(y_true) != len(y_pred):
    raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
  for name, labels, limit in (
    ("y_true", y_true, num_classes),
    ("y_pred", y_pred, num_pred_classes),
  ):
    if len(labels) and (labels.min() < 0 or labels.max() >= limit):
      raise ValueError(f"{name} holds labels outside 0..{limit - 1}")
  counts = np.bincount(y_true * num_pred_classes + y_pred, minlength=num_classes * num_pred_classes)
  return counts.reshape(num_classes, num_pred_classes)


def plot_confusion_matrix(
  y_true,
  y_pred,
  class_names: Sequence[str],
  path: str,
  title: str,
  pred_class_names: Sequence[str] | None = None,
) -> str:
  """Plots the confusion matrix into a PNG at `path` (see `confusion_matrix_figure`). Returns
  `path`."""
  return _save(confusion_matrix_figure(y_true, y_pred, class_names, title, pred_class_names), path)


def confusion_matrix_figure(
  y_true,
  y_pred,
  class_names: Sequence[str],
  title: str,
  pred_class_names: Sequence[str] | None = None,
) -> Figure:
  """The confusion matrix: rows true, columns predicted.

  Each cell shows its count; its colour is the count as a fraction of its row (the true
  class). Labels are indices into `class_names`, or for predictions into `pred_class_names`
  when given (a rectangular matrix, e.g. target classes against source classes).
  """
  true_names = [str(name) for name in class_names]
  pred_names = true_names if pred_class_names is None else [str(n) for n in pred_class_names]
  if max(len(true_names), len(pred_names)) > _MAX_PLOTTED_CLASSES:
    y_true, y_pred, true_names, pred_names, title = _summary(
      y_true, y_pred, true_names, pred_names, title
    )
  true_names, pred_names = _tick_labels(true_names), _tick_labels(pred_names)
  counts = confusion_matrix(y_true, y_pred, len(true_names), len(pred_names))
  row_totals = counts.sum(axis=1, keepdims=True)
  fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)

  rows, columns = counts.shape
  longest = max(len(name) for name in true_names + pred_names)
  figure = Figure(
    figsize=(min(2.2 + 0.5 * columns, 16), min(1.6 + 0.45 * rows, 16)), layout="constrained"
  )
  axes = figure.subplots()
  image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1, aspect="auto")
  figure.colorbar(
    image, ax=axes, label="fraction of true class", format=ticker.PercentFormatter(xmax=1)
  )
  axes.set_xticks(
    range(columns),
    pred_names,
    rotation=45 if longest > 3 else 0,
    ha="right" if longest > 3 else "center",
  )
  axes.set_yticks(range(rows), true_names)
  axes.set_xlabel("predicted")
  axes.set_ylabel("true")
  axes.set_title(title)
  if max(rows, columns) <= _MAX_ANNOTATED_CLASSES:
    font_size = 9 if max(rows, columns) <= 12 else 6
    for i in range(rows):
      for j in range(columns):
        axes.text(
          j,
          i,
          str(counts[i, j]),
          ha="center",
          va="center",
          fontsize=font_size,
          color="white" if fractions[i, j] > 0.5 else "black",
        )
  return figure


def _tick_labels(names: list[str]) -> list[str]:
  """Class names cut to _MAX_TICK_LABEL characters: a 10 KB name from a model's metadata would
  collapse the axes to nothing."""
  return [n if len(n) <= _MAX_TICK_LABEL else n[: _MAX_TICK_LABEL - 1] + "…" for n in names]


def _summary(y_true, y_pred, true_names, pred_names, title):
  """(y_true, y_pred, true names, predicted names, title) of the _MAX_ANNOTATED_CLASSES true
  classes with most test images against the columns they are most predicted as, the other
  predictions in an "other" column: a readable matrix of any number of classes, never a
  [classes, classes] array."""
  y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
  y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
  labels, support = np.unique(y_true, return_counts=True)
  rows = np.sort(labels[np.argsort(-support, kind="stable")[:_MAX_ANNOTATED_CLASSES]])
  kept = np.isin(y_true, rows)
  y_true, y_pred = y_true[kept], y_pred[kept]
  predicted, times = np.unique(y_pred, return_counts=True)
  columns = np.sort(predicted[np.argsort(-times, kind="stable")[:_MAX_ANNOTATED_CLASSES]])
  column = np.searchsorted(columns, y_pred)
  found = (column < len(columns)) & (columns[np.minimum(column, len(columns) - 1)] == y_pred)
  title = f"{title} ({len(rows)} of {len(true_names):,} classes, most test images)"
  return (
    np.searchsorted(rows, y_true),
    np.where(found, column, len(columns)),
    [true_names[label] for label in rows],
    [pred_names[label] for label in columns] + ["other"],
    title,
  )


def _displayable(image: np.ndarray) -> np.ndarray:
  """One image as imshow takes it: [H,W] or [H,W,3] floats in [0, 1]."""
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if np.issubdtype(image.dtype, np.integer):
    return image.astype(np.float32) / 255.0
  return np.clip(image.astype(np.float32), 0.0, 1.0)


def plot_misclassified(
  images,
  y_true,
  y_pred,
  class_names: Sequence[str],
  path: str,
  title: str,
  max_images: int = 25,
  confidences=None,
  pred_class_names: Sequence[str] | None = None,
) -> str:
  """Plots a grid of the first `max_images` misclassified images into a PNG at `path` (see
  `misclassified_figure`). Returns `path`; on bad input raises before writing anything."""
  figure = misclassified_figure(
    images, y_true, y_pred, class_names, title, max_images, confidences, pred_class_names
  )
  return _save(figure, path)


def _label_names(y_true, y_pred, class_names, pred_class_names):
  """(true, predicted) class names of each image; predictions index `pred_class_names` when
  given, else `class_names`."""
  true_names = np.asarray([str(name) for name in class_names])
  pred_names = (
    true_names if pred_class_names is None else np.asarray([str(name) for name in pred_class_names])
  )
  return (
    true_names[np.asarray(y_true, dtype=np.int64).reshape(-1)],
    pred_names[np.asarray(y_pred, dtype=np.int64).reshape(-1)],
  )


def misclassified_figure(
  images,
  y_true,
  y_pred,
  class_names: Sequence[str],
  title: str,
  max_images: int = 25,
  confidences=None,
  pred_class_names: Sequence[str] | None = None,
) -> Figure:
  """A grid of the first `max_images` misclassified images.

  `images` are uint8 (0-255) or float (0-1), [N,H,W] or [N,H,W,C] with C of 1 or 3 (or
  `ImageFiles`, of which only the images shown are read); labels
  index `class_names` (predictions index `pred_class_names` when given, and a prediction is a
  mistake when its class name differs from the true one). Each image is titled
  "pred X / true Y", plus the confidence when `confidences` ([N], 0-1) is given. Without any
  mistake the figure says "no misclassified images".
  """
  if not hasattr(images, "shape"):  # arrays and datasets.folders.ImageFiles are read lazily
    images = np.asarray(images)
  true_labels, pred_labels = _label_names(y_true, y_pred, class_names, pred_class_names)
  if not len(images) == len(true_labels) == len(pred_labels):
    raise ValueError(
      f"got {len(images)} images, {len(true_labels)} true labels and {len(pred_labels)} predictions"
    )
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
    raise ValueError(f"images must be [N,H,W] or [N,H,W,C] with C of 1 or 3, got {images.shape}")
  wrong = np.flatnonzero(true_labels != pred_labels)
  shown = wrong[: max(max_images, 0)]

  if not len(shown):
    figure = Figure(figsize=(4, 1.2), layout="constrained")
    figure.suptitle(title)
    figure.text(0.5, 0.4, f"{NO_MISTAKES_TEXT} (of {len(images)})", ha="center", va="center")
    return figure

  columns = min(_GRID_COLUMNS, len(shown))
  rows = math.ceil(len(shown) / columns)
  figure = Figure(figsize=(max(1.5 * columns, 3.5), 1.7 * rows + 0.6), layout="constrained")
  figure.suptitle(
    f"{title}\n{len(wrong)} of {len(images)} misclassified, showing {len(shown)}", fontsize="medium"
  )
  grid = figure.subplots(rows, columns, squeeze=False).ravel()
  for axes in grid:
    axes.set_axis_off()
  pictures = np.asarray(images[shown])
  for axes, index, picture in zip(grid, shown, pictures):
    axes.imshow(_displayable(picture), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    label = f"pred {pred_labels[index]} / true {true_labels[index]}"
    if len(label) > 24:  # wider than its image at this font size
      label = label.replace(" / ", " /\n")
    if confidences is not None:
      label += f"\n{float(confidences[index]):.0%}"
    axes.set_title(label, fontsize=8)
  return figure


def plot_scores(names: Sequence[str], values: Sequence[float | None], path: str, title: str) -> str:
  """One horizontal bar per name (best first, top), its value written beside it; a missing
  value (None) is a bar-less 'n/a'. Returns `path`."""
  figure = Figure(figsize=(6, 0.45 * len(names) + 1.2), layout="constrained")
  axes = figure.subplots()
  rows = np.arange(len(names))[::-1]
  shown = [0.0 if value is None else float(value) for value in values]
  axes.barh(rows, shown, color="tab:blue")
  for row, value in zip(rows, values):
    axes.text(0, row, " n/a" if value is None else f" {value:.3g}", va="center", fontsize=8)
  axes.set_yticks(rows, [str(name)[-40:] for name in names], fontsize=8)
  axes.axvline(0, color="black", linewidth=0.5)
  axes.set_title(title)
  return _save(figure, path)
