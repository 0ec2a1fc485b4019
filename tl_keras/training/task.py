"""The finetune task, in Model Garden's base_task shape: from a classifier, its data and a
finetune config, it decides the data-dependent defaults and the adaptation method, and builds
what training needs (the classifier's starting head, the adaptation inputs, the model to
train, the phases). It reads no file: the caller loads source images when `needs_source_data`
says so. `trainer.fit_and_evaluate` runs the phases.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import adaptation
from tl_keras.config import methods
from tl_keras.config import schema
from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import UnlabeledImages
from tl_keras.errors import UserError
from tl_keras.evaluation import probes
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.training import inputs
from tl_keras.training import schedule
from tl_keras.training import trainer


def choose_defaults(config, num_labeled: int, num_classes: int, num_unlabeled: int = 0):
  """(`config` with its data-dependent defaults filled in, the `schedule.Plan` saying what was
  chosen) for `num_labeled` training images of `num_classes` classes and `num_unlabeled`
  unlabelled ones."""
  plan = schedule.choose(
    num_labeled,
    num_classes,
    num_unlabeled,
    adapt=config.adapt.adapt,
    epochs=config.epochs,
    steps_per_epoch=config.train.steps_per_epoch,
    batch_size=config.train.batch_size,
    augment=config.train.augment,
    head_init=config.head.head_init,
    head_units=config.head.head_units,
    learning_rate=config.train.learning_rate,
    default_learning_rate=networks.learning_rate_for(
      config.train.optimizer, lr_schedule=config.train.lr_schedule
    ),
  )
  return schema.replace(config, **plan.settings()), plan


@dataclasses.dataclass
class FinetuneTask:
  """A finetune run's choices: `config` with its data-dependent defaults filled in (`message`
  says what they chose), the adaptation `method` and the `unlabeled` images it learns from."""

  config: Any  # settings.FinetuneConfig
  message: str | None
  method: str
  unlabeled: UnlabeledImages | None

  @classmethod
  def create(cls, config, data: LabeledData) -> "FinetuneTask":
    """The choices for `data` (UserErrors for data the config cannot train on)."""
    chosen = methods.choose_adaptation(config.adapt.adapt, len(data.unlabeled or ()))
    unlabeled = data.unlabeled if methods.ADAPTATION[chosen].uses_unlabeled else None
    if not len(data.y_train) and not unlabeled:
      raise UserError(
        "no labelled training images: give unlabelled ones (--unlabeled) to adapt without labels"
      )
    config, plan = choose_defaults(
      config, len(data.y_train), data.num_classes, len(unlabeled) if unlabeled else 0
    )
    if methods.ADAPTATION[plan.adapt].uses_unlabeled and not unlabeled:
      raise UserError(f"--adapt={plan.adapt} learns from unlabelled images: give --unlabeled")
    return cls(config, plan.message, plan.adapt, unlabeled)

  @property
  def spec(self) -> methods.AdaptationMethod:
    return methods.ADAPTATION[self.method]

  def needs_source_data(self, data: LabeledData) -> bool:
    """Whether adaptation needs the source's training images (`targets.load_source_data`)."""
    method = self.spec
    if not method.uses_unlabeled:
      return False
    return method.needs_source or not (len(data.y_train) or method.source_free)

  def head_weights(self, classifier, data: LabeledData, say) -> list[np.ndarray] | None:
    """The classifier's starting weights by `head_init`: a linear probe's ('probe'), the
    source classifier's rows ('source', see `classifier.source_classifier_weights`), or None
    (random)."""
    head_init = self.config.head.head_init
    if head_init == "probe":
      x_train, y_train, _ = inputs.training_split(data, self.config)
      say(f"head_init: fitting a linear probe on the features of {len(x_train)} training images")
      return probe_classifier_weights(classifier, x_train, y_train)
    if head_init == "source":
      return classifier.source_classifier_weights()
    return None

  def adapt_data(
    self, classifier, data: LabeledData, source_data: LabeledData | None
  ) -> trainer.AdaptData | None:
    """What adaptation learns from besides the labelled images, or None without it."""
    method, config = self.spec, self.config
    if not method.uses_unlabeled:
      return None
    if source_data is not None and not len(data.y_train) and not (source_data.y_train >= 0).any():
      raise UserError(
        f"{source_data.description} has no image of the target's classes "
        f"({', '.join(classifier.class_names[:10])}) to train on without target labels"
      )
    settings = adaptation.Adaptation(
      method=self.method,
      confidence_threshold=config.adapt.confidence_threshold,
      unlabeled_weight=config.adapt.unlabeled_weight,
      unlabeled_ratio=config.adapt.unlabeled_ratio,
      align_weight=config.adapt.align_weight if "align_weight" in method.flags else 0.0,
      total_steps=(config.epochs + config.finetune.warmup_epochs) * config.train.steps_per_epoch,
      adabn=networks.has_batch_norm(classifier),
      teacher=config.adapt.teacher,
      teacher_decay=config.adapt.teacher_decay,
      selection=config.adapt.selection,
    )
    return trainer.AdaptData(settings, self.unlabeled, source_data)

  def model_builder(
    self,
    classifier: keras.Model,
    strategy: tf.distribute.Strategy,
    head_weights: list[np.ndarray] | None,
    adapt: trainer.AdaptData | None,
    fresh_head: bool,
    say: Callable[[str], None],
  ) -> Callable[[], keras.Model]:
    """The model to train, built in `strategy`'s scope under the run's seed and precision:
    `classifier` itself, or a copy of it (another strategy, mixed precision, or `fresh_head`:
    its head drawn again from the run's seed), started from `head_weights`."""
    # Whether the classifier's own variables can train: built outside `strategy`, in float32.
    own = strategy is tf.distribute.get_strategy() and not self.config.runtime.mixed_precision

    def build() -> keras.Model:
      model = classifier
      if fresh_head or not own:
        model = networks.with_global_dtype_policy(classifier)
      if fresh_head:
        reinitialize(model, networks.head_layer_names(model))
      if head_weights:
        model.get_layer(networks.TARGET_CLASSIFIER).set_weights(head_weights)
      if adapt and adapt.settings.adabn:
        count = networks.adapt_batch_norm(model, adapt.unlabeled.images)
        say(f"adabn: re-estimated {count} BatchNormalization layers on target images")
      return model

    return build

  def phases(self, model: keras.Model) -> list[trainer.Phase]:
    """One phase, or with `warmup_epochs`: the head alone, then the unfrozen layers with it at
    `finetune_learning_rate` (a tenth of the first rate by default)."""
    config = self.config
    if not config.finetune.warmup_epochs:
      return [trainer.Phase("finetune", config.epochs, config.train.learning_rate)]
    warmup_rate = networks.learning_rate_for(config.train.optimizer, config.train.learning_rate)
    finetune_rate = config.finetune.finetune_learning_rate or warmup_rate / 10
    head = networks.head_layer_names(model)
    return [
      trainer.Phase("warmup", config.finetune.warmup_epochs, warmup_rate, trainable=head),
      trainer.Phase(
        "finetune", config.epochs, finetune_rate, trainable=networks.trainable_layer_names(model)
      ),
    ]


def reinitialize(model: keras.Model, names: list[str]) -> None:
  """Draws the weights of the Dense layers named in `names` again, from new instances of their
  initialisers (an unseeded Keras initialiser called twice repeats its values)."""

  def draw(initializer, variable):
    fresh = type(initializer).from_config(initializer.get_config())
    variable.assign(fresh(variable.shape, variable.dtype))

  for name in names:
    layer = model.get_layer(name)
    if isinstance(layer, keras.layers.Dense):
      draw(layer.kernel_initializer, layer.kernel)
      if layer.use_bias:
        draw(layer.bias_initializer, layer.bias)


def probe_classifier_weights(
  model: keras.Model, images: np.ndarray, labels: np.ndarray
) -> list[np.ndarray]:
  """Weights for `model`'s new classifier from a linear probe on the frozen features of the
  training images, so finetuning starts from a good head and changes the features less
  (LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained Features", ICLR 2022)."""
  features = probes.features_of(model, images)
  kernel, bias = probes.fit_linear_probe(features, labels, model.output_shape[-1])
  return [kernel.astype(np.float32), bias.astype(np.float32)]
