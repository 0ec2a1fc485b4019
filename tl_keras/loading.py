"""Loading models from files that may be hostile, without running anything from them.

`load_model` takes an .h5 or .keras file, a SavedModel folder, or a TF Hub handle. Before
anything is deserialised, the file is read as data and checked against allowlists:

- Keras configs (.h5, .keras, Keras SavedModel metadata): every object named anywhere in the
  config must be a built-in Keras class from the lists below, named by a Keras module (or by
  none) and by no other registered name; function-valued settings (activations,
  initializers, ...) may name built-in functions only. tf_keras would otherwise import any
  module a config names, run `Lambda` bytecode from .h5 files even with safe_mode, and read
  vocabulary files from paths in the config.
- SavedModel graphs: every op of every function the loader or a caller could run must be one
  of the ops image models use for inference and training (no file access, printing to
  streams, Python calls or dataset readers). Only TF2 SavedModels are accepted: loading a
  TF1 one runs its restore and init ops. Assets must be regular files inside the folder.
- Sizes: tensors the file declares (weights, variables, constants) are added up before
  anything is allocated and must fit `max_bytes` and what the file actually stores (a small
  file may not declare gigabytes); descriptions (configs, graphs) and archive members have
  fixed caps (`tl_keras.limits`). While Keras builds the model, variable creation is held to
  the same budget, so a config cannot allocate what its weights do not back.

`allow_unsafe=True` skips the allowlists (not the size limits): only for files you trust.
What is not checked: how much memory or time a model's computation takes when it runs (a
graph may loop forever or build huge tensors from small inputs). For models from unknown
sources, run tl_keras inside a sandbox with memory and time limits.
"""

import contextlib
import json
import math
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np
import tensorflow as tf

from tl_keras import limits
from tl_keras.errors import UserError
from tl_keras.keras_api import keras

_UNSAFE_HINT = "pass --allow_unsafe_deserialization only if you trust it"

# --- Keras configs ----------------------------------------------------------------------------

_LAYERS = frozenset(
  {
    "Activation",
    "ActivityRegularization",
    "Add",
    "AdditiveAttention",
    "AlphaDropout",
    "Attention",
    "Average",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "AvgPool1D",
    "AvgPool2D",
    "AvgPool3D",
    "BatchNormalization",
    "CenterCrop",
    "Concatenate",
    "Conv1D",
    "Conv1DTranspose",
    "Conv2D",
    "Conv2DTranspose",
    "Conv3D",
    "Conv3DTranspose",
    "Convolution1D",
    "Convolution1DTranspose",
    "Convolution2D",
    "Convolution2DTranspose",
    "Convolution3D",
    "Convolution3DTranspose",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "Dense",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "Dot",
    "Dropout",
    "ELU",
    "EinsumDense",
    "Flatten",
    "GaussianDropout",
    "GaussianNoise",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalAvgPool1D",
    "GlobalAvgPool2D",
    "GlobalAvgPool3D",
    "GlobalMaxPool1D",
    "GlobalMaxPool2D",
    "GlobalMaxPool3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "GroupNormalization",
    "Identity",
    "InputLayer",
    "LayerNormalization",
    "LeakyReLU",
    "MaxPool1D",
    "MaxPool2D",
    "MaxPool3D",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "Maximum",
    "Minimum",
    "MultiHeadAttention",
    "Multiply",
    "Normalization",
    "PReLU",
    "Permute",
    "RandomBrightness",
    "RandomContrast",
    "RandomCrop",
    "RandomFlip",
    "RandomHeight",
    "RandomRotation",
    "RandomTranslation",
    "RandomWidth",
    "RandomZoom",
    "ReLU",
    "RepeatVector",
    "Rescaling",
    "Reshape",
    "Resizing",
    "SeparableConv1D",
    "SeparableConv2D",
    "SeparableConvolution1D",
    "SeparableConvolution2D",
    "Softmax",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "Subtract",
    "ThresholdedReLU",
    "UnitNormalization",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
  }
)
_INITIALIZERS = frozenset(
  {
    "Constant",
    "GlorotNormal",
    "GlorotUniform",
    "HeNormal",
    "HeUniform",
    "Identity",
    "LecunNormal",
    "LecunUniform",
    "Ones",
    "Orthogonal",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "Zeros",
  }
)
_REGULARIZERS = frozenset({"L1", "L1L2", "L2", "OrthogonalRegularizer"})
_CONSTRAINTS = frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "RadialConstraint", "UnitNorm"})
_OPTIMIZERS = frozenset(
  {
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Ftrl",
    "Lion",
    "Nadam",
    "RMSprop",
    "SGD",
  }
)
_METRICS = frozenset(
  {
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "Mean",
    "MeanMetricWrapper",
    "SparseCategoricalAccuracy",
    "SparseTopKCategoricalAccuracy",
    "Sum",
    "TopKCategoricalAccuracy",
  }
)
# Class name -> the Keras modules a config may name for it. Configs name no module at all in
# .h5 files and SavedModel metadata; .keras files name the public module.
_CLASS_MODULES: dict[str, frozenset] = {
  **{name: frozenset({"keras.layers", "tf_keras.layers"}) for name in _LAYERS},
  **{name: frozenset({"keras.initializers", "tf_keras.initializers"}) for name in _INITIALIZERS},
  **{name: frozenset({"keras.regularizers", "tf_keras.regularizers"}) for name in _REGULARIZERS},
  **{name: frozenset({"keras.constraints", "tf_keras.constraints"}) for name in _CONSTRAINTS},
  **{name: frozenset({"keras.optimizers", "tf_keras.optimizers"}) for name in _OPTIMIZERS},
  **{f"Custom>{name}": frozenset() for name in _OPTIMIZERS},  # tf_keras's registered names
  **{name: frozenset({"keras.metrics", "tf_keras.metrics"}) for name in _METRICS},
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
_NUMERIC_DTYPES = frozenset(
  {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)
_ACTIVATIONS = frozenset(
  {
    "elu",
    "exponential",
    "gelu",
    "hard_sigmoid",
    "linear",
    "mish",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "softsign",
    "swish",
    "tanh",
    "leaky_relu",
    "log_softmax",
  }
)
# Settings that name a function or class by a plain string, by the suffix of their key.
_NAMED_SETTINGS = {
  "activation": _ACTIVATIONS,
  "_initializer": _INITIALIZERS
  | {
    "constant",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "identity",
    "lecun_normal",
    "lecun_uniform",
    "ones",
    "orthogonal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "variance_scaling",
    "zeros",
  },
  "_regularizer": _REGULARIZERS | {"l1", "l2", "l1_l2", "orthogonal_regularizer"},
  "_constraint": _CONSTRAINTS
  | {"max_norm", "min_max_norm", "non_neg", "radial_constraint", "unit_norm"},
  "fn": frozenset(
    {
      "accuracy",
      "binary_accuracy",
      "categorical_accuracy",
      "sparse_categorical_accuracy",
      "top_k_categorical_accuracy",
      "sparse_top_k_categorical_accuracy",
    }
  ),
}


def _config_problems(node: Any, key: str = "") -> Iterator[str]:
  """Yields what is not allowed in a Keras config, walking every dict and list in it."""
  if isinstance(node, list):
    for item in node:
      yield from _config_problems(item, key)
    return
  if isinstance(node, str):
    for suffix, allowed in _NAMED_SETTINGS.items():
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
      node.get("config") not in _ACTIVATIONS
      or module not in (None, "builtins", "keras.activations", "tf_keras.activations")
      or registered not in (None, "function", node.get("config"))
    ):
      yield f"function {node.get('config')!r} from {module!r}"
    return
  if not isinstance(class_name, str) or class_name not in _CLASS_MODULES:
    yield str(class_name)
    return
  if module is not None and module not in _CLASS_MODULES[class_name]:
    yield f"{class_name} from module {module!r}"
  if registered is not None and registered != class_name:
    yield f"{class_name} registered as {registered!r}"
  if class_name == "TypeSpec" and node.get("type_spec") not in _TYPE_SPECS:
    yield f"TypeSpec {node.get('type_spec')!r}"
  if class_name in ("__numpy__", "__tensor__") and (
    not isinstance(node.get("config"), dict) or node["config"].get("dtype") not in _NUMERIC_DTYPES
  ):
    yield f"{class_name} that is not a numeric array"


def check_model_config(config: Any, source: str) -> None:
  """Refuses a Keras config that names anything but built-in classes, modules and functions."""
  problems = sorted(set(_config_problems(config)))
  if problems:
    shown = ", ".join(problems[:5]) + (
      f" and {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    raise UserError(
      f"refusing to load {source}: its config holds {shown}; a model file may "
      "name only built-in Keras image-model classes, modules and functions, "
      "within the size limits (Lambda layers, custom classes, other modules "
      f"and file paths can run code or read files); {_UNSAFE_HINT}"
    )


# --- SavedModel graphs ------------------------------------------------------------------------

# Ops of image-model inference and training: math, convolutions, normalisation, image
# resizing and transforms, random numbers for augmentation and dropout, variables and control
# flow. Nothing that reads or writes files, prints to streams, calls Python or reads datasets.
_GRAPH_OPS = frozenset(
  {
    "Abs",
    "Add",
    "AddN",
    "AddV2",
    "AdjustContrastv2",
    "AdjustHue",
    "AdjustSaturation",
    "All",
    "Any",
    "ArgMax",
    "ArgMin",
    "Assert",
    "AssignAddVariableOp",
    "AssignSubVariableOp",
    "AssignVariableOp",
    "AvgPool",
    "AvgPool3D",
    "BatchMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
    "BatchToSpaceND",
    "BiasAdd",
    "Bitcast",
    "BroadcastArgs",
    "BroadcastGradientArgs",
    "BroadcastTo",
    "Case",
    "Cast",
    "Ceil",
    "CheckNumerics",
    "ClipByValue",
    "ConcatV2",
    "Const",
    "Conv",
    "Conv2D",
    "Conv2DBackpropFilter",
    "Conv2DBackpropInput",
    "Conv3D",
    "Conv3DBackpropInputV2",
    "Cos",
    "CropAndResize",
    "Cumsum",
    "DepthToSpace",
    "DepthwiseConv2dNative",
    "DepthwiseConv2dNativeBackpropFilter",
    "DepthwiseConv2dNativeBackpropInput",
    "DivNoNan",
    "Einsum",
    "Elu",
    "EluGrad",
    "EnsureShape",
    "Equal",
    "Erf",
    "Erfc",
    "Exp",
    "ExpandDims",
    "Expm1",
    "Fill",
    "Floor",
    "FloorDiv",
    "FloorMod",
    "FusedBatchNorm",
    "FusedBatchNormGradV3",
    "FusedBatchNormV2",
    "FusedBatchNormV3",
    "GatherNd",
    "GatherV2",
    "Greater",
    "GreaterEqual",
    "HSVToRGB",
    "Identity",
    "IdentityN",
    "If",
    "ImageProjectiveTransformV2",
    "ImageProjectiveTransformV3",
    "IsFinite",
    "L2Loss",
    "LeakyRelu",
    "LeakyReluGrad",
    "Less",
    "LessEqual",
    "Log",
    "Log1p",
    "LogSoftmax",
    "LogicalAnd",
    "LogicalNot",
    "LogicalOr",
    "MatMul",
    "Max",
    "MaxPool",
    "MaxPool3D",
    "MaxPoolGrad",
    "MaxPoolV2",
    "Maximum",
    "Mean",
    "Min",
    "Minimum",
    "MirrorPad",
    "Mul",
    "MulNoNan",
    "Neg",
    "NoOp",
    "NotEqual",
    "OnesLike",
    "Pack",
    "Pad",
    "PadV2",
    "PartitionedCall",
    "Placeholder",
    "Pow",
    "Prod",
    "RGBToHSV",
    "RandomStandardNormal",
    "RandomUniform",
    "RandomUniformInt",
    "Range",
    "Rank",
    "ReadVariableOp",
    "RealDiv",
    "Reciprocal",
    "Relu",
    "Relu6",
    "Relu6Grad",
    "ReluGrad",
    "Reshape",
    "ResizeArea",
    "ResizeBicubic",
    "ResizeBilinear",
    "ResizeBilinearGrad",
    "ResizeNearestNeighbor",
    "ResizeNearestNeighborGrad",
    "ReverseV2",
    "RngBitGenerator",
    "RngReadAndSkip",
    "Round",
    "Rsqrt",
    "RsqrtGrad",
    "ScaleAndTranslate",
    "ScaleAndTranslateGrad",
    "Select",
    "SelectV2",
    "Selu",
    "SeluGrad",
    "Shape",
    "ShapeN",
    "Sigmoid",
    "SigmoidGrad",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "SoftplusGrad",
    "Softsign",
    "SpaceToBatchND",
    "SpaceToDepth",
    "Split",
    "SplitV",
    "Sqrt",
    "SqrtGrad",
    "Square",
    "SquaredDifference",
    "Squeeze",
    "StatefulPartitionedCall",
    "StatelessCase",
    "StatelessIf",
    "StatelessRandomGetKeyCounter",
    "StatelessRandomGetKeyCounterAlg",
    "StatelessRandomNormalV2",
    "StatelessRandomUniform",
    "StatelessRandomUniformFullIntV2",
    "StatelessRandomUniformInt",
    "StatelessRandomUniformIntV2",
    "StatelessRandomUniformV2",
    "StatelessTruncatedNormalV2",
    "StatelessWhile",
    "StopGradient",
    "StridedSlice",
    "StridedSliceGrad",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "TanhGrad",
    "Tile",
    "TopKV2",
    "Transpose",
    "TruncatedNormal",
    "Unpack",
    "VarHandleOp",
    "VarIsInitializedOp",
    "While",
    "ZerosLike",
  }
)


def _attr_function_refs(attr: Any) -> Iterator[str]:
  """Names of the functions an AttrValue refers to, at any depth (NameAttrList attrs too)."""
  if attr.HasField("func"):
    yield attr.func.name
    for inner in attr.func.attr.values():
      yield from _attr_function_refs(inner)
  if attr.HasField("list"):
    for function in attr.list.func:
      yield function.name
      for inner in function.attr.values():
        yield from _attr_function_refs(inner)


def _function_refs(nodes: Iterable[Any]) -> Iterator[str]:
  """Names of the functions that graph nodes call (function-valued attributes)."""
  for node in nodes:
    for attr in node.attr.values():
      yield from _attr_function_refs(attr)


_TRACED_SAVER = re.compile(r"__inference__traced_(save|restore)_\d+")


def _graph_ops(meta_graph: Any) -> set:
  """The ops of every function in the graph's library and of the main graph, except TF's own
  save and restore functions and the main-graph nodes that call them.

  TF2 loading never runs the main graph's save and restore ops (it restores variables
  itself). The functions they call are exempt only if they carry the names TF gives them
  and nothing that can run reaches them: the object graph's functions, gradients, and the
  functions those call, followed to the end.
  """
  graph = meta_graph.graph_def
  functions = {function.signature.name: function for function in graph.library.function}
  saver_ops = {
    meta_graph.saver_def.save_tensor_name.split(":")[0],
    meta_graph.saver_def.restore_op_name.split(":")[0],
  }
  roots = {gradient.gradient_func for gradient in graph.library.gradient}
  roots.update(gradient.gradient_func for gradient in graph.library.registered_gradients)
  for node in meta_graph.object_graph_def.nodes:
    roots.update(node.function.concrete_functions)
    roots.add(node.bare_concrete_function.concrete_function_name)
  roots.update(_function_refs(node for node in graph.node if node.name not in saver_ops))
  reachable, stack = set(), list(roots)
  while stack:
    name = stack.pop()
    if name not in reachable and name in functions:
      reachable.add(name)
      stack.extend(_function_refs(functions[name].node_def))
  exempt = {
    name
    for name in _function_refs(node for node in graph.node if node.name in saver_ops)
    if _TRACED_SAVER.fullmatch(name) and name not in reachable
  }
  ops = {node.op for node in graph.node if node.name not in saver_ops}
  for name, function in functions.items():
    if name not in exempt:
      ops.update(node.op for node in function.node_def)
  return ops


def _declared_bytes(shape: Any, dtype: int) -> int:
  """Bytes of a tensor of TensorShapeProto `shape` and DataType enum `dtype` (0 if unknown)."""
  if shape.unknown_rank or any(dim.size < 0 for dim in shape.dim):
    return 0
  try:
    itemsize = tf.dtypes.as_dtype(dtype).size
  except (TypeError, ValueError):
    itemsize = 8
  return math.prod(dim.size for dim in shape.dim) * max(itemsize, 1)


def _folder_files(folder: str, source: str) -> dict[str, int]:
  """Regular files under `folder` with their sizes; refuses links, devices and FIFOs."""
  files = {}
  for root, dirs, names in os.walk(folder):
    for name in dirs + names:
      path = os.path.join(root, name)
      mode = os.lstat(path).st_mode
      if stat.S_ISDIR(mode):
        continue
      if not stat.S_ISREG(mode):
        raise UserError(
          f"refusing to load {source}: {os.path.relpath(path, folder)} is a link "
          "or special file, not a regular file inside the model folder"
        )
      files[os.path.relpath(path, folder)] = os.lstat(path).st_size
  return files


def _parse_saved_model(export_dir: str, size: int, source: str):
  from tensorflow.core.protobuf import saved_model_pb2

  if size > limits.MAX_MODEL_DESCRIPTION_BYTES:
    raise UserError(
      f"refusing to load {source}: its graph is {size >> 20} MiB, above the "
      f"{limits.MAX_MODEL_DESCRIPTION_BYTES >> 20} MiB limit"
    )
  proto = saved_model_pb2.SavedModel()
  try:
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
      proto.ParseFromString(f.read())
  except Exception as e:
    raise UserError(f"cannot read {source} as a SavedModel ({type(e).__name__})") from e
  if len(proto.meta_graphs) != 1 or not proto.meta_graphs[0].object_graph_def.nodes:
    raise UserError(
      f"refusing to load {source}: it is a TF1 SavedModel (loading it runs its "
      "restore and init ops); re-export it with TF2's tf.saved_model.save, or "
      f"{_UNSAFE_HINT}"
    )
  return proto.meta_graphs[0]


def check_saved_model(
  export_dir: str, source: str, max_bytes: int = limits.MAX_MODEL_BYTES, allow_unsafe: bool = False
) -> None:
  """Refuses a SavedModel that is not plain data: see the module docstring."""
  files = _folder_files(export_dir, source)
  meta_graph = _parse_saved_model(export_dir, files.get("saved_model.pb", 0), source)
  graph = meta_graph.graph_def
  functions = {function.signature.name: function for function in graph.library.function}

  refused = [] if allow_unsafe else sorted(_graph_ops(meta_graph) - _GRAPH_OPS)
  if refused:
    raise UserError(
      f"refusing to load {source}: its graph uses {', '.join(refused[:8])}, "
      "which image models do not need (file access, printing, Python calls "
      f"and the like); {_UNSAFE_HINT}"
    )
  assets_dir = os.path.realpath(os.path.join(export_dir, "assets"))
  for asset in meta_graph.asset_file_def:
    path = os.path.realpath(os.path.join(assets_dir, asset.filename))
    if (
      os.path.isabs(asset.filename)
      or ".." in asset.filename.split("/")
      or not path.startswith(assets_dir + os.sep)
    ):
      raise UserError(
        f"refusing to load {source}: asset {asset.filename!r} lies outside the "
        "model's assets folder"
      )

  # What the loader allocates: variables, constants. What backs it: the checkpoint's tensors,
  # which it stores raw, and the graph file.
  checkpoint = 0
  if "variables/variables.index" in files:
    try:
      reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
      shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except Exception as e:
      raise UserError(f"cannot read the variables of {source} ({type(e).__name__})") from e
    checkpoint = sum(
      math.prod(shape) * max(dtypes[name].size, 1)
      for name, shape in shapes.items()
      if dtypes[name] != tf.string
    )
    data = sum(size for name, size in files.items() if name.startswith("variables/"))
    _check_declared(checkpoint, data, max_bytes, source)
  declared = sum(
    _declared_bytes(node.variable.shape, node.variable.dtype)
    for node in meta_graph.object_graph_def.nodes
    if node.WhichOneof("kind") == "variable"
  )
  declared += sum(
    _declared_bytes(node.attr["value"].tensor.tensor_shape, node.attr["value"].tensor.dtype)
    for nodes in [graph.node, *(f.node_def for f in functions.values())]
    for node in nodes
    if node.op == "Const"
  )
  _check_declared(declared, checkpoint + files["saved_model.pb"], max_bytes, source)


def _keras_saved_model_config(export_dir: str, source: str) -> list:
  from tf_keras.protobuf import saved_metadata_pb2

  path = os.path.join(export_dir, "keras_metadata.pb")
  if os.path.getsize(path) > limits.MAX_CONFIG_BYTES:
    raise UserError(
      f"refusing to load {source}: its Keras metadata is above the "
      f"{limits.MAX_CONFIG_BYTES >> 20} MiB limit"
    )
  proto = saved_metadata_pb2.SavedMetadata()
  try:
    with open(path, "rb") as f:
      proto.ParseFromString(f.read())
    return [json.loads(node.metadata) for node in proto.nodes if node.metadata]
  except Exception as e:
    raise UserError(f"cannot read the Keras metadata of {source} ({type(e).__name__})") from e


# --- Sizes ------------------------------------------------------------------------------------


def _budget(stored: int, max_bytes: int) -> int:
  """What a file storing `stored` bytes may declare: its contents may be compressed, but not
  inflate a small file into gigabytes."""
  return min(max_bytes, limits.MAX_INFLATION * stored + limits.MIN_MODEL_BUDGET_BYTES)


def _check_declared(declared: int, stored: int, max_bytes: int, source: str) -> None:
  if declared > max_bytes:
    raise UserError(
      f"refusing to load {source}: it declares {declared / 2**20:,.0f} MiB of "
      f"tensors, above the limit of {max_bytes / 2**20:,.0f} MiB; raise "
      "--max_model_mb if you trust it"
    )
  if declared > _budget(stored, max_bytes):
    raise UserError(
      f"refusing to load {source}: it declares {declared / 2**20:,.0f} MiB of "
      f"tensors but stores only {stored / 2**20:,.1f} MiB (a decompression bomb?)"
    )


def _storage_size(attr_id: Any) -> int:
  try:
    return attr_id.get_storage_size()
  except RuntimeError:  # HDF5 reports an empty attribute's size as an error
    return 0


def _check_h5(handle: Any, max_bytes: int, source: str) -> int:
  """Refuses HDF5 content that reads other files or declares more than it may allocate:
  links other than hard links, external or virtual storage, datasets that are not numeric,
  attributes that are not numbers or strings. Returns the allocation budget its datasets'
  stored bytes allow (see `_budget`)."""
  declared, stored, problems = 0, 0, []

  def visit(name, link):
    if not isinstance(link, h5py.HardLink):
      problems.append(f"{name} is a {type(link).__name__}")

  def visit_object(name, item):
    nonlocal declared, stored
    for attr in item.attrs:
      attr_id = item.attrs.get_id(attr)
      dtype, shape = attr_id.dtype, attr_id.shape
      if h5py.check_vlen_dtype(dtype) in (str, bytes):
        allowed = True  # read first in a process with a memory limit: _read_h5_attributes
      else:
        allowed = dtype.kind in "biufS" and _storage_size(attr_id) <= limits.MAX_CONFIG_BYTES
      if not allowed:
        problems.append(f"attribute {attr} of {name or '/'} holds {dtype} {shape}")
    if isinstance(item, h5py.Dataset):
      plist = item.id.get_create_plist()
      if (
        plist.get_layout() not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED)
        or plist.get_external_count()
      ):
        problems.append(f"{name} keeps its data outside this file")
      elif item.dtype.kind not in "biuf" or item.dtype.itemsize > 16:
        problems.append(f"{name} holds {item.dtype}, not numbers")
      else:
        declared += (item.size or 0) * item.dtype.itemsize
        stored += item.id.get_storage_size()

  handle.visititems_links(visit)
  visit_object("", handle)
  handle.visititems(visit_object)
  if problems:
    raise UserError(
      f"refusing to load {source}: {problems[0]}"
      + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
      + "; model weights must be plain numeric arrays stored in the file itself"
    )
  _check_declared(declared, stored, max_bytes, source)
  return _budget(stored, max_bytes)


_READ_ATTRIBUTES = """
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
  f.visititems(lambda name, item: [item.attrs[key] for key in item.attrs])
  [f.attrs[key] for key in f.attrs]
"""


def _read_h5_attributes(path: str, source: str) -> None:
  """Reads every attribute of an HDF5 file in a child process limited to
  `limits.MAX_ATTRIBUTE_READ_BYTES` of memory; refuses the file if that is not enough.

  Strings of variable length (Keras stores layer and weight names so) can all point at one
  large string in the file, so reading them can take far more memory than the file holds,
  and nothing in the file says how much before they are read.
  """

  def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (limits.MAX_ATTRIBUTE_READ_BYTES,) * 2)

  try:
    result = subprocess.run(
      [sys.executable, "-c", _READ_ATTRIBUTES, path],
      preexec_fn=limit_memory,
      capture_output=True,
      timeout=120,
      env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
      check=False,
    )
  except subprocess.TimeoutExpired as e:
    raise UserError(f"refusing to load {source}: reading its attributes took over 2 minutes") from e
  if result.returncode:
    raise UserError(
      f"refusing to load {source}: its HDF5 attributes take more than "
      f"{limits.MAX_ATTRIBUTE_READ_BYTES >> 20} MiB to read (or cannot be read)"
    )


def _h5_config(path: str, max_bytes: int) -> tuple[dict[str, Any], int]:
  """The model config of an .h5 file and the variable budget its stored weights allow."""
  try:
    with h5py.File(path, "r") as f:
      budget = _check_h5(f, max_bytes, path)
    _read_h5_attributes(path, path)
    with h5py.File(path, "r") as f:
      raw = f.attrs.get("model_config")
  except OSError as e:
    raise UserError(
      f"cannot read model file {path}: not a valid HDF5 file (corrupt or "
      "truncated?); re-create it with the pretrain stage"
    ) from e
  if raw is None:
    raise UserError(f"{path} holds weights only, no model; save the whole model as .h5")
  return _parse_config(raw, path), budget


def _parse_config(raw: Any, source: str) -> Any:
  if len(raw) > limits.MAX_CONFIG_BYTES:
    raise UserError(
      f"refusing to load {source}: its config is above the "
      f"{limits.MAX_CONFIG_BYTES >> 20} MiB limit"
    )
  try:
    return json.loads(raw)
  except (ValueError, RecursionError) as e:
    raise UserError(f"cannot read the config of {source} ({type(e).__name__})") from e


_KERAS_ARCHIVE_MEMBERS = frozenset({"metadata.json", "config.json", "model.weights.h5"})


def _keras_zip_config(path: str, max_bytes: int) -> tuple[dict[str, Any], int]:
  """The model config of a .keras archive and the variable budget its stored weights allow."""
  try:
    with zipfile.ZipFile(path) as archive:
      members = {info.filename: info for info in archive.infolist()}
      if set(members) != _KERAS_ARCHIVE_MEMBERS:
        extra = sorted(set(members) - _KERAS_ARCHIVE_MEMBERS)
        raise UserError(
          f"refusing to load {path}: a .keras image model holds exactly "
          f"{', '.join(sorted(_KERAS_ARCHIVE_MEMBERS))}"
          + (f", not {', '.join(extra[:3])}" if extra else "")
        )
      inflated = sum(info.file_size for info in members.values())
      _check_declared(inflated, os.path.getsize(path), max_bytes, path)
      for name in ("metadata.json", "config.json"):
        if members[name].file_size > limits.MAX_CONFIG_BYTES:
          raise UserError(
            f"refusing to load {path}: its {name} is above the "
            f"{limits.MAX_CONFIG_BYTES >> 20} MiB limit"
          )
      config = _parse_config(archive.read("config.json"), path)
      weights = members["model.weights.h5"]
      # HDF5 reads a file on disk far faster than through Python's zip reader.
      with archive.open(weights) as member, tempfile.NamedTemporaryFile(suffix=".h5") as copy:
        shutil.copyfileobj(member, copy)
        copy.flush()
        with h5py.File(copy.name, "r") as h5:
          budget = _check_h5(h5, max_bytes, path)
        _read_h5_attributes(copy.name, path)
        return config, budget
  except (zipfile.BadZipFile, OSError, KeyError) as e:
    raise UserError(
      f"cannot read model file {path}: not a valid .keras archive (corrupt or truncated?)"
    ) from e


@contextlib.contextmanager
def _variable_budget(max_bytes: int, refusals: list) -> Iterator[None]:
  """Refuses, before allocating it, any variable beyond `max_bytes` in all."""
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


def _check_activations(model: keras.Model, source: str) -> None:
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


# --- ImageNet backbones from tf_keras.applications ---------------------------------------------

KERAS_PREFIX = "keras:"
DEFAULT_INPUT_SIZE = 224
PREPROCESSING_LAYER = "imagenet_preprocessing"
_FAMILIES = {
  "convnext": ("ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge"),
  "densenet": ("DenseNet121", "DenseNet169", "DenseNet201"),
  "efficientnet": tuple(f"EfficientNetB{index}" for index in range(8)),
  "efficientnet_v2": (
    *(f"EfficientNetV2B{index}" for index in range(4)),
    "EfficientNetV2S",
    "EfficientNetV2M",
    "EfficientNetV2L",
  ),
  "inception_resnet_v2": ("InceptionResNetV2",),
  "inception_v3": ("InceptionV3",),
  "mobilenet": ("MobileNet",),
  "mobilenet_v2": ("MobileNetV2",),
  "mobilenet_v3": ("MobileNetV3Small", "MobileNetV3Large"),
  "nasnet": ("NASNetMobile", "NASNetLarge"),
  "regnet": tuple(
    f"RegNet{kind}{flops:03d}"
    for kind in "XY"
    for flops in (2, 4, 6, 8, 16, 32, 40, 64, 80, 120, 160, 320)
  ),
  "resnet": ("ResNet50", "ResNet101", "ResNet152"),
  "resnet_v2": ("ResNet50V2", "ResNet101V2", "ResNet152V2"),
  "resnet_rs": tuple(f"ResNetRS{depth}" for depth in (50, 101, 152, 200, 270, 350, 420)),
  "vgg16": ("VGG16",),
  "vgg19": ("VGG19",),
  "xception": ("Xception",),
}
# The allowlist: application name -> its module in keras.applications.
APPLICATIONS = {name: module for module, names in _FAMILIES.items() for name in names}
_WEIGHTS_LOCK = threading.Lock()


def keras_cache_dir() -> str:
  """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
  return os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "models")


@contextlib.contextmanager
def _weights_from_cache(source: str, max_bytes: int) -> Iterator[None]:
  """While Keras builds an application, its weights come from `keras_cache_dir()`, checked as
  untrusted HDF5 (`_check_h5`) before Keras reads them, or are downloaded there (Keras checks
  the download's hash); offline without the file, a UserError names it and where it goes."""
  data_utils = sys.modules[keras.utils.get_file.__module__]
  download = data_utils.get_file

  def get_file(fname, origin, *args, cache_subdir="models", **kwargs):
    folder = keras_cache_dir()
    path = os.path.join(folder, fname)
    if not os.path.lexists(path):
      try:
        download(
          fname, origin, *args, cache_subdir="models", cache_dir=os.path.dirname(folder), **kwargs
        )
      except Exception as e:
        raise UserError(
          f"no ImageNet weights for {source}: put {fname} into {folder} (download it from "
          f"{origin}; set KERAS_HOME for another folder), or connect to the internet"
        ) from e
    real = os.path.realpath(path)
    if not os.path.isfile(real):
      raise UserError(f"cannot read the weights of {source}: {path} is not a regular file")
    try:
      with h5py.File(real, "r") as f:
        _check_h5(f, max_bytes, path)
    except OSError as e:
      raise UserError(
        f"cannot read the weights of {source}: {path} is not a valid HDF5 file "
        "(corrupt or truncated?); delete it to download it again"
      ) from e
    _read_h5_attributes(real, path)
    return real

  with _WEIGHTS_LOCK:
    data_utils.get_file = get_file
    try:
      yield
    finally:
      data_utils.get_file = download


def _preprocessing_map(module) -> tuple[list[float], list[float], list[int]]:
  """The application's own `preprocess_input` as (scale, offset, source channel) per output
  channel: output[c] = scale[c] * pixels[source[c]] + offset[c] for pixels in [0, 1]. Read from
  the function itself on probe pixels; every application's is such a map (ResNet50 and VGG
  also reorder RGB to BGR)."""
  probe = np.zeros((4, 1, 1, 3), np.float32)
  for channel in range(3):
    probe[channel + 1, 0, 0, channel] = 255.0
  out = np.asarray(module.preprocess_input(probe.copy()), np.float64).reshape(4, 3)
  offset = out[0]
  response = (out[1:] - offset).T  # [output channel, input channel], per 0-1 pixel
  source = [int(np.argmax(np.abs(row))) for row in response]
  scale = [float(response[c, source[c]]) for c in range(3)]
  off_source = response.copy()
  off_source[range(3), source] = 0
  if sorted(source) != [0, 1, 2] or np.abs(off_source).max() > 1e-6 or min(scale) <= 0:
    raise ValueError(f"{module.__name__}.preprocess_input is not a per-channel affine map")
  return scale, [float(value) for value in offset], source


# What Keras's EfficientNets divide by, after their Normalization layer, with ImageNet weights.
_EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _efficientnet_without_multiply(model: keras.Model, module, name: str, x) -> keras.Model:
  """`model` (an EfficientNet with ImageNet weights) without the TFOpLambda multiply Keras adds
  after its stem's Normalization (tensorflow#49930), which the loader's allowlist refuses: the
  same model built without weights, the weights copied, the factor folded into the variance."""
  plain = getattr(keras.applications, name)(
    include_top=False, weights=None, input_tensor=x, pooling="avg"
  )
  plain.set_weights(model.get_weights())
  stem = next(
    layer
    for layer in plain.layers
    if isinstance(layer, keras.layers.Normalization) and layer.name != PREPROCESSING_LAYER
  )
  variance = stem.adapt_variance  # the layer's weight; `variance` is computed from it
  variance.assign(variance * tf.constant(_EFFICIENTNET_STDDEV_RGB, variance.dtype))
  stem.finalize_state()
  return plain


def _keras_application(
  source: str, input_size: int | None, allow_unsafe: bool, max_bytes: int
) -> keras.Model:
  """An ImageNet backbone from keras.applications by an allowlisted name: taking images in
  [0, 1] (the input every tl_keras model takes) through a `Normalization` layer that does the
  application's own preprocessing, and giving its globally pooled features."""
  name = source[len(KERAS_PREFIX) :]
  if name not in APPLICATIONS:
    raise UserError(
      f"unknown backbone {source!r}: use keras: and one of {', '.join(sorted(APPLICATIONS))}"
    )
  module = getattr(keras.applications, APPLICATIONS[name])
  scale, offset, channel_source = _preprocessing_map(module)
  # Channel j of the model's RGB input feeds what the application calls channel `order[j]`;
  # its first convolution's kernel is permuted to match below.
  order = [channel_source.index(j) for j in range(3)]
  mean = [-offset[order[j]] / scale[order[j]] for j in range(3)]
  variance = [1 / scale[order[j]] ** 2 for j in range(3)]
  size = input_size or DEFAULT_INPUT_SIZE
  inputs = keras.Input((size, size, 3), name="image")
  x = keras.layers.Normalization(mean=mean, variance=variance, name=PREPROCESSING_LAYER)(inputs)
  with _weights_from_cache(source, max_bytes), warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "weights for input shape (224, 224) will be loaded"
    model = getattr(keras.applications, name)(
      include_top=False, weights="imagenet", input_tensor=x, pooling="avg"
    )
  if APPLICATIONS[name] == "efficientnet":
    model = _efficientnet_without_multiply(model, module, name, x)
  if order != [0, 1, 2]:
    first = next(
      layer for layer in model.layers if len(getattr(layer, "kernel", np.zeros(0)).shape) == 4
    )
    first.kernel.assign(tf.gather(first.kernel, order, axis=2))
  if not allow_unsafe:
    try:
      check_model_config({"class_name": "Functional", "config": model.get_config()}, source)
    except UserError as e:
      raise UserError(
        f"{e}; here, for the models finetuned from {name} as well (tl_keras builds it from "
        "Keras's own code; the flag is needed to load them back)"
      ) from e
  return model


# --- Loading ----------------------------------------------------------------------------------


def resolve_saved_model(handle: str) -> str:
  """A local SavedModel folder for a folder path or a TF Hub handle (cached in $TFHUB_CACHE_DIR)."""
  if os.path.isdir(handle):
    return _checked_saved_model(handle, handle)
  import tensorflow_hub as hub  # slow to import

  try:
    path = hub.resolve(handle)
  except Exception as e:
    raise UserError(
      f"cannot fetch model {handle} ({type(e).__name__}); if offline, download it "
      "and pass its folder, or pre-fill $TFHUB_CACHE_DIR"
    ) from e
  return _checked_saved_model(handle, path)


def _checked_saved_model(handle: str, path: str) -> str:
  if not os.path.isfile(os.path.join(path, "saved_model.pb")):
    raise UserError(f"{handle} is not a SavedModel (no saved_model.pb in {path})")
  return os.path.realpath(path)


def _hub_model(path: str, source: str) -> keras.Model:
  """Wraps a non-Keras SavedModel in a Keras model with one trainable `hub` layer."""
  # A restored `__call__` is an instance attribute, which callable() does not see.
  call = getattr(tf.saved_model.load(path), "__call__", None)  # noqa: B004
  specs = [
    spec
    for function in getattr(call, "concrete_functions", [])
    for spec in tf.nest.flatten(function.structured_input_signature)
    if isinstance(spec, tf.TensorSpec)
  ]
  if not specs or specs[0].shape.rank != 4 or not specs[0].shape[1:].is_fully_defined():
    shape = specs[0].shape if specs else "no signature"
    raise UserError(
      f"cannot use {source} as an image model: its __call__ takes {shape}, "
      "not a fixed-size image batch [N,H,W,C]"
    )
  import tensorflow_hub as hub  # slow to import

  inputs = keras.Input(shape=specs[0].shape[1:], name="image")
  outputs = hub.KerasLayer(path, trainable=True, name="hub")(inputs)
  return keras.Model(inputs, outputs, name="hub_model")


def load_model(
  source: str,
  allow_unsafe: bool = False,
  max_bytes: int = limits.MAX_MODEL_BYTES,
  input_size: int | None = None,
) -> keras.Model:
  """Loads a model for prediction or fine-tuning (uncompiled) after checking it is safe.

  `source`: an .h5 or .keras file, a SavedModel folder (Keras or not), a TF Hub handle, or
  'keras:NAME', an ImageNet backbone from keras.applications (`APPLICATIONS`) taking
  `input_size` square images (default 224), with weights from `keras_cache_dir()`.
  Non-Keras SavedModels become a Keras model whose single layer is a `hub.KerasLayer`.
  `max_bytes` caps the tensor data the model declares. Refuses, with a UserError, anything
  the module docstring lists; `allow_unsafe` skips the allowlists but not the size limits.
  """
  is_keras = source.startswith(KERAS_PREFIX)
  if input_size is not None and not is_keras:
    raise UserError(
      f"--input_size is for --model=keras:NAME backbones; {source} has its own input size"
    )
  is_file = source.endswith((".h5", ".keras"))
  if not is_keras and (is_file or "://" not in source):
    if not os.path.exists(source):
      raise UserError(f"model not found: {source}; run the pretrain stage first or pass --model")
  refusals = []
  try:
    if is_keras:
      model = _keras_application(source, input_size, allow_unsafe, max_bytes)
    elif is_file:
      if not os.path.isfile(source):
        raise UserError(f"cannot read model file {source}: not a regular file")
      config, budget = (
        _h5_config(source, max_bytes)
        if source.endswith(".h5")
        else _keras_zip_config(source, max_bytes)
      )
      if not allow_unsafe:
        check_model_config(config, source)
      with _variable_budget(budget, refusals):
        model = keras.models.load_model(source, compile=False, safe_mode=not allow_unsafe)
    else:
      if os.path.isfile(source):
        raise UserError(
          f"unsupported model file {source}: --model takes an .h5 or .keras "
          "file, a SavedModel folder or a TF Hub handle"
        )
      path = resolve_saved_model(source)
      check_saved_model(path, source, max_bytes, allow_unsafe)
      if os.path.isfile(os.path.join(path, "keras_metadata.pb")):
        if not allow_unsafe:
          check_model_config(_keras_saved_model_config(path, source), source)
        model = keras.models.load_model(path, compile=False)
      else:
        model = _hub_model(path, source)
    if not model.built or not model.inputs:
      raise UserError(
        f"cannot use {source}: the model has no input shape (an unbuilt "
        "Sequential?); save it after building it on an image input"
      )
    _check_activations(model, source)
  except UserError:
    raise
  except Exception as e:
    if refusals:
      raise UserError(
        f"refusing to load {source}: its config builds {refusals[0] / 2**20:,.0f}"
        " MiB of weights or more, more than the file stores"
      ) from e
    raise UserError(
      f"cannot load model {source} ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
    ) from e
  return model
