"""Model building: the source CNN, the target model on its features, and optimizers."""

import hashlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tl_keras.config import choices
from tl_keras.data.folders import ImageFiles
from tl_keras.data.preprocessing import preprocess_images
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.loading import budgets
from tl_keras.ranges import check_value

SOURCE_CLASSIFIER = "classifier"
TARGET_CLASSIFIER = "target_classifier"
FEATURE_PREFIX = "features_"
HEAD_PREFIX = "target_head_"
# Images per prediction batch read from files: bounded, so memory does not grow with the folder.
_STREAMED_BATCH_BYTES = 16 << 20


def build_source_model(
  input_shape: Sequence[int],
  num_classes: int,
  conv_filters: Sequence[int] = choices.DEFAULT_CONV_FILTERS,
) -> keras.Model:
  """The source CNN: named `features_*` layers, then a softmax Dense named `classifier`.

  Each entry of `conv_filters` adds a 3x3 convolution and a 2x2 max pooling. The default, 16
  and 32 filters, keeps the cost per image at an eighth of the classic Keras transfer
  example's (0.76M vs 6.1M multiply-adds): on 2 CPU cores, half the training time of 32 and 64
  filters at the same accuracy (digits 0-4 / 5-9 over four seeds: 99.71-99.81% /
  99.24-99.51%). Wider sources transfer better from few target labels (bench/).
  """
  layers = keras.layers
  inputs = keras.Input(shape=tuple(input_shape), name="image")
  x = inputs
  for index, filters in enumerate(conv_filters, start=1):
    x = layers.Conv2D(filters, 3, activation="relu", name=f"features_conv{index}")(x)
    x = layers.MaxPooling2D(2, name=f"features_pool{index}")(x)
  x = layers.Flatten(name="features_flatten")(x)
  x = layers.Dropout(0.25, name="features_dropout1")(x)
  x = layers.Dense(128, activation="relu", name="features_dense")(x)
  x = layers.Dropout(0.5, name="features_dropout2")(x)
  # float32 even under a mixed-precision policy, for a numerically stable softmax.
  outputs = layers.Dense(
    num_classes, activation="softmax", dtype="float32", name=SOURCE_CLASSIFIER
  )(x)
  return keras.Model(inputs, outputs, name="source_cnn")


def parse_conv_filters(spec: str) -> tuple[int, ...]:
  """'16,32' -> (16, 32): filters of the source CNN's convolutions, one to three of them, each
  in `choices.CONV_FILTERS`."""
  parts = [part.strip() for part in spec.split(",")]
  if not 1 <= len(parts) <= 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
    raise UserError(
      f"invalid --conv_filters={spec!r}: use one to three positive whole numbers "
      "separated by commas, e.g. 16,32"
    )
  filters = tuple(int(part) for part in parts)
  for count in filters:
    check_value("conv_filters", count, choices.CONV_FILTERS)
  return filters


def classifier_layer(model: keras.Model) -> keras.layers.Layer | None:
  """The layer named `classifier`/`target_classifier`, else the last layer if it is a Dense."""
  names = {layer.name for layer in model.layers}
  for name in (SOURCE_CLASSIFIER, TARGET_CLASSIFIER):
    if name in names:
      return model.get_layer(name)
  last = model.layers[-1]
  return last if isinstance(last, keras.layers.Dense) else None


def feature_tensor(model: keras.Model, layer_name: str | None = None):
  """The features the new head sits on: layer `layer_name`'s output if given, else the
  penultimate features (the classifier's input), else, with no classifier, the model's output."""
  if layer_name:
    names = [layer.name for layer in feature_layers(model)]
    if layer_name not in names:
      raise UserError(f"invalid --features_layer={layer_name!r}: use one of {', '.join(names)}")
    return model.get_layer(layer_name).output
  classifier = classifier_layer(model)
  return model.output if classifier is None else classifier.input


def feature_layers(model: keras.Model) -> list[keras.layers.Layer]:
  """Layers of `model` other than its input and classifier, in order."""
  classifier = classifier_layer(model)
  return [
    layer
    for layer in model.layers
    if layer is not classifier and not isinstance(layer, keras.layers.InputLayer)
  ]


def build_target_model(
  source_model: keras.Model,
  num_classes: int,
  unfreeze: str = "all",
  *,
  features_layer: str | None = None,
  head_units: int = 0,
  head_dropout: float = 0.0,
  head_l2: float = 0.0,
) -> keras.Model:
  """Cuts the source model at its features, adds a new head (layers `target_*`) and sets which
  layers train.

  The features are the source classifier's input, or the output of `features_layer` (the
  layers after it are dropped). Features that are images are flattened first. The head: an
  optional hidden ReLU Dense layer of `head_units`, `head_dropout` before each Dense layer,
  `head_l2` weight decay on their kernels, then the softmax classifier.

  `unfreeze`: 'none' (only the new head trains), 'all', 'last:N' (the last N feature layers
  that have weights), or comma-separated layer names. BatchNormalization layers stay frozen
  whatever `unfreeze` says: frozen, Keras runs them in inference mode, so small target batches
  never overwrite the statistics learned on the source.
  """
  features = feature_tensor(source_model, features_layer)
  layers = keras.Model(source_model.inputs, features).layers[1:]  # those the head builds on
  set_trainable(layers, select_unfrozen(layers, unfreeze))
  regularizer = keras.regularizers.L2(head_l2) if head_l2 else None
  x = features
  if len(x.shape) > 2:
    x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
  if head_dropout:
    x = keras.layers.Dropout(head_dropout, name=f"{HEAD_PREFIX}dropout1")(x)
  if head_units:
    x = keras.layers.Dense(
      head_units, activation="relu", kernel_regularizer=regularizer, name=f"{HEAD_PREFIX}dense"
    )(x)
    if head_dropout:
      x = keras.layers.Dropout(head_dropout, name=f"{HEAD_PREFIX}dropout2")(x)
  outputs = keras.layers.Dense(
    num_classes,
    activation="softmax",
    dtype="float32",
    kernel_regularizer=regularizer,
    name=TARGET_CLASSIFIER,
  )(x)
  return keras.Model(source_model.inputs, outputs, name="target_model")


def source_classifier_weights(
  source_model: keras.Model, source_names: Sequence[str], class_names: Sequence[str]
) -> list[np.ndarray]:
  """The source classifier's kernel columns and biases for `class_names`, in their order: a
  target classifier on the same features then starts as the source model restricted to those
  classes. A UserError if a class is not among `source_names` or there is no classifier."""
  classifier = classifier_layer(source_model)
  missing = [name for name in class_names if name not in source_names]
  if classifier is None or missing:
    problem = (
      f"class(es) {', '.join(missing[:10])} are not classes of the source model"
      if missing
      else "the source model has no classifier layer"
    )
    raise UserError(
      f"cannot start the classifier from the source's ({problem}): training without target "
      "labels (--train_per_class=0) and --head_init=source need every target class to be a "
      "source class"
    )
  kernel, bias = classifier.get_weights()
  columns = [list(source_names).index(name) for name in class_names]
  return [kernel[:, columns], bias[columns]]


def has_batch_norm(model: keras.Model) -> bool:
  return any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def adapt_batch_norm(model: keras.Model, images, batch_size: int = 256, limit: int = 2048) -> int:
  """AdaBN (Li et al., 2018): re-estimates every BatchNormalization layer's moving mean and
  variance on up to `limit` of `images` (raw target images), layer by layer in model order, so
  each layer sees its inputs as the layers before it now normalise them. The layers stay
  frozen (inference mode) in training, so the target statistics stay. Returns the number of
  layers updated."""
  norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
  if not norms:
    return 0
  count = min(limit, len(images))
  sample = images[np.linspace(0, len(images) - 1, count).astype(np.int64)]
  for layer in norms:
    reader = keras.Model(model.inputs, layer.input)
    inputs = predict(reader, sample, batch_size)
    axes = tuple(i for i in range(inputs.ndim) if i != inputs.ndim - 1)
    scale_and_offset = layer.get_weights()[:-2]
    layer.set_weights([*scale_and_offset, inputs.mean(axis=axes), inputs.var(axis=axes)])
  return len(norms)


def head_layer_names(model: keras.Model) -> list[str]:
  """Names of the layers `build_target_model` added."""
  return [
    layer.name
    for layer in model.layers
    if layer.name.startswith(HEAD_PREFIX) or layer.name == TARGET_CLASSIFIER
  ]


def set_trainable(layers: Sequence[keras.layers.Layer], names: Sequence[str]) -> None:
  """Makes the layers named in `names` trainable and the others frozen; BatchNormalization
  layers are always frozen (see `build_target_model`)."""
  for layer in layers:
    layer.trainable = layer.name in names and not isinstance(layer, keras.layers.BatchNormalization)


def reinitialized(model: keras.Model) -> keras.Model:
  """A copy of `model` with freshly initialised weights, every layer trainable."""
  if any(not type(layer).__module__.startswith("tf_keras") for layer in model.layers):
    raise UserError(
      "cannot re-initialise a model with TF Hub or custom layers; "
      "--compare_scratch needs a Keras model"
    )
  copy = keras.models.clone_model(model)
  for layer in copy.layers:
    layer.trainable = True
  return copy


def trainable_layer_names(model: keras.Model) -> list[str]:
  return [layer.name for layer in model.layers if layer.trainable and layer.weights]


def with_global_dtype_policy(model: keras.Model) -> keras.Model:
  """A copy of `model` whose layers compute in the global dtype policy (e.g. mixed_float16).

  Layers loaded from a file keep the dtype they were saved with; this re-creates them, except
  the classifier layers, which stay float32.
  """
  policy = keras.mixed_precision.global_policy().name

  def clone(layer):
    config = layer.get_config()
    if layer.name not in (SOURCE_CLASSIFIER, TARGET_CLASSIFIER):
      config["dtype"] = policy
    return type(layer).from_config(config)

  copy = keras.models.clone_model(model, clone_function=clone)
  copy.set_weights(model.get_weights())
  return copy


def select_unfrozen(layers: Sequence[keras.layers.Layer], unfreeze: str) -> list[str]:
  """Names of the layers an --unfreeze spec selects among `layers`."""
  spec = unfreeze.strip()
  weighted = [layer.name for layer in layers if layer.weights]
  if spec == "none":
    return []
  if spec == "all":
    return [layer.name for layer in layers]
  if spec.startswith("last:"):
    count = spec[len("last:") :]
    if not count.isdigit():
      raise UserError(f"invalid --unfreeze={unfreeze!r}: 'last:N' needs a whole number N")
    return weighted[len(weighted) - int(count) :] if int(count) else []
  names = [name.strip() for name in spec.split(",") if name.strip()]
  known = [layer.name for layer in layers]
  unknown = [name for name in names if name not in known]
  if unknown or not names:
    raise UserError(
      f"invalid --unfreeze={unfreeze!r}: no feature layer named "
      f"{', '.join(unknown) or spec!r}; use none, all, last:N or names from: "
      f"{', '.join(weighted)}"
    )
  return names


def learning_rate_for(
  name: str,
  learning_rate: float | None = None,
  flag: str = "learning_rate",
  lr_schedule: str = "constant",
) -> float:
  """The learning rate to use (the peak of a cosine schedule): `learning_rate`, or the default
  of optimizer `name` for `lr_schedule`; a UserError naming `flag` if it is outside
  `choices.LEARNING_RATE`."""
  if name not in choices.DEFAULT_LEARNING_RATES:
    raise UserError(f"unknown optimizer {name!r}: use one of {', '.join(choices.OPTIMIZERS)}")
  check_value(flag, learning_rate, choices.LEARNING_RATE)
  if learning_rate is not None:
    return learning_rate
  if lr_schedule == "cosine":
    return choices.DEFAULT_PEAK_LEARNING_RATES[name]
  return choices.DEFAULT_LEARNING_RATES[name]


def make_optimizer(
  name: str,
  learning_rate: float | None = None,
  lr_schedule: str = "constant",
  decay_steps: int | None = None,
):
  """An Adadelta or Adam optimizer; `learning_rate` None takes the default for that optimizer.
  With `lr_schedule='cosine'` the rate decays from it to 0 over `decay_steps` steps."""
  rate = learning_rate_for(name, learning_rate, lr_schedule=lr_schedule)
  if lr_schedule == "cosine":
    if not decay_steps:
      raise ValueError("a cosine schedule needs the phase's number of steps")
    rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps)
  optimizer_class = {"adadelta": keras.optimizers.Adadelta, "adam": keras.optimizers.Adam}[name]
  return optimizer_class(learning_rate=rate)


def compile_classifier(
  model: keras.Model,
  optimizer,
  jit_compile: bool = False,
  label_smoothing: float = 0.0,
  steps_per_execution: int = 1,
) -> None:
  """Compiles for integer labels (sparse categorical cross-entropy) with accuracy; with
  `label_smoothing`, for one-hot labels (`pipelines.make_dataset`'s `num_classes`), as Keras's
  sparse cross-entropy has no smoothing.

  `jit_compile` XLA-compiles the training step: worth it on GPUs; on 2 CPU cores it made an
  epoch 2.4x slower.
  """
  loss = (
    keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if label_smoothing
    else "sparse_categorical_crossentropy"
  )
  model.compile(
    optimizer=optimizer,
    loss=loss,
    metrics=["accuracy"],
    jit_compile=jit_compile,
    steps_per_execution=steps_per_execution,
  )


def image_input_shape(model: keras.Model, source: str) -> tuple[int, int, int]:
  """The model's input image shape (H, W, C); a UserError if it does not take image batches."""
  shape = model.input_shape
  if isinstance(shape, list) or len(shape) != 4 or None in shape[1:] or shape[3] not in (1, 3):
    raise UserError(
      f"the model {source} takes inputs of shape {shape}, not images "
      "[N,H,W,C] of a fixed size with 1 or 3 channels, so it cannot take the "
      "target images; use a model with an image input"
    )
  return tuple(shape[1:])


def predict(
  model: keras.Model, images: np.ndarray | ImageFiles, batch_size: int = 1024
) -> np.ndarray:
  """The model's outputs for raw images (any form `preprocess_images` takes, or `ImageFiles`).

  One traced function over large batches: 2.55x the throughput of `model.predict` on the
  same NumPy array in bench/bench_pipeline.py (README "Benchmark", 2 CPU cores), which pays
  Keras's per-batch loop overhead.
  `ImageFiles` are read batch by batch, at most `_STREAMED_BATCH_BYTES` of images at a time.
  """
  # Fits the memory budget, counted at the images' size where the model takes any size.
  batch_size = budgets.prediction_batch_size(model, batch_size, image_shape=images.shape[1:])
  budgets.check_prediction_outputs(model, len(images))
  input_shape = model.input_shape[1:]
  forward = tf.function(
    lambda batch: model(preprocess_images(batch, input_shape), training=False),
    input_signature=[tf.TensorSpec([None, *images.shape[1:]], tf.as_dtype(images.dtype))],
  )
  if isinstance(images, ImageFiles):
    per_image = max(1, images.nbytes // max(1, len(images)))
    batches = images.dataset().batch(max(1, min(batch_size, _STREAMED_BATCH_BYTES // per_image)))
    outputs = [forward(batch).numpy() for batch in batches.prefetch(1)]
  else:
    outputs = [
      forward(images[start : start + batch_size]).numpy()
      for start in range(0, len(images), batch_size)
    ]
  return np.concatenate(outputs)


def weights_fingerprint(model: keras.Model) -> str:
  """SHA-256 of all weight values, in order: equal fingerprints mean identical weights."""
  digest = hashlib.sha256()
  for weight in model.get_weights():
    digest.update(np.ascontiguousarray(weight).tobytes())
  return digest.hexdigest()
