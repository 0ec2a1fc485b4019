"""Loading source models without running code from the file.

`load_model` takes an .h5 or .keras file, a SavedModel folder, or a TF Hub handle. Before
anything is deserialised, the model's description is read as data and checked: Keras configs
may name only built-in Keras classes (never `Lambda`, whose Python code tf_keras runs on load
even with safe_mode), and TensorFlow graphs may not use ops that touch files or call Python.
`allow_unsafe=True` skips the checks.
"""

import json
import os
import zipfile
from typing import Any, Dict, Iterator

import h5py
import tensorflow as tf
import tensorflow_hub as hub

from tl_keras.errors import UserError
from tl_keras.keras_api import keras

# Besides built-in layers, initializers, regularizers, constraints and metrics, configs name
# model containers and (in Keras SavedModel metadata) data-only type descriptions.
_MODEL_CLASSES = {"Functional", "Sequential", "Model", "Policy", "DTypePolicy", "TensorShape",
                  "TypeSpec", "__tuple__"}
_UNSAFE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
# Ops that have no place in an image model's forward pass: file access and Python callbacks.
_UNSAFE_OPS = {"WriteFile", "ReadFile", "MatchingFiles", "DeleteFile", "PyFunc",
               "PyFuncStateless", "EagerPyFunc", "TFRecordDataset", "TextLineDataset",
               "FixedLengthRecordDataset", "ImmutableConst"}
_UNSAFE_HINT = "pass --allow_unsafe_deserialization only if you trust it"


def _class_names(config: Any) -> Iterator[str]:
  if isinstance(config, dict):
    if isinstance(config.get("class_name"), str):
      yield config["class_name"]
    for value in config.values():
      yield from _class_names(value)
  elif isinstance(config, list):
    for value in config:
      yield from _class_names(value)


def _known_classes() -> set:
  known = set(_MODEL_CLASSES)
  for module in (keras.layers, keras.initializers, keras.regularizers, keras.constraints,
                 keras.metrics):
    known.update(name for name in dir(module) if name[:1].isupper())
  return known - _UNSAFE_CLASSES


def check_model_config(config: Any, source: str) -> None:
  """Refuses a Keras config naming `Lambda` or any class that is not a built-in Keras class."""
  known = _known_classes()
  refused = sorted({name for name in _class_names(config) if name not in known})
  if refused:
    raise UserError(f"refusing to load {source}: it holds {', '.join(refused)} (Lambda layers "
                    f"and unknown classes can run code from the file); {_UNSAFE_HINT}")


def check_saved_model_graph(export_dir: str) -> None:
  """Refuses a SavedModel whose graphs use file-access or Python-callback ops."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  proto = saved_model_pb2.SavedModel()
  try:
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
      proto.ParseFromString(f.read())
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot read {export_dir} as a SavedModel ({type(e).__name__})") from e
  ops = set()
  for meta_graph in proto.meta_graphs:
    ops.update(node.op for node in meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      ops.update(node.op for node in function.node_def)
  refused = sorted(ops & _UNSAFE_OPS)
  if refused:
    raise UserError(f"refusing to load {export_dir}: its graph uses {', '.join(refused)} "
                    f"(file access or Python calls); {_UNSAFE_HINT}")


def _keras_saved_model_config(export_dir: str) -> list:
  from tf_keras.protobuf import saved_metadata_pb2  # pylint: disable=g-import-not-at-top
  proto = saved_metadata_pb2.SavedMetadata()
  with open(os.path.join(export_dir, "keras_metadata.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  return [json.loads(node.metadata) for node in proto.nodes if node.metadata]


def _h5_config(path: str) -> Dict[str, Any]:
  try:
    with h5py.File(path, "r") as f:
      raw = f.attrs.get("model_config")
  except OSError as e:
    raise UserError(f"cannot read model file {path}: not a valid HDF5 file (corrupt or "
                    "truncated?); re-create it with the pretrain stage") from e
  if raw is None:
    raise UserError(f"{path} holds weights only, no model; save the whole model as .h5")
  return json.loads(raw)


def _keras_zip_config(path: str) -> Dict[str, Any]:
  try:
    with zipfile.ZipFile(path) as archive:
      return json.loads(archive.read("config.json"))
  except (zipfile.BadZipFile, KeyError, ValueError) as e:
    raise UserError(f"cannot read model file {path}: not a valid .keras archive "
                    "(corrupt or truncated?)") from e


def resolve_saved_model(handle: str) -> str:
  """A local SavedModel folder for a folder path or a TF Hub handle (cached in $TFHUB_CACHE_DIR)."""
  try:
    path = hub.resolve(handle)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot fetch model {handle} ({type(e).__name__}); if offline, download it "
                    "and pass its folder, or pre-fill $TFHUB_CACHE_DIR") from e
  if not os.path.isfile(os.path.join(path, "saved_model.pb")):
    raise UserError(f"{handle} is not a SavedModel (no saved_model.pb in {path})")
  return path


def _hub_model(path: str, source: str) -> keras.Model:
  """Wraps a non-Keras SavedModel in a Keras model with one trainable `hub` layer."""
  call = getattr(tf.saved_model.load(path), "__call__", None)
  specs = [spec for function in getattr(call, "concrete_functions", [])
           for spec in tf.nest.flatten(function.structured_input_signature)
           if isinstance(spec, tf.TensorSpec)]
  if not specs or specs[0].shape.rank != 4 or not specs[0].shape[1:].is_fully_defined():
    shape = specs[0].shape if specs else "no signature"
    raise UserError(f"cannot use {source} as an image model: its __call__ takes {shape}, "
                    "not a fixed-size image batch [N,H,W,C]")
  inputs = keras.Input(shape=specs[0].shape[1:], name="image")
  outputs = hub.KerasLayer(path, trainable=True, name="hub")(inputs)
  return keras.Model(inputs, outputs, name="hub_model")


def load_model(source: str, allow_unsafe: bool = False) -> keras.Model:
  """Loads a model for prediction or fine-tuning (uncompiled) after checking it is safe.

  `source`: an .h5 or .keras file, a SavedModel folder (Keras or not), or a TF Hub handle.
  Non-Keras SavedModels become a Keras model whose single layer is a `hub.KerasLayer`.
  """
  is_file = source.endswith((".h5", ".keras"))
  if is_file or "://" not in source:
    if not os.path.exists(source):
      raise UserError(f"model not found: {source}; run the pretrain stage first or pass --model")
  try:
    if is_file:
      config = _h5_config(source) if source.endswith(".h5") else _keras_zip_config(source)
      if not allow_unsafe:
        check_model_config(config, source)
      return keras.models.load_model(source, compile=False, safe_mode=not allow_unsafe)
    if os.path.isfile(source):
      raise UserError(f"unsupported model file {source}: --model takes an .h5 or .keras file, "
                      "a SavedModel folder or a TF Hub handle")
    path = resolve_saved_model(source)
    if not allow_unsafe:
      check_saved_model_graph(path)
    if os.path.isfile(os.path.join(path, "keras_metadata.pb")):
      if not allow_unsafe:
        check_model_config(_keras_saved_model_config(path), source)
      return keras.models.load_model(path, compile=False)
    return _hub_model(path, source)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot load model {source} ({type(e).__name__}: {e})") from e
