"""The allowed range of every numeric setting, and the one check that enforces it.

The configs' `validate()` (and so the CLI and the Python API alike) call `check`, which
refuses NaN and infinite floats whatever the setting, and values outside the table below,
with one message naming the flag and its range. The flags' --help shows the same ranges.
Upper bounds keep a typo from allocating absurd memory (a batch, a layer, a convolution) or
running for years; they are far above any useful value for this package's models.
"""

import dataclasses
import math
import numbers
from typing import Any

from tl_keras.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
  """Whole numbers from `low` to `high`, or with `real`, numbers between them (an open bound
  excludes the value itself)."""
  low: float
  high: float
  real: bool = False
  low_open: bool = False
  high_open: bool = False

  def __contains__(self, value) -> bool:
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return above and below

  def __str__(self) -> str:
    if not self.real:
      return f"a whole number from {self.low:_} to {self.high:_}"
    return (f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
            f"{')' if self.high_open else ']'}")


MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536  # 205 MB of 28x28 float32 images in one step; far more for larger inputs
MAX_HEAD_UNITS = 4_096  # the widest classic classifier head (VGG's)
MAX_CONV_FILTERS = 1_024
MAX_LEARNING_RATE = 10.0  # 10x Adadelta's usual 1.0

# Settings by name (the CLI flag of the same name); settings that are None take a default.
RANGES = {
    "epochs": Range(1, MAX_EPOCHS),
    "warmup_epochs": Range(0, MAX_EPOCHS),
    "patience": Range(1, MAX_EPOCHS),
    "batch_size": Range(1, MAX_BATCH_SIZE),
    "per_replica_batch_size": Range(1, MAX_BATCH_SIZE),
    # NumPy's and Python's generators take seeds below 2**32.
    "seed": Range(0, 2**32 - 1),
    "learning_rate": Range(0, MAX_LEARNING_RATE, real=True, low_open=True),
    "finetune_learning_rate": Range(0, MAX_LEARNING_RATE, real=True, low_open=True),
    "validation_split": Range(0, 1, real=True, high_open=True),
    "test_split": Range(0, 1, real=True, low_open=True, high_open=True),
    "train_per_class": Range(1, 10_000_000),
    "head_units": Range(0, MAX_HEAD_UNITS),
    "head_dropout": Range(0, 1, real=True, high_open=True),
    "head_l2": Range(0, 1, real=True),
    "conv_filters": Range(1, MAX_CONV_FILTERS),  # each convolution's
    "max_model_mb": Range(1, 1 << 20),
}


def describe(name: str) -> str:
  """The range of setting `name` for --help, e.g. 'a whole number from 1 to 10_000'."""
  return str(RANGES[name])


def check_value(name: str, value: Any) -> None:
  """Refuses a non-finite float, or a value of setting `name` outside its range (None passes)."""
  if value is None or isinstance(value, (bool, str)):
    return
  allowed = RANGES.get(name)
  if not isinstance(value, numbers.Real):
    if allowed:
      raise UserError(f"--{name} must be {allowed}, got {value!r}")
    return
  if not math.isfinite(value):
    raise UserError(f"--{name} must be {allowed or 'a finite number'}, got {value}")
  if allowed and (value not in allowed or (not allowed.real and value != int(value))):
    raise UserError(f"--{name} must be {allowed}, got {value}")


def check(settings: Any) -> None:
  """`check_value` on every field of the dataclass `settings`."""
  for field in dataclasses.fields(settings):
    check_value(field.name, getattr(settings, field.name))
