"""Model files: .h5 with class-name metadata, SavedModel export, reading the metadata back.

Every model is written through `files.atomic_path` (a temporary name, then renamed).
"""

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import h5py
import tensorflow as tf

from tl_keras import artifacts
from tl_keras import limits
from tl_keras import untrusted
from tl_keras.data import labeled
from tl_keras.data import mnist
from tl_keras.data.preprocessing import preprocess_images
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.outputs.files import atomic_path


def save_h5(model: keras.Model, path: str, metadata: dict[str, Any]) -> None:
  """Saves `model` as HDF5 with `metadata` (class names etc.) as a JSON file attribute."""
  with atomic_path(path) as temp, warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
    model.save(temp, save_format="h5")
    with h5py.File(temp, "a") as f:
      f.attrs[artifacts.METADATA_ATTR] = json.dumps(metadata)


def _metadata_text(source: str, origin: str) -> Any:
  """The raw metadata of an .h5 file (its attribute) or SavedModel folder (its asset); None
  where the model has none: no such attribute or asset, or a source of another kind."""
  if os.path.isdir(source):
    path = os.path.join(source, "assets", artifacts.METADATA_ASSET)
    if not os.path.lexists(path):
      return None
    text = labeled.read_regular_file(
      os.path.realpath(path), limits.MAX_METADATA_BYTES, f"{origin}: metadata"
    )
    if text is None:
      raise UserError(f"{origin}: assets/{artifacts.METADATA_ASSET} is not a regular file")
    return text
  if not os.path.isfile(source) or not h5py.is_hdf5(source):  # .keras, keras:NAME, handles
    return None
  try:
    with h5py.File(source, "r") as f:
      return f.attrs.get(artifacts.METADATA_ATTR)
  except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # what h5py raises
    raise UserError(
      f"{origin}: cannot read its {artifacts.METADATA_ATTR} attribute ({type(e).__name__})"
    ) from e


def read_metadata(source: str) -> dict[str, Any]:
  """The tl_keras metadata of an .h5 file or SavedModel folder; {} where there is none.

  A model file may come from anyone: metadata that is not text, over
  limits.MAX_METADATA_BYTES, not valid JSON or not a JSON object, with class names
  `labeled.check_class_names` refuses, nested deeper than limits.MAX_JSON_DEPTH
  (`untrusted.parse_json`), or with a `framing` other than the one tl_keras writes
  (MNIST's; its box size sets how much --target_fit=source allocates), is a UserError.
  """
  origin = f"model {labeled.shown(source)}"
  text = _metadata_text(source, origin)
  if text is None:
    return {}
  if not isinstance(text, (str, bytes)):
    raise UserError(f"{origin}: its {artifacts.METADATA_ATTR} is not text")
  metadata = untrusted.parse_json(
    text, f"{origin}: its {artifacts.METADATA_ATTR}", dict, limits.MAX_METADATA_BYTES
  )
  for key in ("class_names", "source_class_names"):
    if metadata.get(key) is not None:
      labeled.check_class_names(metadata[key], f"{origin}, {key} in its metadata")
  if metadata.get("framing") not in (None, mnist.FRAMING):
    raise UserError(
      f"{origin}: the framing in its metadata is not MNIST's ({json.dumps(mnist.FRAMING)}), "
      "the only one tl_keras knows; remove it from the metadata to use --target_fit=resize or pad"
    )
  return metadata


def class_names_of(
  model: keras.Model, metadata: dict[str, Any], source: str = "the model"
) -> list[str]:
  """The model's output class names: from metadata, else '0'..'k-1'.

  Refuses names `labeled.check_class_names` refuses, and a count other than the model's outputs.
  """
  names = metadata.get("class_names")
  units = model.output_shape[-1]
  if not names:
    return [str(i) for i in range(units)]
  origin = f"model {labeled.shown(source)}"
  names = labeled.check_class_names(names, f"{origin}, class_names in its metadata")
  if isinstance(units, int) and len(names) != units:
    raise UserError(
      f"{origin}: its metadata names {len(names)} classes but the model has {units} outputs"
    )
  return names


# The SavedModel signature for converters (TFLite, ONNX, TF.js), which need a known rank.
FIXED_RANK_SIGNATURE = "serving_nhwc"


def export_saved_model(
  model: keras.Model, export_dir: str, class_names: Sequence[str], metadata: dict[str, Any]
) -> None:
  """Exports a SavedModel whose signatures take raw uint8 images.

  `serving_default` takes a uint8 batch `images` at the model's input size, [N,H,W,C] (or
  [N,H,W] for one channel: its rank is unknown); `serving_nhwc` (FIXED_RANK_SIGNATURE) takes
  [N,H,W,C] only, with that shape in its signature, for converters. Both apply
  `preprocess_images` in the graph and return `probabilities` (float32 [N,k]) and `class_id`
  (int64 [N]). A model whose `metadata` says it trained on framed images (`target_fit`
  'source', with its `framing`) frames the images it serves; `serving_default` then takes
  them at any height and width. The class names ship as assets/class_names.txt, one per
  line, and the metadata as assets/tl_keras_metadata.json.
  """
  input_shape = tuple(model.input_shape[1:])
  # A model trained on framed images (--target_fit=source) frames what it serves, at any size.
  framing = metadata.get("framing") if metadata.get("target_fit") == "source" else None
  fit = "source" if framing else "resize"
  served_shape = [None, None, input_shape[2]] if framing else list(input_shape)

  def classify(images):
    count = tf.shape(images)[0]
    # Convolutions fail on an empty batch (oneDNN): add one blank image then and keep none.
    # Concatenated rather than in a tf.cond, which converters such as TFLite's do not take.
    blank = tf.zeros(tf.concat([[tf.maximum(1 - count, 0)], tf.shape(images)[1:]], 0), tf.uint8)
    batch = tf.concat([images, blank], axis=0)
    pixels = preprocess_images(batch, input_shape, fit, framing)
    probabilities = model(pixels, training=False)[:count]
    return {
      "probabilities": probabilities,
      "class_id": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
    }

  # Unknown rank, so that one signature takes both [N,H,W,C] and (grey) [N,H,W].
  @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
  def serve(images):
    images = tf.cond(tf.rank(images) == 3, lambda: images[..., tf.newaxis], lambda: images)
    return classify(tf.ensure_shape(images, [None, *served_shape]))

  @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name="images")])
  def serve_nhwc(images):
    return classify(images)

  with atomic_path(export_dir, is_dir=True) as temp:
    model.save(
      temp,
      save_format="tf",
      signatures={"serving_default": serve, FIXED_RANK_SIGNATURE: serve_nhwc},
      include_optimizer=False,
    )
    assets = os.path.join(temp, "assets")
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, artifacts.CLASS_NAMES_ASSET), "w") as f:
      f.write("".join(f"{name}\n" for name in class_names))
    with open(os.path.join(assets, artifacts.METADATA_ASSET), "w") as f:
      json.dump(metadata, f, indent=2)
