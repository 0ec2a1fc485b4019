"""The Keras-config allowlist: configs of .h5 and .keras files and of Keras SavedModel metadata.

Every object named anywhere in a config must be a built-in Keras class from the allowlists,
named by a Keras module (or by none) and by no other registered name; function-valued settings
(activations, initializers, ...) may name built-in functions only. tf_keras would otherwise
import any module a config names, run `Lambda` bytecode from .h5 files even with safe_mode, and
read vocabulary files from paths in the config.
"""

import functools
import math
from collections.abc import Iterator
from typing import Any

from tl_keras import limits
from tl_keras import untrusted
from tl_keras.errors import UserError
from tl_keras.loading.allowlist import UNSAFE_HINT
from tl_keras.loading.allowlist import names

# Allowlist file -> the Keras module (and tf_keras's) whose classes it names.
_CLASS_LISTS = ("layers", "initializers", "regularizers", "constraints", "optimizers", "metrics")
# Classes outside those lists, with the modules a config may name for them.
_OTHER_CLASSES = {
  "Functional": frozenset(
    {"keras", "tf_keras", "keras.src.engine.functional", "tf_keras.src.engine.functional"}
  ),
  "Sequential": frozenset({"keras", "tf_keras"}),
  "Model": frozenset({"keras", "tf_keras"}),
  "InputSpec": frozenset({"keras.layers", "tf_keras.layers"}),
  "Policy": frozenset({"keras.mixed_precision", "tf_keras.mixed_precision"}),
  # Data only: tuples, shapes and the tensor specs of a model's inputs.
  "__tuple__": frozenset(),
  "TensorShape": frozenset(),
  "TypeSpec": frozenset(),
  "__numpy__": frozenset(),
  "__tensor__": frozenset(),
}
_TYPE_SPECS = frozenset({"tf.TensorSpec"})
_FUNCTION_MODULES = (None, "builtins", "keras.activations", "tf_keras.activations")


@functools.cache
def _class_modules() -> dict[str, frozenset]:
  """Class name -> the Keras modules a config may name for it. Configs name no module at all
  in .h5 files and SavedModel metadata; .keras files name the public module. A name on two
  lists (Identity) takes the later list's modules."""
  modules = {}
  for kind in _CLASS_LISTS:
    for name in names(kind):
      modules[name] = frozenset({f"keras.{kind}", f"tf_keras.{kind}"})
    if kind == "optimizers":
      modules.update({f"Custom>{name}": frozenset() for name in names(kind)})  # tf_keras's names
  return {**modules, **_OTHER_CLASSES}


@functools.cache
def _named_settings() -> dict[str, frozenset]:
  """Settings that name a function or class by a plain string, by the suffix of their key."""
  return {
    "activation": names("activations"),
    "_initializer": names("initializers") | names("initializer_functions"),
    "_regularizer": names("regularizers") | names("regularizer_functions"),
    "_constraint": names("constraints") | names("constraint_functions"),
    "fn": names("metric_functions"),
  }


def _config_problems(node: Any, key: str = "") -> Iterator[str]:
  """Yields what is not allowed in a Keras config, walking every dict and list in it."""
  if isinstance(node, list):
    for item in node:
      yield from _config_problems(item, key)
    return
  if isinstance(node, str):
    for suffix, allowed in _named_settings().items():
      if key.endswith(suffix) and node not in allowed:
        yield f"{key}={node!r}"
    return
  if not isinstance(node, dict):
    return
  class_name = node.get("class_name")
  if "class_name" in node:
    yield from _object_problems(node, class_name)
  elif "module" in node or "registered_name" in node:
    yield f"module/registered_name without a class ({node.get('module')!r})"
  for child_key, value in node.items():
    if class_name == "function" and child_key == "config":
      continue
    if "shape" in str(child_key):
      yield from _shape_problems(value, str(child_key))
    yield from _config_problems(value, str(child_key))


def _shape_problems(value: Any, key: str) -> Iterator[str]:
  """Refuses shapes in a config (input shapes, reshape targets) whose tensors would exceed
  the per-image activation limit: layers allocate by them while they are built."""
  if isinstance(value, dict):
    value = value.get("items")
  if not isinstance(value, list):
    return
  if any(isinstance(item, (list, dict)) for item in value):  # several shapes
    for item in value:
      yield from _shape_problems(item, key)
    return
  dims = [dim for dim in value[1:] if isinstance(dim, int) and dim > 0]
  if math.prod(dims) * 4 > limits.MAX_ACTIVATION_BYTES:
    yield f"{key} {value} (above {limits.MAX_ACTIVATION_BYTES >> 20} MiB per image)"


def _object_problems(node: dict[str, Any], class_name: Any) -> Iterator[str]:
  """Yields what is not allowed in one serialised object {"class_name": ..., ...}."""
  module = node.get("module")
  registered = node.get("registered_name")
  if class_name == "function":  # a built-in activation, serialised as an object
    if (
      node.get("config") not in names("activations")
      or module not in _FUNCTION_MODULES
      or registered not in (None, "function", node.get("config"))
    ):
      yield f"function {node.get('config')!r} from {module!r}"
    return
  class_modules = _class_modules()
  if not isinstance(class_name, str) or class_name not in class_modules:
    yield str(class_name)
    return
  if module is not None and module not in class_modules[class_name]:
    yield f"{class_name} from module {module!r}"
  if registered is not None and registered != class_name:
    yield f"{class_name} registered as {registered!r}"
  if class_name == "TypeSpec" and node.get("type_spec") not in _TYPE_SPECS:
    yield f"TypeSpec {node.get('type_spec')!r}"
  if class_name in ("__numpy__", "__tensor__") and (
    not isinstance(node.get("config"), dict) or node["config"].get("dtype") not in names("dtypes")
  ):
    yield f"{class_name} that is not a numeric array"


def check_model_config(config: Any, source: str) -> None:
  """Refuses a Keras config that names anything but built-in classes, modules and functions."""
  try:
    problems = sorted(set(_config_problems(config)))
  except RecursionError as e:  # nested deeper than Python's stack: no model is
    raise UserError(f"cannot read the config of {source} ({type(e).__name__})") from e
  if problems:
    shown = ", ".join(problems[:5]) + (
      f" and {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    raise UserError(
      f"refusing to load {source}: its config holds {shown}; a model file may "
      "name only built-in Keras image-model classes, modules and functions, "
      "within the size limits (Lambda layers, custom classes, other modules "
      f"and file paths can run code or read files); {UNSAFE_HINT}"
    )


def parse_config(raw: Any, source: str) -> Any:
  """The JSON config `raw` (text or bytes read from a model file): an object within the size
  and depth limits (`untrusted.parse_json`)."""
  if not isinstance(raw, (str, bytes)):
    raise UserError(f"cannot read the config of {source} ({type(raw).__name__}, not text)")
  if len(raw) > limits.MAX_CONFIG_BYTES:
    raise UserError(
      f"refusing to load {source}: its config is above the "
      f"{limits.MAX_CONFIG_BYTES >> 20} MiB limit"
    )
  return untrusted.parse_json(
    raw, f"the config of {source}", dict, limits.MAX_CONFIG_BYTES, limits.MAX_CONFIG_DEPTH
  )
