"""Training shared by the pretrain and finetune stages: settings, fit, evaluation, summaries."""

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from tl_keras import data
from tl_keras import distribute
from tl_keras import model_io
from tl_keras import models
from tl_keras import ranges
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
  augment: bool = False
  # A stratified, seeded fraction of the training data held out to choose the best epoch.
  validation_split: float = 0.0
  patience: int = 3  # epochs without a better validation loss before training stops

  def validate(self) -> None:
    """Refuses bad settings with a UserError naming the flag, before anything is written.

    Every numeric field, a subclass's too, must be finite and in its `ranges.RANGES` range.
    """
    ranges.check(self)
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


@dataclasses.dataclass
class Phase:
  """One part of a training schedule: which layers train, for how many epochs, at what rate."""
  name: str
  epochs: int
  learning_rate: Optional[float] = None  # None: the optimizer's default
  trainable: Optional[Sequence[str]] = None  # layer names; None: as the model was built


def fit_and_evaluate(build_model: Callable[[], keras.Model], dataset: data.LabeledData,
                     settings: TrainSettings, strategy: tf.distribute.Strategy,
                     stage: Optional[str] = None,
                     phases: Optional[Sequence[Phase]] = None) -> Tuple[keras.Model,
                                                                        Dict[str, Any]]:
  """Builds the model inside `strategy`'s scope, trains it phase by phase, evaluates on test.

  `phases` default to one phase of `settings.epochs` at `settings.learning_rate`; each phase
  recompiles the model with a fresh optimizer. With `settings.validation_split`, that part of
  the training data is held out, and each phase stops early once the validation loss has not
  improved for `settings.patience` epochs and keeps its best epoch's weights.

  With a `stage` name, the training state is backed up after every epoch into
  `backup_dir(settings.output_dir, stage)` (STAGE_PHASE for all but the last phase) and, with
  `settings.resume`, a run killed before it finished resumes from its last finished epoch.
  Returns the trained model and the metrics shared by all training stages.
  """
  phases = phases or [Phase(stage or "train", settings.epochs, settings.learning_rate)]
  if settings.deterministic:
    # Process-wide, and TF has no public call to turn it off again.
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(settings.seed)
  chief = distribute.is_chief(strategy)
  backups = []
  if stage:
    # Before building the model: creating its variables syncs the workers, so none restores
    # a backup the chief is about to delete.
    for index, phase in enumerate(phases):
      path = resume.backup_dir(settings.output_dir, stage if index == len(phases) - 1
                               else f"{stage}_{phase.name}")
      backups.append((path, resume.prepare_backup(settings, path, chief)))
  if settings.mixed_precision:
    # Float16 compute on GPUs; models.py keeps every classifier layer in float32.
    keras.mixed_precision.set_global_policy("mixed_float16")
  with strategy.scope():
    model = build_model()
  input_shape = model.input_shape[1:]
  batch_size = distribute.global_batch_size(strategy, settings.batch_size,
                                            settings.per_replica_batch_size)
  train, validation, num_train = _training_datasets(dataset, settings, batch_size, input_shape)
  test = data.make_dataset(dataset.x_test, dataset.y_test, batch_size, input_shape)

  history, phase_records, train_seconds, resumed_from_epoch = {}, [], 0.0, 0
  for index, phase in enumerate(phases):
    callbacks = []
    if backups:
      backup_path, recorded_settings = backups[index]
      if settings.resume and any(resume.has_backup(path) for path, _ in backups[index + 1:]):
        if chief:
          print(f"{phase.name} finished before the interruption; resuming a later phase",
                flush=True)
        resumed_from_epoch += phase.epochs
        continue
      tracker = resume.BackupTracker(backup_path, recorded_settings, phase.epochs, chief)
      callbacks = [tracker, resume.BackupAndRestore(backup_path)]
      if settings.tensorboard and chief:
        callbacks.append(keras.callbacks.TensorBoard(tensorboard_dir(settings.output_dir,
                                                                     stage)))
    early_stopping = None
    if validation is not None:
      early_stopping = keras.callbacks.EarlyStopping(patience=settings.patience,
                                                     restore_best_weights=True)
      callbacks.append(early_stopping)
    if phase.trainable is not None:
      models.set_trainable(model.layers, phase.trainable)
    with strategy.scope():
      models.compile_classifier(
          model, models.make_optimizer(settings.optimizer, phase.learning_rate),
          jit_compile=settings.jit_compile)
    if len(phases) > 1 and chief:
      print(f"{phase.name}: training {', '.join(models.trainable_layer_names(model))} for "
            f"{phase.epochs} epoch(s) at learning rate "
            f"{models.learning_rate_for(settings.optimizer, phase.learning_rate):g}", flush=True)
    start = time.perf_counter()
    phase_history = model.fit(train, epochs=phase.epochs, validation_data=validation,
                              verbose=progress_verbosity(), callbacks=callbacks)
    train_seconds += time.perf_counter() - start
    if backups:
      resume.remove_backup(backup_path, chief)  # Keras has deleted the checkpoint itself
      resumed_from_epoch += tracker.start_epoch
    record = {"name": phase.name, "epochs_run": len(phase_history.epoch),
              "learning_rate": float(model.optimizer.learning_rate.numpy()),
              "trainable_layers": models.trainable_layer_names(model)}
    if early_stopping and early_stopping.best_weights is not None:
      # Keras restores the best weights only when it stops early; keep them in any case.
      model.set_weights(early_stopping.best_weights)
      record["best_epoch"] = early_stopping.best_epoch + 1
    phase_records.append(record)
    for name, values in phase_history.history.items():
      history.setdefault(name, []).extend(round(float(v), 5) for v in values)

  _, test_accuracy = model.evaluate(test, verbose=0)
  epochs_run = sum(record["epochs_run"] for record in phase_records)
  return model, {
      "test_accuracy": float(test_accuracy),
      "train_seconds": round(train_seconds, 2),
      "train_images_per_second": round(epochs_run * num_train / train_seconds, 1)
                                 if train_seconds else None,
      "epochs": sum(phase.epochs for phase in phases),
      # Epochs done by an interrupted run before this one; `history` and the timings cover the
      # epochs after it only.
      "resumed_from_epoch": resumed_from_epoch,
      "phases": phase_records,
      "num_train": num_train,
      "num_validation": len(dataset.x_train) - num_train,
      "num_test": int(len(dataset.x_test)),
      "classes": dataset.class_names,
      "history": history,
      "optimizer": settings.optimizer,
      "learning_rate": float(model.optimizer.learning_rate.numpy()),
      "batch_size": batch_size,
      "per_replica_batch_size": batch_size / strategy.num_replicas_in_sync,
      "augment": settings.augment,
      "validation_split": settings.validation_split,
      "mixed_precision": settings.mixed_precision,
      "jit_compile": settings.jit_compile,
      "seed": settings.seed,
      "deterministic": settings.deterministic,
      "strategy": distribute.strategy_name(strategy),
      "num_replicas": strategy.num_replicas_in_sync,
      "weights_sha256": models.weights_fingerprint(model),
  }


def training_split(dataset: data.LabeledData, settings: TrainSettings):
  """(training images, their labels, (validation images, labels) or None): with
  `settings.validation_split`, that seeded, stratified part of the training data is held out."""
  x_train, y_train = dataset.x_train, dataset.y_train
  if not settings.validation_split:
    return x_train, y_train, None
  train_index, validation_index = data.split_per_class(y_train, settings.validation_split,
                                                       settings.seed)
  if not len(validation_index):
    raise UserError(f"--validation_split={settings.validation_split} holds out no image of "
                    f"the {len(y_train)} training images; raise it or drop it")
  return (x_train[train_index], y_train[train_index],
          (x_train[validation_index], y_train[validation_index]))


def _training_datasets(dataset: data.LabeledData, settings: TrainSettings, batch_size: int,
                       input_shape) -> Tuple[tf.data.Dataset, Optional[tf.data.Dataset], int]:
  """(train, validation or None, number of training images) of `training_split`; only the
  training images are shuffled and augmented."""
  x_train, y_train, held_out = training_split(dataset, settings)
  validation = data.make_dataset(*held_out, batch_size, input_shape) if held_out else None
  train = data.make_dataset(x_train, y_train, batch_size, input_shape,
                            shuffle_seed=settings.seed, augment=settings.augment)
  return train, validation, len(x_train)


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
  if "linear_probe_accuracy" in metrics:
    lines.append(f"  transferability linear probe {metrics['linear_probe_accuracy']:.2%}, "
                 f"LogME {metrics['logme']:.3f} (source features on the target's "
                 f"{metrics['num_train']} training images)")
  if "transfer_gain" in metrics:
    lines.append(f"  from scratch    {metrics['scratch_test_accuracy']:.2%}: transfer gain "
                 f"{metrics['transfer_gain'] * 100:+.2f} points")
  if "images_per_second" in metrics:
    lines.append(f"  inference       {metrics['images_per_second']:.0f} images/s, mean confidence "
                 f"{metrics['mean_confidence']:.2%}")
  lines.append(f"  classes         {', '.join(metrics['classes'])}")
  for name, path in artifacts.items():
    lines.append(f"  {name:<15} {path}")
  print("\n".join(lines), flush=True)
