"""Stage 2: predict on the target data with a saved model, before any training.

Measures how well the source knowledge fits the target: where target class names are among
the source's, predictions are matched by name (`test_accuracy`); always, the confidence,
which source class each target class is taken for, and how well the source's features
suit the target classes (`linear_probe_accuracy`, `logme`; see `transferability`).
"""

import csv
import dataclasses
import os
import time
from typing import Any, Dict, Optional

import numpy as np

from tl_keras import data
from tl_keras import limits
from tl_keras import loading
from tl_keras import model_io
from tl_keras import models
from tl_keras import plots
from tl_keras import pretrain
from tl_keras import ranges
from tl_keras import training
from tl_keras import transferability

PREDICTIONS_FILENAME = "predictions.csv"
METRICS_FILENAME = "transfer_metrics.json"
CONFUSION_FILENAME = "transfer_confusion.png"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclasses.dataclass
class TransferConfig(data.TargetOptions):
  model: str = os.path.join("saved_models", pretrain.SOURCE_MODEL_FILENAME)
  data_dir: Optional[str] = None
  output_dir: str = "saved_models"
  batch_size: int = 1024
  seed: int = 42  # for --train_per_class and --test_split
  features_layer: Optional[str] = None  # None: the classifier's input, as in finetune
  allow_unsafe_deserialization: bool = False
  max_model_mb: int = limits.MAX_MODEL_BYTES // limits.MIB  # see loading.load_model

  def validate(self) -> None:
    ranges.check(self)


def csv_cell(text: str) -> str:
  """`text` safe for a spreadsheet (OWASP CSV injection): a leading =, +, -, @, tab or
  carriage return, which would start a formula, gets a single quote before it."""
  text = str(text)
  return "'" + text if text.startswith(_FORMULA_STARTS) else text


def run(config: TransferConfig,
        datasets_override: Optional[data.LabeledData] = None) -> Dict[str, Any]:
  """Predicts on the target test split; writes predictions.csv and transfer_metrics.json."""
  start = time.perf_counter()
  config.validate()
  output_dir = model_io.prepare_output_dir(config.output_dir)
  model = loading.load_model(config.model, config.allow_unsafe_deserialization,
                             config.max_model_mb * limits.MIB)
  input_shape = models.image_input_shape(model, config.model)  # refuses non-image models
  source_names = model_io.class_names_of(model, model_io.read_metadata(config.model),
                                         config.model)
  target = datasets_override or data.prepare_target(config, input_shape, config.data_dir,
                                                    config.seed)

  predict_start = time.perf_counter()
  probabilities = models.predict(model, target.x_test, config.batch_size)
  predict_seconds = time.perf_counter() - predict_start

  predicted = probabilities.argmax(axis=1)
  confidence = probabilities.max(axis=1)
  predicted_names = np.asarray(source_names)[predicted]
  true_names = np.asarray(target.class_names)[target.y_test]
  matched = np.isin(true_names, source_names)
  test_accuracy = (float((predicted_names[matched] == true_names[matched]).mean())
                   if matched.any() else None)

  predictions_path = os.path.join(output_dir, PREDICTIONS_FILENAME)
  with model_io.atomic_path(predictions_path) as temp, open(temp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["index", "predicted_class", "confidence", "true_label"])
    for index, (name, score, truth) in enumerate(zip(predicted_names, confidence, true_names)):
      writer.writerow([index, csv_cell(name), f"{score:.6f}", csv_cell(truth)])

  train_features = transferability.features_of(model, target.x_train, config.features_layer)
  metrics = {
      "test_accuracy": test_accuracy,
      "linear_probe_accuracy": transferability.linear_probe_accuracy(
          train_features, target.y_train,
          transferability.features_of(model, target.x_test, config.features_layer),
          target.y_test),
      "logme": transferability.logme(train_features, target.y_train),
      "num_matched_by_name": int(matched.sum()),
      "mean_confidence": float(confidence.mean()),
      "images_per_second": round(len(target.x_test) / predict_seconds, 1),
      "predicted_source_classes": {
          true: {name: int(count) for name, count in
                 zip(*np.unique(predicted_names[true_names == true], return_counts=True))}
          for true in target.class_names},
      "epochs": 0,
      "num_train": int(len(target.x_train)),
      "num_test": int(len(target.x_test)),
      "classes": target.class_names,
      "source_classes": source_names,
      "model": config.model,
      "target": target.description,
      "features_layer": config.features_layer,
  }
  confusion_path = plots.plot_confusion_matrix(
      target.y_test, predicted, target.class_names, os.path.join(output_dir, CONFUSION_FILENAME),
      "Before training: target classes as source classes",
      pred_class_names=source_names)
  metrics["plots"] = [os.path.basename(confusion_path)]
  metrics_path = os.path.join(output_dir, METRICS_FILENAME)
  report_path = training.write_metrics(metrics, metrics_path, start)
  training.print_summary("transfer", metrics, {"predictions": predictions_path,
                                               "metrics": metrics_path, "plot": confusion_path,
                                               "report": report_path})
  if test_accuracy is None:
    print("  (no target class is a source class, so accuracy before training is undefined; "
          "see predicted_source_classes in the metrics)")
  return metrics
