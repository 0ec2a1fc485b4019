"""`keras:NAME`: ImageNet backbones from keras.applications, by an allowlisted name, with their
weights from the Keras cache read as untrusted HDF5 (`h5_check`) before Keras reads them."""

import contextlib
import http.client
import os
import sys
import threading
import warnings
from collections.abc import Iterator

import h5py
import numpy as np
import tensorflow as tf

from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.loading import h5_check
from tl_keras.loading import reading
from tl_keras.loading.config_check import check_model_config

KERAS_PREFIX = "keras:"
DEFAULT_INPUT_SIZE = 224
PREPROCESSING_LAYER = "imagenet_preprocessing"
_FAMILIES = {
  "convnext": ("ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge"),
  "densenet": ("DenseNet121", "DenseNet169", "DenseNet201"),
  "efficientnet": tuple(f"EfficientNetB{index}" for index in range(8)),
  "efficientnet_v2": (
    *(f"EfficientNetV2B{index}" for index in range(4)),
    "EfficientNetV2S",
    "EfficientNetV2M",
    "EfficientNetV2L",
  ),
  "inception_resnet_v2": ("InceptionResNetV2",),
  "inception_v3": ("InceptionV3",),
  "mobilenet": ("MobileNet",),
  "mobilenet_v2": ("MobileNetV2",),
  "mobilenet_v3": ("MobileNetV3Small", "MobileNetV3Large"),
  "nasnet": ("NASNetMobile", "NASNetLarge"),
  "regnet": tuple(
    f"RegNet{kind}{flops:03d}"
    for kind in "XY"
    for flops in (2, 4, 6, 8, 16, 32, 40, 64, 80, 120, 160, 320)
  ),
  "resnet": ("ResNet50", "ResNet101", "ResNet152"),
  "resnet_v2": ("ResNet50V2", "ResNet101V2", "ResNet152V2"),
  "resnet_rs": tuple(f"ResNetRS{depth}" for depth in (50, 101, 152, 200, 270, 350, 420)),
  "vgg16": ("VGG16",),
  "vgg19": ("VGG19",),
  "xception": ("Xception",),
}
# The allowlist: application name -> its module in keras.applications.
APPLICATIONS = {name: module for module, names in _FAMILIES.items() for name in names}
_WEIGHTS_LOCK = threading.Lock()
# Network failures while downloading; Keras re-raises urllib's errors as a bare Exception.
_NETWORK_ERRORS = (ConnectionError, TimeoutError, http.client.HTTPException)
_KERAS_FETCH_FAILURE = "URL fetch failure"


def keras_cache_dir() -> str:
  """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
  return os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "models")


def _download(download, fname: str, origin: str, source: str, *args, **kwargs) -> None:
  """Keras's download of `fname` into the cache; a network failure, a download that does not
  match its hash, or a cache that cannot be written is a UserError saying which."""
  folder = keras_cache_dir()
  missing = f"no ImageNet weights for {source}: {fname} is not in {folder}"
  fix = f"put it there (download it from {origin}; set KERAS_HOME for another folder)"

  def refusal(what: str, error: Exception, also: str = "") -> UserError:
    return UserError(f"{missing} and {what} ({' '.join(str(error).split())[:300]}); {fix}{also}")

  try:
    download(
      fname, origin, *args, cache_subdir="models", cache_dir=os.path.dirname(folder), **kwargs
    )
  except _NETWORK_ERRORS as e:
    raise refusal("downloading it failed", e, ", or connect to the internet") from e
  except ValueError as e:  # Keras checks the download's hash
    raise refusal("the download does not match its hash", e) from e
  except OSError as e:
    raise refusal("it cannot be written there", e) from e
  except Exception as e:  # Keras re-raises urllib's errors as a bare Exception
    if type(e) is not Exception or not str(e).startswith(_KERAS_FETCH_FAILURE):
      raise
    raise refusal("downloading it failed", e, ", or connect to the internet") from e


@contextlib.contextmanager
def weights_from_cache(source: str, max_bytes: int) -> Iterator[None]:
  """While Keras builds an application, its weights come from `keras_cache_dir()`, checked as
  untrusted HDF5 (`h5_check.check_h5`) before Keras reads them, or are downloaded there (Keras
  checks the download's hash); without the file and a network, a UserError names it and where
  it goes."""
  data_utils = sys.modules[keras.utils.get_file.__module__]
  download = data_utils.get_file

  def get_file(fname, origin, *args, cache_subdir="models", **kwargs):
    path = os.path.join(keras_cache_dir(), fname)
    if not os.path.lexists(path):
      _download(download, fname, origin, source, *args, **kwargs)
    real = os.path.realpath(path)
    if not os.path.isfile(real):
      raise UserError(f"cannot read the weights of {source}: {path} is not a regular file")
    try:
      with h5py.File(real, "r") as f:
        h5_check.check_h5(f, max_bytes, path)
    except OSError as e:
      raise UserError(
        f"cannot read the weights of {source}: {path} is not a valid HDF5 file "
        "(corrupt or truncated?); delete it to download it again"
      ) from e
    except reading.H5_ERRORS as e:
      raise reading.cannot_load(path, e) from e
    h5_check.read_h5_attributes(real, path)
    return real

  with _WEIGHTS_LOCK:
    data_utils.get_file = get_file
    try:
      yield
    finally:
      data_utils.get_file = download


def _preprocessing_map(module) -> tuple[list[float], list[float], list[int]]:
  """The application's own `preprocess_input` as (scale, offset, source channel) per output
  channel: output[c] = scale[c] * pixels[source[c]] + offset[c] for pixels in [0, 1]. Read from
  the function itself on probe pixels; every application's is such a map (ResNet50 and VGG
  also reorder RGB to BGR)."""
  probe = np.zeros((4, 1, 1, 3), np.float32)
  for channel in range(3):
    probe[channel + 1, 0, 0, channel] = 255.0
  out = np.asarray(module.preprocess_input(probe.copy()), np.float64).reshape(4, 3)
  offset = out[0]
  response = (out[1:] - offset).T  # [output channel, input channel], per 0-1 pixel
  source = [int(np.argmax(np.abs(row))) for row in response]
  scale = [float(response[c, source[c]]) for c in range(3)]
  off_source = response.copy()
  off_source[range(3), source] = 0
  if sorted(source) != [0, 1, 2] or np.abs(off_source).max() > 1e-6 or min(scale) <= 0:
    raise ValueError(f"{module.__name__}.preprocess_input is not a per-channel affine map")
  return scale, [float(value) for value in offset], source


# What Keras's EfficientNets divide by, after their Normalization layer, with ImageNet weights.
_EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _efficientnet_without_multiply(model: keras.Model, name: str, x) -> keras.Model:
  """`model` (an EfficientNet with ImageNet weights) without the TFOpLambda multiply Keras adds
  after its stem's Normalization (tensorflow#49930), which the loader's allowlist refuses: the
  same model built without weights, the weights copied, the factor folded into the variance."""
  plain = getattr(keras.applications, name)(
    include_top=False, weights=None, input_tensor=x, pooling="avg"
  )
  plain.set_weights(model.get_weights())
  stem = next(
    layer
    for layer in plain.layers
    if isinstance(layer, keras.layers.Normalization) and layer.name != PREPROCESSING_LAYER
  )
  variance = stem.adapt_variance  # the layer's weight; `variance` is computed from it
  variance.assign(variance * tf.constant(_EFFICIENTNET_STDDEV_RGB, variance.dtype))
  stem.finalize_state()
  return plain


def keras_application(
  source: str, input_size: int | None, allow_unsafe: bool, max_bytes: int
) -> keras.Model:
  """An ImageNet backbone from keras.applications by an allowlisted name: taking images in
  [0, 1] (the input every tl_keras model takes) through a `Normalization` layer that does the
  application's own preprocessing, and giving its globally pooled features."""
  name = source[len(KERAS_PREFIX) :]
  if name not in APPLICATIONS:
    raise UserError(
      f"unknown backbone {source!r}: use keras: and one of {', '.join(sorted(APPLICATIONS))}"
    )
  module = getattr(keras.applications, APPLICATIONS[name])
  scale, offset, channel_source = _preprocessing_map(module)
  # Channel j of the model's RGB input feeds what the application calls channel `order[j]`;
  # its first convolution's kernel is permuted to match below.
  order = [channel_source.index(j) for j in range(3)]
  mean = [-offset[order[j]] / scale[order[j]] for j in range(3)]
  variance = [1 / scale[order[j]] ** 2 for j in range(3)]
  size = input_size or DEFAULT_INPUT_SIZE
  inputs = keras.Input((size, size, 3), name="image")
  x = keras.layers.Normalization(mean=mean, variance=variance, name=PREPROCESSING_LAYER)(inputs)
  with weights_from_cache(source, max_bytes), warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "weights for input shape (224, 224) will be loaded"
    try:
      model = getattr(keras.applications, name)(
        include_top=False, weights="imagenet", input_tensor=x, pooling="avg"
      )
    except reading.H5_ERRORS as e:  # Keras reading weights that do not fit the model
      raise reading.cannot_load(source, e) from e
  if APPLICATIONS[name] == "efficientnet":
    model = _efficientnet_without_multiply(model, name, x)
  if order != [0, 1, 2]:
    first = next(
      layer for layer in model.layers if len(getattr(layer, "kernel", np.zeros(0)).shape) == 4
    )
    first.kernel.assign(tf.gather(first.kernel, order, axis=2))
  if not allow_unsafe:
    try:
      check_model_config({"class_name": "Functional", "config": model.get_config()}, source)
    except UserError as e:
      raise UserError(
        f"{e}; here, for the models finetuned from {name} as well (tl_keras builds it from "
        "Keras's own code; the flag is needed to load them back)"
      ) from e
  return model
