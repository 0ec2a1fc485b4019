"""Saving and loading models: .h5 files with class-name metadata, safe loading, SavedModel export.

Every artifact is written under a temporary name in its destination folder and renamed into
place, so an interrupted run never leaves a half-written model where a good one was.
"""

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence

import h5py
import tensorflow as tf

from tl_keras import data
from tl_keras.errors import UserError
from tl_keras.keras_api import keras

METADATA_ATTR = "tl_keras_metadata"
CLASS_NAMES_ASSET = "class_names.txt"
METADATA_ASSET = "tl_keras_metadata.json"

# Classes a model file may name, besides the built-in layers, initializers, regularizers and
# constraints; `Lambda` (arbitrary Python code) is never on the list.
_MODEL_CLASSES = {"Functional", "Sequential", "Model", "Policy", "DTypePolicy"}
_UNSAFE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda"}


@contextlib.contextmanager
def atomic_path(path: str, is_dir: bool = False) -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds."""
  folder = os.path.dirname(os.path.abspath(path))
  base = os.path.basename(path)
  if is_dir:
    temp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
  else:
    handle, temp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{os.path.splitext(base)[1]}",
                                    dir=folder)
    os.close(handle)
  try:
    yield temp
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, (0o777 if is_dir else 0o666) & ~umask)  # mkstemp/mkdtemp made it private
    if is_dir and os.path.isdir(path):
      old = temp + ".old"
      os.rename(path, old)
      os.rename(temp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(temp, path)
  except BaseException:
    if os.path.isdir(temp):
      shutil.rmtree(temp, ignore_errors=True)
    elif os.path.exists(temp):
      os.remove(temp)
    raise


def write_json(path: str, payload: Dict[str, Any]) -> None:
  with atomic_path(path) as temp, open(temp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
    f.write("\n")


def prepare_output_dir(output_dir: str) -> str:
  """Creates `output_dir` if needed and checks it is writable; returns it."""
  try:
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=output_dir):
      pass
  except OSError as e:
    raise UserError(f"cannot write to output folder {output_dir} ({e.strerror}); "
                    "choose another --output_dir") from e
  return output_dir


def save_h5(model: keras.Model, path: str, metadata: Dict[str, Any]) -> None:
  """Saves `model` as HDF5 with `metadata` (class names etc.) as a JSON file attribute."""
  with atomic_path(path) as temp, warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
    model.save(temp, save_format="h5")
    with h5py.File(temp, "a") as f:
      f.attrs[METADATA_ATTR] = json.dumps(metadata)


def read_metadata(path: str) -> Dict[str, Any]:
  """The tl_keras metadata of an .h5 model, or {} for files that carry none."""
  with h5py.File(path, "r") as f:
    raw = f.attrs.get(METADATA_ATTR)
  return json.loads(raw) if raw is not None else {}


def class_names_of(model: keras.Model, metadata: Dict[str, Any]) -> List[str]:
  """The model's output class names: from metadata, else '0'..'k-1'."""
  names = metadata.get("class_names")
  return list(names) if names else [str(i) for i in range(model.output_shape[-1])]


def _config_class_names(config: Any) -> Iterator[str]:
  if isinstance(config, dict):
    if isinstance(config.get("class_name"), str):
      yield config["class_name"]
    for value in config.values():
      yield from _config_class_names(value)
  elif isinstance(config, list):
    for value in config:
      yield from _config_class_names(value)


def _known_classes() -> set:
  known = set(_MODEL_CLASSES)
  for module in (keras.layers, keras.initializers, keras.regularizers, keras.constraints):
    known.update(name for name in dir(module) if name[:1].isupper())
  return known - _UNSAFE_CLASSES


def check_model_config(config: Dict[str, Any], source: str) -> None:
  """Refuses a model config naming `Lambda` or any class that is not a built-in Keras class."""
  known = _known_classes()
  refused = sorted({name for name in _config_class_names(config) if name not in known})
  if refused:
    raise UserError(f"refusing to load {source}: it holds {', '.join(refused)} "
                    "(Lambda layers and unknown classes can run code from the file); "
                    "pass --allow_unsafe_deserialization only if you trust it")


def _h5_model_config(path: str) -> Dict[str, Any]:
  try:
    with h5py.File(path, "r") as f:
      raw = f.attrs.get("model_config")
  except OSError as e:
    raise UserError(f"cannot read model file {path}: not a valid HDF5 file "
                    "(corrupt or truncated?); re-create it with the pretrain stage") from e
  if raw is None:
    raise UserError(f"{path} holds weights only, no model; save the whole model as .h5")
  return json.loads(raw)


def load_model(path: str, allow_unsafe: bool = False) -> keras.Model:
  """Loads an .h5 model without compiling, after checking its config is safe to deserialise."""
  if not os.path.exists(path):
    raise UserError(f"model file not found: {path}; run the pretrain stage first or pass --model")
  if not path.endswith(".h5"):
    raise UserError(f"unsupported model file {path}: --model takes an .h5 file")
  config = _h5_model_config(path)
  if not allow_unsafe:
    check_model_config(config, path)
  try:
    return keras.models.load_model(path, compile=False, safe_mode=not allow_unsafe)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot load model {path} ({type(e).__name__}: {e})") from e


def export_saved_model(model: keras.Model, export_dir: str, class_names: Sequence[str],
                       metadata: Dict[str, Any]) -> None:
  """Exports a SavedModel whose `serving_default` signature takes raw uint8 images.

  The signature input `images` is a uint8 batch [N,H,W,C] at the model's input size; it
  applies `data.preprocess_images` in the graph and returns `probabilities` (float32 [N,k])
  and `class_id` (int64 [N]). The class names ship as assets/class_names.txt, one per line.
  """
  input_shape = tuple(model.input_shape[1:])

  @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name="images")])
  def serve(images):
    probabilities = model(data.preprocess_images(images, input_shape), training=False)
    return {"probabilities": probabilities,
            "class_id": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

  with atomic_path(export_dir, is_dir=True) as temp:
    model.save(temp, save_format="tf", signatures={"serving_default": serve},
               include_optimizer=False)
    assets = os.path.join(temp, "assets")
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, CLASS_NAMES_ASSET), "w") as f:
      f.write("".join(f"{name}\n" for name in class_names))
    with open(os.path.join(assets, METADATA_ASSET), "w") as f:
      json.dump(metadata, f, indent=2)


def read_saved_model_class_names(export_dir: str) -> Optional[List[str]]:
  path = os.path.join(export_dir, "assets", CLASS_NAMES_ASSET)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return [line.rstrip("\n") for line in f]
