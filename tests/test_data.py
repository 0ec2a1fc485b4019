"""Tests for tl_keras.datasets, targets and preprocessing: class specs, MNIST lookup."""

import numpy as np
import pytest
from conftest import write_npz

from tl_keras.data import mnist
from tl_keras.data import pipelines
from tl_keras.data import preprocessing
from tl_keras.data import targets
from tl_keras.errors import UserError


@pytest.mark.parametrize(
  "spec, expected",
  [
    ("0-4", [0, 1, 2, 3, 4]),
    ("all", list(range(10))),
    ("0,2,4-6", [0, 2, 4, 5, 6]),
    ("9", [9]),
    (" 5 - 7 ", [5, 6, 7]),
  ],
)
def test_parse_classes(spec, expected):
  assert mnist.parse_classes(spec) == expected


@pytest.mark.parametrize("spec", ["", "a", "4-2", "10", "0-4,x", "1..3"])
def test_parse_classes_rejects_bad_specs(spec):
  with pytest.raises(UserError, match="class"):
    mnist.parse_classes(spec)


def test_mnist_target_remaps_labels(small_mnist_dir):
  target = targets.load_target("mnist:5-9", small_mnist_dir)
  assert target.class_names == ["5", "6", "7", "8", "9"]
  assert set(np.unique(target.y_train)) == set(range(5))
  assert len(target.x_train) == 5 * 600 and len(target.x_test) == 5 * 200
  # Label 0 of the target is digit 5.
  full = mnist.mnist_subset([5], small_mnist_dir)
  np.testing.assert_array_equal(target.x_train[target.y_train == 0], full.x_train)


def test_bare_mnist_target_means_all_digits(small_mnist_dir):
  assert targets.load_target("mnist", small_mnist_dir).num_classes == 10


@pytest.mark.parametrize("spec", ["cifar:1-2", "npz:", "mnist5-9"])
def test_unknown_target_is_a_user_error(spec, small_mnist_dir):
  with pytest.raises(UserError, match="--target"):
    targets.load_target(spec, small_mnist_dir)


def test_missing_mnist_file_says_how_to_provide_it(tmp_path):
  with pytest.raises(UserError, match=r"MNIST file not found.*download"):
    mnist.find_mnist_file(str(tmp_path))


def test_data_dir_env_var_is_used(small_mnist_dir, monkeypatch):
  monkeypatch.setenv(mnist.DATA_DIR_ENV, small_mnist_dir)
  assert mnist.find_mnist_file().startswith(small_mnist_dir)


def _write_npz(path, x_train, y_train, x_test, y_test):
  return write_npz(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def test_npz_target_any_labels(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
  spec = _write_npz(
    tmp_path / "t.npz", images, np.array([3, 7, 3, 7, 3, 7]), images[:2], np.array([7, 3])
  )
  target = targets.load_target(spec)
  assert target.class_names == ["3", "7"]
  np.testing.assert_array_equal(target.y_train, [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(target.y_test, [1, 0])


@pytest.mark.parametrize(
  "problem, message",
  [
    ("missing_key", "lacks key"),
    ("length", "y_train has shape"),
    ("nan", "NaN"),
    ("float_range", r"\[0, 1\]"),
    ("empty", "empty"),
  ],
)
def test_npz_target_errors(tmp_path, problem, message):
  x = np.zeros((4, 28, 28), np.uint8)
  y = np.array([0, 1, 0, 1])
  arrays = dict(x_train=x, y_train=y, x_test=x, y_test=y)
  if problem == "missing_key":
    del arrays["y_test"]
  elif problem == "length":
    arrays["y_train"] = y[:3]
  elif problem == "nan":
    arrays["x_train"] = np.full((4, 28, 28), np.nan, np.float32)
  elif problem == "float_range":
    arrays["x_train"] = np.full((4, 28, 28), 255.0, np.float32)
  elif problem == "empty":
    arrays["x_test"], arrays["y_test"] = x[:0], y[:0]
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(UserError, match=message):
    targets.load_target(f"npz:{tmp_path / 'bad.npz'}")


def test_preprocess_uint8_grey_to_model_input():
  images = np.full((2, 28, 28), 255, np.uint8)
  out = preprocessing.preprocess_images(images, (28, 28, 1)).numpy()
  assert out.shape == (2, 28, 28, 1) and out.dtype == np.float32
  np.testing.assert_allclose(out, 1.0)


def test_preprocess_float_rgb_resized_to_grey():
  images = np.zeros((3, 56, 40, 3), np.float32)
  images[:, :, :, 0] = 1.0  # pure red
  out = preprocessing.preprocess_images(images, (28, 28, 1)).numpy()
  assert out.shape == (3, 28, 28, 1)
  np.testing.assert_allclose(out, 0.2989, atol=1e-3)  # ITU-R 601 luma of red


def test_preprocess_grey_to_rgb():
  out = preprocessing.preprocess_images(
    np.full((1, 28, 28, 1), 0.5, np.float32), (32, 32, 3)
  ).numpy()
  assert out.shape == (1, 32, 32, 3)
  np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_make_dataset_batches_preprocessed_images():
  x = np.zeros((10, 28, 28), np.uint8)
  batches = list(pipelines.make_dataset(x, np.arange(10), 4, (28, 28, 1), shuffle_seed=1))
  assert [b[0].shape[0] for b in batches] == [4, 4, 2]
  assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == list(range(10))
