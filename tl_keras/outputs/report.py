"""report.md: a Markdown summary of a run's stages, from their metrics and plots."""

import os
import urllib.parse
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from tl_keras import artifacts
from tl_keras import untrusted
from tl_keras.errors import UserError
from tl_keras.errors import warn
from tl_keras.outputs.files import atomic_path
from tl_keras.sinks import markdown as escape_markdown

# Metrics listed with the settings (they are none), each after the setting it belongs to.
_LISTED_AFTER = {"strategy": ("num_replicas",), "target": ("classes", "models", "method")}


def _listed_settings(settings: Sequence[str]) -> list[str]:
  """`settings`, each followed by the metrics listed with it."""
  return [key for setting in settings for key in (setting, *_LISTED_AFTER.get(setting, ()))]


# (metrics key, label, format); training stages time images/s while training, transfer while
# predicting.
_RESULTS = (
  ("test_accuracy", "test accuracy", "percent"),
  ("macro_f1", "macro F1 (mean over classes)", "percent"),
  ("keras_test_accuracy", "Keras model's test accuracy", "percent"),
  ("linear_probe_accuracy", "linear-probe accuracy (frozen source features)", "percent"),
  ("logme", "LogME (higher: features suit the target better)", "plain"),
  ("source_only_accuracy", "test accuracy before training (source model, by name)", "percent"),
  ("scratch_test_accuracy", "test accuracy from scratch (same model and epochs)", "percent"),
  ("transfer_gain", "transfer gain (finetuned minus scratch)", "points"),
  ("best_member_test_accuracy", "best member's test accuracy", "percent"),
  ("worst_member_test_accuracy", "worst member's test accuracy", "percent"),
  ("fusion_gain", "fusion gain (fused minus best member)", "points"),
  ("num_validation", "validation images (fit the fusion)", "plain"),
  ("wall_seconds", "wall time", "seconds"),
  ("train_seconds", "training time", "seconds"),
  ("train_images_per_second", "training images/s", "rate"),
  ("images_per_second", "inference images/s", "rate"),
  ("mean_confidence", "mean confidence", "percent"),
  ("num_train", "train images", "plain"),
  ("num_unlabeled", "unlabelled images", "plain"),
  ("num_source", "source images trained or aligned on", "plain"),
  ("num_test", "test images", "plain"),
)


# Numbers in a metrics file the report formats as numbers; the tables' numeric columns.
_NUMBERS = {key for key, _, kind in _RESULTS if kind != "plain"} | {"wall_seconds"}
_TABLE_NUMBERS = {
  "per_class": ("precision", "recall", "f1"),
  "formats": (
    "size_bytes",
    "latency_ms",
    "test_accuracy",
    "accuracy_change",
    "agreement_with_keras",
  ),
}


def load_stage_metrics(output_dir: str) -> dict[str, dict[str, Any]]:
  """Reads the metrics files present in `output_dir`: {"pretrain": {...}, ...}.

  The folder may hold files tl_keras did not write: a file that is not a metrics file as
  tl_keras writes it (a regular file of bounded JSON, numbers where numbers belong) is left
  out with a warning, and plot names that are not plain file names in the folder are dropped.
  """
  stages = {}
  for stage, filename in artifacts.METRICS.items():
    path = os.path.join(output_dir, filename)
    if not os.path.lexists(path):
      continue
    try:
      stages[stage] = _checked_metrics(untrusted.read_json(path, "metrics file"), path)
    except UserError as e:
      warn(f"left out of report.md: {e}")
  return stages


def _checked_metrics(metrics: dict[str, Any], path: str) -> dict[str, Any]:
  def number(value):
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

  wrong = [key for key in sorted(_NUMBERS) if not number(metrics.get(key))]
  for key, columns in _TABLE_NUMBERS.items():
    rows = metrics.get(key) or {}
    if not isinstance(rows, dict) or not all(
      isinstance(row, dict) and all(number(row.get(c)) for c in columns) for row in rows.values()
    ):
      wrong.append(key)
  plots = metrics.get("plots", [])
  if not isinstance(plots, list) or not all(isinstance(name, str) for name in plots):
    wrong.append("plots")
  if wrong:
    raise UserError(f"{path} is not a metrics file as tl_keras writes it ({', '.join(wrong)})")
  if "plots" in metrics:  # paths inside the folder only: none may lead out of it
    metrics["plots"] = [
      name
      for name in plots
      if name and not os.path.isabs(name) and os.path.normpath(name).split(os.sep)[0] != ".."
    ]
  return metrics


def _format(value: Any, kind: str = "plain") -> str:
  if value is None:
    return "n/a"
  if kind == "percent":
    return f"{value:.2%}"
  if kind == "points":
    return f"{value * 100:+.2f} points"
  if kind == "seconds":
    return f"{value:.1f} s"
  if kind == "rate":
    return f"{value:,.0f}"
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple)):
    return ", ".join(escape_markdown(item) for item in value)
  if isinstance(value, Mapping):
    return ", ".join(
      f"{escape_markdown(k).replace('_', ' ')} {_format(v)}" for k, v in value.items()
    )
  return escape_markdown(value)


def _image_link(path: str, output_dir: str) -> str:
  relative = os.path.relpath(os.path.abspath(path), os.path.abspath(output_dir))
  relative = relative.replace(os.sep, "/")
  title = os.path.splitext(os.path.basename(path))[0].replace("_", " ")
  return f"![{escape_markdown(title)}]({urllib.parse.quote(relative)})"


def _stage_section(
  stage: str,
  metrics: Mapping[str, Any],
  plot_paths: Sequence[str],
  output_dir: str,
  listed_settings: Sequence[str],
) -> list[str]:
  lines = [f"## {escape_markdown(stage)}", ""]
  settings = [
    f"- {key.replace('_', ' ')}: {_format(metrics[key])}"
    for key in _listed_settings(listed_settings)
    if key in metrics
  ]
  if settings:
    lines += ["Settings:", "", *settings, ""]
  results = [
    f"- {label}: {_format(metrics[key], kind)}" for key, label, kind in _RESULTS if key in metrics
  ]
  if results:
    lines += ["Results:", "", *results, ""]
  if metrics.get("per_class"):
    lines += _per_class_table(metrics["per_class"])
  if metrics.get("formats"):
    lines += _formats_table(metrics["formats"])
  for path in plot_paths:
    lines += [_image_link(path, output_dir), ""]
  return lines


def _per_class_table(per_class: Mapping[str, Mapping[str, Any]]) -> list[str]:
  lines = [
    "Per class (test set):",
    "",
    "| class | precision | recall | F1 | test images |",
    "| --- | --- | --- | --- | --- |",
  ]
  for name, scores in per_class.items():
    lines.append(
      f"| {escape_markdown(name)} | {_format(scores.get('precision'), 'percent')} | "
      f"{_format(scores.get('recall'), 'percent')} | {_format(scores.get('f1'), 'percent')} | "
      f"{_format(scores.get('support'))} |"
    )
  return [*lines, ""]


def _formats_table(formats: Mapping[str, Mapping[str, Any]]) -> list[str]:
  lines = [
    "TFLite files (test set, TFLite interpreter; latency: one image, one thread, median):",
    "",
    "| format | file | size | test accuracy | change from Keras | agreement with Keras | latency |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for fmt, result in formats.items():
    size = result.get("size_bytes")
    latency = result.get("latency_ms")
    lines.append(
      f"| {escape_markdown(fmt)} | {_format(result.get('file'))} | "
      f"{'n/a' if size is None else f'{size / 1024:,.0f} KiB'} | "
      f"{_format(result.get('test_accuracy'), 'percent')} | "
      f"{_format(result.get('accuracy_change'), 'points')} | "
      f"{_format(result.get('agreement_with_keras'), 'percent')} | "
      f"{'n/a' if latency is None else f'{latency:.3f} ms'} |"
    )
  return [*lines, ""]


def write_report(
  output_dir: str,
  stages: Mapping[str, Mapping[str, Any]],
  plots: Mapping[str, Sequence[str]] | None = None,
  listed_settings: Sequence[str] = (),
) -> str:
  """Writes `output_dir`/report.md summarising the run; returns its path.

  `stages` maps stage names ("pretrain", "transfer", "finetune") to their metrics dicts, as in
  the metrics files (see `load_stage_metrics`); `plots` maps stage names to PNG paths, linked
  relative to `output_dir`. Stages appear in pipeline order, any other names after them.
  Each stage lists the `listed_settings` its metrics hold, in that order (the stages pass
  `settings.report_keys()`).
  """
  plots = plots or {}
  known = [stage for stage in artifacts.METRICS if stage in stages or stage in plots]
  names = list(dict.fromkeys([*known, *stages, *plots]))

  lines = ["# tl_keras run report", ""]
  if stages:
    lines += ["| stage | accuracy | wall seconds |", "| --- | --- | --- |"]
    for stage in names:
      if stage in stages:
        metrics = stages[stage]
        wall = metrics.get("wall_seconds")
        lines.append(
          f"| {escape_markdown(stage)} | "
          f"{_format(metrics.get('test_accuracy'), 'percent')} | "
          f"{'n/a' if wall is None else f'{wall:.1f}'} |"
        )
    lines.append("")
  for stage in names:
    lines += _stage_section(
      stage, stages.get(stage, {}), plots.get(stage, ()), output_dir, listed_settings
    )

  path = os.path.join(output_dir, artifacts.REPORT)
  with atomic_path(path) as temp, open(temp, "w") as f:
    f.write("\n".join(lines).rstrip("\n") + "\n")
  return path


def update_report(output_dir: str, listed_settings: Sequence[str] = ()) -> str:
  """Rewrites report.md from the metrics files in `output_dir` and the plots they list (see
  `write_report` for `listed_settings`)."""
  stages = load_stage_metrics(output_dir)
  plots = {
    stage: [os.path.join(output_dir, name) for name in metrics.get("plots", [])]
    for stage, metrics in stages.items()
  }
  return write_report(output_dir, stages, plots, listed_settings)
