"""Alignment (DANN, Ganin et al., JMLR 2016), on top of self-training: a domain classifier
learns to tell source features from target features (both of weakly augmented images, so that
the strong augmentation does not tell them apart), and a gradient reversal layer trains the
features to fool it, with a weight that rises from 0 to `align_weight` over training.
"""

import tensorflow as tf

from tl_keras.adaptation import base
from tl_keras.adaptation.self_training import SelfTraining
from tl_keras.keras_api import keras


@tf.custom_gradient
def _reverse_gradient(features, scale):
  return tf.identity(features), lambda upstream: (-scale * upstream, None)


class DomainAdversarial(base.Term):
  """The domain classifier's loss on the features of the source images (the labelled ones when
  the batch has no others) against those of the weak views; trained, not in the reported
  loss. Its gradient reaches the features reversed and scaled by the ramped `align_weight`;
  the classifier learns at full weight whatever `align_weight` is (at 0 it only watches).
  Logs domain_accuracy, the domain classifier's."""

  METRICS = ("domain_accuracy",)

  def __init__(self, settings: base.Adaptation, num_classes: int, feature_size: int):
    super().__init__(settings, num_classes, feature_size, name="domain_adversarial")
    self.steps = tf.Variable(
      0,
      trainable=False,
      dtype=tf.int64,
      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
      name="adaptation_steps",
    )
    layers = keras.layers
    self.discriminator = keras.Sequential(
      [
        layers.Dense(256, activation="relu", name="domain_dense1"),
        layers.Dense(256, activation="relu", name="domain_dense2"),
        layers.Dense(1, name="domain_logit", dtype="float32"),
      ],
      name="domain_classifier",
    )
    self.discriminator.build([None, feature_size])

  def inputs(self, batch):
    # The weak views and (when they are not the labelled images) the source images join the
    # forward pass: their features are what the domain classifier compares.
    return [batch.weak] + ([batch.source] if batch.source is not None else [])

  def loss(self, batch, state, outputs, metrics):
    settings = self.settings
    flat = tf.cast(tf.reshape(outputs.features, [-1, self.feature_size]), tf.float32)
    separate = batch.source is not None
    source_count = tf.shape(batch.source if separate else batch.images)[0]
    source_features = flat[-source_count:] if separate else flat[: outputs.labeled_count]
    target_features = flat[outputs.start : outputs.start + tf.shape(batch.weak)[0]]
    progress = tf.minimum(
      tf.cast(self.steps, tf.float32) / float(max(1, settings.total_steps)), 1.0
    )
    ramp = 2.0 / (1.0 + tf.exp(-10.0 * progress)) - 1.0
    domain_logits = self.discriminator(
      _reverse_gradient(
        tf.concat([source_features, target_features], 0), ramp * settings.align_weight
      ),
      training=True,
    )[:, 0]
    domains = tf.concat([tf.zeros([source_count]), tf.ones([tf.shape(target_features)[0]])], 0)
    domain_loss = tf.reduce_mean(
      tf.nn.sigmoid_cross_entropy_with_logits(labels=domains, logits=domain_logits)
    )
    metrics["domain_accuracy"].update_state(
      tf.reduce_mean(tf.cast((domain_logits > 0) == (domains > 0.5), tf.float32))
    )
    return None, domain_loss

  def after_step(self):
    self.steps.assign_add(1)


TERMS = (SelfTraining, DomainAdversarial)
