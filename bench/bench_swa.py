#!/usr/bin/env python3
"""Stochastic weight averaging on the few-label defaults: is --average_weights_from_epoch=N at
least as good as without it, on every target?

For each target (10 labelled images per class) and seed, one source is finetuned with the
few-label defaults, and again with `--average_weights_from_epoch=N` for each N given; same
labelled images, same training seed, tested on the whole target test set, in one process.
Results merge into --out, so it runs in pieces.

  python bench/bench_swa.py --source=/tmp/tl_zoo/d04/source_model.h5 --targets mnist --seeds 1 2
"""

import json
import os
import statistics

from bench_zoo import TARGETS  # bench/: this folder is on sys.path when run as a script
from bench_zoo import target_spec
from common import parser_with_data_dir

HERE = os.path.dirname(os.path.abspath(__file__))
PER_CLASS = 10


def summarise(runs):
  summary = {}
  for target, by_seed in runs.items():
    variants = sorted(set.intersection(*(set(v) for v in by_seed.values())))
    summary[target] = {"seeds": sorted(int(s) for s in by_seed)}
    for variant in variants:
      accuracies = [by_seed[s][variant]["test_accuracy"] for s in by_seed]
      summary[target][variant] = round(statistics.fmean(accuracies), 4)
    for variant in variants:
      if variant != "off":
        summary[target][f"{variant}_minus_off_per_seed"] = [
          round(by_seed[s][variant]["test_accuracy"] - by_seed[s]["off"]["test_accuracy"], 4)
          for s in sorted(by_seed)
        ]
  return summary


def main():
  parser = parser_with_data_dir(__doc__.split("\n\n")[0])
  parser.add_argument("--source", required=True)
  parser.add_argument("--work_dir", default="/tmp/tl_zoo")
  parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
  parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--from_epochs", type=int, nargs="+", default=[6])
  parser.add_argument("--skip_off", action="store_true", help="reuse the runs without it")
  parser.add_argument("--out", default=os.path.join(HERE, "results", "swa.json"))
  args = parser.parse_args()
  report = json.load(open(args.out)) if os.path.exists(args.out) else {"runs": {}}
  import inprocess

  inprocess.import_tf()
  variants = ([] if args.skip_off else [("off", {})]) + [
    (f"from_{n}", {"average_weights_from_epoch": n}) for n in args.from_epochs
  ]
  for target in args.targets:
    spec = target_spec(target, args.data_dir, args.work_dir)
    for seed in args.seeds:
      for name, flags in variants:
        load = inprocess.load()
        out = os.path.join(args.work_dir, "runs", f"swa_{target}_{seed}_{name}")
        result = inprocess.finetune(args.source, spec, args.data_dir, PER_CLASS, seed, out, flags)
        report["runs"].setdefault(target, {}).setdefault(str(seed), {})[name] = {
          "test_accuracy": result["test_accuracy"],
          "seconds": result["seconds"],
          "load": load,
          "phases": [
            {k: p.get(k) for k in ("name", "epochs_run", "averaged_epochs")}
            for p in result["phases"]
          ],
        }
        print(f"{target} seed {seed} {name}: {result['test_accuracy']:.2%} (load {load})")
        report["source"] = args.source
        report["summary"] = summarise(report["runs"])
        with open(args.out, "w") as f:
          json.dump(report, f, indent=2)
  print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
  main()
