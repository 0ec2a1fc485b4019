"""`TransferClassifier`, the Keras task model: a backbone (the source's feature layers), a new
head (an optional hidden Dense layer, then the softmax classifier) and the one preprocessing
function (`preprocess_images`), in keras-hub's `ImageClassifier` shape.

It is a functional `keras.Model`: its layers are the backbone's and the head's, flat, so
`compile()` then `fit(x, y)` train it as any Keras model, on raw images (uint8 0-255 or float
0-1, any size: each step preprocesses its batch). `save()` writes the plain functional model
of those same layers (built-in Keras layers only, so `tl_keras.loading.load_model` accepts the
file); `from_model` makes a classifier of a loaded one again.
"""

import json
import warnings
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np
import tensorflow as tf

from tl_keras import artifacts
from tl_keras import limits
from tl_keras import loading
from tl_keras.data.folders import ImageFiles
from tl_keras.data.labeled import LabeledData
from tl_keras.data.preprocessing import preprocess_images
from tl_keras.errors import UserError
from tl_keras.evaluation import metrics
from tl_keras.keras_api import keras
from tl_keras.models import networks

Images = np.ndarray | tf.Tensor | ImageFiles


def backbone_of(source: keras.Model, features_layer: str | None = None) -> keras.Model:
  """The source's feature extractor: its input to its penultimate features (the classifier's
  input) or to `features_layer`'s output, on the source's own layers."""
  features = networks.feature_tensor(source, features_layer)
  return keras.Model(source.inputs, features, name="backbone")


def _head(features, num_classes: int, units: int, dropout: float, l2: float):
  """The new head on `features` (layers `target_*`): flattened if they are images, dropout
  before each Dense layer, an optional hidden ReLU layer of `units`, the softmax classifier."""
  layers, regularizer = keras.layers, keras.regularizers.L2(l2) if l2 else None
  x = features
  if len(x.shape) > 2:
    x = layers.Flatten(name=f"{networks.HEAD_PREFIX}flatten")(x)
  if dropout:
    x = layers.Dropout(dropout, name=f"{networks.HEAD_PREFIX}dropout1")(x)
  if units:
    x = layers.Dense(
      units, "relu", kernel_regularizer=regularizer, name=f"{networks.HEAD_PREFIX}dense"
    )(x)
    if dropout:
      x = layers.Dropout(dropout, name=f"{networks.HEAD_PREFIX}dropout2")(x)
  # float32 even under a mixed-precision policy, for a numerically stable softmax.
  return layers.Dense(
    num_classes,
    "softmax",
    dtype="float32",
    kernel_regularizer=regularizer,
    name=networks.TARGET_CLASSIFIER,
  )(x)


class TransferClassifier(keras.Model):
  """An image classifier for `class_names` on a `backbone`'s features.

  `backbone`: a functional model from images to features (`backbone_of(source)`); its layers
  become this model's, trainable as they are (see `from_source`'s `unfreeze`). The head:
  `head_units` in an optional hidden ReLU layer, `head_dropout` before each Dense layer,
  `head_l2` weight decay on their kernels. `source`, `source_class_names` and `framing`
  describe the source model (its file, classes and how its images were framed), if known.

  `compile()` defaults to Adam at 1e-3, sparse categorical cross-entropy and accuracy; give
  any of them to override. `fit`, `evaluate` and `predict` take raw images.
  """

  def __init__(
    self,
    backbone: keras.Model,
    class_names: Sequence[str],
    *,
    head_units: int = 0,
    head_dropout: float = 0.0,
    head_l2: float = 0.0,
    source: str | None = None,
    source_class_names: Sequence[str] | None = None,
    framing: dict | None = None,
    name: str = "target_model",
    **kwargs,
  ):
    outputs = _head(backbone.output, len(class_names), head_units, head_dropout, head_l2)
    super().__init__(backbone.inputs, outputs, name=name, **kwargs)
    # Plain attributes, out of Keras's tracking (a list would become a tracked wrapper).
    head = {"head_units": head_units, "head_dropout": head_dropout, "head_l2": head_l2}
    self._untracked(
      class_names=[str(name) for name in class_names],
      head_options=head,
      source=source,
      train_settings={"optimizer": "adam", "learning_rate": None, "jit_compile": False},
    )
    self.describe_source(source_class_names, framing)
    self.compile()

  def describe_source(
    self, source_class_names: Sequence[str] | None, framing: dict | None = None
  ) -> None:
    """Records the source model's class names and how its training images were framed (for
    fit='source'), as its metadata gives them."""
    self._untracked(
      source_class_names=list(source_class_names) if source_class_names else None,
      framing=framing,
    )

  def _untracked(self, **values) -> None:
    for key, value in values.items():
      object.__setattr__(self, key, value)

  @classmethod
  def from_source(
    cls,
    model: str | keras.Model,
    class_names: Sequence[str],
    *,
    unfreeze: str = "all",
    features_layer: str | None = None,
    head_units: int = 0,
    head_dropout: float = 0.0,
    head_l2: float = 0.0,
    allow_unsafe: bool = False,
    max_model_mb: int = limits.MAX_MODEL_BYTES // limits.MIB,
    input_size: int | None = None,
    **kwargs,
  ) -> "TransferClassifier":
    """A classifier on a copy of `model` (a Keras model, or a file or handle loaded safely
    by `loading.load_model`): its classifier removed, a new head (drawn from the global seed)
    on its penultimate features (or `features_layer`'s output). `unfreeze`: 'none', 'all',
    'last:N' or layer names (BatchNormalization layers stay frozen). The caller's model is not
    changed: the classifier's layers are copies. `kwargs`: the constructor's."""
    if isinstance(model, str):
      kwargs.setdefault("source", model)
      model = loading.load_model(model, allow_unsafe, max_model_mb * limits.MIB, input_size)
    networks.image_input_shape(model, kwargs.get("source") or model.name)
    copy = networks.with_global_dtype_policy(model)  # same names and weights
    backbone = backbone_of(copy, features_layer)
    layers = backbone.layers[1:]
    networks.set_trainable(layers, networks.select_unfrozen(layers, unfreeze))
    head = {"head_units": head_units, "head_dropout": head_dropout, "head_l2": head_l2}
    classifier = cls(backbone, class_names, **head, **kwargs)
    classifier._untracked(source_model=model)
    return classifier

  @classmethod
  def from_model(cls, model: keras.Model, class_names: Sequence[str], **kwargs):
    """A classifier of the same layers and weights as `model`, a classifier `save()` wrote and
    `loading.load_model` read (its head's options are read from its layers)."""
    head = model.get_layer(networks.TARGET_CLASSIFIER)
    names = {layer.name: layer for layer in model.layers}
    hidden = names.get(f"{networks.HEAD_PREFIX}dense")
    dropout = names.get(f"{networks.HEAD_PREFIX}dropout1")
    regularizer = head.kernel_regularizer
    options = {
      "head_units": hidden.units if hidden else 0,
      "head_dropout": float(dropout.rate) if dropout else 0.0,
      "head_l2": float(regularizer.l2) if regularizer is not None else 0.0,
    }
    first_head = next(layer for layer in model.layers if layer.name in set(_head_names(model)))
    backbone = keras.Model(model.inputs, first_head.input, name="backbone")
    copy = cls.from_config(
      {"backbone": _serialize(backbone), "class_names": list(class_names), **options, **kwargs}
    )
    copy.set_weights(model.get_weights())
    return copy

  @property
  def model(self) -> keras.Model:
    """This model (the API's classifier once wrapped one; kept for its callers)."""
    return self

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """The (height, width, channels) images are fitted to."""
    return tuple(self.input_shape[1:])

  @property
  def backbone(self) -> keras.Model:
    """The feature extractor: this model's input to the head's input, on the same layers."""
    first_head = next(layer for layer in self.layers if layer.name in set(_head_names(self)))
    return keras.Model(self.inputs, first_head.input, name="backbone")

  @property
  def head(self) -> list[keras.layers.Layer]:
    """The head's layers, in order."""
    return [self.get_layer(name) for name in _head_names(self)]

  def source_classifier_weights(self) -> list[np.ndarray]:
    """The source classifier's rows for the target's classes, to start the new classifier;
    a UserError unless the new head sits where the source classifier did."""
    source_model = getattr(self, "source_model", None)
    problem = "starting the classifier from the source's (--head_init=source, or no target labels)"
    if source_model is None or not self.source_class_names:
      raise UserError(f"{problem} needs a source model whose metadata names its classes")
    weights = networks.source_classifier_weights(
      source_model, self.source_class_names, self.class_names
    )
    expected = self.get_layer(networks.TARGET_CLASSIFIER).get_weights()[0].shape
    if weights[0].shape != expected:
      raise UserError(
        f"{problem} needs the new head where the source classifier was: drop --features_layer "
        "and --head_units"
      )
    return weights

  def source_only_accuracy(self, data: LabeledData) -> float | None:
    """The source model's accuracy on `data`'s test images before any training, predictions
    matched to the target's classes by name (as the transfer stage's `test_accuracy`); None
    when no target class is a source class or the source's class names are unknown."""
    source_model = getattr(self, "source_model", None)
    if source_model is None or not self.source_class_names or not len(data.x_test):
      return None
    predicted = networks.predict(source_model, data.x_test).argmax(axis=1)
    names = np.asarray(self.source_class_names)
    true_names = np.asarray(self.class_names)[data.y_test]
    return metrics.accuracy_by_name(names[predicted], true_names, self.source_class_names)

  def compile(
    self,
    optimizer: Any = "adam",
    loss: Any = None,
    metrics: Any = None,
    *,
    learning_rate: float | None = None,
    jit_compile: bool = False,
    **kwargs,
  ) -> None:
    """Keras's `compile` with working defaults: `optimizer` 'adam' (rate 1e-3) or 'adadelta'
    (1.0) at `learning_rate`, or an optimizer object; `loss` sparse categorical cross-entropy
    (integer labels); `metrics` accuracy. `jit_compile`: XLA (faster on GPUs)."""
    if isinstance(optimizer, str):
      name, optimizer = optimizer, networks.make_optimizer(optimizer, learning_rate)
      chosen = {"optimizer": name, "learning_rate": learning_rate, "jit_compile": jit_compile}
      self._untracked(train_settings=chosen)  # what the finetune `fit` trains with
    super().compile(
      optimizer=optimizer,
      loss=loss or "sparse_categorical_crossentropy",
      metrics=["accuracy"] if metrics is None else metrics,
      jit_compile=jit_compile,
      **kwargs,
    )

  def get_config(self) -> dict[str, Any]:
    return {
      "backbone": _serialize(self.backbone),
      "class_names": list(self.class_names),
      **self.head_options,
      "source": self.source,
      "source_class_names": self.source_class_names,
      "framing": self.framing,
      "name": self.name,
    }

  @classmethod
  def from_config(cls, config: dict[str, Any], custom_objects=None) -> "TransferClassifier":
    """A classifier of `get_config()`'s architecture, freshly initialised (Keras's rule:
    a config holds no weights)."""
    config = dict(config)
    backbone = config.pop("backbone")
    backbone = keras.Model.from_config(backbone["config"], custom_objects=custom_objects)
    return cls(backbone, **config)

  def save(self, filepath: str, overwrite: bool = True, save_format: str | None = None, **kwargs):
    """Saves the plain functional model of this classifier's layers (built-in Keras layers,
    which `loading.load_model` accepts; `from_model` makes a classifier of it again). An .h5
    file also records the class names in tl_keras's metadata attribute."""
    plain = keras.Model(self.inputs, self.outputs, name=self.name)
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
      plain.save(filepath, overwrite=overwrite, save_format=save_format, **kwargs)
    if h5py.is_hdf5(filepath):
      with h5py.File(filepath, "a") as f:
        f.attrs[artifacts.METADATA_ATTR] = json.dumps(self.metadata())

  def metadata(self) -> dict[str, Any]:
    """What a saved file records besides the model: class names, source, framing."""
    return {
      "class_names": list(self.class_names),
      "label_map": {name: index for index, name in enumerate(self.class_names)},
      "source_class_names": self.source_class_names,
      "source_model": self.source,
      "framing": self.framing,
    }

  # Each step preprocesses its batch: raw images in, as `predict` and serving take them.
  def train_step(self, data):
    return super().train_step(self._preprocessed(data))

  def test_step(self, data):
    return super().test_step(self._preprocessed(data))

  def predict_step(self, data):
    return super().predict_step(self._preprocessed(data))

  def _preprocessed(self, data):
    x, y, weights = keras.utils.unpack_x_y_sample_weight(data)
    x = preprocess_images(x, self.image_shape)
    return keras.utils.pack_x_y_sample_weight(x, y, weights)

  def predict(self, x, batch_size: int | None = None, verbose: Any = 0, **kwargs) -> np.ndarray:
    """Class probabilities [N, k] for raw images (uint8 0-255 or float 0-1, [N,H,W] or
    [N,H,W,C], any size, or `ImageFiles`); a dataset or Keras's other options go through
    Keras's `predict`."""
    if kwargs or isinstance(x, tf.data.Dataset):
      return super().predict(x, batch_size, verbose, **kwargs)
    if not isinstance(x, ImageFiles):  # streamed from their files, batch by batch
      x = np.asarray(x)
    return networks.predict(self, x, batch_size or 1024)

  def evaluate(self, x=None, y=None, batch_size: int | None = None, **kwargs):
    """With `y` or Keras's options: Keras's `evaluate`. Otherwise `x` is a LabeledData (its
    test split), `(images, labels)` or a dataset of such batches, and the result a dict:
    accuracy, mean cross-entropy loss, `per_class` precision, recall, F1 and support, and
    `macro_f1`."""
    if y is not None or kwargs:
      return super().evaluate(x, y, batch_size, **kwargs)
    if isinstance(x, LabeledData):
      images, labels = x.x_test, x.y_test
    else:
      images, labels = arrays(x)
    probabilities = self.predict(images, batch_size or 1024)
    picked = probabilities[np.arange(len(labels)), labels]
    predicted = probabilities.argmax(axis=1)
    return {
      "accuracy": float((predicted == labels).mean()),
      "loss": float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()),
      **metrics.per_class_metrics(labels, predicted, self.class_names),
    }


def arrays(data) -> tuple[np.ndarray, np.ndarray]:
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


def _head_names(model: keras.Model) -> list[str]:
  return networks.head_layer_names(model)


def _serialize(model: keras.Model) -> dict[str, Any]:
  return {"class_name": "Functional", "config": model.get_config()}
