"""Loading models from files that may be hostile, without running anything from them.

`load_model` takes an .h5 or .keras file, a SavedModel folder, or a TF Hub handle. Before
anything is deserialised, the file is read as data and checked against allowlists, kept as
data in `allowlists/*.txt` (one name a line, grouped, each group saying why it is safe):

- Keras configs (.h5, .keras, Keras SavedModel metadata): `config_check`.
- SavedModel graphs, assets and folders: `graph_check`; TF Hub handles: `hub`.
- HDF5 contents: `h5_check`; `.keras` archives: `keras_archive`.
- Sizes: `budgets`. Tensors the file declares (weights, variables, constants) are added up
  before anything is allocated and must fit `max_bytes` and what the file actually stores;
  descriptions (configs, graphs) and archive members have fixed caps (`tl_keras.limits`).
  While Keras builds the model, variable creation is held to the same budget.
- `keras:NAME` ImageNet backbones: `applications`.

`allow_unsafe=True` skips the allowlists (not the size limits): only for files you trust.
What is not checked: how much memory or time a model's computation takes when it runs (a
graph may loop forever or build huge tensors from small inputs). For models from unknown
sources, run tl_keras inside a sandbox with memory and time limits.

What a reader (h5py, zipfile, Keras, TensorFlow) raises on a bad file is a UserError where the
file is read (`reading`); exceptions from tl_keras's own code propagate.
"""

import os

from tl_keras import limits
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.loading import budgets
from tl_keras.loading import graph_check
from tl_keras.loading import hub
from tl_keras.loading import reading
from tl_keras.loading.applications import APPLICATIONS
from tl_keras.loading.applications import DEFAULT_INPUT_SIZE
from tl_keras.loading.applications import KERAS_PREFIX
from tl_keras.loading.applications import PREPROCESSING_LAYER
from tl_keras.loading.applications import keras_application
from tl_keras.loading.applications import keras_cache_dir
from tl_keras.loading.config_check import check_model_config
from tl_keras.loading.graph_check import check_saved_model
from tl_keras.loading.h5_check import h5_config
from tl_keras.loading.hub import resolve_saved_model
from tl_keras.loading.keras_archive import keras_zip_config

__all__ = [
  "APPLICATIONS",
  "DEFAULT_INPUT_SIZE",
  "KERAS_PREFIX",
  "PREPROCESSING_LAYER",
  "check_model_config",
  "check_saved_model",
  "keras_cache_dir",
  "load_model",
  "resolve_saved_model",
]


def _load_file(source: str, allow_unsafe: bool, max_bytes: int) -> keras.Model:
  """An .h5 or .keras file, its config and HDF5 contents checked before Keras builds it."""
  if not os.path.isfile(source):
    raise UserError(f"cannot read model file {source}: not a regular file")
  config, budget = (
    h5_config(source, max_bytes) if source.endswith(".h5") else keras_zip_config(source, max_bytes)
  )
  if not allow_unsafe:
    check_model_config(config, source)
  refusals = []
  with reading.deserialising(source, refusals), budgets.variable_budget(budget, refusals):
    return keras.models.load_model(source, compile=False, safe_mode=not allow_unsafe)


def _load_saved_model(source: str, allow_unsafe: bool, max_bytes: int) -> keras.Model:
  """A SavedModel folder or TF Hub handle, checked; a Keras one's metadata checked too."""
  if os.path.isfile(source):
    raise UserError(
      f"unsupported model file {source}: --model takes an .h5 or .keras "
      "file, a SavedModel folder or a TF Hub handle"
    )
  path = resolve_saved_model(source)
  check_saved_model(path, source, max_bytes, allow_unsafe)
  if not os.path.isfile(os.path.join(path, "keras_metadata.pb")):
    return hub.hub_model(path, source)
  if not allow_unsafe:
    check_model_config(graph_check.keras_saved_model_config(path, source), source)
  with reading.deserialising(source):
    return keras.models.load_model(path, compile=False)


def load_model(
  source: str,
  allow_unsafe: bool = False,
  max_bytes: int = limits.MAX_MODEL_BYTES,
  input_size: int | None = None,
) -> keras.Model:
  """Loads a model for prediction or fine-tuning (uncompiled) after checking it is safe.

  `source`: an .h5 or .keras file, a SavedModel folder (Keras or not), a TF Hub handle, or
  'keras:NAME', an ImageNet backbone from keras.applications (`APPLICATIONS`) taking
  `input_size` square images (default 224), with weights from `keras_cache_dir()`.
  Non-Keras SavedModels become a Keras model whose single layer is a `hub.KerasLayer`.
  `max_bytes` caps the tensor data the model declares. Refuses, with a UserError, anything
  the module docstring lists; `allow_unsafe` skips the allowlists but not the size limits.
  """
  is_keras = source.startswith(KERAS_PREFIX)
  if input_size is not None and not is_keras:
    raise UserError(
      f"--input_size is for --model=keras:NAME backbones; {source} has its own input size"
    )
  is_file = source.endswith((".h5", ".keras"))
  if not is_keras and (is_file or "://" not in source):
    if not os.path.exists(source):
      raise UserError(f"model not found: {source}; run the pretrain stage first or pass --model")
  if is_keras:
    model = keras_application(source, input_size, allow_unsafe, max_bytes)
  elif is_file:
    model = _load_file(source, allow_unsafe, max_bytes)
  else:
    model = _load_saved_model(source, allow_unsafe, max_bytes)
  if not model.built or not model.inputs:
    raise UserError(
      f"cannot use {source}: the model has no input shape (an unbuilt "
      "Sequential?); save it after building it on an image input"
    )
  budgets.check_activations(model, source)
  return model
