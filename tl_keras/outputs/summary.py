"""The end of a stage: its metrics file, report.md and the summary it prints."""

import os
import time
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tl_keras import sinks
from tl_keras.config import methods
from tl_keras.outputs import files
from tl_keras.outputs import report
from tl_keras.training import distribute


def write_metrics(
  metrics: dict[str, Any],
  path: str,
  start: float,
  chief: bool = True,
  listed_settings: Sequence[str] = (),
) -> str | None:
  """Adds `wall_seconds` since `start`, writes the metrics file, and on the chief rewrites the
  folder's report.md (listing `listed_settings`, see `report.write_report`); returns the
  report's path (None elsewhere)."""
  metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
  files.write_json(path, metrics)
  return report.update_report(os.path.dirname(path), listed_settings) if chief else None


def say(message: str) -> None:
  """Prints a progress message at once (the stages' `log`), control characters escaped."""
  print(sinks.terminal_lines(message), flush=True)


def print_summary(
  stage: str,
  metrics: dict[str, Any],
  artifacts: dict[str, str],
  strategy: tf.distribute.Strategy | None = None,
) -> None:
  """Prints a short end-of-stage summary: key metrics and where the files went.

  Prints nothing on the non-chief workers of a multi-worker `strategy`.
  """
  if strategy is not None and not distribute.is_chief(strategy):
    print(
      f"{stage} done on this worker: weights sha256 {metrics.get('weights_sha256')}", flush=True
    )
    return
  lines = [f"== {stage} done in {metrics['wall_seconds']:.1f} s =="]
  accuracy = metrics.get("test_accuracy")
  if accuracy is not None:
    lines.append(f"  test accuracy   {accuracy:.2%} on {metrics['num_test']} images")
  if "train_seconds" in metrics:
    lines.append(_training_line(metrics))
  if metrics.get("linear_probe_accuracy") is not None:
    lines.append(
      f"  transferability linear probe {metrics['linear_probe_accuracy']:.2%}, "
      f"LogME {metrics['logme']:.3f} (source features on the target's "
      f"{metrics['num_train']} training images)"
    )
  if metrics.get("adapt"):
    lines.append(_adaptation_line(metrics))
  if "transfer_gain" in metrics:
    lines.append(
      f"  from scratch    {metrics['scratch_test_accuracy']:.2%}: transfer gain "
      f"{metrics['transfer_gain'] * 100:+.2f} points"
    )
  if "member_test_accuracy" in metrics:
    lines.append(
      f"  members         {len(metrics['member_test_accuracy'])} models, test accuracy "
      f"{metrics['worst_member_test_accuracy']:.2%} to {metrics['best_member_test_accuracy']:.2%}"
      f"; fused by {metrics['method']}: {metrics['fusion_gain'] * 100:+.2f} points over the best"
    )
  if "images_per_second" in metrics:
    lines.append(
      f"  inference       {metrics['images_per_second']:.0f} images/s, mean confidence "
      f"{metrics['mean_confidence']:.2%}"
    )
  lines.append(f"  classes         {', '.join(metrics['classes'])}")
  for name, path in artifacts.items():
    lines.append(f"  {name:<15} {path}")
  print(sinks.terminal_lines("\n".join(lines)), flush=True)  # paths and names escaped


def _training_line(metrics: dict[str, Any]) -> str:
  """The summary's line on training: epochs, steps, images, time and replicas."""
  epochs = f"{metrics['epochs']} epoch{'' if metrics['epochs'] == 1 else 's'}"
  if metrics.get("steps_per_epoch"):
    epochs += f" of {metrics['steps_per_epoch']} steps"
  if metrics.get("resumed_from_epoch"):
    epochs += f" (resumed after epoch {metrics['resumed_from_epoch']})"
  images = f"{metrics['num_train']} images"
  if not metrics["num_train"] and metrics.get("num_source"):
    images = f"{metrics['num_source']:,} source images (no target labels)"
  return (
    f"  training        {epochs} on {images}, "
    f"{metrics['train_seconds']:.1f} s ({metrics['strategy']}, "
    f"{metrics['num_replicas']} replica(s))"
  )


def _adaptation_line(metrics: dict[str, Any]) -> str:
  """The summary's line on adaptation: the method and its settings, the pseudo-label rate."""
  adapt = metrics["adapt"]
  rates = metrics["history"].get("pseudo_label_rate") or [0.0]
  before = metrics.get("source_only_accuracy")
  return (
    f"  adaptation      {adapt['method']} on {metrics['num_unlabeled']:,} unlabelled images "
    f"(threshold {adapt['confidence_threshold']:g}, {adapt['unlabeled_ratio']} per labelled"
    + "".join(
      f", {flag.replace('_', ' ')} {adapt[flag]:g}"
      for flag in methods.ADAPTATION[adapt["method"]].flags
    )
    + (", AdaBN" if adapt["adabn"] else "")
    + f"): pseudo-labels for {rates[-1]:.0%} of them in the last epoch"
    + (f"; source model before training {before:.2%}" if before is not None else "")
  )
