#!/usr/bin/env python3
"""Few-label transfer on full MNIST: does transfer from digits 0-4 help on digits 5-9?

Pretrains the default source model (digits 0-4), then for each recipe runs the transfer stage
(linear probe, LogME) and finetune with --compare_scratch on a seeded subset of N labelled
images per target class, testing on all 4,861 test images of digits 5-9. Every run is a fresh
process of the real scripts. Writes a JSON report and prints one line per run.

  python bench/bench_few_labels.py --data_dir=../shared/datasets
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)

# (labelled images per class, seed, finetune flags); the seed picks the labelled images too.
FEW = ["--batch_size=16", "--epochs=12", "--augment"]
RECIPES = [(10, seed, FEW) for seed in (42, 1, 2, 3, 7)] + [
    # Five times the budget: how close training from scratch comes when given time.
    (10, 42, ["--batch_size=16", "--epochs=60", "--augment"]),
    (100, 42, ["--batch_size=32", "--epochs=15", "--augment"]),
    (100, 1, ["--batch_size=32", "--epochs=15", "--augment"]),
]


def run(script, *flags):
  command = [sys.executable, f"scripts/{script}.py", *flags]
  completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
  if completed.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")


def read(folder, name):
  with open(os.path.join(folder, name)) as f:
    return json.load(f)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=os.environ.get(
      "TL_KERAS_DATA_DIR", os.path.join(REPO_ROOT, "..", "shared", "datasets")))
  parser.add_argument("--output", default=os.path.join(HERE, "results", "few_labels.json"))
  args = parser.parse_args()
  results = []
  with tempfile.TemporaryDirectory() as work:
    run("pretrain", f"--data_dir={args.data_dir}", f"--output_dir={work}")
    source = read(work, "source_metrics.json")
    model = os.path.join(work, "source_model.h5")
    for index, (per_class, seed, flags) in enumerate(RECIPES):
      out = os.path.join(work, f"run{index}")
      common = [f"--model={model}", f"--data_dir={args.data_dir}", f"--output_dir={out}",
                f"--train_per_class={per_class}", f"--seed={seed}"]
      run("transfer", *common)
      run("finetune", *common, *flags, "--compare_scratch")
      probe, tuned = read(out, "transfer_metrics.json"), read(out, "finetune_metrics.json")
      result = {"train_per_class": per_class, "seed": seed, "flags": flags,
                "num_test": tuned["num_test"],
                "linear_probe_accuracy": probe["linear_probe_accuracy"], "logme": probe["logme"],
                "finetuned_test_accuracy": tuned["test_accuracy"],
                "scratch_test_accuracy": tuned["scratch_test_accuracy"],
                "transfer_gain": tuned["transfer_gain"],
                "finetune_wall_seconds": tuned["wall_seconds"]}
      results.append(result)
      print(f"{per_class}/class seed {seed} {' '.join(flags)}: finetuned "
            f"{result['finetuned_test_accuracy']:.2%}, scratch {result['scratch_test_accuracy']:.2%}"
            f" (gain {result['transfer_gain'] * 100:+.1f} points), linear probe "
            f"{result['linear_probe_accuracy']:.2%}, LogME {result['logme']:.3f}", flush=True)
  few = [r for r in results if r["train_per_class"] == 10 and r["flags"] == FEW]
  summary = {key: round(sum(r[key] for r in few) / len(few), 4)
             for key in ("finetuned_test_accuracy", "scratch_test_accuracy", "transfer_gain")}
  print(f"10/class, {len(few)} seeds, {' '.join(FEW)}: mean {summary}")
  report = {"source_test_accuracy": source["test_accuracy"], "runs": results,
            "ten_per_class_mean": summary}
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
