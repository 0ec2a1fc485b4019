"""tl-export: TFLite files of a trained model, each evaluated on the target's test set."""

import os
import time
from typing import Any

from tl_keras import artifacts
from tl_keras import limits
from tl_keras import loading
from tl_keras.config import settings
from tl_keras.data import targets
from tl_keras.data.labeled import LabeledData
from tl_keras.errors import UserError
from tl_keras.models import networks
from tl_keras.outputs import files
from tl_keras.outputs import model_io
from tl_keras.outputs import summary
from tl_keras.outputs import tflite


def run(
  config: settings.ExportConfig, datasets_override: LabeledData | None = None
) -> dict[str, Any]:
  """Writes the TFLite files of `config.formats`, labels.txt and export_metrics.json (and
  report.md) into the output folder; returns the metrics."""
  start = time.perf_counter()
  settings.validate(config)
  formats = settings.export_formats(config.formats)
  output_dir = files.prepare_output_dir(config.paths.output_dir)
  source = config.load.model
  model = loading.load_model(
    source, config.load.allow_unsafe_deserialization, config.load.max_model_mb * limits.MIB
  )
  input_shape = networks.image_input_shape(model, source)
  metadata = model_io.read_metadata(source)
  class_names = model_io.class_names_of(model, metadata, source)
  target = datasets_override or targets.prepare_target(
    config.target, input_shape, config.paths.data_dir, config.seed, metadata.get("framing")
  )
  check_classes(class_names, target, source, named=bool(metadata.get("class_names")))
  metrics = tflite.export_and_evaluate(
    model,
    target,
    formats,
    output_dir,
    target.class_names,
    config.representative_images,
    config.seed,
  )
  metrics.update({"model": source, "target": target.description})
  path = os.path.join(output_dir, artifacts.METRICS["export"])
  report_path = summary.write_metrics(metrics, path, start)
  tflite.print_summary(metrics, {"files": output_dir, "metrics": path, "report": report_path})
  return metrics


def check_classes(class_names: list[str], target: LabeledData, source: str, named: bool) -> None:
  """Refuses a target whose classes are not the model's outputs: its accuracy would mean
  nothing. A model without class names (not `named`) needs only as many classes."""
  if len(class_names) != target.num_classes or (named and class_names != target.class_names):
    raise UserError(
      f"model {source} classifies {_listed(class_names)}, but the target "
      f"{target.description} has classes {_listed(target.class_names)}; pass the --target "
      "the model was trained on"
    )


def _listed(names: list[str], limit: int = 10) -> str:
  return ", ".join(names[:limit]) + (
    f" and {len(names) - limit} more" if len(names) > limit else ""
  )
