"""Bounds on the work of scores whose cost grows with feature width or class count.

Scores that form a width x width matrix (LogME, H-score) call `reduce_width` first, so that
matrix is at most `MAX_WIDTH` square whatever the model's feature width. Per-class work goes
through `class_index`, which numbers the classes present (never a table as long as the largest
label value), and sums over classes are taken `CLASS_CHUNK` classes at a time.
"""

import numpy as np

# 1024 x 1024 float64 is 8 MiB and its eigendecomposition about a second on one core.
MAX_WIDTH = 1024
CLASS_CHUNK = 256
_PROJECTION_ROWS = 4096  # rows of the random projection drawn at a time


def class_index(labels: np.ndarray) -> tuple[np.ndarray, int]:
  """(each example's class numbered 0..C-1 in order of label value, C)."""
  classes, index = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
  return index, len(classes)


def reduce_width(features: np.ndarray, max_width: int = MAX_WIDTH, seed: int = 0) -> np.ndarray:
  """`features` [n, d] as float64 with at most `max_width` columns.

  Kept as they are when d <= max_width. Else, with n <= max_width, replaced by U S from
  `spectrum` (F = U S V^T): the coordinates in F's row space, which keep every inner product
  between examples (F F^T), so LogME and the plain H-score are unchanged. Else (n and d both
  large) projected by a seeded Gaussian random matrix to max_width columns, which keeps inner
  products approximately (Johnson-Lindenstrauss); the matrix is drawn a block of rows at a
  time, so memory stays n x max_width plus one block.
  """
  f = np.asarray(features, np.float64)
  n, d = f.shape
  if d <= max_width:
    return f
  if n <= max_width:
    u, s = spectrum(f)
    return u * s
  rng = np.random.default_rng(seed)
  projected = np.zeros((n, max_width))
  for start in range(0, d, _PROJECTION_ROWS):
    block = rng.standard_normal((min(_PROJECTION_ROWS, d - start), max_width))
    projected += f[:, start : start + _PROJECTION_ROWS] @ block
  return projected / np.sqrt(max_width)


def spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(U [n, r], s [r]) of the thin SVD F = U S V^T without its zero singular values, from the
  eigendecomposition of the smaller of F F^T and F^T F (4-5x faster than an SVD of F at
  1000 x 2048; the singular values below 1e-6 of the largest, lost to rounding, are dropped)."""
  n, d = features.shape
  if n <= d:
    squares, u = np.linalg.eigh(features @ features.T)
  else:
    squares, v = np.linalg.eigh(features.T @ features)
  keep = squares > max(squares.max(initial=0.0), 1e-300) * 1e-12
  s = np.sqrt(squares[keep])
  return (u[:, keep] if n <= d else features @ v[:, keep] / s), s


def class_sums(values: np.ndarray, index: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes, ...] sums of `values` rows per class (`index` from `class_index`)."""
  order = np.argsort(index, kind="stable")
  starts = np.searchsorted(index[order], np.arange(num_classes))
  return np.add.reduceat(values[order], starts, axis=0)
