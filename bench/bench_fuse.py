#!/usr/bin/env python3
"""Model fusion with few labels: does fusing several finetuned models beat the best of them?

For each target (MNIST digits 5-9 from sources pretrained on digits 0-4; printed_digits from
sources pretrained on all ten digits), pretrains SOURCES sources that differ only in their
seed, then for each repeat seed finetunes one member on each source with the same N labelled
images per class, of which --validation_split is held out (the same seeded split tl-fuse
uses, so no member trains on the images the fusion is fitted on), and fuses the members by
each method. The references, in the same run: the members themselves, and one model finetuned
on all N labelled images per class (no hold-out) from the first source. Every run is a fresh
process of the real scripts. Writes a JSON report and prints one line per repeat.

  python bench/bench_fuse.py --data_dir=../shared/datasets
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)

METHODS = ("average", "weighted", "stacking")
# The README's few-label recipe (probe head on the convolutional features, Adam).
MEMBER_FLAGS = [
  "--features_layer=features_flatten",
  "--head_init=probe",
  "--augment",
  "--optimizer=adam",
  "--batch_size=32",
  "--epochs=16",
]


def run(script, *flags):
  command = [sys.executable, f"scripts/{script}.py", *flags]
  completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
  if completed.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")


def read(folder, name):
  with open(os.path.join(folder, name)) as f:
    return json.load(f)


def mean(values):
  return round(statistics.fmean(values), 4)


def bench_target(name, target, source_classes, args, work):
  """Pretrains the sources, then per repeat finetunes the members and fuses them."""
  sources = []
  for source_seed in range(1, args.sources + 1):
    folder = os.path.join(work, f"{name}_source{source_seed}")
    run(
      "pretrain",
      f"--data_dir={args.data_dir}",
      f"--output_dir={folder}",
      f"--source_classes={source_classes}",
      f"--epochs={args.pretrain_epochs}",
      f"--seed={source_seed}",
    )
    sources.append(os.path.join(folder, "source_model.h5"))
  print(f"{name}: {len(sources)} sources pretrained on digits {source_classes}", flush=True)
  repeats = []
  for seed in args.seeds:
    common = [
      f"--data_dir={args.data_dir}",
      f"--target={target}",
      f"--train_per_class={args.per_class}",
      f"--seed={seed}",
    ]
    split = f"--validation_split={args.validation_split}"
    members, finetune_accuracy, member_seconds = [], [], []
    for index, source in enumerate(sources, start=1):
      out = os.path.join(work, f"{name}_seed{seed}_member{index}")
      run("finetune", *common, split, f"--model={source}", f"--output_dir={out}", *MEMBER_FLAGS)
      metrics = read(out, "finetune_metrics.json")
      members.append(os.path.join(out, "target_model.h5"))
      finetune_accuracy.append(metrics["test_accuracy"])
      member_seconds.append(metrics["wall_seconds"])
    out = os.path.join(work, f"{name}_seed{seed}_all_labels")
    run("finetune", *common, f"--model={sources[0]}", f"--output_dir={out}", *MEMBER_FLAGS)
    single = read(out, "finetune_metrics.json")["test_accuracy"]
    fused = {}
    for method in METHODS:
      out = os.path.join(work, f"{name}_seed{seed}_{method}")
      run(
        "fuse", *common, split, f"--models={','.join(members)}", f"--method={method}",
        f"--output_dir={out}",
      )  # fmt: skip
      metrics = read(out, "fuse_metrics.json")
      # The members scored as the fused model is (finetune's Keras evaluate differs by rounding).
      member_accuracy = metrics["member_test_accuracy"]
      fused[method] = {
        "test_accuracy": metrics["test_accuracy"],
        "gain_over_best_member": metrics["test_accuracy"] - max(member_accuracy),
        "gain_over_mean_member": metrics["test_accuracy"] - statistics.fmean(member_accuracy),
        "weights": metrics["weights"] if method != "stacking" else None,
        "wall_seconds": metrics["wall_seconds"],
        "num_validation": metrics["num_validation"],
      }
    repeat = {
      "seed": seed,
      "num_test": metrics["num_test"],
      "member_test_accuracy": member_accuracy,
      "member_finetune_test_accuracy": finetune_accuracy,
      "member_finetune_seconds": member_seconds,
      "single_model_all_labels_test_accuracy": single,
      "fused": fused,
    }
    repeats.append(repeat)
    print(
      f"{name}, seed {seed}: members {min(member_accuracy):.2%}-{max(member_accuracy):.2%} "
      f"(mean {statistics.fmean(member_accuracy):.2%}), one model on all labels {single:.2%}; "
      + ", ".join(f"{method} {fused[method]['test_accuracy']:.2%}" for method in METHODS),
      flush=True,
    )
  summary = {
    "mean_member_test_accuracy": mean(statistics.fmean(r["member_test_accuracy"]) for r in repeats),
    "best_member_test_accuracy": mean(max(r["member_test_accuracy"]) for r in repeats),
    "worst_member_test_accuracy": mean(min(r["member_test_accuracy"]) for r in repeats),
    "single_model_all_labels_test_accuracy": mean(
      r["single_model_all_labels_test_accuracy"] for r in repeats
    ),
  }
  for method in METHODS:
    summary[method] = {
      key: mean(r["fused"][method][key] for r in repeats)
      for key in ("test_accuracy", "gain_over_best_member", "gain_over_mean_member")
    }
    summary[method]["never_below_worst_member"] = all(
      r["fused"][method]["test_accuracy"] >= min(r["member_test_accuracy"]) for r in repeats
    )
  print(f"{name}: mean over {len(repeats)} repeats {json.dumps(summary)}", flush=True)
  return {"target": target, "source_classes": source_classes, "repeats": repeats, "mean": summary}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--data_dir",
    default=os.environ.get(
      "TL_KERAS_DATA_DIR", os.path.join(REPO_ROOT, "..", "shared", "datasets")
    ),
  )
  parser.add_argument("--sources", type=int, default=5, help="members per fusion")
  parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
  parser.add_argument("--per_class", type=int, default=10)
  parser.add_argument("--validation_split", type=float, default=0.3)
  parser.add_argument("--pretrain_epochs", type=int, default=2)
  parser.add_argument("--targets", nargs="+", default=["mnist", "printed"])
  parser.add_argument("--output", default=os.path.join(HERE, "results", "fuse.json"))
  args = parser.parse_args()
  printed = os.path.join(os.path.abspath(args.data_dir), "printed_digits.npz")
  benches = {
    "mnist": ("mnist:5-9", "0-4"),
    "printed": (f"npz:{printed}", "0-9"),
  }
  report = {
    "settings": {
      key: value for key, value in vars(args).items() if key not in ("data_dir", "output")
    },
    "member_flags": MEMBER_FLAGS,
  }
  with tempfile.TemporaryDirectory() as work:
    for name in args.targets:
      report[name] = bench_target(name, *benches[name], args, work)
      os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
      with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
