"""SavedModel folders and TF Hub handles: resolving a handle to a local folder (cached in
$TFHUB_CACHE_DIR), and wrapping a non-Keras SavedModel, already checked by `graph_check`, in a
Keras model."""

import os

import tensorflow as tf

from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.loading import reading


def resolve_saved_model(handle: str) -> str:
  """A local SavedModel folder for a folder path or a TF Hub handle (cached in $TFHUB_CACHE_DIR)."""
  if os.path.isdir(handle):
    return _checked_saved_model(handle, handle)
  import tensorflow_hub as hub  # slow to import

  try:
    path = hub.resolve(handle)
  except Exception as e:  # the network, the server or the handle: all the user's to fix
    raise UserError(
      f"cannot fetch model {handle} ({type(e).__name__}); if offline, download it "
      "and pass its folder, or pre-fill $TFHUB_CACHE_DIR"
    ) from e
  return _checked_saved_model(handle, path)


def _checked_saved_model(handle: str, path: str) -> str:
  if not os.path.isfile(os.path.join(path, "saved_model.pb")):
    raise UserError(f"{handle} is not a SavedModel (no saved_model.pb in {path})")
  return os.path.realpath(path)


def hub_model(path: str, source: str) -> keras.Model:
  """Wraps a non-Keras SavedModel in a Keras model with one trainable `hub` layer."""
  with reading.deserialising(source):  # TensorFlow restoring the objects the file describes
    # A restored `__call__` is an instance attribute, which callable() does not see.
    call = getattr(tf.saved_model.load(path), "__call__", None)  # noqa: B004
    specs = [
      spec
      for function in getattr(call, "concrete_functions", [])
      for spec in tf.nest.flatten(function.structured_input_signature)
      if isinstance(spec, tf.TensorSpec)
    ]
  if not specs or specs[0].shape.rank != 4 or not specs[0].shape[1:].is_fully_defined():
    shape = specs[0].shape if specs else "no signature"
    raise UserError(
      f"cannot use {source} as an image model: its __call__ takes {shape}, "
      "not a fixed-size image batch [N,H,W,C]"
    )
  import tensorflow_hub as hub  # slow to import

  inputs = keras.Input(shape=specs[0].shape[1:], name="image")
  with reading.deserialising(source):
    outputs = hub.KerasLayer(path, trainable=True, name="hub")(inputs)
  return keras.Model(inputs, outputs, name="hub_model")
