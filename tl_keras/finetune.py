"""Stage 3: put a new classifier head on the source model and train it on the target."""

import dataclasses
import os
import time
from typing import Any, Dict, List, Optional

import tensorflow as tf

import tl_keras
from tl_keras import data
from tl_keras import distribute
from tl_keras import loading
from tl_keras import model_io
from tl_keras import models
from tl_keras import plots
from tl_keras import pretrain
from tl_keras import training

TARGET_MODEL_FILENAME = "target_model.h5"
SAVED_MODEL_DIRNAME = "target_savedmodel"
METRICS_FILENAME = "finetune_metrics.json"
CURVES_FILENAME = "finetune_curves.png"
CONFUSION_FILENAME = "confusion_matrix.png"
MISCLASSIFIED_FILENAME = "misclassified.png"


@dataclasses.dataclass
class FinetuneConfig(training.TrainSettings):
  model: str = os.path.join("saved_models", pretrain.SOURCE_MODEL_FILENAME)
  target: str = "mnist:5-9"
  unfreeze: str = "all"
  epochs: int = 5
  allow_unsafe_deserialization: bool = False


def run(config: FinetuneConfig, datasets_override: Optional[data.LabeledData] = None,
        strategy_override: Optional[tf.distribute.Strategy] = None) -> Dict[str, Any]:
  """Fine-tunes the source model on the target; writes target_model.h5, target_savedmodel/
  and finetune_metrics.json. Returns the metrics.
  """
  start = time.perf_counter()
  config.validate()
  strategy = strategy_override or distribute.get_distribution_strategy(config.strategy)
  output_dir = model_io.prepare_output_dir(config.output_dir)
  source_metadata = model_io.read_metadata(config.model)
  target = datasets_override or data.load_target(config.target, config.data_dir)

  def build_model():
    source = loading.load_model(config.model, config.allow_unsafe_deserialization)
    models.image_input_shape(source, config.model)
    if config.mixed_precision:
      source = models.with_global_dtype_policy(source)
    return models.build_target_model(source, target.num_classes, config.unfreeze)

  model, metrics = training.fit_and_evaluate(build_model, target, config, strategy,
                                             stage="finetune")
  metrics.update({
      "source_model": config.model,
      "source_classes": source_metadata.get("class_names"),
      "target": target.description,
      "unfreeze": config.unfreeze,
      "trainable_layers": [layer.name for layer in model.layers
                           if layer.trainable and layer.weights],
  })
  metadata = {**target.metadata(), "stage": "finetune",
              "source_class_names": source_metadata.get("class_names"),
              "source_model": config.model, "tl_keras_version": tl_keras.__version__}
  with distribute.worker_output_dir(strategy, output_dir) as save_dir:
    artifacts = {"model": os.path.join(save_dir, TARGET_MODEL_FILENAME),
                 "savedmodel": os.path.join(save_dir, SAVED_MODEL_DIRNAME),
                 "metrics": os.path.join(save_dir, METRICS_FILENAME)}
    model_io.save_h5(model, artifacts["model"], metadata)
    model_io.export_saved_model(model, artifacts["savedmodel"], target.class_names, metadata)
    if distribute.is_chief(strategy):
      metrics["plots"] = _plot(model, target, metrics, save_dir)
    artifacts["report"] = training.write_metrics(metrics, artifacts["metrics"], start,
                                                 distribute.is_chief(strategy))
  training.print_summary("finetune", metrics, artifacts, strategy)
  return metrics


def _plot(model, target: data.LabeledData, metrics: Dict[str, Any], output_dir: str) -> List[str]:
  """Training curves, confusion matrix and misclassified test images; returns the file names."""
  probabilities = models.predict(model, target.x_test)
  predicted = probabilities.argmax(axis=1)
  plots.plot_training_curves(metrics["history"], os.path.join(output_dir, CURVES_FILENAME),
                             f"finetune on {target.description}",
                             first_epoch=metrics["resumed_from_epoch"] + 1)
  plots.plot_confusion_matrix(target.y_test, predicted, target.class_names,
                              os.path.join(output_dir, CONFUSION_FILENAME),
                              "Target test set after finetuning")
  plots.plot_misclassified(target.x_test, target.y_test, predicted, target.class_names,
                           os.path.join(output_dir, MISCLASSIFIED_FILENAME),
                           "Misclassified target test images",
                           confidences=probabilities.max(axis=1))
  return [CURVES_FILENAME, CONFUSION_FILENAME, MISCLASSIFIED_FILENAME]
