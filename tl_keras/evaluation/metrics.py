"""Class balance and per-class scores: NumPy only, for training and the metrics files."""

from collections.abc import Sequence
from typing import Any

import numpy as np


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
  """{label: weight} with weight n / (k * count), as scikit-learn's 'balanced': every class
  then adds the same total to the loss, however many images it has. Classes without images
  get weight 1 (they never occur)."""
  counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
  total = counts.sum()
  return {
    label: float(total / (num_classes * count)) if count else 1.0
    for label, count in enumerate(counts.tolist())
  }


def per_class_metrics(
  y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
  """{'per_class': {name: {precision, recall, f1, support}}, 'macro_f1'} of predicted labels.

  A class never predicted has precision 0, one without test images recall 0 (scikit-learn's
  zero_division=0); `macro_f1` is the unweighted mean F1 over the classes with test images.
  """
  y_true = np.asarray(y_true, dtype=np.int64)
  y_pred = np.asarray(y_pred, dtype=np.int64)
  k = len(class_names)  # counted in one pass each, not one pass per class

  def count(labels):
    return np.bincount(labels[(labels >= 0) & (labels < k)], minlength=k).tolist()

  hits, predictions, supports = count(y_true[y_true == y_pred]), count(y_pred), count(y_true)
  per_class, f1_scores = {}, []
  for label, name in enumerate(class_names):
    true_positives, predicted, support = hits[label], predictions[label], supports[label]
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_class[name] = {
      "precision": round(precision, 6),
      "recall": round(recall, 6),
      "f1": round(f1, 6),
      "support": support,
    }
    if support:
      f1_scores.append(f1)
  return {
    "per_class": per_class,
    "macro_f1": round(float(np.mean(f1_scores)), 6) if f1_scores else None,
  }


def accuracy_by_name(
  predicted_names: Sequence[str], true_names: Sequence[str], source_names: Sequence[str]
) -> float | None:
  """Accuracy over the images whose true class name is one of `source_names` (the classes the
  predicting model knows), predictions matched by name; None when no such image exists."""
  predicted, true = np.asarray(predicted_names), np.asarray(true_names)
  matched = np.isin(true, np.asarray(source_names))
  return float((predicted[matched] == true[matched]).mean()) if matched.any() else None
