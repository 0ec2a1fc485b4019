"""Model soups (`tl-fuse --method=soup`): the members' weights averaged into one model."""

import json

import numpy as np
import pytest
from conftest import finetuned_members

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.config import settings
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.models.fusion import soup
from tl_keras.stages import fuse


def _model(seed, filters=(4,)):
  keras.utils.set_random_seed(seed)
  return networks.build_source_model((8, 8, 1), 3, filters)


def _nudged(model, scale, seed):
  """A copy of `model`, its weights moved by Gaussian noise of `scale`."""
  rng = np.random.default_rng(seed)
  copy = keras.models.clone_model(model)
  copy.set_weights([w + scale * rng.standard_normal(w.shape) for w in model.get_weights()])
  return copy


def _images(count=200):
  return np.random.default_rng(0).random((count, 8, 8, 1)).astype(np.float32)


@pytest.mark.parametrize("mode", soup.MODES)
def test_a_soup_of_identical_members_is_the_member(mode):
  member = _model(1)
  members = [member, _nudged(member, 0.0, 0), _nudged(member, 0.0, 1)]
  images = _images()
  labels = networks.predict(member, images).argmax(axis=1)
  validation = [networks.predict(m, images) for m in members]
  fitted = soup.fit_members(members, validation, images, labels, mode)
  model = soup.build(members, fitted)
  for got, want in zip(model.get_weights(), member.get_weights()):
    np.testing.assert_array_equal(got, want)
  assert model.count_params() == member.count_params()  # one member's inference cost
  np.testing.assert_allclose(networks.predict(model, images), validation[0], atol=1e-6)


def test_uniform_soup_is_the_mean_of_known_weights():
  members = [_model(1), _model(1), _model(1)]
  for index, member in enumerate(members):
    member.set_weights([np.full(w.shape, float(index), w.dtype) for w in member.get_weights()])
  fitted = soup.fit_members(members, None, None, np.array([]), "uniform")
  assert list(fitted["weights"]) == pytest.approx([1 / 3] * 3)
  for weights in soup.build(members, fitted).get_weights():
    np.testing.assert_allclose(weights, 1.0)  # (0 + 1 + 2) / 3


def test_greedy_soup_is_never_below_its_first_member_on_its_held_out_images():
  base = _model(3)
  images = _images()
  labels = networks.predict(base, images).argmax(axis=1)  # the base is right on every image
  members = [_nudged(base, scale, seed) for seed, scale in enumerate((0.3, 0.05, 1.0, 0.6))]
  validation = [networks.predict(m, images) for m in members]
  accuracies = [float((p.argmax(axis=1) == labels).mean()) for p in validation]
  fitted = soup.fit_members(members, validation, images, labels, "greedy")
  assert fitted["order"][0] == int(np.argmax(accuracies))
  assert fitted["weights"][fitted["order"][0]] > 0
  model = soup.build(members, fitted)
  accuracy = float((networks.predict(model, images).argmax(axis=1) == labels).mean())
  assert accuracy >= max(accuracies)
  assert fitted["weights"].sum() == pytest.approx(1)


def test_members_of_other_architectures_are_refused():
  members = [_model(1, (4,)), _model(1, (8,))]
  with pytest.raises(UserError, match="architectures .* differ"):
    soup.check_members(members, ["a.h5", "b.h5"], [{}, {}])


def test_members_of_other_origins_are_refused():
  first, other = _model(1), _model(2)  # same architecture, other initial weights
  for member in (first, other):
    member.layers[1].trainable = False  # a frozen source layer
  with pytest.raises(UserError, match="frozen layers differ"):
    soup.check_members([first, other], ["a.h5", "b.h5"], [{}, {}])
  same = _nudged(first, 0.0, 0)
  same.layers[1].trainable = False
  soup.check_members([first, same], ["a.h5", "b.h5"], [{}, {}])  # accepted
  origins = [{soup.SOURCE_FINGERPRINT: "x"}, {soup.SOURCE_FINGERPRINT: "y"}]
  with pytest.raises(UserError, match="different source models"):
    soup.check_members([first, same], ["a.h5", "b.h5"], origins)


@pytest.fixture(scope="module")
def members(source_model, small_mnist_dir, tmp_path_factory):
  """Three models finetuned from the source on digits 5-9 from 20 labels a class at three
  learning rates (a soup's ingredients: one source, a hyperparameter sweep), tl-fuse's
  validation images held out (the same split and seed): their paths."""
  runs = [{"learning_rate": rate, "validation_split": 0.2} for rate in (3e-4, 1e-3, 3e-3)]
  return finetuned_members(source_model[0], small_mnist_dir, tmp_path_factory, runs)


@pytest.mark.parametrize("mode", soup.MODES)
def test_soup_fuses_members_into_one_model(mode, members, small_mnist_dir, tmp_path):
  config = settings.make(
    settings.FuseConfig,
    models=",".join(members),
    method="soup",
    soup=mode,
    train_per_class=20,
    data_dir=small_mnist_dir,
    output_dir=str(tmp_path),
  )
  metrics = fuse.run(config)
  print(json.dumps({key: metrics[key] for key in ("soup_mode", "weights", "test_accuracy")}))
  print("members", metrics["member_test_accuracy"], metrics["member_validation_accuracy"])
  model = loading.load_model(str(tmp_path / artifacts.FUSED_MODEL))  # the safe loader's
  member = loading.load_model(members[0])
  assert [layer.name for layer in model.layers] == [layer.name for layer in member.layers]
  assert model.count_params() == member.count_params()
  assert metrics["test_accuracy"] > 0.5  # chance is 0.2
  if mode == "greedy":
    assert metrics["validation_accuracy"] >= max(metrics["member_validation_accuracy"])
  else:
    assert metrics["weights"] == pytest.approx([1 / 3] * 3)
