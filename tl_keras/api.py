"""The Python API: load a source model and a target, fine-tune, evaluate, predict, export.

    import tl_keras
    source = tl_keras.load_model("saved_models/source_model.h5")
    data = tl_keras.load_target("mnist:5-9", input_shape=source.input_shape[1:])
    clf = tl_keras.TransferClassifier.from_source(source, class_names=data.class_names)
    result = clf.fit(data, epochs=4)
    clf.evaluate(data)            # {"accuracy": ..., "loss": ...} on the test split
    clf.predict(raw_uint8_images) # probabilities; preprocessing included
    clf.export("out/")            # target_model.h5 with metadata + target_savedmodel/

`TransferClassifier` is a `keras.Model` in keras-hub's task shape (`tl_keras.models.classifier`:
a backbone, a head and the one preprocessing function, built from constructor arguments,
`compile()` with defaults, `get_config()`/`from_config()`, `save()`), plus the finetune run
(`tl_keras.training.task` and `trainer`) and Model Maker's export. Training runs under the
strategy given to `fit` and leaves no global state behind. The finetune stage is this class
plus files and a report.
"""

import dataclasses
import inspect
import os
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import artifacts
from tl_keras import limits
from tl_keras import loading
from tl_keras.config import api_options
from tl_keras.data import targets
from tl_keras.data.folders import ImageFiles
from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import UnlabeledImages
from tl_keras.errors import UserError
from tl_keras.evaluation import probes
from tl_keras.keras_api import keras
from tl_keras.models import classifier
from tl_keras.models import networks
from tl_keras.outputs import files
from tl_keras.outputs import model_io
from tl_keras.ranking import logme
from tl_keras.training import distribute
from tl_keras.training import task
from tl_keras.training import trainer
from tl_keras.training.trainer import FitResult
from tl_keras.version import __version__

# Training images the transfer stage's probe and LogME read: on MNIST 5-9, 10,000 of the 29,404
# scored the probe 97.41% against 97.57% with all of them, in 0.8 s instead of 1.9 s.
PROBE_TRAIN_IMAGES = 10_000

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
  their files ('auto': when they would take over 512 MiB; see `tl_keras.datasets.folders`).
  `input_shape` may be a Keras model's, batch axis first (None)."""
  if input_shape is not None and len(input_shape) == 4 and input_shape[0] is None:
    input_shape = input_shape[1:]
  options = api_options.target_settings(
    unlabeled,
    target=spec,
    target_fit=fit,
    test_split=test_split,
    train_per_class=train_per_class,
    image_cache=image_cache,
  )
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
  source: str | keras.Model,
  data: LabeledData,
  features_layer: str | None = None,
  max_train_images: int | None = PROBE_TRAIN_IMAGES,
  seed: int = 0,
) -> dict[str, float]:
  """How well a source model's frozen features suit the target before any training:
  `linear_probe_accuracy` (on the test split) and `logme` (on the training split), both from
  at most `max_train_images` training images (a draw seeded by `seed`; None: all)."""
  model = load_model(source) if isinstance(source, str) else source
  if not len(data.y_train):  # no labelled training images (adaptation without labels)
    return {"linear_probe_accuracy": None, "logme": None}
  images, labels = data.x_train, data.y_train
  if max_train_images is not None and len(labels) > max_train_images:
    rows = np.sort(np.random.default_rng(seed).choice(len(labels), max_train_images, replace=False))
    images, labels = images[rows], labels[rows]
  train = probes.features_of(model, images, features_layer)
  test = probes.features_of(model, data.x_test, features_layer)
  return {
    "linear_probe_accuracy": probes.linear_probe_accuracy(train, labels, test, data.y_test),
    "logme": logme.logme(train, labels),
  }


# Keras's own `fit` arguments: a call naming anything else is the finetune `fit`.
_KERAS_FIT = set(inspect.signature(keras.Model.fit).parameters) - {"self"}


def fit_options() -> set[str]:
  """The finetune settings `TransferClassifier.fit(data, ...)` takes by name."""
  return api_options.fit_options()


class TransferClassifier(classifier.TransferClassifier):
  """An image classifier on a source model's features (`tl_keras.models.classifier`, a
  `keras.Model`: a backbone, a new softmax head and the one preprocessing function), plus
  the finetune run: `fit(data, ...)` with phases, unlabelled images and adaptation, and
  `export`.

  Build one with `from_source`; `compile()` sets the optimizer (Adam at 1e-3 unless told);
  `fit(data, ...)` on a LabeledData or `(images, labels)` runs the finetune (a `FitResult`),
  `fit(x, y, ...)` is Keras's; `evaluate`, `predict`, `save` and `export` use the result.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    # The settings the last finetune trained with, its data-dependent defaults filled in; and
    # whether the next one draws the head again from its seed (until something trains it).
    self._untracked(settings=None, fresh_head=True)

  @classmethod
  def from_source(
    cls,
    source: str | keras.Model,
    class_names: Sequence[str],
    *,
    seed: int = 42,
    source_path: str | None = None,
    metadata: dict[str, Any] | None = None,
    **options,
  ) -> "TransferClassifier":
    """A classifier for `class_names` on a copy of `source` (a Keras model, or a path or
    handle loaded safely), as `classifier.TransferClassifier.from_source` builds it from
    `options` (`unfreeze`, `features_layer`, `head_units`, `head_dropout`, `head_l2`,
    `allow_unsafe`, `max_model_mb`, `input_size`), those checked as their flags are; its new
    head is initialised from `seed`. `source_path` names where a model given loaded came
    from; `metadata`: its tl_keras metadata, if read already (else read from the path).

    The source file is read once and the source model object is never changed. The first
    finetune `fit` draws the head again from its own `seed`."""
    api_options.check_head(options)
    path = source if isinstance(source, str) else source_path
    with trainer.global_state(seed):
      clf = super().from_source(source, class_names, source=path, **options)
    if metadata is None:
      metadata = model_io.read_metadata(path) if path else {}
    clf.describe_source(metadata.get("class_names"), metadata.get("framing"))
    return clf

  def fit(self, x=None, y=None, **options):
    """Two calls in one. `fit(data, **finetune options)` runs the finetune (see `finetune`)
    and returns a `FitResult`: `data` a LabeledData or `(images, labels)`, or any data with an
    option only the finetune takes (`seed`, `adapt`, `class_weight='balanced'`, ...).
    Otherwise it is Keras's `fit(x, y, ...)` on raw images, after `compile()`."""
    finetune_only = set(options) - _KERAS_FIT or isinstance(options.get("class_weight"), str)
    if y is None and (isinstance(x, (LabeledData, tuple)) or finetune_only):
      return self.finetune(x, **options)
    history = super().fit(x, y, **options)
    self._untracked(fresh_head=False)
    return history

  def finetune(
    self,
    data: Data,
    *,
    unlabeled: UnlabeledImages | Images | None = None,
    source_data: LabeledData | str = "auto",
    strategy: tf.distribute.Strategy | None = None,
    verbose: int | None = None,
    **options,
  ) -> FitResult:
    """Trains on `data`: a LabeledData (its training split), `(images, labels)` arrays, or a
    tf.data.Dataset of `(images, labels)` batches. Images are raw (uint8 0-255 or float 0-1,
    any size; fitted to the model's input); labels are 0..k-1 in `class_names` order.

    `options`: the finetune settings by their flag names (`fit_options()`), each defaulting
    as its flag does (tl-finetune --helpfull): `epochs`, `batch_size`, `steps_per_epoch`,
    `augment`, `head_init` and `adapt` left unset are chosen by the number of labelled and
    unlabelled images (`schedule`); `warmup_epochs` trains the head alone first, then the
    unfrozen layers at `finetune_learning_rate`; `validation_split` keeps each phase's best
    epoch; `class_weight='balanced'`, `label_smoothing`, `seed`, `deterministic` (on unless
    `compile(jit_compile=True)`), `mixed_precision`, and adaptation's settings.

    `unlabeled`: target images without labels (raw images, or `data.unlabeled` from
    `load_target(..., unlabeled=...)`), learnt from by `adapt` (see `tl_keras.adaptation`).
    With no labelled images (`train_per_class=0`), the source's training images of the
    target's classes are the labelled ones: `source_data` (a LabeledData of the source's
    classes or a spec; 'auto': the MNIST digits of the source model's classes).
    Under `strategy` (default: the current one) a copy is trained in its scope, same weights.
    `verbose`: Keras's progress output (default: a progress bar on a terminal, a line per
    epoch otherwise; 0 for none).
    """
    unknown = sorted(set(options) - fit_options())
    if unknown:
      raise TypeError(f"fit() got unexpected keyword argument(s) {', '.join(unknown)}")
    data = self._labeled(data)
    if unlabeled is not None:
      if not isinstance(unlabeled, UnlabeledImages):
        images = unlabeled if isinstance(unlabeled, ImageFiles) else np.asarray(unlabeled)
        unlabeled = UnlabeledImages(images, None, "unlabelled images")
      data = dataclasses.replace(data, unlabeled=unlabeled)  # the caller's data stays as given
    config = api_options.finetune_config(
      **self.train_settings,
      **options,
      # Given as images, not as a spec: validated as --unlabeled=rest would be.
      unlabeled="rest" if data.unlabeled is not None else "",
      source_data=source_data if isinstance(source_data, str) else "auto",
    )
    verbose = trainer.progress_verbosity() if verbose is None else verbose
    source = source_data if isinstance(source_data, LabeledData) else None
    return self.fit_config(data, config, strategy, verbose=verbose, source_data=source)

  def fit_config(
    self,
    data: LabeledData,
    config,
    strategy: tf.distribute.Strategy | None = None,
    stage: str | None = None,
    log: Callable[[str], None] | None = None,
    verbose: int = 0,
    source_data: LabeledData | None = None,
  ) -> FitResult:
    """The finetune with every training setting of a finetune config (its `train`,
    `runtime`, `finetune`, `adapt` and `head.head_init` groups), its data-dependent defaults
    filled in by `schedule.choose` (said in one line to `log`): the task builds, the trainer
    runs the phases, and this model takes the trained weights. With a `stage` name, each epoch
    is backed up for `--resume` under `config.paths.output_dir`; messages go to `log`.
    `source_data`: the source's training images (`targets.load_source_data`), loaded from
    `config.adapt.source_data` when adaptation needs them and none are given."""
    strategy = strategy or tf.distribute.get_strategy()
    say = log if log and distribute.is_chief(strategy) else lambda message: None
    job = task.FinetuneTask.create(config, data)
    if job.message:
      say(job.message)
    head_weights = job.head_weights(self, data, say)
    if head_weights:
      self.get_layer(networks.TARGET_CLASSIFIER).set_weights(head_weights)
    if source_data is None and job.needs_source_data(data):
      source_data = self._source_data(job.config)
    adapt = job.adapt_data(self, data, source_data)
    build = job.model_builder(self, strategy, head_weights, adapt, self.fresh_head, say)
    phases = job.phases(self)
    trained, result = trainer.fit_and_evaluate(
      build, data, job.config, strategy, stage, phases, log, verbose, adapt
    )
    self._take_weights(trained)
    self._untracked(settings=job.config, fresh_head=False)
    return dataclasses.replace(
      result, head_init=job.config.head.head_init, defaults=job.message or None
    )

  def _source_data(self, config) -> LabeledData:
    """The source's training images of the target's classes (file I/O: `targets`)."""
    return targets.load_source_data(
      config.adapt.source_data,
      self.source_class_names,
      self.class_names,
      config.paths.data_dir,
      self.image_shape,
      self.framing,
      config.runtime.seed,
    )

  def _take_weights(self, trained: keras.Model) -> None:
    """This model's layers take `trained`'s weights and trainable flags (a copy trained under
    another strategy or precision, or with a fresh head)."""
    if trained is self:
      return
    for mine, theirs in zip(self.layers, trained.layers, strict=True):
      mine.trainable = theirs.trainable
      mine.set_weights(theirs.get_weights())

  def export(self, output_dir: str, metadata: dict[str, Any] | None = None) -> dict[str, str]:
    """Writes `target_model.h5` (class names in its metadata, plus `metadata`) and
    `target_savedmodel/` (a serving signature on raw uint8 images) into `output_dir`;
    returns their paths."""
    files.prepare_output_dir(output_dir)
    metadata = {
      **self.metadata(),
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
    plain = keras.Model(self.inputs, self.outputs, name=self.name)  # built-in layers only
    model_io.save_h5(plain, paths["model"], metadata)
    model_io.export_saved_model(plain, paths["savedmodel"], self.class_names, metadata)
    return paths

  def _labeled(self, data: Data) -> LabeledData:
    if isinstance(data, LabeledData):
      dataset = data
    else:
      images, labels = classifier.arrays(data)
      dataset = LabeledData(images, labels, images[:0], labels[:0], self.class_names, "arrays")
    if dataset.num_classes != len(self.class_names):
      raise UserError(
        f"the data has {dataset.num_classes} classes, the classifier {len(self.class_names)}"
      )
    return dataset
