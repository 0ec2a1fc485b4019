"""MNIST: finding (or downloading) mnist.npz, and subsets of its digits."""

import os
import re
from collections.abc import Sequence

import numpy as np

from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import remap_labels
from tl_keras.data.npz import load_npz
from tl_keras.errors import UserError

MNIST_FILENAME = "mnist.npz"
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
DATA_DIR_ENV = "TL_KERAS_DATA_DIR"
# How MNIST frames its digits (LeCun, Cortes, Burges): light ink on black, each digit's
# bounding box scaled into 20x20 keeping its aspect ratio, centred by mass in 28x28. Models
# trained on it record this, so that --target_fit=source frames other digits alike.
FRAMING = {"box": 20, "centred_by": "mass", "ink": "light_on_dark"}


def parse_classes(spec: str) -> list[int]:
  """Parses '0-4', 'all', or '0,2,4-6' into a sorted list of MNIST digits."""
  spec = spec.strip().lower()
  if spec == "all":
    return list(range(10))
  digits = set()
  for part in spec.split(","):
    match = re.fullmatch(r"\s*(\d)\s*(?:-\s*(\d)\s*)?", part)
    if not match:
      raise UserError(
        f"invalid class list {spec!r}: use 'all', or digits and ranges such as '0-4' or '0,2,4-6'"
      )
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) else low
    if high < low:
      raise UserError(f"invalid class range {part.strip()!r} in {spec!r}: start is after end")
    digits.update(range(low, high + 1))
  return sorted(digits)


def find_mnist_file(data_dir: str | None = None) -> str:
  """Returns a path to mnist.npz: `data_dir`, else $TL_KERAS_DATA_DIR, else the Keras cache.

  Downloads into the Keras cache only when neither a folder nor the env var is given.
  """
  folder = data_dir or os.environ.get(DATA_DIR_ENV)
  if folder:
    path = folder if folder.endswith(".npz") else os.path.join(folder, MNIST_FILENAME)
    if not os.path.isfile(path):
      origin = "--data_dir" if data_dir else f"${DATA_DIR_ENV}"
      raise UserError(
        f"MNIST file not found: {path} (from {origin}); download {MNIST_URL} "
        "into that folder or point --data_dir at the folder that holds it"
      )
    return path
  try:
    from tl_keras.keras_api import keras

    return keras.utils.get_file(MNIST_FILENAME, origin=MNIST_URL, cache_subdir="datasets")
  except Exception as e:
    raise UserError(
      "MNIST is not in the Keras cache and could not be downloaded "
      f"({type(e).__name__}); "
      f"if offline, download {MNIST_URL} elsewhere and pass --data_dir=FOLDER "
      f"or set {DATA_DIR_ENV}=FOLDER"
    ) from e


def mnist_subset(classes: Sequence[int], data_dir: str | None = None) -> LabeledData:
  """MNIST restricted to `classes`, labels remapped to 0..k-1 in the order given."""
  x_train, y_train, x_test, y_test = load_npz(find_mnist_file(data_dir))
  classes = list(classes)
  train_mask, test_mask = np.isin(y_train, classes), np.isin(y_test, classes)
  return LabeledData(
    x_train=x_train[train_mask],
    y_train=remap_labels(y_train[train_mask], classes),
    x_test=x_test[test_mask],
    y_test=remap_labels(y_test[test_mask], classes),
    class_names=[str(c) for c in classes],
    description=f"mnist:{format_classes(classes)}",
  )


def format_classes(classes: Sequence[int]) -> str:
  return ",".join(str(c) for c in classes)
