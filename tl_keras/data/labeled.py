"""Datasets: labelled image arrays, and the checks every loader shares.

A dataset here is a `LabeledData`: train/test images (NumPy arrays, or streamed image files)
with integer labels 0..k-1 and the class name of each label. The loaders: `mnist` (the source
digits), `npz` (.npz targets) and `folders` (a folder of images per class).
"""

import dataclasses
import unicodedata
from collections.abc import Sequence

import numpy as np

from tl_keras import limits
from tl_keras import untrusted
from tl_keras.errors import UserError


@dataclasses.dataclass
class UnlabeledImages:
  """Target images without labels, for adaptation. `labels` are their true labels as target
  class indices where the data holds them (`--unlabeled=rest`), else None: only reported (how
  often pseudo-labels are right), never trained on."""

  images: np.ndarray  # or folders.ImageFiles
  labels: np.ndarray | None
  description: str

  def __len__(self) -> int:
    return len(self.images)


@dataclasses.dataclass
class LabeledData:
  """Train/test images (uint8 0-255 or float 0-1) with labels 0..k-1 named by `class_names`.

  The images are arrays, or for large image folders `folders.ImageFiles`, which hold paths and
  read the files when a pass over the data needs them (`len`, `shape` and index arrays work on
  both; `pipelines.make_dataset` and `models.predict` take both).
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: list[str]
  description: str = ""
  unlabeled: UnlabeledImages | None = None  # see `targets.prepare_target`
  fit: str | None = None  # how the images were fitted to a model's input (--target_fit)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def metadata(self) -> dict[str, object]:
    """What a model trained on this data records: class names and the label each maps to."""
    return {
      "class_names": self.class_names,
      "dataset": self.description,
      "label_map": {name: index for index, name in enumerate(self.class_names)},
    }


def shown(text: str) -> str:
  """`text` for a one-line message: as it is, or quoted with escapes if it holds control
  characters (a newline in a file name must not split the line)."""
  text = str(text)
  return repr(text) if any(unicodedata.category(c).startswith("C") for c in text) else text


def check_class_count(count: int, origin: str) -> None:
  """Refuses more than limits.MAX_CLASSES classes (or model outputs) from `origin`."""
  if count > limits.MAX_CLASSES:
    raise UserError(
      f"{origin}: {count:,} classes, more than the {limits.MAX_CLASSES:,} the memory budget "
      "allows; raise --memory_budget_mb if you mean it"
    )


def check_class_names(names, origin: str) -> list[str]:
  """`names` as a list of strings; refuses anything but non-empty strings without control or
  format characters (Unicode category C*: newline, tab, bidi overrides, ...), which would
  break class_names.txt, CSV rows and one-line messages. `origin` names where they come from.
  """
  if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
    raise UserError(f"{origin}: class names must be a list of strings, not {type(names).__name__}")
  check_class_count(len(names), origin)
  for name in names:
    if not isinstance(name, str) or not name:
      raise UserError(f"{origin}: class name {repr(name)[:80]} is not a non-empty string")
    bad = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c).startswith("C")})
    if bad:
      short = repr(name if len(name) <= 60 else name[:60] + "...")
      raise UserError(
        f"{origin}: class name {short} contains control character(s) "
        f"{', '.join(bad[:5])}; rename it"
      )
  return list(names)


def read_regular_file(path: str, max_bytes: int, what: str = "file") -> bytes | None:
  """`untrusted.read_regular_file`: the bytes of a regular file, never a symlink, FIFO or
  device, refused over `max_bytes` before reading."""
  return untrusted.read_regular_file(path, max_bytes, what)


def remap_labels(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  """Each label's index in `classes`, -1 for labels not in it. By binary search, not a table
  as long as the largest label (an .npz's label 2**62 would ask for exabytes)."""
  classes = np.asarray(classes, dtype=np.int64)
  labels = np.asarray(labels)
  order = np.argsort(classes, kind="stable")
  ordered = classes[order]
  position = np.clip(np.searchsorted(ordered, labels), 0, len(ordered) - 1)
  found = ordered[position] == labels
  return np.where(found, order[position], -1).astype(np.int64)


def split_per_class(
  labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Seeded stratified split: (kept indices, held-out indices), `fraction` of each class held.

  Each class keeps at least one example; both index arrays are sorted.
  """
  rng = np.random.default_rng(seed)
  kept, held = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    count = min(int(round(fraction * len(members))), len(members) - 1)
    held.append(members[:count])
    kept.append(members[count:])
  return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))
