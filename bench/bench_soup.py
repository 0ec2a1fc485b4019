#!/usr/bin/env python3
"""Model soups with few labels: does averaging the weights of 5 members beat the best member?

As Wortsman et al. (ICML 2022): 5 members finetuned from one pretrained source on the same
labelled images (MNIST 5-9, 10 per class, drawn by the repeat's seed), each with other
hyper-parameters (learning rate, training seed, augmentation, label smoothing), starting from
the few-label defaults. The uniform soup averages all 5; the greedy soup adds members in order
of held-out accuracy, each only if the held-out accuracy does not drop (`fusion.soup`). Two
regimes: all_labels, members train on all 10 per class and greedy judges on those same images
(no image is held out); held_out, 3 of the 10 per class are held out from the members and
greedy judges on them. Everything is tested on all 4,861 test images of digits 5-9, in one
process. Writes JSON and prints one line per repeat.

  python bench/bench_soup.py --source=/tmp/tl_zoo/d04/source_model.h5 --seeds 1 2 3
"""

import json
import os
import statistics
import time

import numpy as np
from common import parser_with_data_dir  # bench/: on sys.path when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = "mnist:5-9"
PER_CLASS = 10
# Each member's flags over the few-label defaults, and its training-seed offset.
MEMBER_SETS = {
  "varied": [
    {},
    {"learning_rate": 5e-4},
    {"learning_rate": 2e-3},
    {"augment": False},
    {"label_smoothing": 0.1},
  ],
  # every member keeps the defaults' augmentation (without it a member lost 5-7 points)
  "augmented": [
    {},
    {"learning_rate": 5e-4},
    {"learning_rate": 2e-3},
    {"learning_rate": 7e-4, "label_smoothing": 0.1},
    {"label_smoothing": 0.1},
  ],
}
REGIMES = ("all_labels", "held_out")


def split_held_out(data, per_class, seed):
  """(members' data, held-out images, labels): `per_class` of each class's images held out."""
  from tl_keras.data.labeled import LabeledData

  rng = np.random.default_rng(seed)
  held = np.concatenate(
    [
      rng.permutation(np.flatnonzero(data.y_train == c))[:per_class]
      for c in np.unique(data.y_train)
    ]
  )
  keep = np.setdiff1d(np.arange(len(data.y_train)), held)
  members = LabeledData(
    data.x_train[keep], data.y_train[keep], data.x_test, data.y_test, data.class_names,
    data.description, fit=data.fit,
  )  # fmt: skip
  return members, data.x_train[held], data.y_train[held]


def accuracy(model, images, labels):
  from tl_keras.models import networks

  return float((networks.predict(model, images).argmax(axis=1) == labels).mean())


def repeat(seed, regime, args, inprocess):
  from tl_keras.keras_api import keras
  from tl_keras.models import networks
  from tl_keras.models.fusion import soup

  data, _ = inprocess.target_data(args.source, TARGET, args.data_dir, PER_CLASS, seed)
  if regime == "held_out":
    train, x_held, y_held = split_held_out(data, args.held_out_per_class, seed)
  else:
    train, x_held, y_held = data, data.x_train, data.y_train
  members, results, load = [], [], inprocess.load()
  for index, flags in enumerate(MEMBER_SETS[args.members]):
    out = os.path.join(args.work_dir, f"soup_{regime}_{seed}_{index}")
    result = inprocess.finetune(
      args.source, TARGET, args.data_dir, PER_CLASS, seed * 100 + index, out, flags,
      keep_model=True, data=train,
    )  # fmt: skip
    clf = result["classifier"]
    members.append(keras.Model(clf.inputs, clf.outputs))
    results.append({"flags": flags, "test_accuracy": result["test_accuracy"],
                    "seconds": result["seconds"]})  # fmt: skip
  start = time.perf_counter()
  soup.check_members(members, [f"m{i}" for i in range(len(members))], [{}] * len(members))
  validation = [networks.predict(m, x_held) for m in members]
  member_test = [accuracy(m, data.x_test, data.y_test) for m in members]
  soups = {}
  for mode in soup.MODES:
    fitted = soup.fit_members(members, validation, x_held, y_held, mode)
    model = soup.build(members, fitted)
    soups[mode] = {
      "test_accuracy": accuracy(model, data.x_test, data.y_test),
      "members": [int(i) for i in np.flatnonzero(fitted["weights"])],
    }
  best = max(member_test)
  line = {
    "seed": seed,
    "regime": regime,
    "member_set": args.members,
    "load": load,
    "num_train": int(len(train.y_train)),
    "num_held_out": int(len(y_held)),
    "members": results,
    "member_test_accuracy": member_test,
    "best_member": best,
    "soups": soups,
    "greedy_gain_over_best_member": soups["greedy"]["test_accuracy"] - best,
    "uniform_gain_over_best_member": soups["uniform"]["test_accuracy"] - best,
    "soup_seconds": time.perf_counter() - start,
  }
  print(
    f"{args.members} {regime} seed {seed}: members "
    f"{', '.join(f'{a:.2%}' for a in member_test)}; uniform "
    f"{soups['uniform']['test_accuracy']:.2%}, greedy {soups['greedy']['test_accuracy']:.2%} "
    f"(members {soups['greedy']['members']}) (load {load})",
    flush=True,
  )
  return line


def summarise(repeats):
  summary = {}
  for key in sorted({(r.get("member_set", "varied"), r["regime"]) for r in repeats}):
    runs = [r for r in repeats if (r.get("member_set", "varied"), r["regime"]) == key]
    summary[" ".join(key)] = {
      "seeds": [r["seed"] for r in runs],
      **{
        key: round(statistics.fmean(r[key] for r in runs), 4)
        for key in ("best_member", "greedy_gain_over_best_member", "uniform_gain_over_best_member")
      },
      "mean_member": round(
        statistics.fmean(statistics.fmean(r["member_test_accuracy"]) for r in runs), 4
      ),  # fmt: skip
      "uniform": round(statistics.fmean(r["soups"]["uniform"]["test_accuracy"] for r in runs), 4),
      "greedy": round(statistics.fmean(r["soups"]["greedy"]["test_accuracy"] for r in runs), 4),
    }
  return summary


def main():
  parser = parser_with_data_dir(__doc__.split("\n\n")[0])
  parser.add_argument("--source", required=True, help="the one pretrained source (.h5)")
  parser.add_argument("--work_dir", default="/tmp/tl_soup")
  parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
  parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
  parser.add_argument("--held_out_per_class", type=int, default=3)
  parser.add_argument("--members", default="varied", choices=list(MEMBER_SETS))
  parser.add_argument("--out", default=os.path.join(HERE, "results", "soup.json"))
  args = parser.parse_args()
  report = json.load(open(args.out)) if os.path.exists(args.out) else {"repeats": []}
  import inprocess

  inprocess.import_tf()
  for regime in args.regimes:
    for seed in args.seeds:
      line = repeat(seed, regime, args, inprocess)
      report["repeats"] = [
        r
        for r in report["repeats"]
        if (r["seed"], r["regime"], r.get("member_set", "varied")) != (seed, regime, args.members)
      ] + [line]
      report["source"] = args.source
      report["summary"] = summarise(report["repeats"])
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
  print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
  main()
