"""tl-export: TFLite files of a trained model, each evaluated on the target's test set."""

import os
from typing import Any

from tl_keras import artifacts
from tl_keras.config import settings
from tl_keras.data.labeled import LabeledData
from tl_keras.errors import UserError
from tl_keras.outputs import tflite
from tl_keras.stages import base


def run(
  config: settings.ExportConfig, datasets_override: LabeledData | None = None
) -> dict[str, Any]:
  """Writes the TFLite files of `config.formats`, labels.txt and export_metrics.json (and
  report.md) into the output folder; returns the metrics."""
  start = base.begin(config)
  formats = settings.export_formats(config.formats)
  context = base.prepare(config, datasets_override, config.seed)
  source, target = context.source, context.target
  check_classes(source.class_names(), target, source.path, bool(source.metadata.get("class_names")))
  metrics = tflite.export_and_evaluate(
    source.model,
    target,
    formats,
    context.output_dir,
    target.class_names,
    config.representative_images,
    config.seed,
  )
  metrics.update({"model": source.path, "target": target.description})
  path = os.path.join(context.output_dir, artifacts.METRICS["export"])
  report_path = base.write_metrics(metrics, path, start)
  tflite.print_summary(
    metrics, {"files": context.output_dir, "metrics": path, "report": report_path}
  )
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
