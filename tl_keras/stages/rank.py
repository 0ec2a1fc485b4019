"""Rank: score candidate source models for the target before finetuning any of them.

A thin stage over `tl_keras.ranking.rank.rank_sources`: each candidate is read once (safely,
as the other stages read a --model), the target is fitted once per distinct input shape and
framing, and every score is computed on the same seeded subsample. Writes rank_metrics.json
(strict JSON: a non-finite score is null, with its reason) and rank_scores.png, prints the
table best first and one line naming the pick.
"""

import math
import os
import time
from typing import Any

from tl_keras.config import settings
from tl_keras.data import targets
from tl_keras.data.labeled import LabeledData
from tl_keras.errors import UserError
from tl_keras.outputs import files
from tl_keras.outputs import summary
from tl_keras.ranking import rank
from tl_keras.stages import base

RANK_METRICS = "rank_metrics.json"
RANK_PLOT = "rank_scores.png"


def run(config: settings.RankConfig, datasets_override: LabeledData | None = None) -> dict:
  """Ranks the models of `config.models` for `config.target` (or `datasets_override`); writes
  rank_metrics.json and rank_scores.png into the output folder. Returns the metrics."""
  start = base.begin(config)
  names = config.model_list()
  missing = [name for name in names if _is_missing_file(name)]
  if missing:
    raise UserError(f"model not found: {', '.join(missing)}; check --models")
  output_dir = files.prepare_output_dir(config.paths.output_dir)
  entries, groups = _load_candidates(config, names)
  counts = _rank_groups(config, names, entries, groups, datasets_override)
  ranked = sorted(entries, key=lambda entry: _order(entry, config.by, names))
  for entry in ranked:
    _finite_only(entry)
  best = ranked[0]
  metrics = {
    "by": config.by,
    "pick": best["model"] if best[config.by] is not None else None,
    **counts,
    "max_images": config.max_images,
    "seed": config.seed,
    "candidates": ranked,
  }
  from tl_keras.outputs import plots  # matplotlib

  plot_path = plots.plot_scores(
    [entry["model"] for entry in ranked],
    [entry[config.by] for entry in ranked],
    os.path.join(output_dir, RANK_PLOT),
    f"Candidate sources by {config.by}",
  )
  metrics["plots"] = [RANK_PLOT]
  metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
  metrics_path = os.path.join(output_dir, RANK_METRICS)
  files.write_json(metrics_path, metrics)
  _print_table(metrics, {"metrics": metrics_path, "plot": plot_path})
  return metrics


def _rank_groups(config, names, entries, groups, datasets_override) -> dict[str, Any]:
  """Scores each group of candidates on the target fitted to their input; puts each entry in
  `entries` at its place in --models. Returns num_train, num_test and the target's name."""
  counts = {"num_train": 0, "num_test": 0, "target": config.target.target}
  for (shape, _), members in groups.items():
    data = datasets_override or targets.prepare_target(
      config.target, shape, config.paths.data_dir, config.seed, members[0][1].framing
    )
    for index, source in members:
      source.model._name = f"candidate_{index}"  # rank_sources names entries by the model
    ranked = rank.rank_sources(
      [source.model for _, source in members],
      data,
      config.by,
      config.max_images,
      config.seed,
      config.features_layer,
    )
    counts = {"num_train": ranked["num_train"], "num_test": ranked["num_test"]}
    counts["target"] = data.description
    for entry in ranked["candidates"]:
      index = int(entry["model"].rsplit("_", 1)[1])
      entry["model"] = names[index]
      entry["seconds"]["load"] = entries[index]["seconds"]["load"]
      entries[index] = entry
  return counts


def _is_missing_file(name: str) -> bool:
  """A name that can only be a local file or folder (see `loading.load_model`) and is not."""
  if name.startswith(settings.KERAS_MODEL_PREFIX):
    return False
  return (name.endswith((".h5", ".keras")) or "://" not in name) and not os.path.exists(name)


def _load_candidates(config: settings.RankConfig, names: list[str]):
  """(an entry per name, without scores where it could not be read; {(input shape, framing):
  [(index, Source)]} of those read)."""
  entries, groups = [], {}
  for index, name in enumerate(names):
    entry = {"model": name, **dict.fromkeys(rank.SCORES), "seconds": {}, "reasons": {}}
    began = time.perf_counter()
    try:
      source = base.load_source(name, config.allow_unsafe_deserialization, config.max_model_mb)
    except UserError as error:
      entry["reasons"] = dict.fromkeys(rank.SCORES, str(error))
    else:
      framing = repr(source.framing)
      groups.setdefault((source.input_shape, framing), []).append((index, source))
    entry["seconds"]["load"] = time.perf_counter() - began
    entries.append(entry)
  if not groups:
    raise UserError(f"no candidate of --models could be read: {entries[0]['reasons']['logme']}")
  return entries, groups


def _order(entry: dict[str, Any], by: str, names: list[str]) -> tuple[bool, float, int]:
  """Best first; candidates without the score last, in the order --models gives them."""
  value = entry[by]
  missing = value is None or not math.isfinite(value)
  return missing, 0.0 if missing else -value, names.index(entry["model"])


def _finite_only(entry: dict[str, Any]) -> None:
  """Replaces a non-finite score (LEEP's -inf where a class gets no probability) by None with
  its reason, and rounds the times: the JSON stays strict."""
  for score in rank.SCORES:
    value = entry[score]
    if value is not None and not math.isfinite(value):
      entry[score] = None
      entry["reasons"][score] = f"{score} is {value} on this target (not a finite number)"
  entry["seconds"] = {key: round(value, 4) for key, value in entry["seconds"].items()}


def _print_table(metrics: dict[str, Any], paths: dict[str, str]) -> None:
  """The candidates best first, the `by` score's column first; then the pick and the files."""
  by = metrics["by"]
  columns = [by, *(score for score in rank.SCORES if score != by)]
  width = max(len("model"), *(len(entry["model"]) for entry in metrics["candidates"]))
  width = min(width, 60)
  lines = [
    f"== rank: {len(metrics['candidates'])} candidates on {metrics['num_train']} training and "
    f"{metrics['num_test']} test images of {metrics['target']} ==",
    f"  {'model':<{width}} " + " ".join(f"{column:>14}" for column in columns),
  ]
  for entry in metrics["candidates"]:
    cells = ["n/a" if entry[c] is None else f"{entry[c]:.4f}" for c in columns]
    lines.append(f"  {entry['model'][-width:]:<{width}} " + " ".join(f"{c:>14}" for c in cells))
  pick = metrics["pick"]
  lines.append(
    f"pick: {pick} (highest {by})" if pick else f"pick: none (no candidate has a {by} score)"
  )
  for name, path in paths.items():
    lines.append(f"  {name:<15} {path}")
  summary.say("\n".join(lines))
