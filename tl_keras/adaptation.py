"""Learning from unlabelled target images: self-training and domain alignment in one Keras
`train_step`, which runs inside any tf.distribute strategy's scope.

- Self-training (FixMatch, Sohn et al., NeurIPS 2020): the model's prediction on a weakly
  augmented unlabelled image becomes its pseudo-label when its confidence reaches the
  threshold, and the strongly augmented view of the same image learns it. Predictions are
  first divided by their running mean over unlabelled batches and renormalised ("distribution
  alignment", ReMixMatch, Berthelot et al., ICLR 2020), so that no class takes over the
  pseudo-labels: without it, training on printed digits with no target labels stalled at the
  source model's 89%; with it, it reached 98.6%.
- Alignment (DANN, Ganin et al., JMLR 2016): a domain classifier learns to tell source
  features from target features (both of weakly augmented images, so that the strong
  augmentation does not tell them apart), and a gradient reversal layer trains the features
  to fool it, with a weight that rises from 0 to `align_weight` over training.

The labelled images of a batch are the target's own, or with no target labels the source's
training images of the target's classes (unsupervised domain adaptation).
"""

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras.keras_api import keras

METHODS = ("self_training", "align")


@dataclasses.dataclass
class Adaptation:
  """What an adaptation run does, as recorded in the metrics under `adapt`."""

  method: str  # self_training or align (which also self-trains)
  confidence_threshold: float
  unlabeled_weight: float
  unlabeled_ratio: int
  align_weight: float
  total_steps: int  # over all phases: the alignment weight's ramp
  adabn: bool = False  # BatchNormalization statistics re-estimated on target images
  distribution_alignment: bool = True

  def as_metrics(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@tf.custom_gradient
def _reverse_gradient(features, scale):
  return tf.identity(features), lambda upstream: (-scale * upstream, None)


class AdaptationModel(keras.Model):
  """Trains `model` on elements of `pipelines.make_adaptation_dataset`; evaluates like it.

  `features` is the tensor of `model`'s graph the domain classifier reads (the new head's
  input). Per step the losses are: cross-entropy on the labelled batch (with
  `label_smoothing` for one-hot labels, `class_weights` by class), plus `unlabeled_weight` x
  the pseudo-label loss on the strong views, plus with align the domain classifier's loss
  (not in the reported loss), whose gradient reaches the features reversed and scaled by
  `align_weight`.
  Metrics: loss, accuracy (labelled), unlabeled_loss, pseudo_label_rate (the share of
  unlabelled images whose pseudo-label counted), pseudo_label_accuracy (of those, where their
  labels are known), and with align domain_accuracy (of the domain classifier, which learns
  at full weight whatever `align_weight` is: at 0 it only watches).
  """

  def __init__(
    self,
    model: keras.Model,
    features: tf.Tensor,
    adaptation: Adaptation,
    label_smoothing: float = 0.0,
    class_weights: dict[int, float] | None = None,
  ):
    super().__init__(name="adaptation")
    self.model = model
    self.adaptation = adaptation
    self._with_features = keras.Model(model.inputs, [features, model.output])
    self._feature_size = int(np.prod(features.shape[1:]))
    self._smoothing = label_smoothing
    self._class_weights = None
    num_classes = model.output_shape[-1]
    if class_weights:
      self._class_weights = tf.constant([class_weights[k] for k in range(num_classes)], tf.float32)
    # Updated in the replica context with the same value on every replica.
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self._mean_prediction = tf.Variable(
      tf.fill([num_classes], 1.0 / num_classes),
      trainable=False,
      aggregation=first,
      name="mean_prediction",
    )
    self._steps = tf.Variable(
      0, trainable=False, dtype=tf.int64, aggregation=first, name="adaptation_steps"
    )
    self.discriminator = None
    if adaptation.method == "align":
      layers = keras.layers
      self.discriminator = keras.Sequential(
        [
          layers.Dense(256, activation="relu", name="domain_dense1"),
          layers.Dense(256, activation="relu", name="domain_dense2"),
          layers.Dense(1, name="domain_logit", dtype="float32"),
        ],
        name="domain_classifier",
      )
      self.discriminator.build([None, self._feature_size])
    names = ["loss", "accuracy", "unlabeled_loss", "pseudo_label_rate", "pseudo_label_accuracy"]
    if self.discriminator is not None:
      names.append("domain_accuracy")
    # Evaluation updates loss and accuracy too: Keras resets every metric before it, and reads
    # the results by name.
    self._metrics = {name: keras.metrics.Mean(name) for name in names}

  @property
  def metrics(self):
    return list(self._metrics.values())

  def call(self, images, training=False):
    return self.model(images, training=training)

  def _labeled_loss(self, labels, probabilities):
    """Per-image cross-entropy; labels are class indices, or one-hot with label smoothing."""
    if labels.shape.rank == 2:
      per_image = keras.losses.categorical_crossentropy(
        labels, probabilities, label_smoothing=self._smoothing
      )
      classes = tf.argmax(labels, axis=1)
    else:
      per_image = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
      classes = tf.cast(labels, tf.int64)
    if self._class_weights is not None:
      per_image *= tf.gather(self._class_weights, classes)
    return per_image, classes

  def train_step(self, data):
    (images, labels), (weak, strong, hidden), *source = data
    settings = self.adaptation
    labeled_count = tf.shape(images)[0]
    teacher = tf.stop_gradient(self.model(weak, training=False))
    if settings.distribution_alignment:
      ctx = tf.distribute.get_replica_context()
      batch_mean = tf.reduce_mean(teacher, axis=0)
      if ctx is not None:
        batch_mean = ctx.all_reduce("mean", batch_mean)
      self._mean_prediction.assign(0.99 * self._mean_prediction + 0.01 * batch_mean)
      teacher = teacher / self._mean_prediction
      teacher = teacher / tf.reduce_sum(teacher, axis=1, keepdims=True)
    confidence = tf.reduce_max(teacher, axis=1)
    pseudo_labels = tf.argmax(teacher, axis=1)
    counted = tf.cast(confidence >= settings.confidence_threshold, tf.float32)
    aligned = self.discriminator is not None
    source_images = source[0] if source else images
    # With align, the weak views and (when they are not the labelled images) the source
    # images join the forward pass; their features are what the domain classifier compares.
    extra = [weak, *source] if aligned else []
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    domain_loss = 0.0
    with tf.GradientTape() as tape:
      features, probabilities = self._with_features(
        tf.concat([images, strong, *extra], axis=0), training=True
      )
      labeled_probabilities = probabilities[:labeled_count]
      strong_count = tf.shape(strong)[0]
      strong_probabilities = probabilities[labeled_count : labeled_count + strong_count]
      per_image, classes = self._labeled_loss(labels, labeled_probabilities)
      labeled_loss = tf.reduce_mean(per_image)
      unlabeled_loss = tf.reduce_mean(
        counted * keras.losses.sparse_categorical_crossentropy(pseudo_labels, strong_probabilities)
      )
      loss = labeled_loss + settings.unlabeled_weight * unlabeled_loss
      if aligned:
        flat = tf.cast(tf.reshape(features, [-1, self._feature_size]), tf.float32)
        source_count = tf.shape(source_images)[0]
        source_features = flat[-source_count:] if source else flat[:labeled_count]
        start = labeled_count + strong_count
        target_features = flat[start : start + tf.shape(weak)[0]]
        progress = tf.minimum(
          tf.cast(self._steps, tf.float32) / float(max(1, settings.total_steps)), 1.0
        )
        ramp = 2.0 / (1.0 + tf.exp(-10.0 * progress)) - 1.0
        domain_logits = self.discriminator(
          _reverse_gradient(
            tf.concat([source_features, target_features], 0), ramp * settings.align_weight
          ),
          training=True,
        )[:, 0]
        domains = tf.concat(
          [tf.zeros([source_count]), tf.ones([tf.shape(target_features)[0]])], axis=0
        )
        domain_loss = tf.reduce_mean(
          tf.nn.sigmoid_cross_entropy_with_logits(labels=domains, logits=domain_logits)
        )
        self._metrics["domain_accuracy"].update_state(
          tf.reduce_mean(tf.cast((domain_logits > 0) == (domains > 0.5), tf.float32))
        )
      if self.losses:
        loss += tf.add_n(self.losses)
      # The optimizer sums the replicas' gradients.
      scaled_loss = (loss + domain_loss) / replicas
    # minimize, not apply_gradients: under mixed_float16 the optimizer is a loss-scale one,
    # which scales the loss on the tape and unscales the gradients.
    self.optimizer.minimize(scaled_loss, self.trainable_variables, tape=tape)
    self._steps.assign_add(1)
    known = tf.cast(hidden >= 0, tf.float32) * counted
    correct = tf.cast(pseudo_labels == hidden, tf.float32)
    metrics = self._metrics
    metrics["loss"].update_state(loss)
    metrics["accuracy"].update_state(
      tf.reduce_mean(tf.cast(tf.argmax(labeled_probabilities, axis=1) == classes, tf.float32))
    )
    metrics["unlabeled_loss"].update_state(unlabeled_loss)
    metrics["pseudo_label_rate"].update_state(tf.reduce_mean(counted))
    metrics["pseudo_label_accuracy"].update_state(
      tf.reduce_sum(known * correct) / tf.maximum(tf.reduce_sum(known), 1.0),
      sample_weight=tf.reduce_sum(known),
    )
    return {name: metric.result() for name, metric in metrics.items()}

  def test_step(self, data):
    images, labels = data
    probabilities = self.model(images, training=False)
    per_image, classes = self._labeled_loss(labels, probabilities)
    self._metrics["loss"].update_state(per_image)
    self._metrics["accuracy"].update_state(
      tf.cast(tf.argmax(probabilities, axis=1) == classes, tf.float32)
    )
    return {name: self._metrics[name].result() for name in ("loss", "accuracy")}
