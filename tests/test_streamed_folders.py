"""Streamed dir: targets (#12 item 3): images read from their files by tf.data, not held."""

import os

import numpy as np
import pytest
from conftest import first_digits
from conftest import write_image_folder

from tl_keras import limits
from tl_keras.config import settings
from tl_keras.data import folders
from tl_keras.data import pipelines
from tl_keras.data import targets
from tl_keras.errors import UserError
from tl_keras.models import networks
from tl_keras.stages import finetune
from tl_keras.stages import transfer

INPUT_SHAPE = (28, 28, 1)
NAMES = ["five", "six", "seven"]


@pytest.fixture(scope="module")
def digits(small_mnist_dir):
  """40 train images of each of the digits 5-7: (images uint8 [N,28,28], labels 0-2)."""
  return first_digits(small_mnist_dir, 40)


@pytest.fixture(scope="module")
def folder(digits, tmp_path_factory):
  """The digits as PNG, JPEG, BMP and GIF files of 40x40 RGB pixels, one folder per class."""
  root = tmp_path_factory.mktemp("digits") / "target"
  images, labels = digits
  extensions = ("png", "jpg", "bmp", "gif")
  return write_image_folder(root, images, labels, NAMES, extensions, size=(40, 40), rgb=True)


def _load(folder, image_cache, **kwargs):
  return targets.load_target(
    f"dir:{folder}", input_shape=INPUT_SHAPE, image_cache=image_cache, seed=3, **kwargs
  )


def test_streamed_images_are_the_in_memory_ones(folder):
  held, streamed = _load(folder, "memory"), _load(folder, "none")
  assert isinstance(held.x_train, np.ndarray)
  assert isinstance(streamed.x_train, folders.ImageFiles)
  assert streamed.x_train.shape == held.x_train.shape == (96, 28, 28, 1)
  assert np.array_equal(streamed.y_train, held.y_train)
  assert np.array_equal(streamed.y_test, held.y_test)
  assert np.array_equal(np.asarray(streamed.x_train), held.x_train)  # same decoding, bit for bit
  assert np.array_equal(np.asarray(streamed.x_test), held.x_test)
  # Shuffled training batches come in the same order as from the arrays.
  batches = [
    next(iter(pipelines.make_dataset(data.x_train, data.y_train, 16, INPUT_SHAPE, shuffle_seed=1)))
    for data in (held, streamed)
  ]
  assert np.array_equal(batches[0][1], batches[1][1])
  assert np.array_equal(batches[0][0], batches[1][0])
  # Subsets (--train_per_class) stay streamed.
  subset = targets.subset_per_class(streamed, 5, seed=0)
  assert isinstance(subset.x_train, folders.ImageFiles) and len(subset.x_train) == 15


def test_auto_streams_a_folder_too_large_to_hold(folder, monkeypatch):
  assert isinstance(_load(folder, "auto").x_train, np.ndarray)
  monkeypatch.setattr(limits, "MAX_IMAGE_CACHE_BYTES", 119 * 28 * 28 * 4)  # one image short
  assert isinstance(_load(folder, "auto").x_train, folders.ImageFiles)
  with pytest.raises(UserError, match="unknown --image_cache"):
    _load(folder, "disk")


@pytest.mark.slow  # the source_model fixture trains
def test_streamed_predictions_equal_in_memory_ones(folder, source_model):
  from tl_keras import loading

  model = loading.load_model(source_model[0])
  held, streamed = _load(folder, "memory"), _load(folder, "none")
  expected = networks.predict(model, held.x_test)
  assert np.allclose(networks.predict(model, streamed.x_test, batch_size=7), expected, atol=1e-6)


def test_a_file_changed_after_the_scan_is_refused_unread(folder, digits, tmp_path):
  import shutil

  root = tmp_path / "target"
  shutil.copytree(folder, root)
  streamed = _load(root, "none")
  outside = tmp_path / "outside.png"
  shutil.copy(os.path.join(root, "five", "0.png"), outside)
  victim = streamed.x_train.paths[0]
  os.remove(victim)
  os.symlink(outside, victim)  # now points out of the folder: never opened
  with pytest.raises(Exception, match="vanished or changed after the folder scan"):
    np.asarray(streamed.x_train)


@pytest.mark.slow
def test_streamed_folder_run_gives_the_same_accuracy_as_in_memory(folder, source_model, tmp_path):
  """The same finetune (probe head, validation split) and transfer on one folder, held in memory
  and streamed from its files: the same weights, accuracy and transferability measures."""
  results = {}
  for image_cache in ("memory", "none"):
    common = dict(
      model=source_model[0],
      target=f"dir:{folder}",
      image_cache=image_cache,
      test_split=0.25,
    )
    tuned = finetune.run(
      settings.make(
        settings.FinetuneConfig,
        output_dir=str(tmp_path / f"finetune_{image_cache}"),
        epochs=2,
        head_init="probe",
        validation_split=0.2,
        batch_size=32,
        strategy="default",
        **common,
      )
    )
    measured = transfer.run(
      settings.make(
        settings.TransferConfig, output_dir=str(tmp_path / f"transfer_{image_cache}"), **common
      )
    )
    results[image_cache] = (tuned, measured)
  (held, held_transfer), (streamed, streamed_transfer) = results["memory"], results["none"]
  assert held["test_accuracy"] > 0.6  # learnt something, so equal accuracies mean something
  assert streamed["test_accuracy"] == held["test_accuracy"]
  assert streamed["weights_sha256"] == held["weights_sha256"]
  assert streamed["num_train"] == held["num_train"] and streamed["num_test"] == 30
  for key in ("linear_probe_accuracy", "logme", "num_test", "predicted_source_classes"):
    assert streamed_transfer[key] == held_transfer[key], key
  assert os.path.isfile(tmp_path / "finetune_none" / "misclassified.png")
