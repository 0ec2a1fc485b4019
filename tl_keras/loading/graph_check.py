"""SavedModel folders: the graph allowlist (allowlists/graph_ops.txt), assets, file kinds and
declared tensor sizes, and the Keras metadata of Keras SavedModels.

Every op of every function the loader or a caller could run must be one of the ops image models
use for inference and training (no file access, printing to streams, Python calls or dataset
readers). Only TF2 SavedModels are accepted: loading a TF1 one runs its restore and init ops.
Assets must be regular files inside the folder.
"""

import math
import os
import re
import stat
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

import tensorflow as tf
from google.protobuf.message import DecodeError

from tl_keras import limits
from tl_keras import untrusted
from tl_keras.errors import UserError
from tl_keras.loading import budgets
from tl_keras.loading.allowlist import UNSAFE_HINT
from tl_keras.loading.allowlist import names

_TRACED_SAVER = re.compile(r"__inference__traced_(save|restore)_\d+")


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


def _reachable(meta_graph: Any, functions: dict[str, Any], saver_ops: set) -> set:
  """Functions that can run: the object graph's, gradients, those the main graph's nodes other
  than the saver's call, and the functions those call, followed to the end."""
  graph = meta_graph.graph_def
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
  return reachable


def _graph_ops(meta_graph: Any) -> set:
  """The ops of every function in the graph's library and of the main graph, except TF's own
  save and restore functions and the main-graph nodes that call them.

  TF2 loading never runs the main graph's save and restore ops (it restores variables
  itself). The functions they call are exempt only if they carry the names TF gives them
  and nothing that can run reaches them (`_reachable`).
  """
  graph = meta_graph.graph_def
  functions = {function.signature.name: function for function in graph.library.function}
  saver_ops = {
    meta_graph.saver_def.save_tensor_name.split(":")[0],
    meta_graph.saver_def.restore_op_name.split(":")[0],
  }
  reachable = _reachable(meta_graph, functions, saver_ops)
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
  for root, dirs, names_ in os.walk(folder):
    for name in dirs + names_:
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
  except (DecodeError, OSError, RecursionError) as e:
    raise UserError(f"cannot read {source} as a SavedModel ({type(e).__name__})") from e
  if len(proto.meta_graphs) != 1 or not proto.meta_graphs[0].object_graph_def.nodes:
    raise UserError(
      f"refusing to load {source}: it is a TF1 SavedModel (loading it runs its "
      "restore and init ops); re-export it with TF2's tf.saved_model.save, or "
      f"{UNSAFE_HINT}"
    )
  return proto.meta_graphs[0]


def _check_assets(meta_graph: Any, export_dir: str, source: str) -> None:
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


def _checkpoint_bytes(export_dir: str, files: dict[str, int], max_bytes: int, source: str) -> int:
  """Bytes of the tensors the variables checkpoint stores (raw), checked against its files."""
  if "variables/variables.index" not in files:
    return 0
  try:
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
  except (tf.errors.OpError, ValueError, OSError, RuntimeError) as e:
    raise UserError(f"cannot read the variables of {source} ({type(e).__name__})") from e
  checkpoint = sum(
    math.prod(shape) * max(dtypes[name].size, 1)
    for name, shape in shapes.items()
    if dtypes[name] != tf.string
  )
  data = sum(size for name, size in files.items() if name.startswith("variables/"))
  budgets.check_declared(checkpoint, data, max_bytes, source)
  return checkpoint


def check_saved_model(
  export_dir: str, source: str, max_bytes: int = limits.MAX_MODEL_BYTES, allow_unsafe: bool = False
) -> None:
  """Refuses a SavedModel that is not plain data: see the module docstring."""
  files = _folder_files(export_dir, source)
  meta_graph = _parse_saved_model(export_dir, files.get("saved_model.pb", 0), source)
  graph = meta_graph.graph_def
  functions = {function.signature.name: function for function in graph.library.function}

  refused = [] if allow_unsafe else sorted(_graph_ops(meta_graph) - names("graph_ops"))
  if refused:
    raise UserError(
      f"refusing to load {source}: its graph uses {', '.join(refused[:8])}, "
      "which image models do not need (file access, printing, Python calls "
      f"and the like); {UNSAFE_HINT}"
    )
  _check_assets(meta_graph, export_dir, source)
  # What the loader allocates: variables, constants. What backs it: the checkpoint's tensors,
  # which it stores raw, and the graph file.
  checkpoint = _checkpoint_bytes(export_dir, files, max_bytes, source)
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
  budgets.check_declared(declared, checkpoint + files["saved_model.pb"], max_bytes, source)


def keras_saved_model_config(export_dir: str, source: str) -> list:
  """The Keras configs in a Keras SavedModel's keras_metadata.pb, within the size limit."""
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
  except (DecodeError, OSError, ValueError, RecursionError) as e:
    raise UserError(f"cannot read the Keras metadata of {source} ({type(e).__name__})") from e
  what = f"the Keras metadata of {source}"
  return [
    untrusted.parse_json(
      node.metadata, what, dict, limits.MAX_CONFIG_BYTES, limits.MAX_CONFIG_DEPTH
    )
    for node in proto.nodes
    if node.metadata
  ]
