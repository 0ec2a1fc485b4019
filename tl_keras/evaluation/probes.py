"""How well a source model's features suit a target, before any finetuning: the features a new
head would sit on (by default the penultimate ones), and a linear probe on them (logistic
regression on the frozen features of the target training images, scored on its test images).
The scores that need no training (LogME and others) are in `tl_keras.ranking`.
"""

import numpy as np

from tl_keras import limits
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks


def features_of(
  model: keras.Model, images: np.ndarray, features_layer: str | None = None
) -> np.ndarray:
  """The features a new head would sit on (see `networks.feature_tensor`) for raw images,
  flattened, float64."""
  extractor = keras.Model(model.inputs, networks.feature_tensor(model, features_layer))
  features = networks.predict(extractor, images)
  return features.reshape(len(features), -1).astype(np.float64)


def features_and_outputs(
  model: keras.Model, images: np.ndarray, features_layer: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(`features_of`, the model's outputs flattened) for raw images, from one pass."""
  features = networks.feature_tensor(model, features_layer)
  flatten = keras.layers.Flatten
  joined = keras.layers.Concatenate()([flatten()(features), flatten()(model.output)])
  values = networks.predict(keras.Model(model.inputs, joined), images).astype(np.float64)
  width = int(np.prod(features.shape[1:]))
  return values[:, :width], values[:, width:]


def check_probe_memory(examples: int, width: int, num_classes: int) -> None:
  """Refuses a probe whose arrays would exceed the memory budget: the standardised features
  (float64 and float32), the kernel with its gradient and Adam's two slots, and the one-hot
  labels, logits, softmax and gradient (float32 each)."""
  need = 12 * examples * width + 16 * width * num_classes + 16 * examples * num_classes
  if need > limits.MAX_TRAINING_STEP_BYTES:
    raise UserError(
      f"a linear probe on {examples:,} examples of {width:,} features for {num_classes:,} "
      f"classes needs {need / 2**20:,.0f} MiB, above the memory budget of "
      f"{limits.memory_budget_mb()} MiB; use fewer images or classes, a narrower "
      "--features_layer, or raise --memory_budget_mb"
    )


def fit_linear_probe(
  train_features: np.ndarray, train_labels: np.ndarray, num_classes: int, steps: int = 300
) -> tuple[np.ndarray, np.ndarray]:
  """Multinomial logistic regression on frozen features: (kernel [d, k], bias [k]) such that
  `features @ kernel + bias` are the logits.

  Fitted on standardised features (training statistics, each std floored at the mean std)
  with the mean cross-entropy plus the L2 penalty |W|^2 / 2N (scikit-learn's default C=1),
  full-batch by Adam; the returned kernel and bias fold the standardisation in, so they apply
  to the raw features.
  """
  check_probe_memory(*train_features.shape, num_classes)
  mean = train_features.mean(axis=0)
  std = train_features.std(axis=0)
  # Dividing by a feature's own tiny std (a unit that rarely fires) folds into a huge kernel
  # row: 4,766 at most on MNIST 5-9 with 100 per class, which int8 TFLite export cannot hold
  # (76% agreement with Keras) and finetuning barely moves. Floored at the mean std, the row
  # stays near 3, and the probe scored 82.8% and 92.5% with 10 and 100 per class (3 seeds)
  # against 80.5% and 91.9%.
  scale = np.maximum(std, std.mean()) + 1e-6
  weights, bias = _adam_logistic_regression(
    ((train_features - mean) / scale).astype(np.float32), train_labels, num_classes, steps
  )
  kernel = weights.astype(np.float64) / scale[:, None]
  return kernel, bias.astype(np.float64) - mean @ kernel


def _adam_logistic_regression(x, labels, num_classes: int, steps: int, rate: float = 0.05):
  """(weights [d, k], bias [k]) minimising the mean cross-entropy plus |W|^2 / 2N, full-batch
  by Adam as Keras runs it (beta 0.9 and 0.999, epsilon 1e-7, zero start). In NumPy: on the
  small sets ranking scores, tracing a TensorFlow function cost more than the steps."""
  count = len(labels)
  one_hot = np.zeros((count, num_classes), np.float32)
  one_hot[np.arange(count), labels] = 1
  params = [np.zeros((x.shape[1], num_classes), np.float32), np.zeros(num_classes, np.float32)]
  moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
  penalty = np.float32(1.0 / count)  # the gradient of |W|^2 / 2N
  for step in range(1, steps + 1):
    logits = x @ params[0] + params[1]
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    error = (probabilities - one_hot) / np.float32(count)
    grads = [x.T @ error + penalty * params[0], error.sum(axis=0)]
    step_rate = np.float32(rate * np.sqrt(1 - 0.999**step) / (1 - 0.9**step))
    for param, grad, (first, second) in zip(params, grads, moments):
      first += np.float32(0.1) * (grad - first)
      second += np.float32(0.001) * (grad * grad - second)
      param -= step_rate * first / (np.sqrt(second) + np.float32(1e-7))
  return params


def linear_probe_accuracy(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  test_features: np.ndarray,
  test_labels: np.ndarray,
  steps: int = 300,
) -> float:
  """Test accuracy of `fit_linear_probe` trained on the training features."""
  num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  kernel, bias = fit_linear_probe(train_features, train_labels, num_classes, steps)
  predicted = np.argmax(test_features @ kernel + bias, axis=1)
  return float((predicted == test_labels).mean())
