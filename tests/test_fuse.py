"""tl-fuse: fusion of finetuned members on small real-MNIST data, what the fusion is fitted on,
and the fused model's files (loaded back by the safe loader, served as raw uint8)."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import finetuned_members

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.config import methods
from tl_keras.config import settings
from tl_keras.data import targets
from tl_keras.data.labeled import split_per_class
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import fusion
from tl_keras.models import networks
from tl_keras.outputs import model_io
from tl_keras.stages import fuse

# The methods that combine the members' probabilities (a soup averages weights: test_soup.py).
METHODS = tuple(name for name, each in methods.FUSION.items() if not each.averages_weights)
DIGITS = ["5", "6", "7", "8", "9"]


@pytest.fixture(scope="module")
def members(source_model, small_mnist_dir, tmp_path_factory):
  """Three models finetuned on digits 5-9 from few labels and different seeds: their paths."""
  runs = [{"head_init": "probe", "epochs": 1, "seed": seed} for seed in (1, 2, 3)]
  return finetuned_members(source_model[0], small_mnist_dir, tmp_path_factory, runs)


def _config(members, output_dir, method, **values):
  return settings.make(
    settings.FuseConfig,
    models=",".join(members),
    method=method,
    output_dir=str(output_dir),
    **values,
  )


@pytest.fixture(scope="module")
def fused(members, small_mnist_dir, tmp_path_factory):
  """{method: (output folder, metrics)} of fusing the three members on digits 5-9."""
  runs = {}
  for method in METHODS:
    output_dir = tmp_path_factory.mktemp(f"fused_{method}")
    config = _config(members, output_dir, method, data_dir=small_mnist_dir)
    runs[method] = output_dir, fuse.run(config)
  return runs


@pytest.fixture(scope="module")
def target(small_mnist_dir):
  return targets.load_target("mnist:5-9", small_mnist_dir, (28, 28, 1))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_fusion_is_never_worse_than_the_worst_member(method, fused, members, target):
  output_dir, metrics = fused[method]
  # The members' accuracies are their own predictions on the full test set.
  for path, accuracy in zip(members, metrics["member_test_accuracy"]):
    predicted = networks.predict(loading.load_model(path), target.x_test).argmax(axis=1)
    assert accuracy == pytest.approx((predicted == target.y_test).mean())
  assert len(set(metrics["member_test_accuracy"])) > 1  # the members do differ
  assert metrics["test_accuracy"] >= metrics["worst_member_test_accuracy"]
  assert metrics["test_accuracy"] > 0.5  # chance is 0.2
  assert metrics["num_test"] == len(target.y_test) and metrics["classes"] == DIGITS
  assert metrics["num_validation"] == round(0.2 * 600) * 5
  saved = json.loads((output_dir / artifacts.METRICS["fuse"]).read_text())
  assert saved["test_accuracy"] == metrics["test_accuracy"] and saved["method"] == method
  assert "## fuse" in (output_dir / artifacts.REPORT).read_text()
  weights = metrics["weights"]
  if method == "stacking":
    assert np.asarray(weights["kernel"]).shape == (3 * 5, 5)
  else:
    assert sum(weights) == pytest.approx(1) and len(weights) == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_fused_model_loads_safely_and_serves_raw_uint8(method, fused, members, target):
  output_dir, metrics = fused[method]
  path = str(output_dir / artifacts.FUSED_MODEL)
  model = loading.load_model(path)  # the allowlists on: built-in layers only
  assert model_io.read_metadata(path)["class_names"] == DIGITS
  images = target.x_test[:64]  # raw uint8 [N,28,28]
  probabilities = networks.predict(model, images)
  assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
  accuracy = (networks.predict(model, target.x_test).argmax(axis=1) == target.y_test).mean()
  assert accuracy == pytest.approx(metrics["test_accuracy"])

  export_dir = str(output_dir / artifacts.FUSED_SAVED_MODEL_DIR)
  serve = tf.saved_model.load(export_dir).signatures["serving_default"]
  outputs = serve(images=tf.constant(images, tf.uint8))
  assert np.allclose(outputs["probabilities"].numpy(), probabilities, atol=1e-5)
  assert (outputs["class_id"].numpy() == probabilities.argmax(axis=1)).all()
  with open(os.path.join(export_dir, "assets", artifacts.CLASS_NAMES_ASSET)) as f:
    assert f.read().split() == DIGITS
  # The same signature as finetune's SavedModel (a member's).
  member_export = os.path.join(os.path.dirname(members[0]), artifacts.SAVED_MODEL_DIR)
  member_serve = tf.saved_model.load(member_export).signatures["serving_default"]
  assert serve.structured_input_signature == member_serve.structured_input_signature
  assert serve.structured_outputs.keys() == member_serve.structured_outputs.keys()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["weighted", "stacking"])
def test_fusion_is_fitted_on_the_validation_images_only(method, members, target, tmp_path):
  small = dataclasses.replace(target, x_test=target.x_test[:100], y_test=target.y_test[:100])
  _, validation = split_per_class(small.y_train, 0.2, 42)  # what tl-fuse holds out
  held_out = np.zeros(len(small.y_train), bool)
  held_out[validation] = True

  def weights(dataset, name):
    config = _config(members, tmp_path / name, method)
    return fuse.run(config, datasets_override=dataset)["weights"]

  first = weights(small, "first")
  rng = np.random.default_rng(0)
  other_test_and_training = dataclasses.replace(
    small,
    x_train=np.where(held_out.reshape(-1, *[1] * (small.x_train.ndim - 1)), small.x_train, 0),
    y_test=rng.permutation(small.y_test),
    x_test=small.x_test[::-1],
  )
  assert _close(weights(other_test_and_training, "second"), first)
  relabelled = small.y_train.copy()
  relabelled[validation] = rng.permutation(relabelled[validation])
  other_validation = dataclasses.replace(small, y_train=relabelled)
  assert not _close(weights(other_validation, "third"), first)


def _close(a, b):
  if isinstance(a, dict):
    return all(np.allclose(a[key], b[key], atol=1e-5) for key in a)
  return np.allclose(a, b, atol=1e-5)


def _member(seed, num_classes=3):
  keras.utils.set_random_seed(seed)
  return networks.build_source_model((8, 8, 1), num_classes, (4,))


def _probabilities(count=200, num_classes=3, seed=0):
  """Validation labels and three members' probabilities: good, middling, random."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, count)
  onehot = np.eye(num_classes)[labels]
  noise = rng.dirichlet(np.ones(num_classes), (3, count))
  members = [0.8 * onehot + 0.2 * noise[0], 0.4 * onehot + 0.6 * noise[1], noise[2]]
  return members, labels


def test_weighted_fusion_trusts_the_better_members():
  probabilities, labels = _probabilities()
  weights = fusion.fit_fusion("weighted", probabilities, labels, 3)["weights"]
  assert weights.sum() == pytest.approx(1)
  assert weights[0] > weights[1] > weights[2]


def test_stacking_ignores_a_random_member():
  probabilities, labels = _probabilities()
  fitted = fusion.fit_fusion("stacking", probabilities, labels, 3)
  kernel = np.abs(fitted["kernel"])
  assert kernel[:3].sum() > 5 * kernel[6:].sum()
  predicted = fusion.fused_probabilities("stacking", fitted, probabilities).argmax(axis=1)
  assert (predicted == labels).mean() >= (probabilities[0].argmax(axis=1) == labels).mean()


@pytest.mark.parametrize("method", METHODS)
def test_fused_model_computes_the_fusion(method):
  members = [_member(seed) for seed in (1, 2, 3)]
  images = np.random.default_rng(0).random((16, 8, 8, 1)).astype(np.float32)
  probabilities = [member.predict(images, verbose=0) for member in members]
  labels = np.arange(16) % 3
  fitted = fusion.fit_fusion(method, probabilities, labels, 3)
  model = fusion.build_fused_model(members, method, fitted)
  expected = fusion.fused_probabilities(method, fitted, probabilities)
  assert np.allclose(model.predict(images, verbose=0), expected, atol=1e-5)
  assert not model.trainable_weights
  loading.check_model_config(json.loads(model.to_json()), "fused")  # built-in layers only


def test_fusing_leaves_the_callers_models_as_they_were():
  members = [_member(seed) for seed in (1, 2)]
  members[1].layers[1].trainable = False  # flags of the caller's choosing, kept as they are
  names = [member.name for member in members]
  flags = [[layer.trainable for layer in member.layers] for member in members]
  images = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
  fitted = fusion.fit_fusion("average", None, None, 3, count=2)
  model = fusion.build_fused_model(members, "average", fitted)
  assert [member.name for member in members] == names
  assert [[layer.trainable for layer in member.layers] for member in members] == flags
  assert all(member.trainable and member.trainable_weights for member in members)
  assert [layer.name for layer in model.layers[1:3]] == ["member_1", "member_2"]
  assert not model.trainable_weights
  # The fused model holds copies: changing a caller's model later leaves it as fitted.
  fused = model.predict(images, verbose=0)
  for weights in members[0].trainable_weights:
    weights.assign(tf.zeros_like(weights))
  np.testing.assert_allclose(model.predict(images, verbose=0), fused, rtol=1e-6)


@pytest.mark.parametrize(
  "models_flag, message",
  [
    ("a.h5", "--models names 1 model(s); fuse 2 to 32"),
    ("", "invalid --models=''"),
    ("a.h5,,b.h5", "invalid --models='a.h5,,b.h5'"),
  ],
)
def test_models_flag_is_checked(models_flag, message):
  with pytest.raises(UserError, match=re.escape(message)):
    settings.validate(settings.make(settings.FuseConfig, models=models_flag))
