"""dir: targets (class-per-folder images), per-class subsets and stratified splits."""

import os

import numpy as np
import pytest
from conftest import first_digits
from conftest import write_image_folder

from tl_keras.config import settings
from tl_keras.data import labeled
from tl_keras.data import pipelines
from tl_keras.data import targets
from tl_keras.errors import UserError

INPUT_SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def digits(small_mnist_dir):
  """20 train and 10 test images of each of the digits 5-7: (x_train, y_train, x_test, y_test)."""
  return first_digits(small_mnist_dir, 20, 10)


def test_train_and_test_folders_of_mixed_formats_sizes_and_colours(digits, tmp_path):
  x_train, y_train, x_test, y_test = digits
  names = ["five", "six", "seven"]
  write_image_folder(
    tmp_path / "train",
    x_train,
    y_train,
    names,
    extensions=("png", "jpg", "bmp", "gif"),
    size=(56, 56),
    rgb=True,
  )
  write_image_folder(tmp_path / "test", x_test, y_test, names)
  target = targets.load_target(f"dir:{tmp_path}", input_shape=INPUT_SHAPE)
  assert target.class_names == ["five", "seven", "six"]  # folder names, sorted
  assert target.x_train.shape == (60, 28, 28, 1) and target.x_test.shape == (30, 28, 28, 1)
  assert (
    target.x_train.dtype == np.float32 and 0 <= target.x_train.min() <= target.x_train.max() <= 1
  )
  assert np.bincount(target.y_train).tolist() == [20, 20, 20]
  # The PNG test images come back exactly; labels follow the sorted folder names.
  order = {"five": 0, "seven": 1, "six": 2}
  expected = {order[names[label]]: image for image, label in zip(x_test, y_test)}
  for label in range(3):
    got = target.x_test[target.y_test == label]
    assert any(np.allclose(image[..., 0], expected[label] / 255.0, atol=1e-3) for image in got)


def test_pad_keeps_the_aspect_ratio_and_resize_stretches(tmp_path):
  wide = np.zeros((1, 14, 56), np.uint8)
  wide[:, :, 20:36] = 255  # a bright band in the middle of a 4:1 image
  write_image_folder(tmp_path / "train", wide, [0], ["a"])
  write_image_folder(tmp_path / "test", wide, [0], ["a"])
  padded = targets.load_target(f"dir:{tmp_path}", input_shape=INPUT_SHAPE, fit="pad").x_train[
    0, ..., 0
  ]
  stretched = targets.load_target(f"dir:{tmp_path}", input_shape=INPUT_SHAPE).x_train[0, ..., 0]
  # Pad: the 28x7 image is centred, black rows above and below.
  assert padded[:10].max() == 0 and padded[-10:].max() == 0 and padded[14, 14] > 0.9
  assert stretched[:10, 14].min() > 0.9  # resize fills the whole height


def test_unreadable_files_are_listed_and_skipped(digits, tmp_path, capsys):
  x_train, y_train, x_test, y_test = digits
  write_image_folder(tmp_path / "train", x_train, y_train, ["5", "6", "7"])
  write_image_folder(tmp_path / "test", x_test, y_test, ["5", "6", "7"])
  (tmp_path / "train" / "6" / "broken.png").write_bytes(b"not an image")
  (tmp_path / "train" / "6" / "notes.txt").write_text("hello")
  (tmp_path / "train" / "6" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
  target = targets.load_target(f"dir:{tmp_path}", input_shape=INPUT_SHAPE)
  assert len(target.x_train) == 60
  warning = capsys.readouterr().err
  assert warning.startswith("warning: skipped 2 file(s)")
  assert "broken.png" in warning and "notes.txt" in warning and ".DS_Store" not in warning


def test_class_folders_split_by_test_split_seeded_and_stratified(digits, tmp_path):
  x_train, y_train, _, _ = digits
  write_image_folder(tmp_path, x_train, y_train, ["5", "6", "7"])
  first = targets.load_target(f"dir:{tmp_path}", input_shape=INPUT_SHAPE, test_split=0.25, seed=3)
  again = targets.load_target(f"dir:{tmp_path}", input_shape=INPUT_SHAPE, test_split=0.25, seed=3)
  other = targets.load_target(f"dir:{tmp_path}", input_shape=INPUT_SHAPE, test_split=0.25, seed=4)
  assert np.bincount(first.y_test).tolist() == [5, 5, 5]
  assert np.bincount(first.y_train).tolist() == [15, 15, 15]
  assert np.array_equal(first.x_test, again.x_test)
  assert not np.array_equal(first.x_test, other.x_test)


@pytest.mark.parametrize(
  "layout, message",
  [
    ("empty class", "holds no readable images"),
    ("only train", "has train/ but no test/"),
    ("unknown test class", "that"),
    ("no class folders", "has no class subfolders"),
    ("missing", "target folder not found"),
  ],
)
def test_folder_errors(layout, message, digits, tmp_path):
  x_train, y_train, _, _ = digits
  root = tmp_path / "target"
  if layout == "empty class":
    write_image_folder(root, x_train, y_train, ["5", "6", "7"])
    os.makedirs(root / "8")
  elif layout == "only train":
    write_image_folder(root / "train", x_train, y_train, ["5", "6", "7"])
  elif layout == "unknown test class":
    write_image_folder(root / "train", x_train, y_train, ["5", "6", "7"])
    write_image_folder(root / "test", x_train, y_train, ["5", "6", "9"])
  elif layout == "no class folders":
    os.makedirs(root)
    (root / "a.png").write_bytes(b"")
  with pytest.raises(UserError, match=message):
    targets.load_target(f"dir:{root}", input_shape=INPUT_SHAPE)


def test_train_per_class_is_a_seeded_stratified_subset(small_mnist_dir, capsys):
  options = settings.make(settings.TargetSettings, target="mnist:5-9", train_per_class=10)
  subset = targets.prepare_target(options, INPUT_SHAPE, small_mnist_dir, seed=1)
  assert np.bincount(subset.y_train).tolist() == [10] * 5
  assert len(subset.x_test) == 5 * 200  # test data untouched
  again = targets.prepare_target(options, INPUT_SHAPE, small_mnist_dir, seed=1)
  assert np.array_equal(subset.x_train, again.x_train)
  short = targets.subset_per_class(subset, 12, seed=0)
  assert len(short.x_train) == 50 and "fewer than 12" in capsys.readouterr().err
  with pytest.raises(UserError, match="at least 0"):
    targets.subset_per_class(subset, -1, seed=0)
  # 0 per class keeps no training image (adaptation without labels), the test images all.
  none = targets.subset_per_class(subset, 0, seed=0)
  assert len(none.x_train) == len(none.y_train) == 0 and len(none.x_test) == 5 * 200


def test_split_per_class_holds_out_each_class_and_keeps_one():
  labels = np.array([0] * 10 + [1] * 4 + [2])
  kept, held = labeled.split_per_class(labels, 0.5, seed=0)
  assert np.bincount(labels[held], minlength=3).tolist() == [5, 2, 0]
  assert sorted(np.concatenate([kept, held]).tolist()) == list(range(15))


def test_augmentation_changes_training_images_only():
  x = np.zeros((8, 28, 28), np.uint8)
  x[:, 10:18, 12:16] = 255
  y = np.arange(8)
  plain = next(iter(pipelines.make_dataset(x, y, 8, INPUT_SHAPE)))[0].numpy()
  images, labels = next(
    iter(pipelines.make_dataset(x, y, 8, INPUT_SHAPE, shuffle_seed=0, augment=True))
  )
  images = images.numpy()
  assert images.shape == plain.shape and sorted(labels.numpy()) == list(range(8))
  assert 0 <= images.min() and images.max() <= 1.0 + 1e-6
  changed = [not np.allclose(image, plain[0], atol=0.05) for image in images]
  assert sum(changed) >= 6  # nearly every image moved, rotated or zoomed
