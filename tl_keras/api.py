"""The Python API: load a source model and a target, fine-tune, evaluate, predict, export.

    import tl_keras
    source = tl_keras.load_model("saved_models/source_model.h5")
    data = tl_keras.load_target("mnist:5-9", input_shape=source.input_shape[1:])
    clf = tl_keras.TransferClassifier.from_source(source, class_names=data.class_names)
    result = clf.fit(data, epochs=4)
    clf.evaluate(data)            # {"accuracy": ..., "loss": ...} on the test split
    clf.predict(raw_uint8_images) # probabilities; preprocessing included
    clf.export("out/")            # target_model.h5 with metadata + target_savedmodel/

`TransferClassifier` follows keras-hub's task models (a backbone and a head, built from
constructor arguments, `compile()` with defaults) and Model Maker's image classifier
(create, evaluate, export). Training runs under the strategy given to `fit` and leaves no
global state behind. The finetune stage is this class plus files and a report.
"""

import dataclasses
import os
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import adaptation
from tl_keras import artifacts
from tl_keras import limits
from tl_keras import loading
from tl_keras.config import methods
from tl_keras.config import settings
from tl_keras.data import targets
from tl_keras.data.folders import ImageFiles
from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import UnlabeledImages
from tl_keras.errors import UserError
from tl_keras.evaluation import metrics
from tl_keras.evaluation import probes
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import files
from tl_keras.outputs import model_io
from tl_keras.ranking import logme
from tl_keras.training import distribute
from tl_keras.training import schedule
from tl_keras.training import trainer
from tl_keras.training.trainer import FitResult
from tl_keras.version import __version__

Images = np.ndarray | tf.Tensor | ImageFiles
Data = LabeledData | tuple[Images, np.ndarray] | tf.data.Dataset
__all__ = [
  "Data",
  "FitResult",
  "LabeledData",
  "TransferClassifier",
  "load_model",
  "load_target",
  "transferability",
]


def load_model(
  source: str,
  allow_unsafe: bool = False,
  max_model_mb: int = limits.MAX_MODEL_BYTES // limits.MIB,
  input_size: int | None = None,
) -> keras.Model:
  """Loads an .h5 or .keras file, a SavedModel folder, a TF Hub handle or 'keras:NAME' (an
  ImageNet backbone from keras.applications at `input_size` pixels, default 224), refusing
  files that would run code, touch other files or allocate beyond `max_model_mb` (see
  `tl_keras.loading`)."""
  return loading.load_model(source, allow_unsafe, max_model_mb * limits.MIB, input_size)


def load_target(
  spec: str,
  input_shape: Sequence[int] | None = None,
  *,
  data_dir: str | None = None,
  fit: str = "resize",
  test_split: float = 0.2,
  train_per_class: int | None = None,
  seed: int = 42,
  image_cache: str = "auto",
  unlabeled: str = "",
  framing: dict | None = None,
) -> LabeledData:
  """A target from 'mnist:CLASSES', 'npz:PATH' or 'dir:PATH', fitted to a model's
  `input_shape` (needed for 'dir:'), with `train_per_class` seeded training images per class
  (0: none, for adaptation without labels). `unlabeled`: unlabelled images as `--unlabeled`
  takes them ('rest', 'dir:PATH', 'npz:PATH', 'mnist:CLASSES'), in `.unlabeled`. `fit`:
  'auto', 'resize', 'pad' or 'source' (framed as `framing` says, e.g. a source model's
  `TransferClassifier.framing`). `image_cache` 'none' streams a 'dir:' folder's images from
  their files ('auto': when they would take over 512 MiB; see `tl_keras.datasets.folders`)."""
  options = settings.TargetSettings(
    target=spec,
    target_fit=fit,
    test_split=test_split,
    train_per_class=train_per_class,
    image_cache=image_cache,
  )
  settings.validate(options)
  problem = settings.unlabeled_spec_problem(unlabeled)
  if problem:
    raise UserError(problem)
  if input_shape is None:
    if unlabeled:
      raise UserError("unlabelled images need input_shape, the model's, to be fitted to")
    target = targets.load_target(spec, data_dir, None, fit, test_split, seed, image_cache)
    if train_per_class is not None:
      target = targets.subset_per_class(target, train_per_class, seed)
    targets.check_target(target)
    return target
  return targets.prepare_target(options, tuple(input_shape), data_dir, seed, framing, unlabeled)


def transferability(
  source: str | keras.Model, data: LabeledData, features_layer: str | None = None
) -> dict[str, float]:
  """How well a source model's frozen features suit the target before any training:
  `linear_probe_accuracy` (on the test split) and `logme` (on the training split)."""
  model = load_model(source) if isinstance(source, str) else source
  if not len(data.y_train):  # no labelled training images (adaptation without labels)
    return {"linear_probe_accuracy": None, "logme": None}
  train = probes.features_of(model, data.x_train, features_layer)
  test = probes.features_of(model, data.x_test, features_layer)
  return {
    "linear_probe_accuracy": probes.linear_probe_accuracy(train, data.y_train, test, data.y_test),
    "logme": logme.logme(train, data.y_train),
  }


class TransferClassifier:
  """An image classifier on a source model's features: a new softmax head for the target's
  classes, with the chosen source layers unfrozen.

  Build one with `from_source`; `compile` sets the optimizer (Adam at 1e-3 unless told), `fit`
  trains, `evaluate`, `predict` and `export` use the result. `model` is the Keras model.
  """

  def __init__(
    self,
    model: keras.Model,
    class_names: Sequence[str],
    *,
    source: str | None = None,
    source_class_names: Sequence[str] | None = None,
    framing: dict | None = None,
  ):
    if model.output_shape[-1] != len(class_names):
      raise UserError(
        f"the model has {model.output_shape[-1]} outputs but {len(class_names)} class names "
        "were given"
      )
    self.model = model
    self.class_names = [str(name) for name in class_names]
    self.source = source
    self.source_class_names = list(source_class_names) if source_class_names else None
    # How the source's training images were framed (its metadata), for --target_fit=source.
    self.framing = framing
    self._fresh_model: Callable[[], keras.Model] | None = None  # see from_source
    self._source_model: keras.Model | None = None  # with its classifier, see from_source
    # The settings the last `fit` trained with, its data-dependent defaults filled in.
    self.settings: settings.FinetuneConfig | None = None
    self.compile()

  @classmethod
  def from_source(
    cls,
    source: str | keras.Model,
    class_names: Sequence[str],
    *,
    unfreeze: str = "all",
    features_layer: str | None = None,
    head_units: int = 0,
    head_dropout: float = 0.0,
    head_l2: float = 0.0,
    seed: int = 42,
    allow_unsafe: bool = False,
    max_model_mb: int = limits.MAX_MODEL_BYTES // limits.MIB,
    source_path: str | None = None,
    input_size: int | None = None,
    metadata: dict[str, Any] | None = None,
  ) -> "TransferClassifier":
    """A classifier for `class_names` on `source` (a Keras model, or a path or handle loaded
    safely): the source classifier is removed and a new head, initialised from `seed`, sits on
    its penultimate features (or `features_layer`'s output). `unfreeze`: 'none', 'all',
    'last:N' or layer names. `input_size`: for a 'keras:NAME' backbone, its input size.
    `source_path` names where a model given loaded came from; `metadata`: its tl_keras
    metadata, if read already (else read from the path).

    The source file is read once. The first `fit` trains a fresh copy of the source, made in
    memory, so that `fit(seed=...)` alone decides its random draws and the source model object
    is never changed."""
    head = {
      "features_layer": features_layer,
      "head_units": head_units,
      "head_dropout": head_dropout,
      "head_l2": head_l2,
    }
    settings.validate(settings.HeadSettings(**head))
    path = source if isinstance(source, str) else source_path
    source_model = (
      load_model(source, allow_unsafe, max_model_mb, input_size) if path is source else source
    )
    networks.image_input_shape(source_model, path or source_model.name)
    with trainer.global_state(seed):
      model = networks.build_target_model(source_model, len(class_names), unfreeze, **head)

    def fresh_model() -> keras.Model:
      copy = networks.with_global_dtype_policy(source_model)
      return networks.build_target_model(copy, len(class_names), unfreeze, **head)

    if metadata is None:
      metadata = model_io.read_metadata(path) if path else {}
    classifier = cls(
      model,
      class_names,
      source=path,
      source_class_names=metadata.get("class_names"),
      framing=metadata.get("framing"),
    )
    classifier._fresh_model = fresh_model
    classifier._source_model = source_model
    return classifier

  @property
  def input_shape(self) -> tuple[int, int, int]:
    return tuple(self.model.input_shape[1:])

  def compile(
    self, optimizer: str = "adam", learning_rate: float | None = None, jit_compile: bool = False
  ) -> None:
    """Sets how `fit` trains: 'adam' (default rate 1e-3) or 'adadelta' (1.0)."""
    chosen = {"optimizer": optimizer, "learning_rate": learning_rate, "jit_compile": jit_compile}
    settings.validate(settings.make(settings.FinetuneConfig, **chosen))
    self._train_settings = chosen

  def fit(
    self,
    data: Data,
    epochs: int | None = None,
    *,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    validation_split: float = 0.0,
    patience: int = 3,
    augment: bool | None = None,
    warmup_epochs: int = 0,
    finetune_learning_rate: float | None = None,
    head_init: str = "auto",
    class_weight: str = "none",
    label_smoothing: float = 0.0,
    unlabeled: UnlabeledImages | Images | None = None,
    adapt: str = "auto",
    source_data: LabeledData | str = "auto",
    unlabeled_ratio: int = 3,
    confidence_threshold: float = 0.95,
    unlabeled_weight: float = 1.0,
    align_weight: float = 0.1,
    teacher: str = "none",
    teacher_decay: float = 0.99,
    selection: str = "im",
    seed: int = 42,
    deterministic: bool | None = None,
    mixed_precision: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    verbose: int | None = None,
  ) -> FitResult:
    """Trains on `data`: a LabeledData (its training split), `(images, labels)` arrays, or a
    tf.data.Dataset of `(images, labels)` batches. Images are raw (uint8 0-255 or float 0-1,
    any size; fitted to the model's input); labels are 0..k-1 in `class_names` order.

    Left at None/'auto', `epochs`, `steps_per_epoch`, `batch_size`, `augment`, `head_init`
    and `adapt` are chosen by the number of labelled and unlabelled images (`schedule`): 4
    epochs at batch 128 for a full training set; with few labels or unlabelled images, enough
    optimizer steps, batch 32, augmentation and a probe head.
    With `warmup_epochs`, only the head trains first, then the unfrozen layers join it at
    `finetune_learning_rate` (a tenth of the rate by default) for `epochs` more.
    `head_init='probe'` starts the head from a linear probe on the frozen features, 'source'
    from the source classifier's rows for these class names.
    `validation_split` holds out that part of each class and keeps the best epoch.
    `class_weight='balanced'` weighs each class's loss by the inverse of its share of the
    training images; `label_smoothing` smooths the cross-entropy targets.

    `unlabeled`: target images without labels (raw images, or `data.unlabeled` from
    `load_target(..., unlabeled=...)`), learnt from by `adapt` 'self_training' or 'align'
    (see `tl_keras.adaptation`; `unlabeled_ratio`, `confidence_threshold`,
    `unlabeled_weight`, `align_weight`, `teacher`, `teacher_decay`, `selection` as the flags of
    those names; 'shot' needs no source images). With no labelled images
    (`train_per_class=0`), the source's training images of the target's classes are the
    labelled ones: `source_data` (a LabeledData of the source's classes or a spec; 'auto': the
    MNIST digits of the source model's classes).

    `deterministic`: op determinism, by default on unless `compile(jit_compile=True)`.
    Under `strategy` (default: the current one) the model is rebuilt in its scope, same
    weights. `verbose`: Keras's progress output (default: a progress bar on a terminal, a line
    per epoch otherwise; 0 for none).
    """
    data = self._labeled(data)
    if unlabeled is not None:
      if not isinstance(unlabeled, UnlabeledImages):
        images = unlabeled if isinstance(unlabeled, ImageFiles) else np.asarray(unlabeled)
        unlabeled = UnlabeledImages(images, None, "unlabelled images")
      data = dataclasses.replace(data, unlabeled=unlabeled)  # the caller's data stays as given
    config = settings.make(
      settings.FinetuneConfig,
      **self._train_settings,
      epochs=epochs,
      batch_size=batch_size,
      steps_per_epoch=steps_per_epoch,
      validation_split=validation_split,
      patience=patience,
      augment=augment,
      warmup_epochs=warmup_epochs,
      finetune_learning_rate=finetune_learning_rate,
      head_init=head_init,
      class_weight=class_weight,
      label_smoothing=label_smoothing,
      adapt=adapt,
      # Given as images, not as a spec: validated as --unlabeled=rest would be.
      unlabeled="rest" if data.unlabeled is not None else "",
      source_data=source_data if isinstance(source_data, str) else "auto",
      unlabeled_ratio=unlabeled_ratio,
      confidence_threshold=confidence_threshold,
      unlabeled_weight=unlabeled_weight,
      align_weight=align_weight,
      teacher=teacher,
      teacher_decay=teacher_decay,
      selection=selection,
      seed=seed,
      deterministic=deterministic,
      mixed_precision=mixed_precision,
    )
    settings.validate(config)
    if verbose is None:
      verbose = trainer.progress_verbosity()
    source = source_data if isinstance(source_data, LabeledData) else None
    return self.fit_config(data, config, strategy, verbose=verbose, source_data=source)

  def fit_config(
    self,
    data: LabeledData,
    config: settings.FinetuneConfig,
    strategy: tf.distribute.Strategy | None = None,
    stage: str | None = None,
    log: Callable[[str], None] | None = None,
    verbose: int = 0,
    source_data: LabeledData | None = None,
  ) -> FitResult:
    """`fit` with every training setting of a finetune config (its `train`, `runtime`,
    `finetune`, `adapt` and `head.head_init` groups), its data-dependent defaults filled in
    by `schedule.choose` (said in one line to `log`). With a `stage` name, each epoch is
    backed up for `--resume` under `config.paths.output_dir`; messages go to `log`.
    `source_data`: the source's training images (`targets.load_source_data`), loaded from
    `config.adapt.source_data` when adaptation needs them and none are given."""
    current = tf.distribute.get_strategy()
    strategy = strategy or current
    say = log if log and distribute.is_chief(strategy) else lambda message: None
    chosen = methods.choose_adaptation(config.adapt.adapt, len(data.unlabeled or ()))
    unlabeled = data.unlabeled if methods.ADAPTATION[chosen].uses_unlabeled else None
    if not len(data.y_train) and not unlabeled:
      raise UserError(
        "no labelled training images: give unlabelled ones (--unlabeled) to adapt without labels"
      )
    config, plan = schedule.choose(
      config, len(data.y_train), data.num_classes, len(unlabeled) if unlabeled else 0
    )
    method = methods.ADAPTATION[plan.adapt]
    if method.uses_unlabeled and not unlabeled:
      raise UserError(f"--adapt={plan.adapt} learns from unlabelled images: give --unlabeled")
    if plan.message:
      say(plan.message)
    template, fresh_model = self.model, self._fresh_model
    classifier_weights = None
    if config.head.head_init == "probe":
      x_train, y_train, _ = trainer.training_split(data, config)
      say(f"head_init: fitting a linear probe on the features of {len(x_train)} training images")
      classifier_weights = probe_classifier_weights(template, x_train, y_train)
    elif config.head.head_init == "source":
      classifier_weights = self._source_classifier_weights()
    if classifier_weights:
      template.get_layer(networks.TARGET_CLASSIFIER).set_weights(classifier_weights)
    adapt_data = None
    if method.uses_unlabeled:
      wants_source = method.needs_source or not (len(data.y_train) or method.source_free)
      if source_data is None and wants_source:
        source_data = targets.load_source_data(
          config.adapt.source_data,
          self.source_class_names,
          self.class_names,
          config.paths.data_dir,
          self.input_shape,
          self.framing,
          config.runtime.seed,
        )
      if source_data is not None and not len(data.y_train) and not (source_data.y_train >= 0).any():
        raise UserError(
          f"{source_data.description} has no image of the target's classes "
          f"({', '.join(self.class_names[:10])}) to train on without target labels"
        )
      adapt_data = trainer.AdaptData(
        adaptation.Adaptation(
          method=plan.adapt,
          confidence_threshold=config.adapt.confidence_threshold,
          unlabeled_weight=config.adapt.unlabeled_weight,
          unlabeled_ratio=config.adapt.unlabeled_ratio,
          align_weight=config.adapt.align_weight if "align_weight" in method.flags else 0.0,
          total_steps=(config.epochs + config.finetune.warmup_epochs)
          * config.train.steps_per_epoch,
          adabn=networks.has_batch_norm(template),
          teacher=config.adapt.teacher,
          teacher_decay=config.adapt.teacher_decay,
          selection=config.adapt.selection,
        ),
        unlabeled,
        source_data,
      )

    def build_model():  # runs in `strategy`'s scope, under the run's seed and precision policy
      if fresh_model:
        model = fresh_model()
        if classifier_weights:
          model.get_layer(networks.TARGET_CLASSIFIER).set_weights(classifier_weights)
      elif strategy is current and not config.runtime.mixed_precision:
        model = template
      else:
        model = networks.with_global_dtype_policy(template)
      if adapt_data and adapt_data.settings.adabn:
        count = networks.adapt_batch_norm(model, unlabeled.images)
        say(f"adabn: re-estimated {count} BatchNormalization layers on target images")
      return model

    self.model, result = trainer.fit_and_evaluate(
      build_model,
      data,
      config,
      strategy,
      stage,
      phases(config, template),
      log,
      verbose,
      adapt_data,
    )
    self._fresh_model = None
    self.settings = config
    return dataclasses.replace(
      result, head_init=config.head.head_init, defaults=plan.message or None
    )

  def source_only_accuracy(self, data: LabeledData) -> float | None:
    """The source model's accuracy on `data`'s test images before any training, predictions
    matched to the target's classes by name (as the transfer stage's `test_accuracy`); None
    when no target class is a source class or the source's class names are unknown."""
    if self._source_model is None or not self.source_class_names or not len(data.x_test):
      return None
    predicted = networks.predict(self._source_model, data.x_test).argmax(axis=1)
    names = np.asarray(self.source_class_names)
    true_names = np.asarray(self.class_names)[data.y_test]
    return metrics.accuracy_by_name(names[predicted], true_names, self.source_class_names)

  def _source_classifier_weights(self) -> list[np.ndarray]:
    """The source classifier's rows for the target's classes, to start the new classifier;
    a UserError unless the new head sits where the source classifier did."""
    if self._source_model is None or not self.source_class_names:
      raise UserError(
        "starting the classifier from the source's (--head_init=source, or no target labels) "
        "needs a source model whose metadata names its classes"
      )
    weights = networks.source_classifier_weights(
      self._source_model, self.source_class_names, self.class_names
    )
    expected = self.model.get_layer(networks.TARGET_CLASSIFIER).get_weights()[0].shape
    if weights[0].shape != expected:
      raise UserError(
        "starting the classifier from the source's (--head_init=source, or no target labels) "
        "needs the new head where the source classifier was: drop --features_layer and "
        "--head_units"
      )
    return weights

  def evaluate(self, data: Data, batch_size: int = 1024) -> dict[str, Any]:
    """Accuracy, mean cross-entropy loss, `per_class` precision, recall, F1 and support, and
    `macro_f1` on the test split of a LabeledData, or on `(images, labels)` arrays or a
    dataset of batches."""
    if isinstance(data, LabeledData):
      images, labels = data.x_test, data.y_test
    else:
      images, labels = _arrays(data)
    probabilities = self.predict(images, batch_size)
    picked = probabilities[np.arange(len(labels)), labels]
    predicted = probabilities.argmax(axis=1)
    return {
      "accuracy": float((predicted == labels).mean()),
      "loss": float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()),
      **metrics.per_class_metrics(labels, predicted, self.class_names),
    }

  def predict(self, images: Images, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities [N, k] for raw images (uint8 0-255 or float 0-1, [N,H,W] or
    [N,H,W,C], any size: preprocessed as in training and serving)."""
    if not isinstance(images, ImageFiles):  # streamed from their files, batch by batch
      images = np.asarray(images)
    return networks.predict(self.model, images, batch_size)

  def export(self, output_dir: str, metadata: dict[str, Any] | None = None) -> dict[str, str]:
    """Writes `target_model.h5` (class names in its metadata, plus `metadata`) and
    `target_savedmodel/` (a serving signature on raw uint8 images) into `output_dir`;
    returns their paths."""
    files.prepare_output_dir(output_dir)
    metadata = {
      "class_names": self.class_names,
      "label_map": {name: index for index, name in enumerate(self.class_names)},
      **(metadata or {}),
      "stage": "finetune",
      "source_class_names": self.source_class_names,
      "source_model": self.source,
      "framing": self.framing,
      "tl_keras_version": __version__,
    }
    paths = {
      "model": os.path.join(output_dir, artifacts.TARGET_MODEL),
      "savedmodel": os.path.join(output_dir, artifacts.SAVED_MODEL_DIR),
    }
    model_io.save_h5(self.model, paths["model"], metadata)
    model_io.export_saved_model(self.model, paths["savedmodel"], self.class_names, metadata)
    return paths

  def _labeled(self, data: Data) -> LabeledData:
    if isinstance(data, LabeledData):
      dataset = data
    else:
      images, labels = _arrays(data)
      dataset = LabeledData(images, labels, images[:0], labels[:0], self.class_names, "arrays")
    if dataset.num_classes != len(self.class_names):
      raise UserError(
        f"the data has {dataset.num_classes} classes, the classifier {len(self.class_names)}"
      )
    return dataset


def probe_classifier_weights(
  model: keras.Model, images: np.ndarray, labels: np.ndarray
) -> list[np.ndarray]:
  """Weights for `model`'s new classifier from a linear probe on the frozen features of the
  training images, so finetuning starts from a good head and changes the features less
  (LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained Features", ICLR 2022)."""
  features = probes.features_of(model, images)
  kernel, bias = probes.fit_linear_probe(features, labels, model.output_shape[-1])
  return [kernel.astype(np.float32), bias.astype(np.float32)]


def phases(config: settings.FinetuneConfig, model: keras.Model) -> list[trainer.Phase]:
  """One phase, or with `config.finetune.warmup_epochs`: the head alone, then the unfrozen
  layers with it at `finetune_learning_rate` (a tenth of the first rate by default)."""
  if not config.finetune.warmup_epochs:
    return [trainer.Phase("finetune", config.epochs, config.train.learning_rate)]
  warmup_rate = networks.learning_rate_for(config.train.optimizer, config.train.learning_rate)
  finetune_rate = config.finetune.finetune_learning_rate or warmup_rate / 10
  return [
    trainer.Phase(
      "warmup",
      config.finetune.warmup_epochs,
      warmup_rate,
      trainable=networks.head_layer_names(model),
    ),
    trainer.Phase(
      "finetune", config.epochs, finetune_rate, trainable=networks.trainable_layer_names(model)
    ),
  ]


def _arrays(data: Data) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) NumPy arrays of `(images, labels)` or a dataset of such batches."""
  if isinstance(data, tf.data.Dataset):
    batches = list(data.as_numpy_iterator())
    if not batches:
      raise UserError("the dataset is empty")
    return (
      np.concatenate([np.asarray(images) for images, _ in batches]),
      np.concatenate([np.asarray(labels) for _, labels in batches]),
    )
  images, labels = data
  images, labels = np.asarray(images), np.asarray(labels, np.int64)
  if len(images) != len(labels) or not len(images):
    raise UserError(
      f"{len(images)} images and {len(labels)} labels: give as many of each, at least one"
    )
  return images, labels
