"""Class names and features that are legal but hostile to the outputs: 10 KB class names in a
model's metadata (the confusion matrix's tick labels) and all-zero features (LogME)."""

import warnings

import numpy as np

from tl_keras.outputs import plots
from tl_keras.ranking import logme


def test_ten_kilobyte_class_names_are_cut_in_the_confusion_matrix():
  names = ["A" * 10_000, "B" * 10_000, "c"]
  figure = plots.confusion_matrix_figure([0, 1, 2], [0, 2, 1], ["x", "y", "z"], "t", names)
  columns = [tick.get_text() for tick in figure.axes[0].get_xticklabels()]
  assert max(len(text) for text in columns) <= 40
  assert columns[0].startswith("AAAA") and columns[2] == "c"
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # "axes sizes collapsed to zero" when the names are whole
    figure.canvas.draw()


def test_logme_on_all_zero_features_warns_nothing():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    score = logme.logme(np.zeros((12, 4)), np.arange(12) % 3)
  assert np.isnan(score) or np.isfinite(score)
