"""H-score: how much of the features' variance the target classes explain."""

import numpy as np

from tl_keras.ranking import width


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
  """H-score, Bao et al., "An Information-theoretic Approach to Transferability in Task
  Transfer Learning", ICIP 2019: tr(cov(f)^-1 cov(E[f | y])), from 0 to (target classes - 1).

  With `shrinkage` (the default), cov(f) is the Ledoit-Wolf shrinkage estimate and cov(E[f|y])
  is scaled by (1 - shrinkage): the regularised H-score of Ibrahim et al., "Newer is not
  always better: Rethinking transferability metrics, their peculiarities, stability and
  performance", ECML PKDD 2022, stable where the sample covariance is near singular (width
  near or above the example count), where the plain score's pseudo-inverse is noise. Without
  it, the plain score with a pseudo-inverse. Both covariances are the biased (1/n) ones. A
  width above `width.MAX_WIDTH` is reduced first (`width.reduce_width`), which leaves the
  plain score unchanged while there are at most that many examples.
  """
  f = width.reduce_width(features)
  f = f - f.mean(axis=0)
  n, d = f.shape
  index, num_classes = width.class_index(labels)
  counts = np.bincount(index, minlength=num_classes).astype(np.float64)
  means = width.class_sums(f, index, num_classes) / counts[:, None]  # E[f | y], centred
  covariance = f.T @ f / n
  kept = 1.0
  if shrinkage:
    shrunk = ledoit_wolf_shrinkage(f, covariance)
    target = np.trace(covariance) / d
    covariance = (1 - shrunk) * covariance + shrunk * target * np.eye(d)
    kept = 1 - shrunk
  inverse = np.linalg.pinv(covariance, hermitian=True)
  # tr(inverse @ cov(E[f|y])), cov(E[f|y]) = sum_y P(y) E[f|y] E[f|y]^T, without forming it.
  return float(kept * np.sum(counts / n * ((means @ inverse) * means).sum(axis=1)))


def ledoit_wolf_shrinkage(centred: np.ndarray, covariance: np.ndarray) -> float:
  """The Ledoit-Wolf (2004) weight of the scaled identity in the shrunk covariance of the
  centred rows, from 0 to 1: the estimated error of `covariance` (biased) over its distance
  to that identity."""
  n, d = centred.shape
  target = np.trace(covariance) / d
  distance = (np.sum(covariance**2) - 2 * target * np.trace(covariance) + d * target**2) / d
  error = (np.sum(np.sum(centred**2, axis=1) ** 2) / n**2 - np.sum(covariance**2) / n) / d
  return float(min(error, distance) / distance) if distance > 0 else 0.0
