#!/usr/bin/env python3
"""Model fusion with few labels: does fusing several finetuned models beat the best of them?

For each target (MNIST digits 5-9 from sources pretrained on digits 0-4; printed_digits from
sources pretrained on all ten digits), pretrains SOURCES sources that differ only in their
seed, then for each repeat seed finetunes one member on each source with the same N labelled
images per class and fuses them. Two regimes: held_out, where --validation_split of those
images is held out from the members (the same seeded split tl-fuse uses, so no member trains
on the images the fusion is fitted on) and every method is fitted on it; all_labels, where
the members train on all N images per class and are fused by average, which fits nothing.
The references, in the same run: the members themselves, and one model finetuned on all N
labelled images per class from the first source. Every run is a fresh process of the real
scripts. Writes a JSON report and prints one line per repeat.

  python bench/bench_fuse.py --data_dir=../shared/datasets
"""

import json
import os
import statistics
import tempfile

from common import parser_with_data_dir
from common import read  # bench/common.py: this folder is on sys.path when run as a script
from common import run

HERE = os.path.dirname(os.path.abspath(__file__))

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


def mean(values):
  return round(statistics.fmean(values), 4)


# held_out: members train on the labelled images minus --validation_split, which the fusion is
# fitted on (all methods). all_labels: members train on every labelled image, fused by average
# (which fits nothing); the first member is then the single-model reference itself.
REGIMES = {"held_out": METHODS, "all_labels": ("average",)}


def pretrain_sources(name, source_classes, args, work):
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
  return sources


def bench_repeat(name, target, regime, seed, sources, args, work):
  """Finetunes one member per source on the same labelled images and fuses them."""
  common = [
    f"--data_dir={args.data_dir}",
    f"--target={target}",
    f"--train_per_class={args.per_class}",
    f"--seed={seed}",
  ]
  split = [f"--validation_split={args.validation_split}"] if regime == "held_out" else []
  members, finetune_accuracy, member_seconds = [], [], []
  for index, source in enumerate(sources, start=1):
    out = os.path.join(work, f"{name}_{regime}_seed{seed}_member{index}")
    run("finetune", *common, *split, f"--model={source}", f"--output_dir={out}", *MEMBER_FLAGS)
    metrics = read(out, "finetune_metrics.json")
    members.append(os.path.join(out, "target_model.h5"))
    finetune_accuracy.append(metrics["test_accuracy"])
    member_seconds.append(metrics["wall_seconds"])
  if regime == "held_out":
    out = os.path.join(work, f"{name}_{regime}_seed{seed}_single")
    run("finetune", *common, f"--model={sources[0]}", f"--output_dir={out}", *MEMBER_FLAGS)
    single = read(out, "finetune_metrics.json")["test_accuracy"]
  else:
    single = finetune_accuracy[0]
  fused = {}
  for method in REGIMES[regime]:
    out = os.path.join(work, f"{name}_{regime}_seed{seed}_{method}")
    run(
      "fuse", *common, *split, f"--models={','.join(members)}", f"--method={method}",
      f"--output_dir={out}",
    )  # fmt: skip
    metrics = read(out, "fuse_metrics.json")
    # The members scored as the fused model is (finetune's Keras evaluate differs by rounding).
    member_accuracy = metrics["member_test_accuracy"]
    fused[method] = {
      "test_accuracy": metrics["test_accuracy"],
      "gain_over_best_member": metrics["test_accuracy"] - max(member_accuracy),
      "gain_over_mean_member": metrics["test_accuracy"] - statistics.fmean(member_accuracy),
      "gain_over_single_model_all_labels": metrics["test_accuracy"] - single,
      "weights": metrics["weights"] if method != "stacking" else None,
      "wall_seconds": metrics["wall_seconds"],
      "num_validation": metrics["num_validation"],
    }
  print(
    f"{name} {regime}, seed {seed}: members {min(member_accuracy):.2%}-"
    f"{max(member_accuracy):.2%} (mean {statistics.fmean(member_accuracy):.2%}), one model on "
    f"all labels {single:.2%}; "
    + ", ".join(f"{method} {fused[method]['test_accuracy']:.2%}" for method in fused),
    flush=True,
  )
  return {
    "seed": seed,
    "num_test": metrics["num_test"],
    "member_test_accuracy": member_accuracy,
    "member_finetune_test_accuracy": finetune_accuracy,
    "member_finetune_seconds": member_seconds,
    "single_model_all_labels_test_accuracy": single,
    "fused": fused,
  }


def summarise(repeats, methods):
  summary = {
    "mean_member_test_accuracy": mean(statistics.fmean(r["member_test_accuracy"]) for r in repeats),
    "best_member_test_accuracy": mean(max(r["member_test_accuracy"]) for r in repeats),
    "worst_member_test_accuracy": mean(min(r["member_test_accuracy"]) for r in repeats),
    "single_model_all_labels_test_accuracy": mean(
      r["single_model_all_labels_test_accuracy"] for r in repeats
    ),
  }
  keys = ("test_accuracy", "gain_over_best_member", "gain_over_mean_member")
  for method in methods:
    summary[method] = {
      key: mean(r["fused"][method][key] for r in repeats)
      for key in (*keys, "gain_over_single_model_all_labels")
    }
    summary[method]["never_below_worst_member"] = all(
      r["fused"][method]["test_accuracy"] >= min(r["member_test_accuracy"]) for r in repeats
    )
  return summary


def bench_target(name, target, source_classes, args, work):
  """Pretrains the sources, then per regime and repeat finetunes the members and fuses them."""
  sources = pretrain_sources(name, source_classes, args, work)
  result = {"target": target, "source_classes": source_classes}
  for regime in args.regimes:
    repeats = [bench_repeat(name, target, regime, seed, sources, args, work) for seed in args.seeds]
    summary = summarise(repeats, REGIMES[regime])
    print(f"{name} {regime}: mean over {len(repeats)} repeats {json.dumps(summary)}", flush=True)
    result[regime] = {"repeats": repeats, "mean": summary}
  return result


def main():
  parser = parser_with_data_dir(__doc__.split("\n\n")[0])
  parser.add_argument("--sources", type=int, default=5, help="members per fusion")
  parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
  parser.add_argument("--per_class", type=int, default=10)
  parser.add_argument("--validation_split", type=float, default=0.3)
  parser.add_argument("--pretrain_epochs", type=int, default=2)
  parser.add_argument("--targets", nargs="+", default=["mnist", "printed"])
  parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
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
