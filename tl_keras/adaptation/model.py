"""The one Keras model that trains with unlabelled images: a classifier, the labelled
cross-entropy, and the terms of one adaptation method (`registry.terms`), composed by one
`train_step` that runs inside any tf.distribute strategy's scope."""

import numpy as np
import tensorflow as tf

from tl_keras.adaptation import base
from tl_keras.adaptation import guard
from tl_keras.adaptation import registry
from tl_keras.adaptation import selection
from tl_keras.adaptation import teacher
from tl_keras.data.folders import ImageFiles
from tl_keras.data.preprocessing import preprocess_images
from tl_keras.keras_api import keras

# Unlabelled images the per-epoch hooks, the selection and the guard look at (a fixed, seeded
# sample): one prediction pass over them per epoch.
WATCHED_IMAGES = 2000


class AdaptationModel(keras.Model):
  """Trains `model` on elements of `pipelines.make_adaptation_dataset`; evaluates like it.

  `features` is the tensor of `model`'s graph that terms may read (the new head's input). Per
  step the loss is the cross-entropy on the labelled batch (with `label_smoothing` for one-hot
  labels, `class_weights` by class) plus each term's (`base.Term`) of `adaptation.method`.
  Metrics: loss, accuracy (labelled), then each term's `METRICS`.

  With `unlabeled` (`UnlabeledImages`), each fit also watches a sample of them once per epoch
  (`watched`): the terms' `on_epoch_begin` hooks read it, `selection.BestEpoch` keeps the
  best epoch by a label-free criterion and `guard.CollapseGuard` steps back from a collapse;
  `report()` says what they did. With `adaptation.teacher == "ema"`, pseudo-labels come from a
  mean teacher (`teacher`). A batch may hold no labelled image (a source-free method without
  target labels). Messages go to `log`.
  """

  def __init__(
    self,
    model: keras.Model,
    features: tf.Tensor,
    adaptation: base.Adaptation,
    label_smoothing: float = 0.0,
    class_weights: dict[int, float] | None = None,
    unlabeled=None,
    log=None,
    seed: int = 0,
  ):
    super().__init__(name="adaptation")
    self.model = model
    self.adaptation = adaptation
    self._with_features = keras.Model(model.inputs, [features, model.output])
    self._watcher = watcher(model, features)
    self._smoothing = label_smoothing
    self._class_weights = None
    num_classes = model.output_shape[-1]
    if class_weights:
      self._class_weights = tf.constant([class_weights[k] for k in range(num_classes)], tf.float32)
    feature_size = int(np.prod(features.shape[1:]))
    self._feature_size = feature_size
    self.terms = [
      term(adaptation, num_classes, feature_size) for term in registry.terms(adaptation.method)
    ]
    # Evaluation updates loss and accuracy too: Keras resets every metric before it, and reads
    # the results by name.
    names = registry.metric_names(adaptation.method)
    self._metrics = {name: keras.metrics.Mean(name) for name in names}
    for term in self.terms:
      term.attach(model, self._with_features)
    frozen = {variable.ref() for term in self.terms for variable in term.frozen(model)}
    self._frozen = frozen
    self.mean_teacher = None
    if adaptation.teacher == "ema":
      self.mean_teacher = teacher.make_teacher(model)
    self._log = log or (lambda message: None)
    self._unlabeled = unlabeled
    self._seed = seed
    self._watched, self._watched_at, self._sample = None, None, None
    self._forwards = _Forwards()
    self.guard = guard.CollapseGuard(self, self._log)
    self.selection = selection.BestEpoch(self, adaptation.selection, self._log)

  def watched(self) -> base.Watched | None:
    """The model's outputs on the watched unlabelled images at the current weights (computed
    once per optimizer step count); None without unlabelled images."""
    if self._unlabeled is None or not len(self._unlabeled):
      return None
    step = int(self._train_counter.numpy())
    if self._watched is None or self._watched_at != step:
      images, labels = self._watched_images()
      outputs = _predict(self._watcher, images, self._forwards)
      size = self._feature_size
      self._watched = base.Watched(outputs[:, :size], outputs[:, size:], labels)
      self._watched_at = step
    return self._watched

  def watched_probabilities(self, model: keras.Model) -> np.ndarray:
    """Another model's (e.g. the mean teacher's) outputs on the watched unlabelled images."""
    return _predict(model, self._watched_images()[0], self._forwards)

  def _watched_images(self) -> tuple[np.ndarray, np.ndarray | None]:
    """(the watched sample, preprocessed once, their labels where known)."""
    if self._sample is None:
      images, labels = self._unlabeled.images, self._unlabeled.labels
      index = np.arange(len(images))
      if len(index) > WATCHED_IMAGES:
        index = np.sort(np.random.default_rng(self._seed).choice(index, WATCHED_IMAGES, False))
        images = images[index]
      pixels = _preprocessed(images, self.model.input_shape[1:])
      self._sample = (pixels, None if labels is None else np.asarray(labels)[index])
    return self._sample

  def forget_watched(self) -> None:
    """After the weights changed outside a training step (restored)."""
    self._watched = None

  def report(self) -> dict:
    """What the selection and the guard did, for the metrics' `adapt` record."""
    return {**self.selection.report(), "collapse_events": list(self.guard.events)}

  @property
  def metrics(self):
    return list(self._metrics.values())

  def call(self, images, training=False):
    return self.model(images, training=training)

  def fit(self, *args, callbacks=None, **kwargs):
    """Keras's fit, with the terms' `on_epoch_end` hooks."""
    hooks = [_EpochHooks(self)]
    if self._unlabeled is not None and len(self._unlabeled):
      hooks += [self.guard, self.selection]  # the guard first: selection skips a collapse
    return super().fit(*args, callbacks=[*(callbacks or []), *hooks], **kwargs)

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
    labeler = self.mean_teacher if self.mean_teacher is not None else self.model
    states = [term.prepare(batch, labeler) for term in self.terms]
    inputs = [term.inputs(batch) for term in self.terms]
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      features, probabilities = self._with_features(
        tf.concat([images, *(image for own in inputs for image in own)], axis=0), training=True
      )
      labeled_probabilities = probabilities[:labeled_count]
      per_image, classes = self._labeled_loss(labels, labeled_probabilities)
      # No labelled image: a source-free method without target labels.
      loss = tf.math.divide_no_nan(
        tf.reduce_sum(per_image), tf.cast(tf.size(per_image), per_image.dtype)
      )
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
    trained = [v for v in self.trainable_variables if v.ref() not in self._frozen]
    self.optimizer.minimize(scaled_loss, trained, tape=tape)
    for term in self.terms:
      term.after_step()
    if self.mean_teacher is not None:
      teacher.update(self.mean_teacher, self.model, self.adaptation.teacher_decay)
    self._metrics["loss"].update_state(loss)
    self._metrics["accuracy"].update_state(
      tf.cast(tf.argmax(labeled_probabilities, axis=1) == classes, tf.float32)
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


def watcher(model: keras.Model, features: tf.Tensor) -> keras.Model:
  """`model`'s graph with one output: its flattened `features`, then its probabilities."""
  return keras.Model(
    model.inputs,
    keras.layers.Concatenate(dtype="float32")(
      [keras.layers.Flatten()(features), keras.layers.Flatten()(model.output)]
    ),
  )


def _preprocessed(images, input_shape) -> np.ndarray:
  batches = (
    images.dataset().batch(256)
    if isinstance(images, ImageFiles)
    else (images[start : start + 1024] for start in range(0, len(images), 1024))
  )
  return np.concatenate([preprocess_images(batch, input_shape).numpy() for batch in batches])


class _Forwards:
  """Traced eval-mode forward passes by model name, traced once (not tracked by Keras)."""

  def __init__(self):
    self.functions = {}


def _predict(
  model: keras.Model, pixels: np.ndarray, forwards: _Forwards, batch_size: int = 1024
) -> np.ndarray:
  """`model`'s outputs (eval mode) on preprocessed `pixels`."""
  forward = forwards.functions.get(id(model))
  if forward is None:
    forward = tf.function(
      lambda batch: model(batch, training=False),
      input_signature=[tf.TensorSpec([None, *pixels.shape[1:]], tf.float32)],
    )
    forwards.functions[id(model)] = forward
  return np.concatenate(
    [
      forward(pixels[start : start + batch_size]).numpy()
      for start in range(0, len(pixels), batch_size)
    ]
  )


class _EpochHooks(keras.callbacks.Callback):
  def __init__(self, trainer: AdaptationModel):
    super().__init__()
    self._trainer = trainer

  def on_epoch_begin(self, epoch, logs=None):
    terms = [term for term in self._trainer.terms if _overrides(term, "on_epoch_begin")]
    watched = self._trainer.watched() if terms else None
    for term in terms:
      if watched is not None:
        term.on_epoch_begin(epoch, watched)

  def on_epoch_end(self, epoch, logs=None):
    for term in self._trainer.terms:
      term.on_epoch_end(epoch)


def _overrides(term: base.Term, hook: str) -> bool:
  return getattr(type(term), hook) is not getattr(base.Term, hook)
