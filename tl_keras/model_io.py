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
from typing import Any, Dict, Iterator, List, Sequence

import h5py
import tensorflow as tf

from tl_keras import data
from tl_keras import interrupts
from tl_keras import limits
from tl_keras.errors import UserError
from tl_keras.keras_api import keras

METADATA_ATTR = "tl_keras_metadata"
CLASS_NAMES_ASSET = "class_names.txt"
METADATA_ASSET = "tl_keras_metadata.json"

@contextlib.contextmanager
def atomic_path(path: str, is_dir: bool = False) -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

  The temporary path is registered with `interrupts`, so a command stopped by a signal
  deletes it; an exception deletes it here.
  """
  folder = os.path.dirname(os.path.abspath(path))
  base = os.path.basename(path)
  with interrupts.uninterrupted():
    if is_dir:
      temp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    else:
      handle, temp = tempfile.mkstemp(prefix=f".{base}.",
                                      suffix=f".tmp{os.path.splitext(base)[1]}", dir=folder)
      os.close(handle)
    interrupts.track(temp)
  try:
    yield temp
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, (0o777 if is_dir else 0o666) & ~umask)  # mkstemp/mkdtemp made it private
    old = temp + ".old"
    with interrupts.uninterrupted():
      if is_dir and os.path.isdir(path):
        os.rename(path, old)
        interrupts.track(old)
        os.rename(temp, path)
      else:
        os.replace(temp, path)
      interrupts.untrack(temp)
    if os.path.isdir(old):
      shutil.rmtree(old, ignore_errors=True)
      interrupts.untrack(old)
  except BaseException:
    if os.path.isdir(temp):
      shutil.rmtree(temp, ignore_errors=True)
    elif os.path.exists(temp):
      os.remove(temp)
    interrupts.untrack(temp)
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


def read_metadata(source: str) -> Dict[str, Any]:
  """The tl_keras metadata of an .h5 file or SavedModel folder; {} where there is none.

  A model file may come from anyone: metadata over limits.MAX_METADATA_BYTES, that is not a
  JSON object, or with class names `data.check_class_names` refuses, is a UserError.
  """
  origin = f"model {data.shown(source)}"
  try:
    if os.path.isdir(source):
      path = os.path.join(source, "assets", METADATA_ASSET)
      if not os.path.lexists(path):
        return {}
      text = data.read_regular_file(os.path.realpath(path), limits.MAX_METADATA_BYTES,
                                    f"{origin}: metadata")
      if text is None:
        raise UserError(f"{origin}: assets/{METADATA_ASSET} is not a regular file")
    else:
      with h5py.File(source, "r") as f:
        text = f.attrs[METADATA_ATTR]
    if len(text) > limits.MAX_METADATA_BYTES:
      raise UserError(f"{origin}: its metadata has {len(text):,} bytes, more than the limit of "
                      f"{limits.MAX_METADATA_BYTES:,}")
    metadata = json.loads(text)
  except (OSError, KeyError, TypeError, ValueError):
    return {}
  if not isinstance(metadata, dict):
    raise UserError(f"{origin}: its {METADATA_ATTR} is not a JSON object")
  for key in ("class_names", "source_class_names"):
    if metadata.get(key) is not None:
      data.check_class_names(metadata[key], f"{origin}, {key} in its metadata")
  return metadata


def class_names_of(model: keras.Model, metadata: Dict[str, Any],
                   source: str = "the model") -> List[str]:
  """The model's output class names: from metadata, else '0'..'k-1'.

  Refuses names `data.check_class_names` refuses, and a count other than the model's outputs.
  """
  names = metadata.get("class_names")
  units = model.output_shape[-1]
  if not names:
    return [str(i) for i in range(units)]
  origin = f"model {data.shown(source)}"
  names = data.check_class_names(names, f"{origin}, class_names in its metadata")
  if isinstance(units, int) and len(names) != units:
    raise UserError(f"{origin}: its metadata names {len(names)} classes but the model has "
                    f"{units} outputs")
  return names


def export_saved_model(model: keras.Model, export_dir: str, class_names: Sequence[str],
                       metadata: Dict[str, Any]) -> None:
  """Exports a SavedModel whose `serving_default` signature takes raw uint8 images.

  The signature's input `images` is a uint8 batch at the model's input size, [N,H,W,C] (or
  [N,H,W] for one channel). It applies `data.preprocess_images` in the graph and returns
  `probabilities` (float32 [N,k]) and `class_id` (int64 [N]). The class names ship as
  assets/class_names.txt, one per line, and the metadata as assets/tl_keras_metadata.json.
  """
  input_shape = tuple(model.input_shape[1:])

  # Unknown rank, so that one signature takes both [N,H,W,C] and (grey) [N,H,W].
  @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
  def serve(images):
    images = tf.cond(tf.rank(images) == 3, lambda: images[..., tf.newaxis], lambda: images)
    images = tf.ensure_shape(images, [None, *input_shape])
    count = tf.shape(images)[0]
    # Convolutions fail on an empty batch (oneDNN): run one blank image then and keep none.
    batch = tf.cond(count > 0, lambda: images, lambda: tf.zeros([1, *input_shape], tf.uint8))
    probabilities = model(data.preprocess_images(batch, input_shape), training=False)[:count]
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
