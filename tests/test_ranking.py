"""Source ranking: each score against values worked out by hand on tiny arrays, the invariances
it promises, its bounded work, and `rank_sources` on real models."""

import numpy as np
import pytest
from conftest import blobs

from tl_keras import api
from tl_keras.data.labeled import LabeledData
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import model_io
from tl_keras.ranking import hscore
from tl_keras.ranking import knn
from tl_keras.ranking import leep
from tl_keras.ranking import logme
from tl_keras.ranking import nce
from tl_keras.ranking import rank
from tl_keras.ranking import width

# LEEP

PROBABILITIES = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
TWO_CLASSES = np.array([0, 0, 1, 1])


def test_leep_by_hand():
  # Joint P(y, z) = mean over the 4 examples: y=0 rows sum to (1.5, 0.5), y=1 to (0.5, 1.5),
  # so P(y | z=0) = (0.75, 0.25), P(y | z=1) = (0.25, 0.75). Each example's probability of its
  # label: 0.9*0.75 + 0.1*0.25 = 0.7, 0.6*0.75 + 0.4*0.25 = 0.55, 0.2*0.25 + 0.8*0.75 = 0.65,
  # 0.3*0.25 + 0.7*0.75 = 0.6.
  expected = (np.log(0.7) + np.log(0.55) + np.log(0.65) + np.log(0.6)) / 4
  assert leep.leep(PROBABILITIES, TWO_CLASSES) == pytest.approx(expected, abs=1e-12)


def test_leep_ignores_label_values_and_source_class_order():
  value = leep.leep(PROBABILITIES, TWO_CLASSES)
  assert leep.leep(PROBABILITIES, np.array([9, 9, 3, 3])) == pytest.approx(value, abs=1e-12)
  assert leep.leep(PROBABILITIES[:, ::-1], TWO_CLASSES) == pytest.approx(value, abs=1e-12)


def test_leep_is_zero_for_a_source_that_names_the_target_class():
  one_hot = np.eye(3)[[0, 1, 2, 2]]
  assert leep.leep(one_hot, np.array([5, 6, 7, 7])) == pytest.approx(0.0, abs=1e-12)
  # A source class no example gives probability to does not divide by zero.
  assert leep.leep(np.eye(4)[[0, 1, 2, 2]], np.array([5, 6, 7, 7])) == pytest.approx(0.0)


# NCE


def test_nce_is_minus_the_conditional_entropy_of_the_joint_table():
  source = np.array([0, 0, 0, 1, 1, 1])
  target = np.array([0, 0, 1, 1, 1, 1])
  # Joint table P(z, y): z=0: (2/6, 1/6), z=1: (0, 3/6). H(Y | z=1) = 0, H(Y | z=0) is the
  # entropy of (2/3, 1/3), and P(z=0) = 1/2.
  expected = -0.5 * -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
  assert nce.nce(source, target) == pytest.approx(expected, abs=1e-12)
  # Label values and class order do not matter: relabel both sides.
  assert nce.nce(7 - source, 10 * (1 - target)) == pytest.approx(expected, abs=1e-12)


def test_nce_bounds():
  assert nce.nce([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-np.log(2))  # independent
  assert nce.nce([3, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(0.0)  # source decides target


# H-score

# Two features: the first is class-informative, the second cancels its within-class spread,
# so their sum, (1, 1, 5, 5), is the class mean exactly.
WIDE = np.array([[0.0, 1.0], [2.0, -1.0], [4.0, 1.0], [6.0, -1.0]])


def test_h_score_by_hand():
  # First feature alone: variance 5 (about its mean 3), class means 1 and 5 with variance 4.
  assert hscore.h_score(WIDE[:, :1], TWO_CLASSES, shrinkage=False) == pytest.approx(0.8)
  # Both: cov(f) = [[5, -1], [-1, 1]], inverse [[1, 1], [1, 5]] / 4; cov(E[f|y]) = [[4, 0],
  # [0, 0]]: tr = 4 / 4 = 1, the most 2 classes allow (a direction without within-class spread).
  assert hscore.h_score(WIDE, TWO_CLASSES, shrinkage=False) == pytest.approx(1.0)


def _ledoit_wolf_by_definition(features):
  """Shrinkage as Ledoit and Wolf (2004) define it: b^2 / d^2 with d^2 = |S - m I|^2 / p and
  b^2 = min(d^2, sum_k |x_k x_k^T - S|^2 / n^2 / p) (no shortcut algebra)."""
  x = features - features.mean(axis=0)
  n, p = x.shape
  sample = x.T @ x / n
  m = np.trace(sample) / p
  distance = np.sum((sample - m * np.eye(p)) ** 2) / p
  error = sum(np.sum((np.outer(row, row) - sample) ** 2) for row in x) / n**2 / p
  return min(error, distance) / distance, sample, m


def test_regularised_h_score_by_hand():
  # Centred rows (-3, 1), (-1, -1), (1, 1), (3, -1); S = [[5, -1], [-1, 1]], m = 3,
  # d^2 = (4 + 1 + 1 + 4) / 2 = 5; every |x x^T - S|^2 is 24, so b^2 = 96 / 16 / 2 = 3:
  # shrinkage 0.6, covariance 0.4 S + 1.8 I = [[3.8, -0.4], [-0.4, 2.2]] (det 8.2), and
  # tr(inverse @ 0.4 cov(E[f|y])) = 0.4 * 4 * 2.2 / 8.2.
  shrinkage, _, _ = _ledoit_wolf_by_definition(WIDE)
  assert shrinkage == pytest.approx(0.6)
  expected = 0.4 * 4 * 2.2 / 8.2
  assert hscore.h_score(WIDE, TWO_CLASSES) == pytest.approx(expected, abs=1e-12)


def test_ledoit_wolf_shortcut_matches_the_definition():
  features, _ = blobs(True, n=50, d=7)
  expected, sample, _ = _ledoit_wolf_by_definition(features)
  centred = features - features.mean(axis=0)
  assert hscore.ledoit_wolf_shrinkage(centred, sample) == pytest.approx(expected, abs=1e-12)


def test_h_score_invariances():
  features, labels = blobs(True, n=80, d=6)
  mixing = np.random.default_rng(1).normal(size=(6, 6))  # invertible
  permuted = np.array([2, 0, 1])[labels]
  plain = hscore.h_score(features, labels, shrinkage=False)
  assert hscore.h_score(features @ mixing, labels, shrinkage=False) == pytest.approx(plain)
  assert hscore.h_score(features, permuted, shrinkage=False) == pytest.approx(plain)
  shrunk = hscore.h_score(features, labels)
  assert hscore.h_score(features * 1e3 + 5, labels) == pytest.approx(shrunk)
  assert hscore.h_score(features, permuted) == pytest.approx(shrunk)
  assert 0 < shrunk < plain <= 2  # 3 classes: at most 2


def test_regularised_h_score_separates_where_the_plain_one_cannot():
  """With more features than examples the plain score is its maximum for noise too."""
  informative, labels = blobs(True, n=40, d=200)
  noise, _ = blobs(False, seed=1, n=40, d=200)
  assert hscore.h_score(noise, labels, shrinkage=False) == pytest.approx(2.0)
  assert hscore.h_score(informative, labels) > hscore.h_score(noise, labels) + 0.2


# LogME


def _log_evidence(features, y, alpha, beta):
  """log N(y; 0, F F^T / alpha + I / beta) per example, computed directly."""
  n = len(y)
  covariance = features @ features.T / alpha + np.eye(n) / beta
  _, log_det = np.linalg.slogdet(covariance)
  return -0.5 * (y @ np.linalg.solve(covariance, y) + log_det + n * np.log(2 * np.pi)) / n


def test_logme_is_the_maximum_evidence_of_the_bayesian_linear_model():
  features, labels = blobs(True, n=60, d=5)
  grid = np.logspace(-3, 3, 61)
  best = np.mean(
    [
      max(
        _log_evidence(features, (labels == k).astype(float), alpha, beta)
        for alpha in grid
        for beta in grid
      )
      for k in range(3)
    ]
  )
  value = logme.logme(features, labels)
  # The fixed point maximises the evidence: at least the grid's best, and not far above it.
  assert best - 1e-6 <= value < best + 0.01


def test_logme_prefers_informative_features():
  informative, labels = blobs(True)
  noise, _ = blobs(False)
  assert logme.logme(informative, labels) > logme.logme(noise, labels) + 0.1


def test_logme_invariances():
  features, labels = blobs(True, n=100, d=8)
  value = logme.logme(features, labels)
  assert logme.logme(features * 255.0, labels) == pytest.approx(value, abs=1e-9)
  assert logme.logme(features, np.array([20, 10, 30])[labels]) == pytest.approx(value, abs=1e-12)
  rotation, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 8)))
  assert logme.logme(features @ rotation, labels) == pytest.approx(value, abs=1e-9)


def test_wide_features_are_reduced_without_changing_logme_or_the_plain_h_score():
  """Width over MAX_WIDTH with fewer examples: the SVD reduction keeps F F^T, so both scores."""
  features, labels = blobs(True, n=50, d=12)
  basis, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(width.MAX_WIDTH + 76, 12)))
  wide = features @ basis.T  # same inner products between examples, 1100 columns
  assert logme.logme(wide, labels) == pytest.approx(logme.logme(features, labels), abs=1e-9)
  plain = hscore.h_score(features, labels, shrinkage=False)
  assert hscore.h_score(wide, labels, shrinkage=False) == pytest.approx(plain, abs=1e-9)


def test_reduce_width_bounds_the_columns():
  rng = np.random.default_rng(4)
  few = rng.normal(size=(5, 30))
  reduced = width.reduce_width(few, max_width=8)
  assert reduced.shape == (5, 5)
  np.testing.assert_allclose(reduced @ reduced.T, few @ few.T, atol=1e-10)
  many = rng.normal(size=(40, 9000))
  projected = width.reduce_width(many, max_width=16, seed=1)
  assert projected.shape == (40, 16)
  np.testing.assert_array_equal(projected, width.reduce_width(many, max_width=16, seed=1))
  narrow = rng.normal(size=(40, 8))
  np.testing.assert_array_equal(width.reduce_width(narrow, max_width=8), narrow)


def test_classes_are_scored_in_chunks_without_changing_logme(monkeypatch):
  features, labels = blobs(True, n=120, d=6)
  labels = labels * 3 + np.random.default_rng(5).integers(0, 3, 120)  # 9 classes
  whole = logme.logme(features, labels)
  monkeypatch.setattr(width, "CLASS_CHUNK", 2)
  assert logme.logme(features, labels) == pytest.approx(whole, abs=1e-12)


# k-NN

ANGLES = np.radians([0, 10, 20, 3, 90, 100, 96])
ON_A_CIRCLE = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)
CIRCLE_CLASSES = np.array([0, 0, 0, 1, 1, 1, 1])


def test_knn_accuracy_by_hand():
  # Class 0 at 0, 10, 20 degrees; class 1 at 3 (an outlier), 90, 100, 96 degrees.
  # k=1: 0 -> 3 (wrong), 10 -> 3 (wrong), 20 -> 10, 3 -> 0 (wrong), 90 -> 96, 100 -> 96,
  # 96 -> 100: 4 of 7.
  assert knn.knn_accuracy(ON_A_CIRCLE, CIRCLE_CLASSES, k=1) == pytest.approx(4 / 7)
  # k=3: 0 -> 3, 10, 20 (class 0 wins); 10 -> 3, 0, 20; 20 -> 10, 3, 0; 3 -> 0, 10, 20 (class 0:
  # wrong); 90 -> 96, 100, 20; 100 -> 96, 90, 20; 96 -> 100, 90, 20: 6 of 7.
  assert knn.knn_accuracy(ON_A_CIRCLE, CIRCLE_CLASSES, k=3) == pytest.approx(6 / 7)


def test_knn_accuracy_invariances():
  scales = np.array([1, 5, 0.1, 2, 7, 3, 0.5])[:, None]  # cosine: each example's scale
  assert knn.knn_accuracy(ON_A_CIRCLE * scales, CIRCLE_CLASSES, k=3) == pytest.approx(6 / 7)
  assert knn.knn_accuracy(ON_A_CIRCLE, 4 - CIRCLE_CLASSES, k=3) == pytest.approx(6 / 7)
  informative, labels = blobs(True, n=1100)  # more rows than one block of similarities
  noise, _ = blobs(False, n=1100)
  assert knn.knn_accuracy(informative, labels) > 0.9
  assert knn.knn_accuracy(noise, labels) < 0.5  # chance is 1/3


# rank_sources on small models (no training)


def _image_target(seed=0, n=60, size=8):
  """Two classes of 8x8 grey images: bright left or bright right half, with noise."""
  rng = np.random.default_rng(seed)

  def images(count):
    labels = rng.integers(0, 2, count)
    x = rng.integers(0, 60, (count, size, size)).astype(np.uint8)
    for image, label in zip(x, labels):
      image[:, (size // 2) * label : (size // 2) * (label + 1)] += 150
    return x, labels

  (x_train, y_train), (x_test, y_test) = images(n), images(n // 2)
  return LabeledData(x_train, y_train, x_test, y_test, ["left", "right"])


def _tiny(name, head="softmax", shape=(8, 8, 1)):
  """A random-weight conv net; `head` 'softmax', 'linear' (logits) or None (features only)."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input(shape)
  x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
  x = keras.layers.GlobalAveragePooling2D()(x)
  if head:
    x = keras.layers.Dense(3, activation=head, name="classifier")(x)
  return keras.Model(inputs, x, name=name)


def test_rank_sources_scores_what_each_candidate_can_and_says_why_not():
  vector = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)], name="vector")
  result = rank.rank_sources(
    [vector, _tiny("features", head=None), _tiny("logits", head="linear"), _tiny("softmax")],
    _image_target(),
    by="knn_accuracy",
  )
  entries = {entry["model"]: entry for entry in result["candidates"]}
  assert set(entries) == {"vector", "features", "logits", "softmax"}
  assert result["candidates"][-1]["model"] == "vector"  # no score: last
  assert set(entries["vector"]["reasons"]) == set(rank.SCORES)
  assert "cannot take the target images" in entries["vector"]["reasons"]["logme"]
  assert all(entries["vector"][score] is None for score in rank.SCORES)
  features = entries["features"]
  assert set(features["reasons"]) == {"leep", "nce"}
  assert "classifier" in features["reasons"]["leep"] and features["leep"] is None
  for name in ("features", "logits", "softmax"):
    entry = entries[name]
    scored = [score for score in rank.SCORES if score not in entry["reasons"]]
    assert all(np.isfinite(entry[score]) for score in scored)
    assert set(entry["seconds"]) == {"load", "features", *scored}
  for name in ("logits", "softmax"):  # logits are taken through a softmax
    assert not entries[name]["reasons"] and entries[name]["leep"] <= 0
    assert -np.log(2) - 1e-9 <= entries[name]["nce"] <= 0
  scores = [entry["knn_accuracy"] for entry in result["candidates"][:-1]]
  assert scores == sorted(scores, reverse=True)
  assert result["pick"] == result["candidates"][0]["model"] and result["by"] == "knn_accuracy"
  assert (result["num_train"], result["num_test"]) == (60, 30)


def test_rank_sources_subsamples_with_a_seed_and_loads_paths(tmp_path):
  path = str(tmp_path / "tiny.h5")
  model_io.save_h5(_tiny("tiny"), path, {})
  data = _image_target(n=80)
  first = rank.rank_sources([path], data, max_images=30, seed=3)
  again = rank.rank_sources([path], data, max_images=30, seed=3)
  assert (first["num_train"], first["num_test"]) == (30, 30)
  assert first["pick"] == path and not first["candidates"][0]["reasons"]
  for score in rank.SCORES:
    assert first["candidates"][0][score] == pytest.approx(again["candidates"][0][score])
  missing = str(tmp_path / "missing.h5")
  result = rank.rank_sources([missing, path], data, max_images=30)
  assert result["candidates"][1]["model"] == missing
  assert "model not found" in result["candidates"][1]["reasons"]["logme"]


def test_rank_sources_refuses_what_it_cannot_rank():
  data = _image_target()
  with pytest.raises(UserError, match="cannot rank by 'accuracy'"):
    rank.rank_sources([_tiny("a")], data, by="accuracy")
  with pytest.raises(UserError, match="no candidate"):
    rank.rank_sources([], data)
  one_class = LabeledData(data.x_train, np.zeros(60, int), data.x_test, data.y_test, ["a", "b"])
  with pytest.raises(UserError, match="at least 2 classes"):
    rank.rank_sources([_tiny("a")], one_class)


# The real outcome


def test_trained_source_ranks_above_random_weights_on_digits_5_to_9(
  source_model, small_mnist_dir, tmp_path
):
  keras.utils.set_random_seed(0)
  random_path = str(tmp_path / "random.h5")
  model_io.save_h5(networks.build_source_model((28, 28, 1), 5), random_path, {})
  data = api.load_target("mnist:5-9", (28, 28, 1), data_dir=small_mnist_dir, train_per_class=100)
  result = rank.rank_sources([random_path, source_model[0]], data, by="logme")
  trained, random = sorted(result["candidates"], key=lambda entry: entry["model"] == random_path)
  assert result["pick"] == source_model[0]
  assert (result["num_train"], result["num_test"]) == (500, 1000)
  assert not trained["reasons"] and not random["reasons"]
  # Measured: LogME 0.111 vs -0.017, H-score 3.26 vs 3.01, LEEP -1.28 vs -1.61, NCE -1.28 vs
  # -1.60, probe 0.893 vs 0.854. k-NN goes the other way (0.856 vs 0.912): random convolutions
  # keep the pixels' geometry, on which nearest neighbours already do well on MNIST, while the
  # source's penultimate features are tuned to digits 0-4. The bench weighs that.
  for score in ("logme", "h_score", "leep", "nce", "linear_probe_accuracy"):
    assert trained[score] > random[score], score
  assert trained["logme"] > random["logme"] + 0.05
  assert min(trained["knn_accuracy"], random["knn_accuracy"]) > 0.6  # chance is 0.2
