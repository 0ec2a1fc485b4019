"""Stage 3: put a new classifier head on the source model and train it on the target."""

import dataclasses
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf

import tl_keras
from tl_keras import data
from tl_keras import distribute
from tl_keras import limits
from tl_keras import loading
from tl_keras import model_io
from tl_keras import models
from tl_keras import plots
from tl_keras import pretrain
from tl_keras import training
from tl_keras import transferability
from tl_keras.errors import UserError
from tl_keras.errors import warn

TARGET_MODEL_FILENAME = "target_model.h5"
SAVED_MODEL_DIRNAME = "target_savedmodel"
METRICS_FILENAME = "finetune_metrics.json"
CURVES_FILENAME = "finetune_curves.png"
CONFUSION_FILENAME = "confusion_matrix.png"
MISCLASSIFIED_FILENAME = "misclassified.png"


@dataclasses.dataclass
class FinetuneConfig(training.TrainSettings, data.TargetOptions, models.HeadSettings):
  """Finetune settings. With `warmup_epochs`, only the new head trains first; then the
  `unfreeze`d layers join it at `finetune_learning_rate` for `epochs` more epochs."""
  model: str = os.path.join("saved_models", pretrain.SOURCE_MODEL_FILENAME)
  unfreeze: str = "all"
  epochs: int = 4
  warmup_epochs: int = 0
  finetune_learning_rate: Optional[float] = None  # None: a tenth of the warmup rate
  compare_scratch: bool = False
  allow_unsafe_deserialization: bool = False
  max_model_mb: int = limits.MAX_MODEL_BYTES // limits.MIB  # see loading.load_model

  def validate(self) -> None:
    super().validate()
    models.HeadSettings.validate(self)
    if self.warmup_epochs < 0:
      raise UserError(f"--warmup_epochs must not be negative, got {self.warmup_epochs}")
    if self.finetune_learning_rate is not None:
      models.learning_rate_for(self.optimizer, self.finetune_learning_rate)


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
  # Loaded here, outside the strategy's scope, only to read its input and layers.
  source = _load_source(config)
  input_shape = models.image_input_shape(source, config.model)
  target = datasets_override or data.prepare_target(config, input_shape, config.data_dir,
                                                    config.seed)

  template = models.build_target_model(source, target.num_classes, config.unfreeze, config)
  classifier_weights = (_probe_classifier_weights(config, template, target, strategy)
                        if config.head_init == "probe" else None)

  def build_model():
    source = _load_source(config)
    if config.mixed_precision:
      source = models.with_global_dtype_policy(source)
    model = models.build_target_model(source, target.num_classes, config.unfreeze, config)
    if classifier_weights:
      model.get_layer(models.TARGET_CLASSIFIER).set_weights(classifier_weights)
    return model

  phases = _phases(config, template)
  model, metrics = training.fit_and_evaluate(build_model, target, config, strategy,
                                             stage="finetune", phases=phases)
  metrics.update({
      "source_model": config.model,
      "source_classes": source_metadata.get("class_names"),
      "target": target.description,
      "unfreeze": config.unfreeze,
      "features_layer": config.features_layer,
      "head_init": config.head_init,
      "warmup_epochs": config.warmup_epochs,
      "trainable_layers": models.trainable_layer_names(model),
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
    if config.compare_scratch:
      metrics.update(_compare_scratch(config, target, metrics, strategy))
    if distribute.is_chief(strategy):
      metrics["plots"] = _plot(model, target, metrics, save_dir)
    artifacts["report"] = training.write_metrics(metrics, artifacts["metrics"], start,
                                                 distribute.is_chief(strategy))
  training.print_summary("finetune", metrics, artifacts, strategy)
  if metrics.get("transfer_gain", 0) < 0 and distribute.is_chief(strategy):
    warn(f"transfer hurt: the model trained from scratch scored "
         f"{metrics['scratch_test_accuracy']:.2%}, {-metrics['transfer_gain']:.2%} above the "
         "finetuned source model")
  return metrics


def _load_source(config: FinetuneConfig):
  return loading.load_model(config.model, config.allow_unsafe_deserialization,
                            config.max_model_mb * limits.MIB)


def _probe_classifier_weights(config: FinetuneConfig, template, target: data.LabeledData,
                              strategy: tf.distribute.Strategy) -> List[np.ndarray]:
  """Classifier weights from a linear probe on the frozen source features of the training
  images, so finetuning starts from a good head and changes the features less (LP-FT: Kumar et
  al., "Fine-Tuning can Distort Pretrained Features", ICLR 2022)."""
  x_train, y_train, _ = training.training_split(target, config)
  if distribute.is_chief(strategy):
    print(f"head_init: fitting a linear probe on the features of {len(x_train)} training images",
          flush=True)
  features = transferability.features_of(template, x_train)
  kernel, bias = transferability.fit_linear_probe(features, y_train, target.num_classes)
  return [kernel.astype(np.float32), bias.astype(np.float32)]


def _phases(config: FinetuneConfig, target_model) -> List[training.Phase]:
  """One phase, or with warmup epochs: the head alone, then the unfrozen layers at a lower rate."""
  if not config.warmup_epochs:
    return [training.Phase("finetune", config.epochs, config.learning_rate)]
  warmup_rate = models.learning_rate_for(config.optimizer, config.learning_rate)
  finetune_rate = config.finetune_learning_rate or warmup_rate / 10
  return [training.Phase("warmup", config.warmup_epochs, warmup_rate,
                         trainable=models.head_layer_names(target_model)),
          training.Phase("finetune", config.epochs, finetune_rate,
                         trainable=models.trainable_layer_names(target_model))]


def _compare_scratch(config: FinetuneConfig, target: data.LabeledData, metrics: Dict[str, Any],
                     strategy: tf.distribute.Strategy) -> Dict[str, Any]:
  """Trains the same architecture from random weights for the same number of epochs at the
  first phase's rate, all layers training; returns its accuracy and the transfer gain."""
  def build_scratch_model():
    source = _load_source(config)
    return models.reinitialized(models.build_target_model(source, target.num_classes,
                                                          "all", config))

  if distribute.is_chief(strategy):
    print("compare_scratch: training the same model from random weights", flush=True)
  _, scratch = training.fit_and_evaluate(
      build_scratch_model, target, config, strategy, stage="finetune_scratch",
      phases=[training.Phase("scratch", metrics["epochs"], config.learning_rate)])
  return {"scratch_test_accuracy": scratch["test_accuracy"],
          "transfer_gain": metrics["test_accuracy"] - scratch["test_accuracy"],
          "scratch_history": scratch["history"]}


def _plot(model, target: data.LabeledData, metrics: Dict[str, Any], output_dir: str) -> List[str]:
  """Training curves, confusion matrix and misclassified test images; returns the file names."""
  probabilities = models.predict(model, target.x_test)
  predicted = probabilities.argmax(axis=1)
  history = {**metrics["history"], **{f"scratch_{name}": values for name, values
                                      in metrics.get("scratch_history", {}).items()}}
  plots.plot_training_curves(history, os.path.join(output_dir, CURVES_FILENAME),
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
