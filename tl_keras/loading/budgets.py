"""Resource budgets: tensors a file declares against what it stores, variables Keras creates
while building a model from a config, and activations per image.

Tensors a file declares (weights, variables, constants) are added up before anything is
allocated and must fit `max_bytes` and what the file actually stores (a small file may not
declare gigabytes). While Keras builds the model, variable creation is held to the same budget,
so a config cannot allocate what its weights do not back.

Activations: every layer's output and internal tensors (attention's heads x tokens^2 scores,
a separable convolution's depthwise intermediate) per image are estimated from the model's
shapes (`model_costs`); one image must fit the per-image limit, prediction picks its batch size
to fit (`prediction_batch_size`), and training refuses a batch that cannot
(`check_training_batch`). All derive from the memory budget
(`tl_keras.limits`), as does TensorFlow's 2^31-element limit on one tensor.
"""

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from tl_keras import limits
from tl_keras.errors import UserError
from tl_keras.keras_api import keras


def budget(stored: int, max_bytes: int) -> int:
  """What a file storing `stored` bytes may declare: its contents may be compressed, but not
  inflate a small file into gigabytes."""
  return min(max_bytes, limits.MAX_INFLATION * stored + limits.MIN_MODEL_BUDGET_BYTES)


def check_declared(declared: int, stored: int, max_bytes: int, source: str) -> None:
  """Refuses `declared` bytes of tensors above `max_bytes` or above what `stored` allows."""
  if declared > max_bytes:
    raise UserError(
      f"refusing to load {source}: it declares {declared / 2**20:,.0f} MiB of "
      f"tensors, above the limit of {max_bytes / 2**20:,.0f} MiB; raise "
      "--max_model_mb if you trust it"
    )
  if declared > budget(stored, max_bytes):
    raise UserError(
      f"refusing to load {source}: it declares {declared / 2**20:,.0f} MiB of "
      f"tensors but stores only {stored / 2**20:,.1f} MiB (a decompression bomb?)"
    )


@contextlib.contextmanager
def variable_budget(max_bytes: int, refusals: list) -> Iterator[None]:
  """Refuses, before allocating it, any variable beyond `max_bytes` in all: raises MemoryError
  inside Keras and appends the bytes asked for to `refusals`."""
  used = 0

  def creator(next_creator, **kwargs):
    nonlocal used
    shape = kwargs.get("shape")
    initial = kwargs.get("initial_value")
    if shape is None and getattr(initial, "args", None):  # Keras: partial(init, shape)
      shape = initial.args[0]
    try:
      shape = tf.TensorShape(shape)
      size = (shape.num_elements() or 0) * tf.dtypes.as_dtype(
        kwargs.get("dtype") or tf.float32
      ).size
    except (TypeError, ValueError):
      size = 0
    used += size
    if used > max_bytes:
      refusals.append(used)
      raise MemoryError(f"variables above {max_bytes} bytes")
    return next_creator(**kwargs)

  with tf.variable_creator_scope(creator):
    yield


_ATTENTION = frozenset({"MultiHeadAttention", "Attention", "AdditiveAttention"})
_UNBOUNDED_HINT = "the memory budget (--memory_budget_mb or $TL_KERAS_MEMORY_BUDGET_MB, in MiB)"


@dataclasses.dataclass
class Costs:
  """Float32 elements per image: `step`, the most one layer holds at once (its inputs,
  outputs and internal tensors); `largest`, the largest single tensor; and where they are."""

  step: int = 0
  largest: int = 0
  step_layer: str = ""
  largest_layer: str = ""

  def add(self, name: str, step: int, largest: int) -> None:
    if step > self.step:
      self.step, self.step_layer = step, name
    if largest > self.largest:
      self.largest, self.largest_layer = largest, name


def _elements(tensor: Any, unknown: int = 1) -> int:
  """Elements per image of a symbolic tensor, each unknown dimension counted as `unknown`."""
  try:
    shape = tf.TensorShape(getattr(tensor, "shape", None))
  except (TypeError, ValueError):
    return 0
  if shape.rank is None:
    return 0
  return math.prod(dim or unknown for dim in shape.as_list()[1:])


# Layers whose output grows past their input: an unknown dimension after them is larger than
# any dimension of the images fed.
_GROWING = ("UpSampling", "Transpose", "ZeroPadding", "Resizing")


def _tokens(tensor: Any, layer: Any, source: str) -> int:
  """Positions attended over (all axes but the batch and the features), or a refusal."""
  shape = tuple(getattr(tensor, "shape", ()) or ())
  if len(shape) < 3 or any(dim is None for dim in shape[1:]):
    raise UserError(
      f"refusing to load {source}: the attention scores of layer {layer.name} cannot be "
      f"estimated (its inputs have shape {shape}, not a fixed number of positions)"
    )
  return math.prod(shape[1:-1])


def _attention_elements(layer: Any, node: Any, source: str) -> int:
  """Elements per image of the tensors inside an attention layer: heads x tokens^2 scores,
  their softmax, and the projections (AdditiveAttention: tokens^2 x features as well)."""
  args, kwargs = list(node.call_args), dict(node.call_kwargs)
  kind = type(layer).__name__
  if kind == "MultiHeadAttention":
    query = args[0] if args else kwargs.get("query")
    value = args[1] if len(args) > 1 else kwargs.get("value")
    key = args[2] if len(args) > 2 else kwargs.get("key")
    config = layer.get_config()
    heads, key_dim = int(config["num_heads"]), int(config["key_dim"])
    value_dim = int(config.get("value_dim") or key_dim)
    queries = _tokens(query, layer, source)
    keys = _tokens(key if key is not None else value, layer, source)
    return heads * (2 * queries * keys + key_dim * (queries + keys) + value_dim * (queries + keys))
  inputs = tf.nest.flatten(args[0] if args else kwargs.get("inputs"))
  queries, keys = _tokens(inputs[0], layer, source), _tokens(inputs[-1], layer, source)
  scores = 2 * queries * keys
  if kind == "AdditiveAttention":
    scores += queries * keys * int(inputs[0].shape[-1])
  return scores


_SEPARABLE = frozenset(
  {"SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D"}
)


def _known_elements(tensor: Any, layer: Any, what: str, source: str) -> int:
  """Elements per image of `tensor`, or a refusal naming `layer` where a dimension is unknown."""
  shape = tuple(getattr(tensor, "shape", ()) or ())
  if not shape or any(dim is None for dim in shape[1:]):
    raise UserError(
      f"refusing to load {source}: the {what} of layer {layer.name} cannot be estimated "
      f"(shape {shape}, not fixed)"
    )
  return math.prod(shape[1:])


def _internal_elements(layer: Any, node: Any, source: str) -> int:
  """Elements per image of the tensors a layer holds inside beyond its inputs and outputs:
  attention scores; a separable convolution's depthwise result (output positions x input
  channels x depth_multiplier, before the 1x1 pointwise step shrinks it to `filters`). Every
  other allowlisted layer holds at most about its inputs and outputs, counted already
  (depthwise and transposed convolutions, upsampling: their outputs are the expansion)."""
  kind = type(layer).__name__
  if kind in _ATTENTION:
    return _attention_elements(layer, node, source)
  if kind in _SEPARABLE:
    config = layer.get_config()
    output = _known_elements(
      tf.nest.flatten(node.outputs)[0], layer, "depthwise intermediate", source
    )
    inputs = tf.nest.flatten(node.input_tensors)[0]
    channels = inputs.shape[layer._get_channel_axis()]
    if channels is None:
      _known_elements(inputs, layer, "depthwise intermediate", source)
    return output // int(config["filters"]) * int(channels) * int(config["depth_multiplier"])
  return 0


def _check_estimable(layer: Any, node: Any, source: str) -> None:
  """Refuses a Keras layer whose output shape is unknown where its inputs' are known
  (RandomHeight, RandomWidth): neither it nor the layers after it could be counted."""
  if not type(layer).__module__.startswith(("keras.", "tf_keras.")):
    return  # hub.KerasLayer and other wrappers: their shapes are whatever they declare
  shapes = [tuple(getattr(t, "shape", ()) or ()) for t in tf.nest.flatten(node.input_tensors)]
  if any(not shape or None in shape[1:] for shape in shapes):
    return
  for tensor in tf.nest.flatten(node.outputs):
    _known_elements(tensor, layer, "output", source)


def model_costs(model: keras.Model, source: str, unknown: int = 1) -> Costs:
  """What `model` holds per image while it computes (see `Costs`); models nested in it are
  followed. Refuses a layer whose internal tensors or output shape cannot be estimated.
  Dimensions the model leaves unknown (an input of any size) count as `unknown`: the largest
  dimension of the images fed, which no layer's output exceeds but a growing one's (refused)."""
  costs = Costs()
  for layer in model.layers:
    inner = model_costs(layer, source, unknown) if isinstance(layer, keras.Model) else None
    for node in layer.inbound_nodes:
      tensors = tf.nest.flatten(node.input_tensors) + tf.nest.flatten(node.outputs)
      kind = type(layer).__name__
      if unknown > 1 and (kind.startswith(_GROWING) or kind.endswith(_GROWING)):
        for tensor in tf.nest.flatten(node.outputs):
          _known_elements(tensor, layer, "output", source)
      sizes = [_elements(tensor, unknown) for tensor in tensors]
      _check_estimable(layer, node, source)
      internal = _internal_elements(layer, node, source)
      if inner is not None:
        internal = inner.step
        costs.add(f"{layer.name}/{inner.largest_layer}", 0, inner.largest)
      costs.add(layer.name, sum(sizes) + internal, max([internal, *sizes]))
  return costs


def check_activations(model: keras.Model, source: str) -> Costs:
  """Refuses a model whose layers output, or hold inside (attention scores, a depthwise
  intermediate), more per image
  than the per-image limit, or a tensor TensorFlow cannot index; returns its `Costs`."""
  limit = limits.MAX_ACTIVATION_BYTES
  for layer in model.layers:
    for index in range(len(layer.inbound_nodes)):
      shapes = layer.get_output_shape_at(index)
      for shape in shapes if isinstance(shapes, list) else [shapes]:
        size = math.prod(dim for dim in tuple(shape or (None,))[1:] if dim) * 4
        if size > limit:
          raise UserError(
            f"refusing to load {source}: layer {layer.name} outputs "
            f"{size / 2**20:,.0f} MiB per image, above the "
            f"{limit >> 20} MiB limit; raise {_UNBOUNDED_HINT} if you trust it"
          )
  costs = model_costs(model, source)
  if costs.largest * 4 > limit or costs.largest > limits.MAX_TENSOR_ELEMENTS:
    raise UserError(
      f"refusing to load {source}: layer {costs.largest_layer} holds a tensor of "
      f"{costs.largest * 4 / 2**20:,.0f} MiB per image inside (attention scores, a depthwise "
      f"intermediate), above the "
      f"{limit >> 20} MiB limit; raise {_UNBOUNDED_HINT} if you trust it"
    )
  return costs


def prediction_batch_size(
  model: keras.Model, asked: int, source: str = "the model", image_shape: tuple = ()
) -> int:
  """The largest batch up to `asked` whose activations fit limits.MAX_BATCH_ACTIVATION_BYTES
  and whose largest tensor TensorFlow can index (at least 1: `check_activations` has refused
  a model that one image does not fit). A model of unknown input size is counted at the
  images fed, `image_shape` ([H, W, ...]), and refused if one image does not fit."""
  shape = model.input_shape
  known = not isinstance(shape, tuple) or None not in shape[1:]  # the model's shapes are exact
  unknown = 1 if known else max((int(dim) for dim in image_shape[:2]), default=1)
  costs = model_costs(model, source, unknown)
  if unknown > 1 and (
    4 * costs.step > limits.MAX_BATCH_ACTIVATION_BYTES
    or costs.largest * 4 > limits.MAX_ACTIVATION_BYTES
  ):
    raise UserError(
      f"{source} takes images of any size and, at {'x'.join(map(str, image_shape))}, layer "
      f"{costs.step_layer} needs {4 * costs.step / 2**20:,.0f} MiB for one image, above the "
      f"memory budget's limits; feed smaller images or raise {_UNBOUNDED_HINT}"
    )
  fits = limits.MAX_BATCH_ACTIVATION_BYTES // max(1, 4 * costs.step)
  indexable = limits.MAX_TENSOR_ELEMENTS // max(1, costs.largest)
  return max(1, min(asked, fits, indexable))


def check_training_batch(model: keras.Model, batch_size: int, source: str = "the model") -> None:
  """Refuses training at `batch_size` where one layer's step (its activations and their
  gradients) would not fit limits.MAX_TRAINING_STEP_BYTES, or a tensor TensorFlow cannot index."""
  costs = model_costs(model, source)
  step = 2 * 4 * costs.step * batch_size
  if (
    step > limits.MAX_TRAINING_STEP_BYTES or costs.largest * batch_size > limits.MAX_TENSOR_ELEMENTS
  ):
    fits = max(
      0,
      min(
        limits.MAX_TRAINING_STEP_BYTES // max(1, 8 * costs.step),
        limits.MAX_TENSOR_ELEMENTS // max(1, costs.largest),
      ),
    )
    raise UserError(
      f"cannot train {source} at --batch_size={batch_size}: layer {costs.step_layer} alone "
      f"needs {step / 2**20:,.0f} MiB a batch, above the memory budget of "
      f"{limits.memory_budget_mb()} MiB; use --batch_size={fits} or less"
      + ("" if fits else " (none fits)")
      + f", or raise {_UNBOUNDED_HINT}"
    )


def check_fused_weights(total: int, model: keras.Model, source: str) -> int:
  """`total` plus `model`'s weight bytes: the weights of models held together (fused members,
  the same file given many times included), refused past limits.MAX_FUSED_WEIGHT_BYTES."""
  total += sum(weight.shape.num_elements() * weight.dtype.size for weight in model.weights)
  if total > limits.MAX_FUSED_WEIGHT_BYTES:
    raise UserError(
      f"refusing to load {source}: with the models before it, {total / 2**20:,.0f} MiB of "
      f"weights, above {limits.MAX_FUSED_WEIGHT_BYTES >> 20} MiB (half the memory budget); "
      f"fuse fewer models or raise {_UNBOUNDED_HINT}"
    )
  return total


def check_prediction_outputs(model: keras.Model, images: int) -> None:
  """Refuses predicting `images` images when the outputs kept for all of them (as float64, the
  form features and probes take) exceed half the memory budget: a model of 10^5 outputs, or
  features 10^5 wide, on a few thousand images is gigabytes, whatever the batch size."""
  shape = model.output_shape
  if not isinstance(shape, tuple) or None in shape[1:]:
    return  # several or unknown outputs: counted per batch only
  width = math.prod(shape[1:])
  total = 8 * width * images
  if total > limits.MAX_FITTED_DATA_BYTES:
    raise UserError(
      f"{images:,} images of {width:,} output values each take {total / 2**20:,.0f} MiB, above "
      f"{limits.MAX_FITTED_DATA_BYTES >> 20} MiB (half the memory budget); use fewer images, "
      f"a narrower --features_layer, or raise {_UNBOUNDED_HINT}"
    )
