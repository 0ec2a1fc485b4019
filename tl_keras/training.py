"""Training shared by the pretrain and finetune stages: settings, fit, evaluation, summaries."""

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

import tensorflow as tf

from tl_keras import data
from tl_keras import distribute
from tl_keras import model_io
from tl_keras import models
from tl_keras import report
from tl_keras import resume
from tl_keras.errors import UserError
from tl_keras.keras_api import keras


@dataclasses.dataclass
class TrainSettings:
  """Settings every training stage shares; the CLI flags of the same names fill them."""
  output_dir: str = "saved_models"
  data_dir: Optional[str] = None
  optimizer: str = "adam"
  learning_rate: Optional[float] = None  # None: the optimizer's default in models.py
  epochs: int = 3
  batch_size: int = 128
  seed: int = 42
  strategy: str = "auto"
  resume: bool = True
  deterministic: bool = True
  # When set, the global batch is this times the number of replicas and batch_size is unused.
  per_replica_batch_size: Optional[int] = None
  mixed_precision: bool = False
  jit_compile: bool = False
  tensorboard: bool = False

  def validate(self) -> None:
    if self.epochs < 1:
      raise UserError(f"--epochs must be at least 1, got {self.epochs}")
    if self.batch_size < 1 or (self.per_replica_batch_size or 1) < 1:
      raise UserError("batch sizes must be at least 1, got --batch_size="
                      f"{self.batch_size} --per_replica_batch_size={self.per_replica_batch_size}")
    if self.mixed_precision and not tf.config.list_physical_devices("GPU"):
      raise UserError("--mixed_precision needs a GPU: float16 on a CPU is slower, not faster; "
                      "drop the flag here")
    # Checks names and rates without creating an optimizer: that would start the TF runtime,
    # after which a multi-worker strategy can no longer be created.
    models.learning_rate_for(self.optimizer, self.learning_rate)


def progress_verbosity() -> int:
  """Keras fit verbosity: a live progress bar on a terminal, one line per epoch otherwise."""
  return 1 if sys.stdout.isatty() else 2


def tensorboard_dir(output_dir: str, stage: str) -> str:
  """Where --tensorboard writes a stage's logs: `tensorboard --logdir OUTPUT_DIR/logs`."""
  return os.path.join(output_dir, "logs", stage)


def fit_and_evaluate(build_model: Callable[[], keras.Model], dataset: data.LabeledData,
                     settings: TrainSettings, strategy: tf.distribute.Strategy,
                     stage: Optional[str] = None) -> Tuple[keras.Model, Dict[str, Any]]:
  """Builds and compiles the model inside `strategy`'s scope, trains, and evaluates on test.

  With a `stage` name, the training state is backed up after every epoch into
  `backup_dir(settings.output_dir, stage)` and, with `settings.resume`, a run killed
  before it finished resumes from its last finished epoch. Returns the trained model and the
  metrics shared by all training stages.
  """
  if settings.deterministic:
    # Process-wide, and TF has no public call to turn it off again.
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(settings.seed)
  chief = distribute.is_chief(strategy)
  callbacks = []
  if stage:
    # Before building the model: creating its variables syncs the workers, so none restores
    # a backup the chief is about to delete.
    backup_path = resume.backup_dir(settings.output_dir, stage)
    recorded_settings = resume.prepare_backup(settings, backup_path, chief)
    tracker = resume.BackupTracker(backup_path, recorded_settings, settings.epochs, chief)
    callbacks = [tracker, resume.BackupAndRestore(backup_path)]
    if settings.tensorboard and chief:
      callbacks.append(keras.callbacks.TensorBoard(tensorboard_dir(settings.output_dir, stage)))
  if settings.mixed_precision:
    # Float16 compute on GPUs; models.py keeps every classifier layer in float32.
    keras.mixed_precision.set_global_policy("mixed_float16")
  with strategy.scope():
    model = build_model()
    models.compile_classifier(
        model, models.make_optimizer(settings.optimizer, settings.learning_rate),
        jit_compile=settings.jit_compile)
  input_shape = model.input_shape[1:]
  batch_size = distribute.global_batch_size(strategy, settings.batch_size,
                                            settings.per_replica_batch_size)
  train = data.make_dataset(dataset.x_train, dataset.y_train, batch_size, input_shape,
                            shuffle_seed=settings.seed)
  test = data.make_dataset(dataset.x_test, dataset.y_test, batch_size, input_shape)
  start = time.perf_counter()
  history = model.fit(train, epochs=settings.epochs, verbose=progress_verbosity(),
                      callbacks=callbacks)
  train_seconds = time.perf_counter() - start
  resumed_from_epoch = 0
  if stage:
    resume.remove_backup(backup_path, chief)  # Keras has deleted the checkpoint itself
    resumed_from_epoch = tracker.start_epoch
  _, test_accuracy = model.evaluate(test, verbose=0)
  return model, {
      "test_accuracy": float(test_accuracy),
      "train_seconds": round(train_seconds, 2),
      "train_images_per_second": round(len(history.epoch) * len(dataset.x_train) / train_seconds,
                                       1),
      "epochs": settings.epochs,
      # Epochs done by an interrupted run before this one; `history` and the timings cover the
      # epochs after it only.
      "resumed_from_epoch": resumed_from_epoch,
      "num_train": int(len(dataset.x_train)),
      "num_test": int(len(dataset.x_test)),
      "classes": dataset.class_names,
      "history": {name: [round(float(v), 5) for v in values]
                  for name, values in history.history.items()},
      "optimizer": settings.optimizer,
      "learning_rate": float(model.optimizer.learning_rate.numpy()),
      "batch_size": batch_size,
      "per_replica_batch_size": batch_size / strategy.num_replicas_in_sync,
      "mixed_precision": settings.mixed_precision,
      "jit_compile": settings.jit_compile,
      "seed": settings.seed,
      "deterministic": settings.deterministic,
      "strategy": distribute.strategy_name(strategy),
      "num_replicas": strategy.num_replicas_in_sync,
      "weights_sha256": models.weights_fingerprint(model),
  }


def write_metrics(metrics: Dict[str, Any], path: str, start: float,
                  chief: bool = True) -> Optional[str]:
  """Adds `wall_seconds` since `start`, writes the metrics file, and on the chief rewrites the
  folder's report.md; returns the report's path (None elsewhere)."""
  metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
  model_io.write_json(path, metrics)
  return report.update_report(os.path.dirname(path)) if chief else None


def print_summary(stage: str, metrics: Dict[str, Any], artifacts: Dict[str, str],
                  strategy: Optional[tf.distribute.Strategy] = None) -> None:
  """Prints a short end-of-stage summary: key metrics and where the files went.

  Prints nothing on the non-chief workers of a multi-worker `strategy`.
  """
  if strategy is not None and not distribute.is_chief(strategy):
    print(f"{stage} done on this worker: weights sha256 {metrics.get('weights_sha256')}",
          flush=True)
    return
  lines = [f"== {stage} done in {metrics['wall_seconds']:.1f} s =="]
  accuracy = metrics.get("test_accuracy")
  if accuracy is not None:
    lines.append(f"  test accuracy   {accuracy:.2%} on {metrics['num_test']} images")
  if "train_seconds" in metrics:
    epochs = f"{metrics['epochs']} epochs"
    if metrics.get("resumed_from_epoch"):
      epochs += f" (resumed after epoch {metrics['resumed_from_epoch']})"
    lines.append(f"  training        {epochs} on {metrics['num_train']} images, "
                 f"{metrics['train_seconds']:.1f} s ({metrics['strategy']}, "
                 f"{metrics['num_replicas']} replica(s))")
  if "images_per_second" in metrics:
    lines.append(f"  inference       {metrics['images_per_second']:.0f} images/s, mean confidence "
                 f"{metrics['mean_confidence']:.2%}")
  lines.append(f"  classes         {', '.join(metrics['classes'])}")
  for name, path in artifacts.items():
    lines.append(f"  {name:<15} {path}")
  print("\n".join(lines), flush=True)
