#!/usr/bin/env python3
"""Which transferability score to trust: rank a zoo of sources, then finetune them all.

A zoo of small MNIST sources that differ as real candidates do (source classes, width,
under-training, augmentation, seed, one random-weight model) is pretrained once into
--work_dir. For each target (10 labelled images per class), `rank_sources` scores every source
(every score, timed) on each seed's labelled images, and every source is finetuned with the
few-label defaults (`--train_per_class=10`, nothing else) on those images, tested on the whole
target test set. Per target and score: the weighted Kendall tau between the score and the mean
finetuned accuracy, the top-1 regret, and the wall time of ranking all sources against
finetuning all of them. Everything runs in one process (one TensorFlow import); run it in
pieces (--targets, --sources, --seeds) into the same --out, whose results are merged; --report
only prints the tables of what --out holds.

  python bench/bench_zoo.py --targets=mnist --seeds 1 2 --out=bench/results/zoo.json
"""

import json
import os
import statistics
import time

import domains  # bench/: this folder is on sys.path when run as a script
import zoo_metrics
from common import parser_with_data_dir

HERE = os.path.dirname(os.path.abspath(__file__))

# name: pretrain settings (MNIST classes, conv filters, epochs, training images drawn, augment,
# seed, random weights); each trains in seconds on 2 cores.
ZOO = {
  "d04": dict(classes="0-4"),
  "d04_seed2": dict(classes="0-4", seed=2),
  "d04_wide": dict(classes="0-4", conv_filters="32,64"),
  "d04_narrow": dict(classes="0-4", conv_filters="4,8"),
  "d04_undertrained": dict(classes="0-4", epochs=1, max_images=300),
  "d04_augment": dict(classes="0-4", augment=True),
  "d09": dict(classes="all"),
  "d09_wide": dict(classes="all", conv_filters="32,64"),
  "even": dict(classes="0,2,4,6,8"),
  "d02": dict(classes="0-2"),
  "d01_undertrained": dict(classes="0-1", epochs=1, max_images=200),
  "random": dict(classes="all", random_weights=True),
}
TARGETS = ("mnist", "printed", "usps_like")
PER_CLASS = 10


def target_spec(name, data_dir, work_dir):
  if name == "mnist":
    return "mnist:5-9"
  if name == "printed":
    return f"npz:{os.path.join(os.path.abspath(data_dir), 'printed_digits.npz')}"
  path = os.path.join(work_dir, f"{name}.npz")
  if not os.path.exists(path):
    domains.build(name, data_dir, work_dir)
  return f"npz:{path}"


def pretrain_zoo(names, args, inprocess):
  """Pretrains the sources not yet in --work_dir; returns {name: info}."""
  info_path = os.path.join(args.work_dir, "zoo.json")
  zoo = json.load(open(info_path)) if os.path.exists(info_path) else {}
  for name in names:
    if name in zoo and os.path.exists(zoo[name]["path"]):
      continue
    settings = ZOO[name]
    result = inprocess.pretrain(os.path.join(args.work_dir, name), args.data_dir, **settings)
    zoo[name] = {**result, "settings": settings, "load": inprocess.load()}
    print(f"pretrained {name} {settings}: {result['source_test_accuracy']}", flush=True)
    with open(info_path, "w") as f:
      json.dump(zoo, f, indent=2)
  return zoo


def rank_target(names, zoo, spec, seed, args, inprocess):
  from tl_keras.ranking import rank

  data, _ = inprocess.target_data(zoo[names[0]]["path"], spec, args.data_dir, PER_CLASS, seed)
  load = inprocess.load()
  start = time.perf_counter()
  ranking = rank.rank_sources([zoo[n]["path"] for n in names], data, seed=seed)
  seconds = time.perf_counter() - start
  by_path = {entry["model"]: entry for entry in ranking["candidates"]}
  scores = {
    n: {s: by_path[zoo[n]["path"]][s] for s in rank.SCORES} for n in names
  }  # fmt: skip
  times = {n: by_path[zoo[n]["path"]]["seconds"] for n in names}
  return {"seconds": seconds, "load": load, "scores": scores, "times": times}


def run_target(target, names, zoo, args, inprocess, report):
  spec = target_spec(target, args.data_dir, args.work_dir)
  entry = report.setdefault(target, {"spec": spec, "rank": {}, "finetune": {}})
  for seed in args.seeds:
    ranked = rank_target(names, zoo, spec, seed, args, inprocess)
    old = entry["rank"].get(str(seed), {"scores": {}, "times": {}, "per_source_seconds": {}})
    old["scores"].update(ranked["scores"])
    old["times"].update(ranked["times"])
    for n in names:  # the ranking's time, split evenly over the sources it ranked together
      old["per_source_seconds"][n] = ranked["seconds"] / len(names)
    old["load"] = ranked["load"]
    entry["rank"][str(seed)] = old
    print(f"{target} seed {seed}: ranked {len(names)} in {ranked['seconds']:.1f} s", flush=True)
    for n in names:
      load = inprocess.load()
      out = os.path.join(args.work_dir, "runs", f"{target}_{n}_{seed}")
      result = inprocess.finetune(zoo[n]["path"], spec, args.data_dir, PER_CLASS, seed, out)
      entry["finetune"].setdefault(n, {})[str(seed)] = {
        "test_accuracy": result["test_accuracy"],
        "seconds": result["seconds"],
        "load": load,
      }
      print(
        f"{target} seed {seed} {n}: {result['test_accuracy']:.2%} in {result['seconds']:.0f} s "
        f"(load {load})",
        flush=True,
      )
      save(report, args.out)


def summarise(report):
  """Per target: each source's mean accuracy and, per score, tau, regret (mean over the
  seeds' rankings), and the time ratio; then the recommended score."""
  from_scores = None
  summary, qualities = {}, {}
  for target, entry in report.items():
    if target.startswith("_") or not entry["finetune"]:
      continue
    seeds = sorted(set.intersection(*(set(v) for v in entry["finetune"].values())))
    names = sorted(n for n in entry["finetune"] if all(s in entry["finetune"][n] for s in seeds))
    ranked_seeds = [s for s in seeds if s in entry["rank"]]
    if not names or not ranked_seeds:
      continue
    accuracy = {
      n: statistics.fmean(entry["finetune"][n][s]["test_accuracy"] for s in seeds) for n in names
    }
    from_scores = from_scores or list(next(iter(entry["rank"][ranked_seeds[0]]["scores"].values())))
    per_score = {}
    for score in from_scores:
      runs = [
        zoo_metrics.score_quality(
          [entry["rank"][s]["scores"][n][score] for n in names], [accuracy[n] for n in names]
        )
        for s in ranked_seeds
      ]
      taus = [r["weighted_tau"] for r in runs if r["weighted_tau"] is not None]
      regrets = [r["top1_regret"] for r in runs if r["top1_regret"] is not None]
      per_score[score] = {
        "weighted_tau": round(statistics.fmean(taus), 4) if taus else None,
        "top1_regret": round(statistics.fmean(regrets), 4) if regrets else None,
        "per_seed_tau": taus,
      }
    rank_seconds = statistics.fmean(
      sum(entry["rank"][s]["per_source_seconds"][n] for n in names) for s in ranked_seeds
    )
    # what the probe costs (a logistic regression on up to 1,000 test features per source)
    probe_seconds = statistics.fmean(
      sum(entry["rank"][s]["times"][n].get("linear_probe_accuracy", 0) for n in names)
      for s in ranked_seeds
    )
    finetune_seconds = statistics.fmean(
      sum(entry["finetune"][n][s]["seconds"] for n in names) for s in seeds
    )
    seed_sd = statistics.fmean(
      statistics.pstdev(entry["finetune"][n][s]["test_accuracy"] for s in seeds) for n in names
    )
    summary[target] = {
      "sources": len(names),
      # how far apart the sources land, against how far one source moves between seeds
      "accuracy_spread": round(max(accuracy.values()) - min(accuracy.values()), 4),
      "mean_seed_sd": round(seed_sd, 4),
      "seeds": [int(s) for s in seeds],
      "mean_accuracy": {n: round(a, 4) for n, a in accuracy.items()},
      "scores": per_score,
      "rank_seconds": round(rank_seconds, 1),
      "finetune_seconds": round(finetune_seconds, 1),
      "time_ratio": round(rank_seconds / finetune_seconds, 4),
      "time_ratio_without_probe": round((rank_seconds - probe_seconds) / finetune_seconds, 4),
    }
    qualities[target] = per_score
  if qualities:
    best, worst = zoo_metrics.recommend(qualities)
    summary["_recommended"] = {"score": best, "worst_case": worst}
  return summary


def print_tables(summary):
  for target, s in summary.items():
    if target.startswith("_"):
      continue
    print(f"\n### {target}: {s['sources']} sources, seeds {s['seeds']}")
    print(
      f"ranking all {s['rank_seconds']} s, finetuning all {s['finetune_seconds']} s "
      f"(ratio {s['time_ratio']:.1%}, {s['time_ratio_without_probe']:.1%} without the linear "
      f"probe); sources {s['accuracy_spread'] * 100:.1f} points apart, "
      f"one source's accuracy moves by {s['mean_seed_sd'] * 100:.1f} points (sd) between seeds\n"
    )
    print("| score | weighted tau | top-1 regret (points) |\n|---|---|---|")
    for score, q in s["scores"].items():
      tau = "n/a" if q["weighted_tau"] is None else f"{q['weighted_tau']:.2f}"
      regret = "n/a" if q["top1_regret"] is None else f"{q['top1_regret'] * 100:.1f}"
      print(f"| {score} | {tau} | {regret} |")
    print("\n| source | mean finetuned accuracy |\n|---|---|")
    for n, a in sorted(s["mean_accuracy"].items(), key=lambda item: -item[1]):
      print(f"| {n} | {a:.2%} |")
  if "_recommended" in summary:
    print(f"\nrecommended: {summary['_recommended']['score']}")
    print("| score | worst tau | worst regret (points) |\n|---|---|---|")
    for score, w in summary["_recommended"]["worst_case"].items():
      print(f"| {score} | {w['min_weighted_tau']:.2f} | {w['max_top1_regret'] * 100:.1f} |")


def save(report, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(report, f, indent=2)
  os.replace(path + ".tmp", path)


def main():
  parser = parser_with_data_dir(__doc__.split("\n\n")[0])
  parser.add_argument("--work_dir", default="/tmp/tl_zoo", help="the zoo's models, kept")
  parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
  parser.add_argument("--sources", nargs="+", default=list(ZOO), choices=list(ZOO))
  parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--out", default=os.path.join(HERE, "results", "zoo.json"))
  parser.add_argument("--pretrain_only", action="store_true")
  parser.add_argument("--report", action="store_true", help="only print what --out holds")
  args = parser.parse_args()
  report = json.load(open(args.out)) if os.path.exists(args.out) else {}
  if not args.report:
    import inprocess

    inprocess.import_tf()
    os.makedirs(args.work_dir, exist_ok=True)
    zoo = pretrain_zoo(args.sources, args, inprocess)
    report.setdefault("_zoo", {}).update(
      {n: {k: zoo[n][k] for k in ("settings", "source_test_accuracy", "seconds", "load")}
       for n in args.sources}
    )  # fmt: skip
    save(report, args.out)
    if not args.pretrain_only:
      for target in args.targets:
        run_target(target, args.sources, zoo, args, inprocess, report)
  summary = summarise(report)
  report["_summary"] = summary
  save(report, args.out)
  print_tables(summary)


if __name__ == "__main__":
  main()
