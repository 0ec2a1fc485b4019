"""How well a transferability score ranks sources: weighted Kendall tau and top-1 regret.

NumPy only (no TensorFlow, no SciPy), so the fast tests check them on hand-computed cases.
"""

from collections.abc import Sequence

import numpy as np


def _decreasing_rank(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
  """Rank of each element (0 = first) by decreasing `primary`, ties by decreasing `secondary`."""
  order = np.lexsort((-secondary, -primary))
  rank = np.empty(len(order), np.int64)
  rank[order] = np.arange(len(order))
  return rank


def _tau_with_rank(x: np.ndarray, y: np.ndarray, rank: np.ndarray) -> float:
  weight = 1.0 / (rank + 1.0)  # hyperbolic weigher
  i, j = np.triu_indices(len(x), k=1)
  pair = weight[i] + weight[j]  # additive
  sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
  tied_x, tied_y = np.sum(pair * np.abs(sx)), np.sum(pair * np.abs(sy))
  if tied_x == 0 or tied_y == 0:
    return float("nan")
  return float(np.sum(pair * sx * sy) / np.sqrt(tied_x * tied_y))


def weighted_tau(x: Sequence[float], y: Sequence[float]) -> float:
  """Vigna's weighted Kendall tau (WWW 2015) with additive hyperbolic weights 1/(r+1), r the
  element's rank by decreasing x (ties by y), averaged with the same by decreasing y (ties by
  x): SciPy's `weightedtau(x, y)` defaults. Swaps at the top count most; 1: same order."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) != len(y) or len(x) < 2:
    raise ValueError("weighted_tau needs two sequences of the same length, at least 2")
  by_x = _tau_with_rank(x, y, _decreasing_rank(x, y))
  by_y = _tau_with_rank(x, y, _decreasing_rank(y, x))
  return (by_x + by_y) / 2


def top1_regret(scores: Sequence[float | None], accuracies: Sequence[float]) -> float:
  """The best accuracy minus the accuracy of the element the score ranks first (ties: the
  first of them; None or NaN scores are never picked)."""
  values = np.array([np.nan if s is None else s for s in scores], np.float64)
  if np.all(np.isnan(values)):
    return float("nan")
  pick = int(np.nanargmax(values))
  return float(max(accuracies) - accuracies[pick])


def score_quality(scores: Sequence[float | None], accuracies: Sequence[float]) -> dict:
  """{"weighted_tau", "top1_regret", "n"} of a score over the sources that have it."""
  keep = [i for i, s in enumerate(scores) if s is not None and np.isfinite(s)]
  if len(keep) < 2:
    return {"weighted_tau": None, "top1_regret": None, "n": len(keep)}
  kept_scores = [scores[i] for i in keep]
  kept_accuracy = [accuracies[i] for i in keep]
  return {
    "weighted_tau": round(weighted_tau(kept_scores, kept_accuracy), 4),
    # against the best of all sources, so a score that cannot see the best one pays for it
    "top1_regret": round(max(accuracies) - kept_accuracy[int(np.argmax(kept_scores))], 4),
    "n": len(keep),
  }


def recommend(per_target: dict[str, dict[str, dict]]) -> tuple[str, dict[str, dict]]:
  """The score with the best worst-case weighted tau across targets (ties: the lower
  worst-case regret), and each score's worst cases. `per_target`: {target: {score: quality}}."""
  scores = sorted({score for qualities in per_target.values() for score in qualities})
  worst = {}
  for score in scores:
    qualities = [q[score] for q in per_target.values()]
    taus = [q["weighted_tau"] for q in qualities]
    regrets = [q["top1_regret"] for q in qualities]
    if any(t is None for t in taus):
      continue
    worst[score] = {"min_weighted_tau": min(taus), "max_top1_regret": max(regrets)}
  best = max(worst, key=lambda s: (worst[s]["min_weighted_tau"], -worst[s]["max_top1_regret"]))
  return best, worst
