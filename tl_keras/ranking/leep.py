"""LEEP: how well the source's class probabilities, mapped to target classes, predict them."""

import numpy as np

from tl_keras.ranking import width

_ROWS = 1024


def leep(predictions: np.ndarray, labels: np.ndarray) -> float:
  """LEEP, Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020: the mean log-likelihood of the target labels under the
  "expected empirical predictor" sum_z P(y | z) theta(x)_z.

  `predictions` [n, source classes] are the source model's class probabilities on the target
  images, `labels` [n] the target labels (any values). P(y | z) comes from the empirical joint
  P(y, z) = mean over examples of class y of theta(x)_z; a source class no example gives
  probability to has no conditional, and no weight in any prediction. Always <= 0.
  """
  theta = np.asarray(predictions, np.float64)
  index, num_classes = width.class_index(labels)
  joint = width.class_sums(theta, index, num_classes) / len(theta)  # [target, source]
  marginal = joint.sum(axis=0)
  conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
  # Row i's probability of its own label: theta_i . P(y_i | .), without an [n, target] matrix
  # and, a block of rows at a time, without more [n, source] matrices than theta.
  expected = np.concatenate(
    [
      (theta[start : start + _ROWS] * conditional[index[start : start + _ROWS]]).sum(axis=1)
      for start in range(0, len(theta), _ROWS)
    ]
  )
  return float(np.mean(np.log(expected)))
