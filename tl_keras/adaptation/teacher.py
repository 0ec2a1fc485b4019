"""A mean teacher (Tarvainen & Valpola, NeurIPS 2017; for domain adaptation, self-ensembling,
French et al., ICLR 2018): an exponential moving average of the student's weights, updated
after every optimizer step, gives the pseudo-labels. It moves slowly, so one bad step does
not feed back into the labels, which guards against the drift to one class.
"""

import tensorflow as tf

from tl_keras.keras_api import keras


def make_teacher(model: keras.Model) -> keras.Model:
  """A copy of `model` with the same weights, none of them trainable; its variables are
  updated in each replica with the same value (created in the caller's strategy scope)."""

  def creator(next_creator, **kwargs):
    kwargs["trainable"] = False
    kwargs["aggregation"] = tf.VariableAggregation.ONLY_FIRST_REPLICA
    kwargs["synchronization"] = tf.VariableSynchronization.ON_WRITE
    return next_creator(**kwargs)

  with tf.variable_creator_scope(creator):
    teacher = keras.models.clone_model(model)
  teacher.set_weights(model.get_weights())
  teacher.trainable = False
  return teacher


def update(teacher: keras.Model, student: keras.Model, decay: float) -> None:
  """teacher = decay x teacher + (1 - decay) x student, weight by weight (BatchNormalization's
  statistics too)."""
  for mine, theirs in zip(teacher.weights, student.weights):
    mine.assign(decay * mine + (1.0 - decay) * tf.cast(theirs, mine.dtype))
