"""Allowed ranges of numeric settings, and the one check that enforces them.

Each numeric field of the settings tree (`settings`) names its `Range` in its metadata;
`settings.validate` calls `check_value`, which refuses NaN and infinite floats whatever the
setting, and values outside the range, with one message naming the flag and its range. The
flags' --help shows the same ranges. Upper bounds keep a typo from allocating absurd memory (a
batch, a layer, a convolution) or running for years; they are far above any useful value for
this package's models.
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
    return (
      f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
      f"{')' if self.high_open else ']'}"
    )


def check_value(name: str, value: Any, allowed: Range | None = None) -> None:
  """Refuses a non-finite float, or a value of flag `name` outside `allowed` (None passes)."""
  if value is None or isinstance(value, (bool, str)):
    return
  if not isinstance(value, numbers.Real):
    if allowed:
      raise UserError(f"--{name} must be {allowed}, got {value!r}")
    return
  if not math.isfinite(value):
    raise UserError(f"--{name} must be {allowed or 'a finite number'}, got {value}")
  if allowed and (value not in allowed or (not allowed.real and value != int(value))):
    raise UserError(f"--{name} must be {allowed}, got {value}")
