#!/usr/bin/env python3
"""Few labels and other domains: the label-count defaults, self-training and alignment.

For each seed, pretrains two sources with the default flags (digits 0-4 for the MNIST 5-9
runs, all ten digits for the others; the seed is the pretrain seed too), then runs
tl-finetune as a fresh process of the real script for each run below and reads its
finetune_metrics.json: test accuracy on the target's whole test set, the source model's
accuracy before training (classes matched by name), the scratch model's (with
--compare_scratch), the process's wall time, and the last epoch's pseudo-label rate and
accuracy. Writes the mean, minimum and maximum over seeds per run to a JSON report.

The printed_digits target is in ../shared/datasets; the held-out domains (bench/domains.py)
are built from MNIST's test digits and scikit-learn's optdigits, which no setting was tuned on.

  python bench/bench_adapt.py --data_dir=../shared/datasets
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import domains
from common import read  # bench/common.py: this folder is on sys.path when run as a script
from common import run

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = (42, 1, 2, 3, 7)
PRINTED = "printed_digits.npz"


def runs(data_dir: str, domain_dir: str) -> list[tuple[str, str, str, list[str]]]:
  """(name, source, target, finetune flags) of every run."""
  printed = f"npz:{os.path.join(data_dir, PRINTED)}"
  held_out = [(name, f"npz:{os.path.join(domain_dir, name + '.npz')}") for name in domains.DOMAINS]
  return [
    (
      "mnist5-9 10/class + unlabeled rest",
      "0-4",
      "mnist:5-9",
      ["--train_per_class=10", "--unlabeled=rest"],
    ),
    ("mnist5-9 10/class", "0-4", "mnist:5-9", ["--train_per_class=10", "--compare_scratch"]),
    ("mnist5-9 100/class", "0-4", "mnist:5-9", ["--train_per_class=100", "--compare_scratch"]),
    (
      "printed 0 labels + unlabeled rest",
      "all",
      printed,
      ["--train_per_class=0", "--unlabeled=rest"],
    ),
    (
      "printed 0 labels + unlabeled rest, --target_fit=resize",
      "all",
      printed,
      ["--train_per_class=0", "--unlabeled=rest", "--target_fit=resize"],
    ),
    (
      "printed 0 labels + unlabeled rest, --adapt=align",
      "all",
      printed,
      ["--train_per_class=0", "--unlabeled=rest", "--adapt=align"],
    ),
    (
      "printed 10/class + unlabeled rest",
      "all",
      printed,
      ["--train_per_class=10", "--unlabeled=rest"],
    ),
    *[
      (
        f"{name} 0 labels + unlabeled rest",
        "all",
        spec,
        ["--train_per_class=0", "--unlabeled=rest"],
      )
      for name, spec in held_out
    ],
  ]


def finetune(
  source: str, target: str, flags: list[str], seed: int, data_dir: str, out: str
) -> dict:
  start = time.perf_counter()
  run(
    "finetune",
    f"--model={source}",
    f"--target={target}",
    f"--seed={seed}",
    f"--data_dir={data_dir}",
    f"--output_dir={out}",
    "--noresume",
    *flags,
  )
  metrics = read(out, "finetune_metrics.json")
  history = metrics["history"]
  return {
    "test_accuracy": metrics["test_accuracy"],
    "source_only_accuracy": metrics.get("source_only_accuracy"),
    "scratch_test_accuracy": metrics.get("scratch_test_accuracy"),
    "process_seconds": round(time.perf_counter() - start, 1),
    "train_seconds": metrics["train_seconds"],
    "pseudo_label_rate": history.get("pseudo_label_rate", [None])[-1],
    "pseudo_label_accuracy": history.get("pseudo_label_accuracy", [None])[-1],
    "defaults": metrics.get("defaults"),
    "target_fit": metrics.get("target_fit"),
  }


def summarise(values: list[float | None]) -> dict | None:
  values = [v for v in values if v is not None]
  if not values:
    return None
  return {
    "mean": round(statistics.fmean(values), 4),
    "min": round(min(values), 4),
    "max": round(max(values), 4),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--data_dir", default=os.environ.get("TL_KERAS_DATA_DIR", "../shared/datasets")
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
  parser.add_argument("--only", nargs="*", help="run names containing any of these")
  parser.add_argument("--output", default=os.path.join(HERE, "results", "adapt.json"))
  args = parser.parse_args()
  data_dir = os.path.abspath(args.data_dir)
  results: dict[str, list[dict]] = {}
  with tempfile.TemporaryDirectory() as work:
    domain_dir = os.path.join(work, "domains")
    for name in domains.DOMAINS:
      try:
        domains.build(name, data_dir, domain_dir)
      except ImportError as e:  # optdigits needs scikit-learn
        print(f"skipping domain {name}: {e}", file=sys.stderr)
    chosen = [
      r
      for r in runs(data_dir, domain_dir)
      if (not args.only or any(o in r[0] for o in args.only))
      and (not r[2].startswith("npz:") or os.path.exists(r[2][4:]))
    ]
    for seed in args.seeds:
      sources = {}
      for classes in sorted({source for _, source, _, _ in chosen}):
        folder = os.path.join(work, f"source_{classes}_{seed}")
        run(
          "pretrain",
          f"--source_classes={classes}",
          f"--seed={seed}",
          f"--data_dir={data_dir}",
          f"--output_dir={folder}",
          "--noresume",
        )
        sources[classes] = os.path.join(folder, "source_model.h5")
      for index, (name, source, target, flags) in enumerate(chosen):
        out = os.path.join(work, f"run_{index}_{seed}")
        result = {"seed": seed, **finetune(sources[source], target, flags, seed, data_dir, out)}
        results.setdefault(name, []).append(result)
        print(json.dumps({"run": name, **result}), flush=True)
  report = {
    "seeds": args.seeds,
    "runs": {
      name: {
        key: summarise([r[key] for r in rows])
        for key in (
          "test_accuracy",
          "source_only_accuracy",
          "scratch_test_accuracy",
          "process_seconds",
          "pseudo_label_rate",
          "pseudo_label_accuracy",
        )
      }
      | {"each": rows}
      for name, rows in results.items()
    },
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  for name, summary in report["runs"].items():
    accuracy = summary["test_accuracy"]
    before = summary["source_only_accuracy"]
    scratch = summary["scratch_test_accuracy"]
    print(
      f"{name}: {accuracy['mean']:.2%} ({accuracy['min']:.2%}-{accuracy['max']:.2%})"
      + (f", before training {before['mean']:.2%}" if before else "")
      + (f", scratch {scratch['mean']:.2%}" if scratch else "")
      + f", {summary['process_seconds']['max']:.0f} s at most",
      file=sys.stderr,
    )


if __name__ == "__main__":
  main()
