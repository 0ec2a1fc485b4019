"""Stage 2: predict on the target data with a saved model, before any training.

Measures how well the source knowledge fits the target: where target class names are among
the source's, predictions are matched by name (`test_accuracy`); always, the confidence,
which source class each target class is taken for, and how well the source's features
suit the target classes (`linear_probe_accuracy`, `logme`; see `tl_keras.transferability`).
"""

import csv
import os
import time
from typing import Any

import numpy as np

from tl_keras import api
from tl_keras import artifacts
from tl_keras.config import settings
from tl_keras.data.labeled import LabeledData
from tl_keras.evaluation.metrics import accuracy_by_name
from tl_keras.models import networks
from tl_keras.outputs import files
from tl_keras.outputs import summary
from tl_keras.stages import base

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
  """`text` safe for a spreadsheet (OWASP CSV injection): a leading =, +, -, @, tab or
  carriage return, which would start a formula, gets a single quote before it."""
  text = str(text)
  return "'" + text if text.startswith(_FORMULA_STARTS) else text


def run(
  config: settings.TransferConfig,
  datasets_override: LabeledData | None = None,
  source: base.Source | None = None,
) -> dict[str, Any]:
  """Predicts on the target test split; writes predictions.csv and transfer_metrics.json.
  `source`: the model of `config.load.model`, read already (the pipeline's)."""
  start = base.begin(config)
  context = base.prepare(config, datasets_override, config.seed, source=source)
  output_dir, model, target = context.output_dir, context.source.model, context.target
  source_names = context.source.class_names()

  predict_start = time.perf_counter()
  probabilities = networks.predict(model, target.x_test, config.batch_size)
  predict_seconds = time.perf_counter() - predict_start

  predicted = probabilities.argmax(axis=1)
  confidence = probabilities.max(axis=1)
  predicted_names = np.asarray(source_names)[predicted]
  true_names = np.asarray(target.class_names)[target.y_test]
  test_accuracy = accuracy_by_name(predicted_names, true_names, source_names)
  scores = api.transferability(model, target, config.features_layer, seed=config.seed)  # refusals
  predictions_path = _write_predictions(output_dir, predicted_names, confidence, true_names)
  metrics = {
    "test_accuracy": test_accuracy,
    **scores,
    "num_matched_by_name": int(np.isin(true_names, source_names).sum()),
    "mean_confidence": float(confidence.mean()),
    "images_per_second": round(len(target.x_test) / predict_seconds, 1),
    "predicted_source_classes": _predicted_source_classes(predicted_names, true_names, target),
    "epochs": 0,
    "num_train": int(len(target.x_train)),
    "num_test": int(len(target.x_test)),
    "classes": target.class_names,
    "source_classes": source_names,
    "model": context.source.path,
    "target": target.description,
    "target_fit": target.fit,
    "features_layer": config.features_layer,
  }
  confusion_path = _plot(target, predicted, source_names, output_dir)
  metrics["plots"] = [os.path.basename(confusion_path)]
  metrics_path = os.path.join(output_dir, artifacts.METRICS["transfer"])
  report_path = base.write_metrics(metrics, metrics_path, start)
  summary.print_summary(
    "transfer",
    metrics,
    {
      "predictions": predictions_path,
      "metrics": metrics_path,
      "plot": confusion_path,
      "report": report_path,
    },
  )
  if test_accuracy is None:
    print(
      "  (no target class is a source class, so accuracy before training is undefined; "
      "see predicted_source_classes in the metrics)"
    )
  return metrics


def _write_predictions(output_dir: str, predicted_names, confidence, true_names) -> str:
  """Writes predictions.csv (one row a test image, cells safe for a spreadsheet); returns
  its path."""
  predictions_path = os.path.join(output_dir, artifacts.PREDICTIONS)
  with files.atomic_path(predictions_path) as temp, open(temp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["index", "predicted_class", "confidence", "true_label"])
    for index, (name, score, truth) in enumerate(zip(predicted_names, confidence, true_names)):
      writer.writerow([index, csv_cell(name), f"{score:.6f}", csv_cell(truth)])
  return predictions_path


def _predicted_source_classes(predicted_names, true_names, target: LabeledData) -> dict:
  """{target class: {source class: how many of its test images were taken for it}}."""
  return {
    true: {
      name: int(count)
      for name, count in zip(*np.unique(predicted_names[true_names == true], return_counts=True))
    }
    for true in target.class_names
  }


def _plot(target: LabeledData, predicted, source_names, output_dir: str) -> str:
  """The confusion matrix of target classes against the source classes they were taken for;
  returns its path."""
  from tl_keras.outputs import plots  # matplotlib

  return plots.plot_confusion_matrix(
    target.y_test,
    predicted,
    target.class_names,
    os.path.join(output_dir, artifacts.TRANSFER_CONFUSION),
    "Before training: target classes as source classes",
    pred_class_names=source_names,
  )
