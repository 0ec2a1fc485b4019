"""The set-up every stage shares, written once: the config checked, devices and strategy, the
output folder, the source model (read and safety-checked once, its metadata read once) and the
target fitted to its input.

A stage starts with `begin(config)`; a training stage then takes `strategy_for(...)` (before
any other TensorFlow op: a multi-worker strategy must come first); a stage on a saved model
then takes `prepare(...)`, a `StageContext` holding what the rest of the stage uses.
"""

import dataclasses
import functools
import time
from typing import Any

import tensorflow as tf

from tl_keras import limits
from tl_keras import loading
from tl_keras.config import settings
from tl_keras.data import targets
from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import check_class_count
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import files
from tl_keras.outputs import model_io
from tl_keras.outputs import summary
from tl_keras.training import distribute


@dataclasses.dataclass
class Source:
  """A model read from `path` once: the model, its tl_keras metadata and its input shape."""

  path: str
  model: keras.Model
  metadata: dict[str, Any]
  input_shape: tuple[int, int, int]

  @property
  def framing(self) -> dict | None:
    """How the model's training images were framed (see `--target_fit=source`), if recorded."""
    return self.metadata.get("framing")

  def class_names(self) -> list[str]:
    """The model's output class names (from its metadata, else '0'..'k-1')."""
    return model_io.class_names_of(self.model, self.metadata, self.path)


@dataclasses.dataclass
class StageContext:
  """What a stage on a saved model works with, set up once."""

  output_dir: str
  source: Source
  target: LabeledData


def begin(config) -> float:
  """Refuses bad settings (see `settings.validate`); returns the stage's start time."""
  start = time.perf_counter()
  settings.validate(config)
  return start


def write_metrics(
  metrics: dict[str, Any], path: str, start: float, chief: bool = True
) -> str | None:
  """`summary.write_metrics`, its report.md listing the settings in the schema's order."""
  return summary.write_metrics(metrics, path, start, chief, _report_keys())


@functools.cache
def _report_keys() -> tuple[str, ...]:
  return tuple(settings.report_keys())


def strategy_for(
  runtime: settings.RuntimeSettings, override: tf.distribute.Strategy | None = None
) -> tf.distribute.Strategy:
  """Refuses what this machine cannot run, then the strategy `runtime` names (or `override`)."""
  distribute.check_devices(runtime.mixed_precision)
  return override or distribute.get_distribution_strategy(runtime.strategy)


def load_source(
  path: str,
  allow_unsafe: bool = False,
  max_model_mb: int = limits.MAX_MODEL_BYTES // limits.MIB,
  input_size: int | None = None,
) -> Source:
  """The model at `path` loaded safely (see `loading.load_model`), its metadata and image input
  shape; a UserError for a model that does not take images."""
  model = loading.load_model(path, allow_unsafe, max_model_mb * limits.MIB, input_size)
  input_shape = networks.image_input_shape(model, path)
  outputs = model.output_shape
  if isinstance(outputs, tuple) and isinstance(outputs[-1], int):
    check_class_count(outputs[-1], f"the model {path}'s outputs")
  return Source(path, model, model_io.read_metadata(path), input_shape)


def load_source_of(load: settings.ModelSettings) -> Source:
  """`load_source` with every setting of a stage's --model group."""
  return load_source(
    load.model, load.allow_unsafe_deserialization, load.max_model_mb, load.input_size
  )


def prepare(
  config,
  datasets_override: LabeledData | None,
  seed: int,
  unlabeled: str = "",
  source: Source | None = None,
) -> StageContext:
  """The output folder, the source model of `config.load` (or `source`, read already) and the
  target of `config.target` fitted to it (or `datasets_override`), with the `unlabeled` images
  it names."""
  output_dir = files.prepare_output_dir(config.paths.output_dir)
  source = source or load_source_of(config.load)
  target = datasets_override or targets.prepare_target(
    config.target, source.input_shape, config.paths.data_dir, seed, source.framing, unlabeled
  )
  return StageContext(output_dir, source, target)
