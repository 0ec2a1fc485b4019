"""Targets from image folders: one subfolder per class, read into a `data.LabeledData`.

The folder holds either `train/` and `test/`, each with one subfolder per class, or the class
subfolders themselves, split into train and test per class with a seeded fraction. Any image
TensorFlow decodes (PNG, JPEG, BMP, GIF: first frame) of any size, colour or grey, is fitted
to the model's input by `data.preprocess_images`; files that do not decode are listed in one
warning and skipped.
"""

import os
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tl_keras import data
from tl_keras.errors import UserError
from tl_keras.errors import warn

SPLIT_DIRNAMES = ("train", "test")
_LISTED_UNREADABLE = 10


def _visible_entries(folder: str) -> List[str]:
  return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _class_dirs(folder: str) -> List[str]:
  names = [name for name in _visible_entries(folder) if os.path.isdir(os.path.join(folder, name))]
  if not names:
    raise UserError(f"{folder} has no class subfolders: put each class's images in a folder "
                    "named after the class")
  return names


def _decode(path: str) -> np.ndarray:
  contents = tf.io.read_file(path)
  return tf.io.decode_image(contents, channels=3, expand_animations=False).numpy()


def _read_classes(folder: str, class_names: Sequence[str], labels: Sequence[int],
                  input_shape: Sequence[int], fit: str,
                  unreadable: List[str]) -> Tuple[np.ndarray, np.ndarray]:
  """Reads the images of each class subfolder, fitted to `input_shape`; labels as given."""
  images, image_labels = [], []
  for name, label in zip(class_names, labels):
    class_dir = os.path.join(folder, name)
    count = 0
    for filename in _visible_entries(class_dir):
      path = os.path.join(class_dir, filename)
      if os.path.isdir(path):
        continue
      try:
        pixels = _decode(path)
      except (tf.errors.OpError, ValueError):
        unreadable.append(path)
        continue
      images.append(data.preprocess_images(pixels[np.newaxis], input_shape, fit).numpy()[0])
      image_labels.append(label)
      count += 1
    if not count:
      raise UserError(f"class folder {class_dir} holds no readable images")
  return np.stack(images), np.asarray(image_labels, np.int64)


def load_image_folder(path: str, input_shape: Sequence[int], fit: str = "resize",
                      test_split: float = 0.2, seed: int = 42) -> data.LabeledData:
  """Reads a class-per-subfolder image target, fitted to `input_shape` (float32 in [0, 1]).

  With `train/` and `test/` subfolders they are the splits (test classes must occur in
  train); otherwise each class is split with `test_split` of its images, seeded, for test.
  """
  if not os.path.isdir(path):
    raise UserError(f"target folder not found: {path}")
  present = [name for name in SPLIT_DIRNAMES if os.path.isdir(os.path.join(path, name))]
  if len(present) == 1:
    raise UserError(f"{path} has {present[0]}/ but no {({'train', 'test'} - set(present)).pop()}/:"
                    " give both, or class folders directly and --test_split")
  unreadable = []
  if present:
    train_dir, test_dir = (os.path.join(path, name) for name in SPLIT_DIRNAMES)
    class_names = _class_dirs(train_dir)
    test_names = _class_dirs(test_dir)
    unknown = sorted(set(test_names) - set(class_names))
    if unknown:
      raise UserError(f"{test_dir} has class folder(s) {', '.join(unknown)} that {train_dir} "
                      "lacks, so no model could learn them")
    x_train, y_train = _read_classes(train_dir, class_names, range(len(class_names)),
                                     input_shape, fit, unreadable)
    x_test, y_test = _read_classes(test_dir, test_names,
                                   [class_names.index(name) for name in test_names],
                                   input_shape, fit, unreadable)
  else:
    if not 0 < test_split < 1:
      raise UserError(f"--test_split must lie between 0 and 1, got {test_split}")
    class_names = _class_dirs(path)
    images, labels = _read_classes(path, class_names, range(len(class_names)), input_shape,
                                   fit, unreadable)
    train_index, test_index = data.split_per_class(labels, test_split, seed)
    if not len(test_index):
      raise UserError(f"{path}: too few images for a test split of {test_split}; add images or "
                      "use train/ and test/ subfolders")
    x_train, y_train, x_test, y_test = (images[train_index], labels[train_index],
                                        images[test_index], labels[test_index])
  if unreadable:
    listed = ", ".join(unreadable[:_LISTED_UNREADABLE])
    more = len(unreadable) - _LISTED_UNREADABLE
    warn(f"skipped {len(unreadable)} file(s) that are not readable images: {listed}"
         + (f" and {more} more" if more > 0 else ""))
  return data.LabeledData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                          class_names=class_names, description=f"dir:{path}")
