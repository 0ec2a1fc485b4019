"""The one Keras model that trains with unlabelled images: a classifier, the labelled
cross-entropy, and the terms of one adaptation method (`registry.terms`), composed by one
`train_step` that runs inside any tf.distribute strategy's scope."""

import numpy as np
import tensorflow as tf

from tl_keras.adaptation import base
from tl_keras.adaptation import registry
from tl_keras.keras_api import keras


class AdaptationModel(keras.Model):
  """Trains `model` on elements of `pipelines.make_adaptation_dataset`; evaluates like it.

  `features` is the tensor of `model`'s graph that terms may read (the new head's input). Per
  step the loss is the cross-entropy on the labelled batch (with `label_smoothing` for one-hot
  labels, `class_weights` by class) plus each term's (`base.Term`) of `adaptation.method`.
  Metrics: loss, accuracy (labelled), then each term's `METRICS`.
  """

  def __init__(
    self,
    model: keras.Model,
    features: tf.Tensor,
    adaptation: base.Adaptation,
    label_smoothing: float = 0.0,
    class_weights: dict[int, float] | None = None,
  ):
    super().__init__(name="adaptation")
    self.model = model
    self.adaptation = adaptation
    self._with_features = keras.Model(model.inputs, [features, model.output])
    self._smoothing = label_smoothing
    self._class_weights = None
    num_classes = model.output_shape[-1]
    if class_weights:
      self._class_weights = tf.constant([class_weights[k] for k in range(num_classes)], tf.float32)
    feature_size = int(np.prod(features.shape[1:]))
    self.terms = [
      term(adaptation, num_classes, feature_size) for term in registry.terms(adaptation.method)
    ]
    # Evaluation updates loss and accuracy too: Keras resets every metric before it, and reads
    # the results by name.
    names = registry.metric_names(adaptation.method)
    self._metrics = {name: keras.metrics.Mean(name) for name in names}

  @property
  def metrics(self):
    return list(self._metrics.values())

  def call(self, images, training=False):
    return self.model(images, training=training)

  def fit(self, *args, callbacks=None, **kwargs):
    """Keras's fit, with the terms' `on_epoch_end` hooks."""
    return super().fit(*args, callbacks=[*(callbacks or []), _EpochHooks(self.terms)], **kwargs)

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
    batch = base.Batch(images, labels, weak, strong, hidden, source[0] if source else None)
    labeled_count = tf.shape(images)[0]
    states = [term.prepare(batch, self.model) for term in self.terms]
    inputs = [term.inputs(batch) for term in self.terms]
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      features, probabilities = self._with_features(
        tf.concat([images, *(image for own in inputs for image in own)], axis=0), training=True
      )
      labeled_probabilities = probabilities[:labeled_count]
      per_image, classes = self._labeled_loss(labels, labeled_probabilities)
      loss = tf.reduce_mean(per_image)
      unreported = []
      start = labeled_count
      for term, state, own in zip(self.terms, states, inputs):
        outputs = base.Outputs(features, probabilities, labeled_count, start)
        shown, hidden_loss = term.loss(batch, state, outputs, self._metrics)
        if shown is not None:
          loss = loss + shown
        if hidden_loss is not None:
          unreported.append(hidden_loss)
        for image in own:
          start = start + tf.shape(image)[0]
      if self.losses:
        loss += tf.add_n(self.losses)
      # The optimizer sums the replicas' gradients.
      scaled_loss = (loss + tf.add_n(unreported) if unreported else loss) / replicas
    # minimize, not apply_gradients: under mixed_float16 the optimizer is a loss-scale one,
    # which scales the loss on the tape and unscales the gradients.
    self.optimizer.minimize(scaled_loss, self.trainable_variables, tape=tape)
    for term in self.terms:
      term.after_step()
    self._metrics["loss"].update_state(loss)
    self._metrics["accuracy"].update_state(
      tf.reduce_mean(tf.cast(tf.argmax(labeled_probabilities, axis=1) == classes, tf.float32))
    )
    return {name: metric.result() for name, metric in self._metrics.items()}

  def test_step(self, data):
    images, labels = data
    probabilities = self.model(images, training=False)
    per_image, classes = self._labeled_loss(labels, probabilities)
    self._metrics["loss"].update_state(per_image)
    self._metrics["accuracy"].update_state(
      tf.cast(tf.argmax(probabilities, axis=1) == classes, tf.float32)
    )
    return {name: self._metrics[name].result() for name in ("loss", "accuracy")}


class _EpochHooks(keras.callbacks.Callback):
  def __init__(self, terms):
    super().__init__()
    self._terms = terms

  def on_epoch_end(self, epoch, logs=None):
    for term in self._terms:
      term.on_epoch_end(epoch)
