"""Fusion by averaging the members' weights: a model soup (Wortsman et al., ICML 2022).

Members finetuned from one source lie in one basin of the loss, so the mean of their weights
is a model that often beats each of them, at one member's inference cost: the soup is a plain
Keras model of the members' architecture. Uniform: every member's weights, equally. Greedy:
members sorted by held-out accuracy, each added only if the soup's held-out accuracy does not
drop, so it never scores below its first (best) member there.

Members must share the architecture (layer names, weight shapes) and the origin: the source
model's fingerprint (`SOURCE_FINGERPRINT` in their metadata) where every member records it
(finetune does not record it yet), and the weights of their frozen layers must be equal.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks

MODES = ("greedy", "uniform")
SOURCE_FINGERPRINT = "source_weights_sha256"  # metadata key of the source model's weights


def check_members(
  members: Sequence[keras.Model], names: Sequence[str], metadata: Sequence[dict[str, Any]]
) -> None:
  """Refuses, in one line, members whose architectures or origins differ from the first's."""
  first = _architecture(members[0])
  for member, name in zip(members[1:], names[1:]):
    if _architecture(member) != first:
      raise UserError(
        f"cannot average the weights of {name} and {names[0]}: their architectures (layer "
        "names and weight shapes) differ; a soup needs members finetuned from one source the "
        "same way"
      )
  origins = [meta.get(SOURCE_FINGERPRINT) for meta in metadata]
  if all(origins):
    for origin, name in zip(origins[1:], names[1:]):
      if origin != origins[0]:
        raise UserError(
          f"cannot average the weights of {name} and {names[0]}: they were finetuned from "
          f"different source models ({SOURCE_FINGERPRINT} in their metadata differs)"
        )
  frozen = _frozen_weights(members[0])
  for member, name in zip(members[1:], names[1:]):
    if not all(np.array_equal(a, b) for a, b in zip(_frozen_weights(member), frozen)):
      raise UserError(
        f"cannot average the weights of {name} and {names[0]}: the weights of their frozen "
        "layers differ, so they were not finetuned from the same source model"
      )


def _architecture(model: keras.Model) -> list[tuple[str, list[tuple[int, ...]]]]:
  return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers]


def _frozen_weights(model: keras.Model) -> list[np.ndarray]:
  return [w.numpy() for layer in model.layers if not layer.trainable for w in layer.weights]


def average_weights(members: Sequence[keras.Model]) -> list[np.ndarray]:
  """The mean of the members' weights, array by array (non-float arrays: the first's)."""
  arrays = [member.get_weights() for member in members]
  averaged = []
  for values in zip(*arrays):
    if np.issubdtype(values[0].dtype, np.floating):
      averaged.append(np.mean(np.stack(values), axis=0, dtype=np.float64).astype(values[0].dtype))
    else:
      averaged.append(values[0])
  return averaged


def fit_members(
  members: Sequence[keras.Model],
  validation: Sequence[np.ndarray] | None,
  images,
  labels: np.ndarray,
  mode: str = "greedy",
) -> dict[str, Any]:
  """The members in the soup: {"weights": 1/n for each of the n chosen, 0 for the others,
  "order": the members' indices in the order they were tried}. Greedy reads the members'
  `validation` probabilities on `images` (held out) and the soups' accuracy there."""
  count = len(members)
  if mode == "uniform" or not len(labels):
    return fit(None, labels, None, count)
  accuracies = [float((p.argmax(axis=1) == labels).mean()) for p in validation]
  order = [int(i) for i in np.argsort(-np.asarray(accuracies), kind="stable")]
  chosen, best = [order[0]], accuracies[order[0]]
  soup = _copy(members[0])
  for index in order[1:]:
    soup.set_weights(average_weights([members[i] for i in [*chosen, index]]))
    accuracy = float((networks.predict(soup, images).argmax(axis=1) == labels).mean())
    if accuracy >= best:
      chosen.append(index)
      best = accuracy
  weights = np.zeros(count)
  weights[chosen] = 1.0 / len(chosen)
  return {"weights": weights, "order": order}


def build(members: Sequence[keras.Model], fitted: dict[str, Any]) -> keras.Model:
  """The soup: a model of the members' architecture holding the mean weights of those with a
  nonzero weight in `fitted`. The members are left as they were."""
  chosen = [member for member, weight in zip(members, fitted["weights"]) if weight > 0]
  soup = _copy(members[0])
  soup.set_weights(average_weights(chosen))
  soup._name = "soup"
  return soup


def _copy(model: keras.Model) -> keras.Model:
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights())
  return copy


# The probability interface of the other fusion modules: a soup has no function of the members'
# probabilities (the stage calls `check_members`, `fit_members` and `build` instead).
def fit(probabilities, labels, num_classes, count=None):
  count = count or len(probabilities)
  return {"weights": np.full(count, 1.0 / count), "order": list(range(count))}


def probabilities(fitted, probabilities):
  raise NotImplementedError("a soup averages weights: predict with `build`'s model")


def combine(outputs, fitted, num_classes):
  raise NotImplementedError("a soup averages weights: `build` makes its model")


def unconstrained_weights(count, num_classes):
  return 0  # members are in or out, judged by accuracy
