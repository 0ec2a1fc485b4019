"""Stage 3: put a new classifier head on the source model and train it on the target."""

import os
import time
from typing import Any

import tensorflow as tf

from tl_keras import api
from tl_keras import artifacts
from tl_keras import loading
from tl_keras.config import settings
from tl_keras.data.labeled import LabeledData
from tl_keras.errors import warn
from tl_keras.models import networks
from tl_keras.outputs import summary
from tl_keras.outputs import tflite
from tl_keras.stages import base
from tl_keras.training import distribute
from tl_keras.training import trainer


def run(
  config: settings.FinetuneConfig,
  datasets_override: LabeledData | None = None,
  strategy_override: tf.distribute.Strategy | None = None,
  source: base.Source | None = None,
) -> dict[str, Any]:
  """Fine-tunes the source model on the target; writes target_model.h5, target_savedmodel/
  and finetune_metrics.json. Returns the metrics. `source`: the model of
  `config.load.model`, read already (the pipeline's); it is copied, not changed.
  """
  start = base.begin(config)
  export_formats = settings.export_formats(config.export.export_formats, "export_formats")
  strategy = base.strategy_for(config.runtime, strategy_override)
  # Loaded outside the strategy's scope: the classifier is rebuilt inside it for training.
  context = base.prepare(
    config, datasets_override, config.runtime.seed, config.adapt.unlabeled, source
  )
  source, target = context.source, context.target
  clf = _classifier(config, source, target)
  result = clf.fit_config(
    target,
    config,
    strategy,
    stage="finetune",
    log=summary.say,
    verbose=trainer.progress_verbosity(),
  )
  metrics = result.as_metrics()
  metrics.update(_run_metrics(config, clf, result, source, target, export_formats))
  with distribute.worker_output_dir(strategy, context.output_dir) as save_dir:
    artifact_paths = _save(config, clf, target, export_formats, strategy, save_dir)
    if config.finetune.compare_scratch:
      metrics.update(_compare_scratch(clf.settings, source.model, target, metrics, strategy))
    if distribute.is_chief(strategy):
      metrics["plots"] = _plot(result.test_probabilities, target, metrics, save_dir)
    artifact_paths["report"] = base.write_metrics(
      metrics, artifact_paths["metrics"], start, distribute.is_chief(strategy)
    )
  summary.print_summary("finetune", metrics, artifact_paths, strategy)
  if distribute.is_chief(strategy):
    _warn_if_hurt(metrics)
  return metrics


def _classifier(
  config: settings.FinetuneConfig, source: base.Source, target: LabeledData
) -> api.TransferClassifier:
  """The source model with a new head for the target's classes, as `config` sets it."""
  return api.TransferClassifier.from_source(
    source.model,
    target.class_names,
    unfreeze=config.finetune.unfreeze,
    seed=config.runtime.seed,
    features_layer=config.head.features_layer,
    head_units=config.head.head_units,
    head_dropout=config.head.head_dropout,
    head_l2=config.head.head_l2,
    source_path=source.path,
    metadata=source.metadata,
  )


def _run_metrics(config, clf, result, source, target, export_formats) -> dict[str, Any]:
  """What the run started from and how it was set, beside the training's own metrics."""
  return {
    "source_model": source.path,
    "source_classes": clf.source_class_names,
    "target": target.description,
    "target_fit": target.fit,
    "unlabeled": target.unlabeled.description if result.num_unlabeled else None,
    "source_only_accuracy": clf.source_only_accuracy(target),
    "unfreeze": config.finetune.unfreeze,
    "features_layer": config.head.features_layer,
    "head_init": result.head_init,
    "warmup_epochs": config.finetune.warmup_epochs,
    "trainable_layers": networks.trainable_layer_names(clf.model),
    "export_formats": list(export_formats),
  }


def _save(config, clf, target, export_formats, strategy, save_dir) -> dict[str, str]:
  """Writes the model files and (the chief) the TFLite exports; returns the artifacts' paths,
  the metrics file's included (written later)."""
  artifact_paths = {
    **clf.export(save_dir, {**target.metadata(), "target_fit": target.fit}),
    "metrics": os.path.join(save_dir, artifacts.METRICS["finetune"]),
  }
  if export_formats and distribute.is_chief(strategy):
    artifact_paths["export"] = _export(config, export_formats, target, artifact_paths["model"])
  return artifact_paths


def _warn_if_hurt(metrics: dict[str, Any]) -> None:
  """Warns when training from scratch beat transfer, or adaptation lowered the source
  model's own accuracy on the target."""
  if metrics.get("transfer_gain", 0) < 0:
    warn(
      f"transfer hurt: the model trained from scratch scored "
      f"{metrics['scratch_test_accuracy']:.2%}, {-metrics['transfer_gain']:.2%} above the "
      "finetuned source model"
    )
  before = metrics["source_only_accuracy"]
  if metrics["adapt"] and before is not None and metrics["test_accuracy"] < before:
    warn(
      f"adaptation hurt: the source model scored {before:.2%} on the target's test images "
      f"before training, {before - metrics['test_accuracy']:.2%} above the adapted model"
    )


def _export(config: settings.FinetuneConfig, formats, target: LabeledData, model_path: str) -> str:
  """--export_formats: the TFLite files of the saved model beside it, and export_metrics.json;
  returns that file's path."""
  start = time.perf_counter()
  output_dir = os.path.dirname(model_path)
  model = loading.load_model(model_path)  # the file just written, as users will load it
  metrics = tflite.export_and_evaluate(
    model,
    target,
    formats,
    output_dir,
    target.class_names,
    config.export.representative_images,
    config.runtime.seed,
  )
  metrics.update({"model": model_path, "target": target.description})
  path = os.path.join(output_dir, artifacts.METRICS["export"])
  base.write_metrics(metrics, path, start)
  tflite.print_summary(metrics, {"files": output_dir, "metrics": path})
  return path


def _compare_scratch(
  config: settings.FinetuneConfig,
  source_model,
  target: LabeledData,
  metrics: dict[str, Any],
  strategy: tf.distribute.Strategy,
) -> dict[str, Any]:
  """Trains the same architecture from random weights for the same number of epochs (and
  steps) at the first phase's rate, all layers training, on the labelled images only; returns
  its accuracy and the transfer gain. `config` is the finetune run's, its defaults filled in;
  `source_model` is copied, not read again."""

  def build_scratch_model():
    copy = networks.with_global_dtype_policy(source_model)
    return networks.reinitialized(
      networks.build_target_model(
        copy,
        target.num_classes,
        "all",
        features_layer=config.head.features_layer,
        head_units=config.head.head_units,
        head_dropout=config.head.head_dropout,
        head_l2=config.head.head_l2,
      )
    )

  if distribute.is_chief(strategy):
    summary.say("compare_scratch: training the same model from random weights")
  _, scratch = trainer.fit_and_evaluate(
    build_scratch_model,
    target,
    config,
    strategy,
    stage="finetune_scratch",
    phases=[trainer.Phase("scratch", metrics["epochs"], config.train.learning_rate)],
    log=summary.say,
    verbose=trainer.progress_verbosity(),
  )
  return {
    "scratch_test_accuracy": scratch.test_accuracy,
    "transfer_gain": metrics["test_accuracy"] - scratch.test_accuracy,
    "scratch_history": scratch.history,
  }


def _plot(
  probabilities, target: LabeledData, metrics: dict[str, Any], output_dir: str
) -> list[str]:
  """Training curves, confusion matrix and misclassified test images (from the trained model's
  test `probabilities`); returns the file names."""
  from tl_keras.outputs import plots  # matplotlib

  predicted = probabilities.argmax(axis=1)
  history = {
    **metrics["history"],
    **{f"scratch_{name}": values for name, values in metrics.get("scratch_history", {}).items()},
  }
  plots.plot_training_curves(
    history,
    os.path.join(output_dir, artifacts.FINETUNE_CURVES),
    f"finetune on {target.description}",
    first_epoch=metrics["resumed_from_epoch"] + 1,
  )
  plots.plot_confusion_matrix(
    target.y_test,
    predicted,
    target.class_names,
    os.path.join(output_dir, artifacts.CONFUSION),
    "Target test set after finetuning",
  )
  plots.plot_misclassified(
    target.x_test,
    target.y_test,
    predicted,
    target.class_names,
    os.path.join(output_dir, artifacts.MISCLASSIFIED),
    "Misclassified target test images",
    confidences=probabilities.max(axis=1),
  )
  return [artifacts.FINETUNE_CURVES, artifacts.CONFUSION, artifacts.MISCLASSIFIED]
