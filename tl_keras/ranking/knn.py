"""k-NN: how often an example's nearest neighbours in feature space share its class."""

import numpy as np

from tl_keras.ranking import width

_ROWS = 512  # examples whose similarities to all others are held at a time


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
  """Leave-one-out k-nearest-neighbour accuracy under cosine similarity, from 0 to 1: a plain
  baseline the survey of 23 transferability scores (arXiv 2503.18528, 2025) found often ahead
  of the others.

  Each example is classified by a majority vote of its `k` most similar other examples
  (ties: the class with the larger summed similarity). Invariant to scaling each example's
  features. Memory: `_ROWS` x n similarities at a time.
  """
  f = np.asarray(features, np.float64)
  norms = np.linalg.norm(f, axis=1, keepdims=True)
  f = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
  index, num_classes = width.class_index(labels)
  n = len(f)
  if n < 2:
    raise ValueError(f"leave-one-out k-NN needs at least 2 examples, got {n}")
  k = min(k, n - 1)
  correct = 0
  for start in range(0, n, _ROWS):
    rows = np.arange(start, min(start + _ROWS, n))
    similarity = f[rows] @ f.T
    similarity[np.arange(len(rows)), rows] = -np.inf  # leave the example itself out
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    near_similarity = np.take_along_axis(similarity, nearest, axis=1)
    votes = np.zeros((len(rows), num_classes))
    # A vote counts 1; the similarity term (under 1e-3 in total) only breaks ties.
    np.add.at(
      votes, (np.arange(len(rows))[:, None], index[nearest]), 1 + 1e-3 / k * near_similarity
    )
    correct += int(np.sum(np.argmax(votes, axis=1) == index[rows]))
  return correct / n
