"""LogME: the maximum evidence of a Bayesian linear model from features to one-hot labels."""

import numpy as np

from tl_keras.ranking import width


def logme(features: np.ndarray, labels: np.ndarray, max_iterations: int = 100) -> float:
  """LogME, You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021: the mean over classes of the per-example log evidence.

  For each class's one-hot column y, the model y = F w + noise with priors w ~ N(0, 1/alpha)
  and noise ~ N(0, 1/beta) has alpha and beta fitted by MacKay's fixed-point iteration; the
  evidence follows in closed form from the SVD of F (`width.spectrum`; Algorithm 1 of the
  paper, run for all classes at once in the eigenbasis). The evidence depends on F only
  through F F^T, so a width above `width.MAX_WIDTH` is reduced exactly by `width.reduce_width`
  while there are at most that many examples, approximately (random projection) beyond. The
  features are rescaled first, which the evidence's maximum does not depend on.
  """
  f = width.reduce_width(features)
  n = len(f)
  index, num_classes = width.class_index(labels)
  u, s = width.spectrum(f)
  # The maximum evidence is the same for c F and F (alpha takes c^2), but the iteration's
  # 1e-5 floors are not: rescaled to a mean squared row norm of 1, the score is invariant.
  s = s / max(np.sqrt((s**2).sum() / n), 1e-300)
  sigma = s**2  # eigenvalues of F^T F; those left out are 0 and cancel out of the evidence
  evidences = []
  for start in range(0, num_classes, width.CLASS_CHUNK):
    chunk = np.arange(start, min(start + width.CLASS_CHUNK, num_classes))
    chosen = np.isin(index, chunk)
    projected = width.class_sums(u[chosen], index[chosen] - start, len(chunk)) * s  # V^T F^T y
    counts = np.bincount(index[chosen] - start, minlength=len(chunk)).astype(np.float64)
    # Degenerate features (all zero: blank images) give NaN, reported as null, not warnings.
    with np.errstate(divide="ignore", invalid="ignore"):
      evidences.append(_evidence(projected, counts, sigma, n, max_iterations))
  return float(np.mean(np.concatenate(evidences)))


def _posterior(projected, counts, sigma, alpha, beta):
  """(gamma, |m|^2, |y - F m|^2) per class for the posterior mean m in the eigenbasis."""
  denominator = alpha[:, None] + beta[:, None] * sigma
  gamma = (beta[:, None] * sigma / denominator).sum(axis=1)
  m = beta[:, None] * projected / denominator
  residual = counts - 2 * (projected * m).sum(axis=1) + (sigma * m**2).sum(axis=1)
  return gamma, (m**2).sum(axis=1), np.maximum(residual, 0.0)


def _evidence(projected, counts, sigma, n, max_iterations):
  """Per-example log evidence of each class (rows of `projected`) at its fitted alpha, beta."""
  alpha, beta = np.ones(len(counts)), np.ones(len(counts))
  active = np.ones(len(counts), bool)
  for _ in range(max_iterations):
    gamma, weight_norm, residual = _posterior(projected, counts, sigma, alpha, beta)
    new_alpha = gamma / (weight_norm + 1e-5)
    new_beta = (n - gamma) / (residual + 1e-5)
    converged = np.abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 1e-3
    alpha, beta = np.where(active, new_alpha, alpha), np.where(active, new_beta, beta)
    active &= ~converged
    if not active.any():
      break
  _, weight_norm, residual = _posterior(projected, counts, sigma, alpha, beta)
  evidence = (
    len(sigma) / 2 * np.log(alpha)
    + n / 2 * np.log(beta)
    - 0.5 * np.log(alpha[:, None] + beta[:, None] * sigma).sum(axis=1)
    - beta / 2 * residual
    - alpha / 2 * weight_norm
    - n / 2 * np.log(2 * np.pi)
  )
  return evidence / n
