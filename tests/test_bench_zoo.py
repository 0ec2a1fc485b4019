"""The zoo bench's ranking-quality helpers on hand-computed cases (NumPy only, no TensorFlow)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import zoo_metrics  # noqa: E402  (bench/ is not a package)


def test_weighted_tau_same_and_reversed_order():
  assert zoo_metrics.weighted_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert zoo_metrics.weighted_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)


def test_weighted_tau_by_hand():
  # x = (3, 2, 1), y = (3, 1, 2). Ranked by x, the weights are 1, 1/2, 1/3; pair weights add:
  # (0,1) 3/2 concordant, (0,2) 4/3 concordant, (1,2) 5/6 discordant -> (3/2 + 4/3 - 5/6) /
  # (3/2 + 4/3 + 5/6) = 2 / (11/3) = 6/11. Ranked by y (elements 0, 2, 1), the weights of 0, 1,
  # 2 are 1, 1/3, 1/2: (0,1) 4/3 conc., (0,2) 3/2 conc., (1,2) 5/6 disc. -> 6/11 again.
  assert zoo_metrics.weighted_tau([3, 2, 1], [3, 1, 2]) == pytest.approx(6 / 11)


def test_weighted_tau_a_swap_at_the_top_costs_more_than_at_the_bottom():
  top = zoo_metrics.weighted_tau([4, 3, 2, 1], [3, 4, 2, 1])
  bottom = zoo_metrics.weighted_tau([4, 3, 2, 1], [4, 3, 1, 2])
  # Weights 1, 1/2, 1/3, 1/4 (on either ranking): each element is in 3 pairs, so the pair
  # weights total 3 * 25/12 = 6.25. The top swap's discordant pair (0,1) weighs 3/2: tau =
  # (6.25 - 2 * 3/2) / 6.25 = 0.52; the bottom swap's pair (2,3) weighs 7/12.
  assert top == pytest.approx(0.52)
  assert bottom == pytest.approx((6.25 - 7 / 6) / 6.25)
  assert top < bottom


def test_weighted_tau_ties_in_the_score_count_for_neither():
  # x ties elements 1 and 2: that pair drops from the numerator and x's normaliser.
  # Ranked by x then y: order 0, 2, 1 -> weights e0 1, e2 1/2, e1 1/3. Pairs (0,1) 4/3 conc.,
  # (0,2) 3/2 conc., (1,2) 5/6 tied in x: tau = (4/3 + 3/2) / sqrt((4/3 + 3/2) * (11/3)).
  # Ranked by y then x: y = (3, 1, 2) gives the same order and weights.
  expected = (4 / 3 + 3 / 2) / ((4 / 3 + 3 / 2) * 11 / 3) ** 0.5
  assert zoo_metrics.weighted_tau([2, 1, 1], [3, 1, 2]) == pytest.approx(expected)


def test_top1_regret():
  accuracies = [0.90, 0.95, 0.80]
  assert zoo_metrics.top1_regret([0.1, 0.9, 0.3], accuracies) == pytest.approx(0.0)
  assert zoo_metrics.top1_regret([0.1, 0.2, 0.3], accuracies) == pytest.approx(0.15)
  assert zoo_metrics.top1_regret([None, 0.2, 0.3], accuracies) == pytest.approx(0.15)


def test_score_quality_skips_missing_scores_but_not_the_best_source():
  # The best source (0.95) has no score: the pick among the rest is 0.90, regret 5 points.
  quality = zoo_metrics.score_quality([0.5, None, 0.1], [0.90, 0.95, 0.80])
  assert quality["n"] == 2
  assert quality["top1_regret"] == pytest.approx(0.05)
  assert quality["weighted_tau"] == pytest.approx(1.0)


def test_recommend_takes_the_best_worst_case():
  per_target = {
    "a": {"s1": {"weighted_tau": 0.9, "top1_regret": 0.0}, "s2": {"weighted_tau": 0.8,
          "top1_regret": 0.01}},
    "b": {"s1": {"weighted_tau": 0.2, "top1_regret": 0.05}, "s2": {"weighted_tau": 0.7,
          "top1_regret": 0.0}},
  }  # fmt: skip
  best, worst = zoo_metrics.recommend(per_target)
  assert best == "s2"
  assert worst["s1"] == {"min_weighted_tau": 0.2, "max_top1_regret": 0.05}
