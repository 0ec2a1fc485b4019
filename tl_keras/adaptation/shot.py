"""SHOT, source hypothesis transfer (Liang et al., ICML 2020): source-free adaptation. The
source model's classifier (the hypothesis) stays frozen and the features learn, on the target's
unlabelled images alone, to fit it:

- information maximisation: low entropy of each image's prediction, high entropy of the
  batch's mean prediction (the diversity term, which keeps the classes apart and stops the
  collapse to one class);
- pseudo-labels from class centroids in feature space, recomputed before each epoch over the
  watched unlabelled images (one prediction pass): centroids weighted by the predictions,
  each image labelled by the nearest one (cosine), then one refinement with hard labels.
  The batch's images take the label of the nearest centroid, weighted `PSEUDO_LABEL_WEIGHT`
  (SHOT's 0.3); in SHOT this term is worth 6 points over information maximisation alone.

No source images: without target labels, a batch's labelled part is empty.
"""

import numpy as np
import tensorflow as tf

from tl_keras.adaptation import base
from tl_keras.keras_api import keras
from tl_keras.models import networks

PSEUDO_LABEL_WEIGHT = 0.3
_EPSILON = 1e-5


def information_maximisation(probabilities: tf.Tensor) -> tf.Tensor:
  """Mean per-image entropy minus the entropy of the mean prediction (SHOT's L_ent + L_div)."""
  probabilities = tf.cast(probabilities, tf.float32)
  per_image = -tf.reduce_sum(probabilities * tf.math.log(probabilities + _EPSILON), axis=1)
  mean = tf.reduce_mean(probabilities, axis=0)
  diversity = -tf.reduce_sum(mean * tf.math.log(mean + _EPSILON))
  return tf.reduce_mean(per_image) - diversity


def _normalised(features: np.ndarray) -> np.ndarray:
  """Features with a constant 1 appended, L2-normalised (SHOT's cosine distance)."""
  features = np.concatenate([features, np.ones([len(features), 1], features.dtype)], axis=1)
  return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def centroid_labels(
  features: np.ndarray, probabilities: np.ndarray, rounds: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels, centroids, present): SHOT's pseudo-labels for `features` [N, F] from the model's
  `probabilities` [N, K]. Centroids [K, F + 1] (on `_normalised` features) are weighted by the
  probabilities, then recomputed `rounds` times from the hard labels; only the classes some
  image is predicted as (`present`) can be a label."""
  points = _normalised(np.asarray(features, np.float64))
  probabilities = np.asarray(probabilities, np.float64)
  classes = probabilities.shape[1]
  present = np.bincount(probabilities.argmax(axis=1), minlength=classes) > 0
  centroids = probabilities.T @ points / (probabilities.sum(axis=0)[:, None] + 1e-8)
  labels = _nearest(points, centroids, present)
  for _ in range(rounds):
    one_hot = np.eye(classes)[labels]
    centroids = one_hot.T @ points / (one_hot.sum(axis=0)[:, None] + 1e-8)
    labels = _nearest(points, centroids, present)
  return labels, centroids.astype(np.float32), present


def _nearest(points, centroids, present):
  unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
  similarity = points @ unit.T
  similarity[:, ~present] = -np.inf
  return similarity.argmax(axis=1)


class InformationMaximisation(base.Term):
  """SHOT's loss on the weakly augmented unlabelled images, the classifier frozen. Logs
  im_loss, pseudo_label_loss and pseudo_label_accuracy (of the centroid labels, where the
  images' labels are known)."""

  METRICS = ("im_loss", "pseudo_label_loss", "pseudo_label_accuracy")

  def __init__(self, settings: base.Adaptation, num_classes: int, feature_size: int):
    super().__init__(settings, num_classes, feature_size, name="shot")
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.centroids = tf.Variable(
      tf.zeros([num_classes, feature_size + 1]), trainable=False, aggregation=first
    )
    self.present = tf.Variable(tf.ones([num_classes]), trainable=False, aggregation=first)
    self.ready = tf.Variable(0.0, trainable=False, aggregation=first)  # centroids assigned

  def attach(self, model, with_features):
    self._with_features = with_features

  def frozen(self, model):
    classifier = networks.classifier_layer(model)
    return list(classifier.trainable_weights) if classifier is not None else []

  def prepare(self, batch, model):
    features, _ = self._with_features(batch.weak, training=False)
    features = tf.reshape(tf.cast(features, tf.float32), [tf.shape(features)[0], -1])
    points = tf.math.l2_normalize(tf.concat([features, tf.ones_like(features[:, :1])], 1), 1)
    similarity = tf.matmul(points, tf.math.l2_normalize(self.centroids, 1), transpose_b=True)
    similarity = tf.where(self.present > 0, similarity, -np.inf)
    return {"pseudo_labels": tf.stop_gradient(tf.argmax(similarity, axis=1))}

  def inputs(self, batch):
    return [batch.weak]

  def loss(self, batch, state, outputs, metrics):
    count = tf.shape(batch.weak)[0]
    probabilities = tf.cast(
      outputs.probabilities[outputs.start : outputs.start + count], tf.float32
    )
    im_loss = information_maximisation(probabilities)
    pseudo_labels = state["pseudo_labels"]
    pseudo_label_loss = self.ready * tf.reduce_mean(
      keras.losses.sparse_categorical_crossentropy(pseudo_labels, probabilities)
    )
    known = tf.cast(batch.hidden >= 0, tf.float32)
    correct = tf.cast(pseudo_labels == batch.hidden, tf.float32)
    metrics["im_loss"].update_state(im_loss)
    metrics["pseudo_label_loss"].update_state(pseudo_label_loss)
    metrics["pseudo_label_accuracy"].update_state(
      tf.reduce_sum(known * correct) / tf.maximum(tf.reduce_sum(known), 1.0),
      sample_weight=tf.reduce_sum(known),
    )
    return im_loss + PSEUDO_LABEL_WEIGHT * pseudo_label_loss, None

  def on_epoch_begin(self, epoch, watched):
    _, centroids, present = centroid_labels(watched.features, watched.probabilities)
    self.centroids.assign(centroids)
    self.present.assign(present.astype(np.float32))
    self.ready.assign(1.0)


TERMS = (InformationMaximisation,)
