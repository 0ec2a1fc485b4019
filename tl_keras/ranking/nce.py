"""NCE: the negative conditional entropy of the target labels given the source's labels."""

import numpy as np

from tl_keras.ranking import width


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
  """NCE, Tran et al., "Transferability and Hardness of Supervised Classification Tasks",
  ICCV 2019: -H(Y | Z) in nats, from the empirical joint distribution of the target labels Y
  and the source model's predicted classes Z (its argmax) on the target images.

  Both take any label values; 0 when the source class decides the target class, down to
  -log(target classes) when it says nothing about it.
  """
  z, num_source = width.class_index(source_labels)
  y, num_target = width.class_index(labels)
  # The joint table's nonzero cells only: never a table as large as the two class counts.
  cells, counts = np.unique(z * num_target + y, return_counts=True)
  joint = counts / len(z)
  marginal = np.bincount(cells // num_target, weights=joint, minlength=num_source)
  return float(np.sum(joint * np.log(joint / marginal[cells // num_target])))
