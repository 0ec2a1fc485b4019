#!/usr/bin/env python3
"""Few-label transfer on full MNIST: does transfer from digits 0-4 help on digits 5-9?

Pretrains two sources on digits 0-4, the default CNN and a wider one (--conv_filters=32,64),
then for each recipe runs the transfer stage (linear probe, LogME) and finetune with
--compare_scratch on a seeded subset of N labelled images per target class, testing on all
4,861 test images of digits 5-9. Every run is a fresh process of the real scripts. Writes a
JSON report with the mean over seeds of each recipe and prints one line per run.

  python bench/bench_few_labels.py --data_dir=../shared/datasets
"""

import json
import os
import tempfile

from common import parser_with_data_dir
from common import read  # bench/common.py: this folder is on sys.path when run as a script
from common import run

HERE = os.path.dirname(os.path.abspath(__file__))

SOURCES = {"default": [], "wide": ["--conv_filters=32,64", "--epochs=8"]}
# The seeds of the first measurements; later recipes add two more, so no recipe is judged on
# seeds picked after seeing its results.
SEEDS = (42, 1, 2, 3, 7)
MORE_SEEDS = (11, 13)
# Last session's recipe: a random head on the penultimate features.
PLAIN = ["--batch_size=16", "--epochs=12", "--augment"]


def probe_head(optimizer, epochs):
  """Finetune flags: the head on the convolutional features, started from a linear probe
  (LP-FT)."""
  return [
    "--features_layer=features_flatten",
    "--head_init=probe",
    "--augment",
    f"--optimizer={optimizer}",
    "--batch_size=32",
    f"--epochs={epochs}",
  ]


# (name, source, labelled images per class, seeds, finetune flags); the seed also picks the
# labelled images.
RECIPES = [
  ("10/class, default source, plain head", "default", 10, SEEDS, PLAIN),
  ("10/class, wide source, probe head", "wide", 10, SEEDS + MORE_SEEDS, probe_head("adadelta", 16)),
  # Adam trains from scratch much faster than Adadelta on 50 images: the gain shrinks.
  ("10/class, wide source, probe head, Adam", "wide", 10, SEEDS, probe_head("adam", 16)),
  # Nearly four times the budget: how close training from scratch comes when given time.
  ("10/class, wide source, probe head, 60 epochs", "wide", 10, (42,), probe_head("adadelta", 60)),
  ("100/class, wide source, probe head", "wide", 100, (42, 1, 2), probe_head("adam", 30)),
]
MEANS = (
  "finetuned_test_accuracy",
  "scratch_test_accuracy",
  "transfer_gain",
  "linear_probe_accuracy",
)


def main():
  parser = parser_with_data_dir(__doc__.split("\n\n")[0])
  parser.add_argument("--output", default=os.path.join(HERE, "results", "few_labels.json"))
  args = parser.parse_args()
  report = {"sources": {}, "recipes": []}
  with tempfile.TemporaryDirectory() as work:
    for source, flags in SOURCES.items():
      folder = os.path.join(work, source)
      run("pretrain", f"--data_dir={args.data_dir}", f"--output_dir={folder}", *flags)
      report["sources"][source] = {
        "flags": flags,
        "test_accuracy": read(folder, "source_metrics.json")["test_accuracy"],
      }
      print(
        f"source {source} {' '.join(flags)}: "
        f"{report['sources'][source]['test_accuracy']:.2%} on digits 0-4",
        flush=True,
      )
    for index, (name, source, per_class, seeds, flags) in enumerate(RECIPES):
      runs = []
      for seed in seeds:
        out = os.path.join(work, f"recipe{index}_seed{seed}")
        common = [
          f"--model={os.path.join(work, source, 'source_model.h5')}",
          f"--data_dir={args.data_dir}",
          f"--output_dir={out}",
          f"--train_per_class={per_class}",
          f"--seed={seed}",
        ]
        features = [flag for flag in flags if flag.startswith("--features_layer")]
        run("transfer", *common, *features)
        run("finetune", *common, *flags, "--compare_scratch")
        probe, tuned = read(out, "transfer_metrics.json"), read(out, "finetune_metrics.json")
        runs.append(
          {
            "seed": seed,
            "num_test": tuned["num_test"],
            "linear_probe_accuracy": probe["linear_probe_accuracy"],
            "logme": probe["logme"],
            "finetuned_test_accuracy": tuned["test_accuracy"],
            "scratch_test_accuracy": tuned["scratch_test_accuracy"],
            "transfer_gain": tuned["transfer_gain"],
            "finetune_wall_seconds": tuned["wall_seconds"],
          }
        )
        result = runs[-1]
        print(
          f"{name}, seed {seed}: finetuned {result['finetuned_test_accuracy']:.2%}, "
          f"scratch {result['scratch_test_accuracy']:.2%} "
          f"(gain {result['transfer_gain'] * 100:+.1f} points), linear probe "
          f"{result['linear_probe_accuracy']:.2%}, LogME {result['logme']:.3f}",
          flush=True,
        )
      recipe = {
        "name": name,
        "source": source,
        "train_per_class": per_class,
        "flags": flags,
        "runs": runs,
      }
      for label, subset in (("mean", runs), ("mean_first_seeds", runs[: len(SEEDS)])):
        recipe[label] = {key: round(sum(r[key] for r in subset) / len(subset), 4) for key in MEANS}
      print(f"{name}: mean over {len(runs)} seed(s) {recipe['mean']}", flush=True)
      report["recipes"].append(recipe)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
