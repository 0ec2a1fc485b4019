"""Resource budgets: tensors a file declares against what it stores, variables Keras creates
while building a model from a config, and activations per image.

Tensors a file declares (weights, variables, constants) are added up before anything is
allocated and must fit `max_bytes` and what the file actually stores (a small file may not
declare gigabytes). While Keras builds the model, variable creation is held to the same budget,
so a config cannot allocate what its weights do not back.
"""

import contextlib
import math
from collections.abc import Iterator

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


def check_activations(model: keras.Model, source: str) -> None:
  """Refuses a model whose layers output more per image than any image model needs."""
  for layer in model.layers:
    for index in range(len(layer.inbound_nodes)):
      shapes = layer.get_output_shape_at(index)
      for shape in shapes if isinstance(shapes, list) else [shapes]:
        size = math.prod(dim for dim in tuple(shape or (None,))[1:] if dim) * 4
        if size > limits.MAX_ACTIVATION_BYTES:
          raise UserError(
            f"refusing to load {source}: layer {layer.name} outputs "
            f"{size / 2**20:,.0f} MiB per image, above the "
            f"{limits.MAX_ACTIVATION_BYTES >> 20} MiB limit"
          )
