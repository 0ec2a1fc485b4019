"""The training engine shared by the stages and the API: phases, fit, evaluation, and a typed
result. Its messages go to a `log` callable; what it prints is Keras's progress at `verbose`
(none by default) and, when a stage resumes from a backup, one "resuming from epoch" line
(`resume.BackupTracker`). It leaves no global state behind.
"""

import contextlib
import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context as tf_context
from tensorflow.python.framework import config as tf_config

from tl_keras import adaptation
from tl_keras import artifacts
from tl_keras import untrusted
from tl_keras.config.training import TrainingConfig
from tl_keras.data.labeled import LabeledData
from tl_keras.evaluation import metrics
from tl_keras.keras_api import keras
from tl_keras.loading import budgets
from tl_keras.models import networks
from tl_keras.training import distribute
from tl_keras.training import inputs
from tl_keras.training import resume
from tl_keras.training import swa
from tl_keras.training.inputs import AdaptData


def progress_verbosity() -> int:
  """Keras fit verbosity: a live progress bar on a terminal, one line per epoch otherwise."""
  return 1 if sys.stdout.isatty() else 2


def tensorboard_dir(output_dir: str, stage: str) -> str:
  """Where --tensorboard writes a stage's logs: `tensorboard --logdir OUTPUT_DIR/logs`.
  Refuses (UserError) a symbolic link or a file on the way, so nothing is written outside."""
  for folder in ("train", "validation"):  # Keras's TensorBoard writes into these
    untrusted.check_no_links(output_dir, os.path.join(artifacts.LOGS_DIR, stage, folder))
  return os.path.join(output_dir, artifacts.LOGS_DIR, stage)


@contextlib.contextmanager
def global_state(
  seed: int | None = None, deterministic: bool = False, mixed_precision: bool = False
) -> Iterator[None]:
  """Seeds Python, NumPy and TensorFlow, and turns on op determinism and the mixed_float16
  policy as asked, for the block only: all of it is as it was before when the block ends."""
  python_state, numpy_state = random.getstate(), np.random.get_state()
  tf_seed = tf_context.global_seed()
  was_deterministic = tf_config.is_op_determinism_enabled()
  policy = keras.mixed_precision.global_policy()
  try:
    if seed is not None:
      keras.utils.set_random_seed(seed)
    if deterministic:
      tf.config.experimental.enable_op_determinism()
    if mixed_precision:
      # Float16 compute on GPUs; networks.py keeps every classifier layer in float32.
      keras.mixed_precision.set_global_policy("mixed_float16")
    yield
  finally:
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    tf.random.set_seed(tf_seed)
    if not was_deterministic:
      tf_config.disable_op_determinism()
    keras.mixed_precision.set_global_policy(policy)


@dataclasses.dataclass
class Phase:
  """One part of a training schedule: which layers train, for how many epochs, at what rate."""

  name: str
  epochs: int
  learning_rate: float | None = None  # None: the optimizer's default
  trainable: Sequence[str] | None = None  # layer names; None: as the model was built


@dataclasses.dataclass
class FitResult:
  """What a training run did; its fields are the metrics keys every training stage writes."""

  test_accuracy: float | None  # None: the data had no test split
  # {class name: precision, recall, f1, support} on the test split, and their mean F1
  per_class: dict[str, dict[str, float]] | None
  macro_f1: float | None
  train_seconds: float
  train_images_per_second: float | None
  epochs: int
  # Epochs done by an interrupted run before this one; `history` and the timings cover the
  # epochs after it only.
  resumed_from_epoch: int
  phases: list[dict[str, Any]]  # name, epochs_run, learning_rate, trainable_layers, best_epoch
  num_train: int
  num_validation: int
  num_test: int
  classes: list[str]
  # per epoch: loss, accuracy (val_loss, val_accuracy); with unlabelled images also
  # unlabeled_loss, pseudo_label_rate, pseudo_label_accuracy (labels known), domain_accuracy
  history: dict[str, list[float]]
  optimizer: str
  learning_rate: float
  batch_size: int
  per_replica_batch_size: float
  steps_per_epoch: int | None  # None: one pass over the training images
  augment: bool
  validation_split: float
  class_weight: str  # none or balanced
  class_weights: dict[str, float] | None  # by class name, with class_weight=balanced
  label_smoothing: float
  mixed_precision: bool
  jit_compile: bool
  seed: int
  deterministic: bool
  strategy: str
  num_replicas: int
  weights_sha256: str
  num_unlabeled: int = 0
  adapt: dict[str, Any] | None = None  # method and settings (adaptation.Adaptation)
  head_init: str | None = None  # how the new classifier started (the API's)
  defaults: str | None = None  # what the data-dependent defaults chose (`schedule`)
  num_source: int = 0  # source images in the labelled batches (no target labels) or aligned
  # The trained model's outputs on the test images, predicted once for every score and plot;
  # not a metric.
  test_probabilities: np.ndarray | None = dataclasses.field(default=None, repr=False)

  def as_metrics(self) -> dict[str, Any]:
    """The fields as the metrics dict the stages write to their JSON files."""
    metrics = dataclasses.asdict(dataclasses.replace(self, test_probabilities=None))
    del metrics["test_probabilities"]
    return metrics


def fit_and_evaluate(
  build_model: Callable[[], keras.Model],
  dataset: LabeledData,
  config: TrainingConfig,
  strategy: tf.distribute.Strategy,
  stage: str | None = None,
  phases: Sequence[Phase] | None = None,
  log: Callable[[str], None] | None = None,
  verbose: int = 0,
  adapt: AdaptData | None = None,
) -> tuple[keras.Model, FitResult]:
  """Builds the model inside `strategy`'s scope, trains it phase by phase, evaluates on test.

  `phases` default to one phase of `config.epochs` at `config.train.learning_rate`; each
  phase recompiles the model with a fresh optimizer. With `config.train.validation_split`, that
  part of the training data is held out, and each phase stops early once the validation loss
  has not improved for `config.train.patience` epochs and keeps its best epoch's weights.

  With a `stage` name, the training state is backed up after every epoch into
  `backup_dir(config.paths.output_dir, stage)` (STAGE_PHASE for all but the last phase) and,
  with `config.runtime.resume`, a run killed before it finished resumes from its last
  finished epoch.
  Seeds, op determinism and the precision policy are set from `config.runtime` for the run
  only. Messages (the chief's) go to `log`, and Keras shows progress at `verbose` (see
  `progress_verbosity`). With `config.train.steps_per_epoch`, an epoch is that many steps
  over the repeated training images. With `adapt`, each step also learns from unlabelled
  images (`adaptation.AdaptationModel`). Returns the trained model and a `FitResult`.
  """
  phases = phases or [Phase(stage or "train", config.epochs, config.train.learning_rate)]
  runtime = config.runtime
  with global_state(runtime.seed, runtime.op_determinism(), runtime.mixed_precision):
    return _fit_and_evaluate(
      build_model, dataset, config, strategy, stage, phases, log, verbose, adapt
    )


# Training steps per call of the compiled step function: the same updates as one call a step
# (identical weights), minus Keras's per-step Python overhead: 4 epochs of the source CNN on
# MNIST 0-4 took 5.9 s instead of 8.3 s on 2 CPU cores.
STEPS_PER_EXECUTION = 32


def peak_rate(config, phase: Phase) -> float:
  """The phase's learning rate: the constant rate, or the peak of its cosine decay."""
  return networks.learning_rate_for(
    config.train.optimizer, phase.learning_rate, lr_schedule=config.train.lr_schedule
  )


@dataclasses.dataclass
class _Run:
  """What the phases of one training run share, and what they have done so far."""

  config: TrainingConfig
  strategy: tf.distribute.Strategy
  chief: bool
  say: Callable[[str], None]
  adapt: AdaptData | None
  model: keras.Model
  trainer: keras.Model  # the model, or the adaptation model around it
  train: tf.data.Dataset
  validation: tf.data.Dataset | None
  num_train: int
  batch_size: int
  class_weight: dict[int, float] | None
  history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  train_seconds: float = 0.0
  resumed_from_epoch: int = 0


def _fit_and_evaluate(build_model, dataset, config, strategy, stage, phases, log, verbose, adapt):
  chief = distribute.is_chief(strategy)
  say = log if log and chief else lambda message: None
  # Before building the model: creating its variables syncs the workers, so none restores a
  # backup the chief is about to delete.
  backups = _prepare_backups(config, stage, phases, chief) if stage else []
  run = _set_up(build_model, dataset, config, strategy, chief, say, adapt)
  for index, phase in enumerate(phases):
    later = backups[index + 1 :]
    if config.runtime.resume and any(resume.has_backup(path) for path, _ in later):
      say(f"{phase.name} finished before the interruption; resuming a later phase")
      run.resumed_from_epoch += phase.epochs
      continue
    backup = backups[index] if backups else None
    _run_phase(run, phase, backup, stage, len(phases) > 1, verbose)
  probabilities, scores = _score_test(run.model, dataset)
  return run.model, _result(run, dataset, phases, probabilities, scores)


def _prepare_backups(config, stage: str, phases: Sequence[Phase], chief: bool) -> list[tuple]:
  """(backup folder, recorded settings) of each phase: STAGE for the last, STAGE_PHASE before."""
  backups = []
  for index, phase in enumerate(phases):
    name = stage if index == len(phases) - 1 else f"{stage}_{phase.name}"
    path = resume.backup_dir(config.paths.output_dir, name)
    backups.append((path, resume.prepare_backup(config, path, chief)))
  return backups


def _set_up(build_model, dataset, config, strategy, chief, say, adapt) -> _Run:
  """The model built in `strategy`'s scope, the training datasets, the class weights and,
  with `adapt`, the adaptation model around the model."""
  with strategy.scope():
    model = build_model()
  batch_size = distribute.global_batch_size(
    strategy, config.train.batch_size, config.train.per_replica_batch_size
  )
  budgets.check_training_batch(model, batch_size)
  train, validation, y_train = inputs.training_datasets(
    dataset, config, batch_size, model.input_shape[1:], adapt
  )
  class_weight = None
  if config.train.class_weight == "balanced" and len(y_train):
    class_weight = metrics.balanced_class_weights(y_train, dataset.num_classes)
  trainer = model
  if adapt:
    with strategy.scope():
      trainer = adaptation.AdaptationModel(
        model,
        networks.feature_tensor(model),
        adapt.settings,
        config.train.label_smoothing,
        class_weight,
        unlabeled=adapt.unlabeled,
        log=say,
        seed=config.runtime.seed,
      )
  return _Run(
    config,
    strategy,
    chief,
    say,
    adapt,
    model,
    trainer,
    train,
    validation,
    len(y_train),
    batch_size,
    class_weight,
  )


def _run_phase(run: _Run, phase: Phase, backup, stage, announce: bool, verbose: int) -> None:
  """Trains one phase: which layers train, a fresh optimizer, its callbacks; records it."""
  config = run.config
  callbacks, tracker = [], None
  if backup:
    tracker = resume.BackupTracker(backup[0], backup[1], phase.epochs, run.chief)
    callbacks = [tracker, resume.BackupAndRestore(backup[0])]
    if config.runtime.tensorboard and run.chief:
      callbacks.append(keras.callbacks.TensorBoard(tensorboard_dir(config.paths.output_dir, stage)))
  early_stopping = None
  if run.validation is not None:
    early_stopping = keras.callbacks.EarlyStopping(
      patience=config.train.patience, restore_best_weights=True
    )
    callbacks.append(early_stopping)
  averager = None
  if config.train.average_weights_from_epoch:
    averager = swa.AverageWeights(run.model, config.train.average_weights_from_epoch)
    callbacks.append(averager)
  if phase.trainable is not None:
    networks.set_trainable(run.model.layers, phase.trainable)
  _compile(run, phase)
  if announce:
    run.say(
      f"{phase.name}: training {', '.join(networks.trainable_layer_names(run.model))} for "
      f"{phase.epochs} epoch(s) at learning rate {peak_rate(config, phase):g}"
    )
  start = time.perf_counter()
  phase_history = run.trainer.fit(
    run.train,
    epochs=phase.epochs,
    steps_per_epoch=config.train.steps_per_epoch,
    validation_data=run.validation,
    verbose=verbose,
    callbacks=callbacks,
    class_weight=None if run.adapt else run.class_weight,  # the adaptation model weighs its own
  )
  run.train_seconds += time.perf_counter() - start
  if backup:
    resume.remove_backup(backup[0], run.chief)  # Keras has deleted the checkpoint itself
    run.resumed_from_epoch += tracker.start_epoch
  _record(run, phase, phase_history, early_stopping)
  if averager:  # the mean of the last epochs' weights, over early stopping's best
    run.records[-1]["averaged_epochs"] = averager.apply()


def _compile(run: _Run, phase: Phase) -> None:
  """Compiles the trainer for `phase` with a fresh optimizer (its schedule over the phase)."""
  config = run.config
  steps = config.train.steps_per_epoch or math.ceil(run.num_train / run.batch_size)
  with run.strategy.scope():
    networks.compile_classifier(
      run.trainer,
      networks.make_optimizer(
        config.train.optimizer, phase.learning_rate, config.train.lr_schedule, phase.epochs * steps
      ),
      jit_compile=config.runtime.jit_compile,
      label_smoothing=config.train.label_smoothing,
      steps_per_execution=STEPS_PER_EXECUTION,
    )


def _record(run: _Run, phase: Phase, phase_history, early_stopping) -> None:
  """The phase's record and history; with early stopping, the best epoch's weights kept."""
  record = {
    "name": phase.name,
    "epochs_run": len(phase_history.epoch),
    "learning_rate": peak_rate(run.config, phase),
    "trainable_layers": networks.trainable_layer_names(run.model),
  }
  if early_stopping and early_stopping.best_weights is not None:
    # Keras restores the best weights only when it stops early; keep them in any case.
    run.model.set_weights(early_stopping.best_weights)
    record["best_epoch"] = early_stopping.best_epoch + 1
  run.records.append(record)
  adapt = run.adapt
  for name, values in phase_history.history.items():
    if name == "pseudo_label_accuracy" and adapt and adapt.unlabeled.labels is None:
      continue  # no unlabelled image's label is known
    run.history.setdefault(name, []).extend(round(float(v), 5) for v in values)


def _score_test(model: keras.Model, dataset: LabeledData) -> tuple[np.ndarray | None, dict]:
  """The test images' probabilities, predicted once for every score, and the scores (accuracy,
  per class, macro F1); (None, {}) without a test split (the API's arrays: the caller
  evaluates)."""
  if not len(dataset.x_test):
    return None, {}
  probabilities = networks.predict(model, dataset.x_test)
  predicted = probabilities.argmax(axis=1)
  scores = metrics.per_class_metrics(dataset.y_test, predicted, dataset.class_names)
  return probabilities, {"test_accuracy": float((predicted == dataset.y_test).mean()), **scores}


def _result(run: _Run, dataset, phases, probabilities, scores) -> FitResult:
  config, adapt, strategy = run.config, run.adapt, run.strategy
  epochs_run = sum(record["epochs_run"] for record in run.records)
  seconds = run.train_seconds
  class_weight = run.class_weight
  return FitResult(
    test_accuracy=scores.get("test_accuracy"),
    per_class=scores.get("per_class"),
    macro_f1=scores.get("macro_f1"),
    train_seconds=round(seconds, 2),
    train_images_per_second=round(epochs_run * run.num_train / seconds, 1) if seconds else None,
    epochs=sum(phase.epochs for phase in phases),
    resumed_from_epoch=run.resumed_from_epoch,
    phases=run.records,
    num_train=run.num_train,
    num_validation=len(dataset.x_train) - run.num_train,
    num_test=int(len(dataset.x_test)),
    classes=list(dataset.class_names),
    history=run.history,
    optimizer=config.train.optimizer,
    learning_rate=run.records[-1]["learning_rate"] if run.records else 0.0,
    batch_size=run.batch_size,
    per_replica_batch_size=run.batch_size / strategy.num_replicas_in_sync,
    steps_per_epoch=config.train.steps_per_epoch,
    augment=config.train.augment,
    validation_split=config.train.validation_split,
    class_weight=config.train.class_weight,
    class_weights={dataset.class_names[k]: round(w, 6) for k, w in class_weight.items()}
    if class_weight
    else None,
    label_smoothing=config.train.label_smoothing,
    mixed_precision=config.runtime.mixed_precision,
    jit_compile=config.runtime.jit_compile,
    seed=config.runtime.seed,
    deterministic=config.runtime.op_determinism(),
    strategy=distribute.strategy_name(strategy),
    num_replicas=strategy.num_replicas_in_sync,
    weights_sha256=networks.weights_fingerprint(run.model),
    num_unlabeled=len(adapt.unlabeled) if adapt else 0,
    adapt={**adapt.settings.as_metrics(), **run.trainer.report()} if adapt else None,
    num_source=len(adapt.source.y_train) if adapt and adapt.source else 0,
    test_probabilities=probabilities,
  )
