"""Hostile model files: each is refused before anything in it runs, reads, writes or allocates.

Every payload is built by the test itself. Where a payload would leave a trace (a marker file,
an imported module, a secret in an output), the test asserts the trace is absent; a control
with `allow_unsafe=True` shows the payload is real where that is safe to show.
"""

import functools
import importlib
import json
import os
import random
import shutil
import struct
import sys
import zipfile

import h5py
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_command

from tl_keras import loading
from tl_keras.errors import UserError
from tl_keras.keras_api import keras

SECRET = "TOP-SECRET-7f3a9c"


def _tiny_model():
  inputs = keras.Input((28, 28, 1), name="image")
  x = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(inputs)
  x = keras.layers.Flatten(name="flatten")(x)
  return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="dense")(x))


def _payload_module(tmp_path, monkeypatch):
  """A module that leaves a marker file when imported: (module name, marker path)."""
  name = f"tl_payload_{os.getpid()}_{random.randrange(10**9)}"
  marker = tmp_path / "payload_ran"
  (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nDense = object\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  return name, marker


def _keras_file(tmp_path, edit, name="model.keras"):
  """A .keras file of the tiny model whose config.json `edit(config)` has changed."""
  path = tmp_path / name
  clean = tmp_path / f"clean_{name}"
  _tiny_model().save(str(clean))
  with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w") as target:
    for info in source.infolist():
      content = source.read(info.filename)
      if info.filename == "config.json":
        config = json.loads(content)
        edit(config)
        content = json.dumps(config)
      target.writestr(info.filename, content)
  return str(path)


def _h5_file(tmp_path, edit_config=None, edit_file=None, name="model.h5"):
  """An .h5 file of the tiny model with its model_config and HDF5 contents edited."""
  path = str(tmp_path / name)
  _tiny_model().save(path, save_format="h5")
  with h5py.File(path, "a") as f:
    if edit_config:
      config = json.loads(f.attrs["model_config"])
      edit_config(config)
      f.attrs["model_config"] = json.dumps(config)
    if edit_file:
      edit_file(f)
  return path


def _layer(config, name):
  return next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == name)


def _refused(path, match="refusing to load"):
  with pytest.raises(UserError, match=match):
    loading.load_model(path)


# --- Keras configs: modules, registered names, functions ---------------------------------------


def test_keras_config_naming_another_module_is_refused_before_import(tmp_path, monkeypatch):
  module, marker = _payload_module(tmp_path, monkeypatch)
  path = _keras_file(tmp_path, lambda c: _layer(c, "dense").update(module=module))
  _refused(path, "Dense from module")
  assert not marker.exists() and module not in sys.modules


def test_top_level_module_key_is_refused_before_import(tmp_path, monkeypatch):
  module, marker = _payload_module(tmp_path, monkeypatch)
  path = _keras_file(tmp_path, lambda c: c.update(module=module))
  _refused(path, "Functional from module")
  assert not marker.exists() and module not in sys.modules
  # The payload is real: tf_keras imports the module a config names.
  with pytest.raises(UserError):
    loading.load_model(path, allow_unsafe=True)
  assert marker.exists()


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda c: _layer(c, "dense").update(registered_name="payload>Dense"), "registered as"),
    (
      lambda c: _layer(c, "dense")["config"].update(
        activation={
          "module": "os",
          "class_name": "function",
          "config": "system",
          "registered_name": "system",
        }
      ),
      "function 'system'",
    ),
    (
      lambda c: _layer(c, "dense")["config"].update(activation="deserialize"),
      "activation='deserialize'",
    ),
    (
      lambda c: _layer(c, "conv")["config"].update(kernel_initializer="get"),
      "kernel_initializer='get'",
    ),
    (lambda c: _layer(c, "dense").update(class_name="Lambda"), "Lambda"),
    (
      lambda c: _layer(c, "dense")["config"].update(
        kernel_initializer={
          "module": "keras.initializers",
          "class_name": "__lambda__",
          "config": {},
        }
      ),
      "__lambda__",
    ),
    (lambda c: c["config"].update(extra={"module": "subprocess"}), "without a class"),
    (lambda c: _layer(c, "dense").update(class_name="TextVectorization"), "TextVectorization"),
  ],
)
def test_keras_config_with_code_or_foreign_names_is_refused(tmp_path, edit, message):
  _refused(_keras_file(tmp_path, edit), message)


@pytest.mark.slow
def test_lookup_layer_with_a_vocabulary_path_reads_nothing(tmp_path):
  secret = tmp_path / "secret.txt"
  secret.write_text(f"{SECRET}\n")

  def add_lookup(config):
    _layer(config, "dense").update(class_name="StringLookup", module="keras.layers")
    _layer(config, "dense")["config"] = {"name": "dense", "vocabulary": str(secret)}

  output_dir = tmp_path / "out"
  result = run_command(
    [
      "scripts/transfer.py",
      f"--model={_keras_file(tmp_path, add_lookup)}",
      f"--output_dir={output_dir}",
    ]
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "StringLookup" in result.stderr and SECRET not in result.stdout + result.stderr
  assert not output_dir.exists() or not os.listdir(output_dir)


def test_h5_lambda_bytecode_does_not_run(tmp_path):
  marker = tmp_path / "payload_ran"
  payload = eval(f"lambda x: (open({str(marker)!r}, 'w').write('ran'), x)[1]")
  inputs = keras.Input((28, 28, 1))
  path = str(tmp_path / "lambda.h5")
  keras.Model(inputs, keras.layers.Lambda(payload)(inputs)).save(path, save_format="h5")
  marker.unlink()  # building and saving ran it
  _refused(path, "Lambda")
  assert not marker.exists()


def test_h5_passive_serialization_module_is_refused(tmp_path, monkeypatch):
  module, marker = _payload_module(tmp_path, monkeypatch)
  path = _h5_file(
    tmp_path,
    edit_config=lambda c: _layer(c, "dense")["config"].update(
      kernel_initializer={
        "class_name": "Dense",
        "module": module,
        "config": {},
        "__passive_serialization__": True,
      }
    ),
  )
  _refused(path, "from module")
  assert not marker.exists() and module not in sys.modules


# --- HDF5 contents: links, external storage, sizes ---------------------------------------------


def _kernel_path(f):
  return "model_weights/dense/dense/kernel:0"


def test_h5_external_storage_or_links_read_no_other_file(tmp_path):
  secret = tmp_path / "secret.bin"
  secret.write_bytes(np.frombuffer(SECRET.encode().ljust(32, b"!"), np.uint8).tobytes() * 64)

  def external(f):
    name = _kernel_path(f)
    shape, dtype = f[name].shape, f[name].dtype
    del f[name]
    f.create_dataset(
      name,
      shape=shape,
      dtype=dtype,
      external=[(str(secret), 0, int(np.prod(shape)) * dtype.itemsize)],
    )

  def external_link(f):
    with h5py.File(tmp_path / "other.h5", "w") as other:
      other["kernel"] = np.zeros(f[_kernel_path(f)].shape, np.float32)
    name = _kernel_path(f)
    del f[name]
    f[name] = h5py.ExternalLink(str(tmp_path / "other.h5"), "kernel")

  for edit, message in ((external, "outside this file"), (external_link, "ExternalLink")):
    path = _h5_file(tmp_path, edit_file=edit, name=f"{edit.__name__}.h5")
    _refused(path, message)


@pytest.mark.slow
def test_h5_declaring_a_huge_tensor_is_refused_with_little_memory(tmp_path):
  def huge(f):  # 10 GB declared, nothing stored: HDF5 fills unwritten chunks on read
    f.create_dataset(
      "model_weights/dense/dense/huge:0",
      shape=(50_000, 50_000),
      dtype=np.float32,
      chunks=(1000, 1000),
    )

  path = _h5_file(tmp_path, edit_file=huge)
  assert os.path.getsize(path) < 1_000_000
  _assert_refused_in_small_process(path, "declares")


@pytest.mark.slow
def test_config_that_builds_huge_weights_is_refused_with_little_memory(tmp_path):
  # 5408 x 10^6 float32 kernel: 21 GB from a config edit, no weights in the file back it.
  path = _h5_file(
    tmp_path, edit_config=lambda c: _layer(c, "dense")["config"].update(units=1_000_000)
  )
  _assert_refused_in_small_process(path, "more than the file stores")


@pytest.mark.slow
def test_keras_archive_bomb_and_extra_members_are_refused(tmp_path):
  clean = tmp_path / "clean.keras"
  _tiny_model().save(str(clean))
  bomb = tmp_path / "bomb.keras"
  with zipfile.ZipFile(clean) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
    for info in source.infolist():
      if info.filename != "config.json":
        target.writestr(info.filename, source.read(info.filename))
    with target.open("config.json", "w", force_zip64=True) as member:
      for _ in range(300):  # 300 MB of spaces, 0.3 MB compressed
        member.write(b" " * 1_000_000)
  _assert_refused_in_small_process(str(bomb), "declares")

  extra = tmp_path / "extra.keras"
  shutil.copy(clean, extra)
  with zipfile.ZipFile(extra, "a") as archive:
    archive.writestr("assets/vocabulary.txt", SECRET)
  _refused(str(extra), "exactly")


def _assert_refused_in_small_process(path, message):
  """Loads `path` in a fresh process: a one-line refusal, and peak memory under 1 GiB."""
  # VmHWM, not ru_maxrss: Linux carries a forking parent's peak over into the child's.
  script = (
    "import sys\n"
    "from tl_keras import loading\n"
    "from tl_keras.errors import UserError\n"
    "try:\n"
    f"  loading.load_model({path!r})\n"
    "  print('LOADED')\n"
    "except UserError as e:\n"
    "  print('REFUSED', e)\n"
    "import resource\n"
    "print('CHILDREN_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "print('MAXRSS_KB', [line.split()[1] for line in open('/proc/self/status')\n"
    "                    if line.startswith('VmHWM')][0])\n"
  )
  result = run_command(["-c", script])
  assert "REFUSED" in result.stdout and message in result.stdout, result.stdout + result.stderr
  peak_kb = int(result.stdout.split("MAXRSS_KB")[1])
  assert peak_kb < 1024 * 1024, f"peak memory {peak_kb / 1024:.0f} MiB: {result.stdout}"
  # Children (the bounded HDF5 attribute reader): includes the parent's size when it forked.
  children_kb = int(result.stdout.split("CHILDREN_KB")[1].split()[0])
  assert children_kb < 2048 * 1024, f"a child peaked at {children_kb / 1024:.0f} MiB"


def _point_many_times_at_one_string(path, item_path, key, big, count):
  """Gives `item_path` of HDF5 file `path` a variable-length string attribute `key` whose
  `count` elements all point at the same `big`-byte string: count x big bytes when read."""
  with h5py.File(path, "a") as f:
    if key in f[item_path].attrs:
      del f[item_path].attrs[key]
    f[item_path].attrs.create(key, ["A" * big] + ["b"] * (count - 1), dtype=h5py.string_dtype())
  raw = bytearray(open(path, "rb").read())
  # A stored element: u32 length, u64 heap collection address, u32 index in the collection.
  start = next(
    i
    for i in range(len(raw) - 32)
    if struct.unpack_from("<I", raw, i)[0] == big and struct.unpack_from("<I", raw, i + 16)[0] == 1
  )
  for index in range(1, count):
    raw[start + 16 * index : start + 16 * (index + 1)] = raw[start : start + 16]
  open(path, "wb").write(raw)


@pytest.mark.slow
def test_h5_names_pointing_many_times_at_one_large_string_are_refused(tmp_path):
  # Every element of a variable-length string attribute points at the same 10 MiB string:
  # 250 x 10 MiB when read, from a 10 MiB file.
  path = str(tmp_path / "vlen.h5")
  _tiny_model().save(path, save_format="h5")
  _point_many_times_at_one_string(path, "model_weights", "layer_names", 10 << 20, 250)
  _assert_refused_in_small_process(path, "attributes take more than")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["last_object", "dataset"])
def test_h5_large_attribute_on_any_object_is_read_by_the_bounded_reader(tmp_path, where):
  # A 4 MiB string pointed at 600 times (2.4 GiB when read) from a file of about 4 MiB: on the
  # last object the walk visits, below 40 levels of groups, or on a weight dataset.
  path = str(tmp_path / f"{where}.h5")
  _tiny_model().save(path, save_format="h5")
  with h5py.File(path, "a") as f:
    deep = "/".join(["zz"] * 40)
    f.create_dataset(f"{deep}/last", data=np.zeros(2, np.float32))
    visited = []
    f.visit(visited.append)
    assert visited[-1] == f"{deep}/last"
  item = visited[-1] if where == "last_object" else _kernel_path(None)
  _point_many_times_at_one_string(path, item, "weight_names", 4 << 20, 600)
  assert os.path.getsize(path) < 5 << 20
  _assert_refused_in_small_process(path, "attributes take more than")


@pytest.mark.slow
def test_config_shapes_that_build_huge_arrays_are_refused(tmp_path):
  # Normalization builds numpy arrays of its input's shape, outside any variable.
  def huge_input(config):
    _layer(config, "image")["config"]["batch_input_shape"] = [None, 2000, 1000, 100]
    _layer(config, "conv").update(class_name="Normalization")
    _layer(config, "conv")["config"] = {
      "name": "conv",
      "axis": [1, 2, 3],
      "mean": 0.5,
      "variance": 1.0,
    }

  _assert_refused_in_small_process(_h5_file(tmp_path, edit_config=huge_input), "batch_input_shape")


def test_padding_a_file_does_not_raise_what_it_may_declare(tmp_path):
  def unwritten_kernel(f):  # 512 MiB declared in gzip chunks never written, file padded
    name = _kernel_path(f)
    del f[name]
    f.create_dataset(
      name, shape=(1352, 100_000), dtype=np.float32, chunks=(1352, 100), compression="gzip"
    )

  path = _h5_file(
    tmp_path,
    edit_config=lambda c: _layer(c, "dense")["config"].update(units=100_000),
    edit_file=unwritten_kernel,
  )
  with open(path, "ab") as f:
    f.write(os.urandom(40 << 20))
  _refused(path, "declares 516 MiB of tensors but stores only")


def test_layers_called_twice_load_and_unbuilt_models_are_refused(tmp_path):
  first, second = keras.Input((28, 28, 1)), keras.Input((14, 14, 1))
  flatten = keras.layers.Flatten(name="flatten")
  merged = keras.layers.Concatenate()([flatten(first), flatten(second)])
  keras.Model([first, second], keras.layers.Dense(2)(merged)).save(
    str(tmp_path / "two.h5"), save_format="h5"
  )
  assert len(loading.load_model(str(tmp_path / "two.h5")).inputs) == 2
  keras.Sequential([keras.layers.Dense(2)]).save(str(tmp_path / "unbuilt.keras"))
  with pytest.raises(UserError, match="no input shape"):
    loading.load_model(str(tmp_path / "unbuilt.keras"))


# --- SavedModel graphs ---------------------------------------------------------------------------


def _module_saved_model(tmp_path, name, body):
  """A non-Keras SavedModel whose __call__ on [None,28,28,1] images runs `body(images)`."""

  class Hostile(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def __call__(self, images):
      return body(images)

  path = str(tmp_path / name)
  tf.saved_model.save(Hostile(), path)
  return path


def _features(images):
  return tf.reduce_mean(images, axis=[1, 2])


@pytest.mark.parametrize(
  "name, make_body, op",
  [
    (
      "print_to_file",
      lambda marker: lambda x: _after(tf.print("ran", output_stream=f"file://{marker}"), x),
      "PrintV2",
    ),
    (
      "write_file",
      lambda marker: lambda x: _after(tf.io.write_file(str(marker), "ran"), x),
      "WriteFile",
    ),
    ("read_file", lambda marker: lambda x: _after(tf.io.read_file(str(marker)), x), "ReadFile"),
    (
      "dataset",
      lambda marker: (
        lambda x: (
          _features(x)
          + tf.cast(tf.data.TextLineDataset(str(marker)).reduce(0, lambda a, _: a + 1), tf.float32)
        )
      ),
      "Dataset",
    ),
  ],
)
def test_saved_model_with_file_or_stream_ops_is_refused(tmp_path, name, make_body, op):
  marker = tmp_path / "payload_ran"
  path = _module_saved_model(tmp_path, name, make_body(marker))
  with pytest.raises(UserError, match=f"refusing to load .*{op}"):
    loading.load_model(path)
  assert not marker.exists()


def _after(side_effect, images):
  with tf.control_dependencies([side_effect]):
    return _features(images)


def test_saved_model_graph_that_deletes_files_is_refused(tmp_path):
  # TF 2.21 has no DeleteFile op; MergeV2Checkpoints with delete_old_dirs deletes the files of
  # the checkpoints it merges, and their folder: a graph can destroy a user's checkpoint.
  victim = tf.train.Checkpoint(weight=tf.Variable(1.0)).write(str(tmp_path / "user" / "ckpt"))
  victims = sorted((tmp_path / "user").iterdir())
  assert len(victims) >= 2  # the index and a data file
  merge = tf.raw_ops.MergeV2Checkpoints
  path = _module_saved_model(
    tmp_path,
    "deleter",
    lambda x: _after(
      merge(
        checkpoint_prefixes=[victim],
        destination_prefix=str(tmp_path / "merged" / "ckpt"),
        delete_old_dirs=True,
      ),
      x,
    ),
  )
  _refused(path, "MergeV2Checkpoints")
  assert all(file.exists() for file in victims)
  # The payload is real: opting in and calling the model deletes the checkpoint's files.
  loading.load_model(path, allow_unsafe=True)(np.zeros((1, 28, 28, 1), np.float32))
  assert not any(file.exists() for file in victims)


def test_print_to_file_payload_is_real(tmp_path):
  marker = tmp_path / "payload_ran"
  path = _module_saved_model(
    tmp_path, "print", lambda x: _after(tf.print("ran", output_stream=f"file://{marker}"), x)
  )
  loading.load_model(path, allow_unsafe=True)(np.zeros((1, 28, 28, 1), np.float32))
  assert marker.exists()


def test_functions_hidden_behind_the_savers_node_are_still_checked(tmp_path):
  marker, secret = tmp_path / "payload_ran", tmp_path / "secret.txt"
  secret.write_text(SECRET)

  @tf.function
  def leak():
    tf.io.write_file(str(marker), tf.io.read_file(str(secret)))
    return tf.constant(1.0)

  class Resource(tf.saved_model.experimental.TrackableResource):
    def _create_resource(self):
      return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

    def _initialize(self):  # run by tf.saved_model.load itself
      leak()
      return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

  class Model(tf.Module):
    def __init__(self):
      super().__init__()
      self.resource = Resource()

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def __call__(self, images):
      return _features(images) + tf.raw_ops.ReadVariableOp(
        resource=self.resource.resource_handle, dtype=tf.float32
      )

  path = str(tmp_path / "hidden")
  tf.saved_model.save(Model(), path)
  marker.unlink(missing_ok=True)

  def hide_behind_restore(meta_graph):
    restore = meta_graph.saver_def.restore_op_name.split(":")[0]
    node = next(node for node in meta_graph.graph_def.node if node.name == restore)
    for function in meta_graph.graph_def.library.function:
      node.attr["hidden"].list.func.add(name=function.signature.name)

  _edit_saved_model(path, hide_behind_restore)
  _refused(path, "ReadFile, WriteFile")
  assert not marker.exists()


@pytest.mark.slow
def test_oversized_graph_is_refused(tmp_path):
  path = _module_saved_model(tmp_path, "bloated", _features)
  _edit_saved_model(
    path,
    lambda meta_graph: meta_graph.graph_def.node.extend([meta_graph.graph_def.node[0]] * 600_000),
  )  # ~40 MiB of copies
  _assert_refused_in_small_process(path, "above the 32 MiB limit")


_DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("where", ["h5", "config.json", "metadata.json"])
def test_model_file_json_nested_100000_deep_is_refused_in_one_line(tmp_path, where):
  # json.loads would raise RecursionError: refused by depth before it is parsed.
  if where == "h5":
    path = str(tmp_path / "deep.h5")
    with h5py.File(path, "w") as f:
      f.attrs["model_config"] = _DEEP_JSON
  else:
    clean = tmp_path / "clean.keras"
    _tiny_model().save(str(clean))
    path = str(tmp_path / "deep.keras")
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w") as target:
      for info in source.infolist():
        deep = info.filename == where
        target.writestr(info.filename, _DEEP_JSON if deep else source.read(info.filename))
  with pytest.raises(UserError, match="100,000 levels deep") as error:
    loading.load_model(path)
  assert "\n" not in str(error.value)


def test_keras_saved_model_metadata_nested_100000_deep_is_refused(tmp_path):
  from tf_keras.protobuf import saved_metadata_pb2

  path = str(tmp_path / "keras_saved_model")
  _tiny_model().save(path, save_format="tf")
  proto = saved_metadata_pb2.SavedMetadata()
  with open(os.path.join(path, "keras_metadata.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  proto.nodes[-1].metadata = _DEEP_JSON
  with open(os.path.join(path, "keras_metadata.pb"), "wb") as f:
    f.write(proto.SerializeToString())
  with pytest.raises(UserError, match="100,000 levels deep") as error:
    loading.load_model(path)
  assert "Keras metadata" in str(error.value) and "\n" not in str(error.value)


def _edit_saved_model(path, edit):
  from tensorflow.core.protobuf import saved_model_pb2

  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  edit(proto.meta_graphs[0])
  with open(os.path.join(path, "saved_model.pb"), "wb") as f:
    f.write(proto.SerializeToString())


def test_saved_model_asset_outside_the_folder_is_not_read(tmp_path):
  secret = tmp_path / "secret.txt"
  secret.write_text(SECRET)

  class WithAsset(tf.Module):
    def __init__(self):
      super().__init__()
      (tmp_path / "labels.txt").write_text("a\nb\n")
      self.labels = tf.saved_model.Asset(str(tmp_path / "labels.txt"))

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def __call__(self, images):
      return _features(images)

  path = str(tmp_path / "asset_model")
  tf.saved_model.save(WithAsset(), path)

  def point_at_secret(meta_graph):
    meta_graph.asset_file_def[0].filename = str(secret)

  _edit_saved_model(path, point_at_secret)
  _refused(path, "outside the model's assets folder")
  with pytest.raises(UserError, match="outside"):
    loading.load_model(path, allow_unsafe=True)


def test_saved_model_with_a_symlink_inside_is_refused(tmp_path):
  path = _module_saved_model(tmp_path, "linked", _features)
  secret = tmp_path / "secret.txt"
  secret.write_text(SECRET)
  os.symlink(secret, os.path.join(path, "assets_link"))
  _refused(path, "link or special file")


@pytest.mark.slow
def test_saved_model_constant_bomb_is_refused(tmp_path):
  path = _module_saved_model(
    tmp_path, "const", lambda x: _features(x) + tf.reduce_sum(tf.constant(0.5, shape=[2, 2]))
  )

  def inflate(meta_graph):
    for function in meta_graph.graph_def.library.function:
      for node in function.node_def:
        if node.op == "Const" and node.attr["value"].tensor.dtype == tf.float32.as_datatype_enum:
          shape = node.attr["value"].tensor.tensor_shape
          if len(shape.dim) == 2:
            shape.dim[0].size = shape.dim[1].size = 60_000  # 14 GB from one float

  _edit_saved_model(path, inflate)
  _assert_refused_in_small_process(path, "declares")


def test_tf1_saved_model_is_refused(tmp_path):
  path = str(tmp_path / "tf1")
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    builder = tf.compat.v1.saved_model.Builder(path)
    builder.add_meta_graph_and_variables(
      session,
      ["serve"],
      signature_def_map={
        "serving_default": tf.compat.v1.saved_model.predict_signature_def(
          {"images": images}, {"features": tf.reduce_mean(images, axis=[1, 2])}
        )
      },
    )
    builder.save()
  _refused(path, "TF1 SavedModel")


# --- Fuzzing the config -------------------------------------------------------------------------

_CLASS_NAMES = [
  "Dense",
  "Conv2D",
  "Lambda",
  "TFOpLambda",
  "StringLookup",
  "TextVectorization",
  "Layer",
  "__lambda__",
  "__typespec__",
  "function",
  "Functional",
  "Custom>Adam",
  "GlorotUniform",
  "Zeros",
  "os",
  "Popen",
  "",
  "builtins.eval",
]
_MODULES = [
  None,
  "keras.layers",
  "tf_keras.layers",
  "keras.initializers",
  "os",
  "subprocess",
  "builtins",
  "tf_keras.src.utils.io_utils",
  "keras",
  "PAYLOAD",
]
_REGISTERED = [None, "Dense", "Conv2D", "payload>Thing", "function", "Custom>Adam"]
_FUNCTIONS = [
  "relu",
  "softmax",
  "linear",
  "deserialize",
  "get",
  "serialize",
  "tf",
  "eval",
  "glorot_uniform",
  "zeros",
  "system",
]


def _mutate(config, rng, module):
  objects, strings = [], []

  def collect(node):
    if isinstance(node, dict):
      if "class_name" in node:
        objects.append(node)
      for key, value in node.items():
        if isinstance(value, str) and key.endswith(("activation", "_initializer")):
          strings.append((node, key))
        collect(value)
    elif isinstance(node, list):
      for item in node:
        collect(item)

  collect(config)
  for _ in range(rng.randint(1, 3)):
    kind = rng.randrange(4)
    if kind == 3 and strings:
      node, key = rng.choice(strings)
      node[key] = rng.choice(_FUNCTIONS)
      continue
    node = rng.choice(objects)
    if kind == 0:
      node["class_name"] = rng.choice(_CLASS_NAMES)
    elif kind == 1:
      chosen = rng.choice(_MODULES)
      node["module"] = module if chosen == "PAYLOAD" else chosen
    else:
      node["registered_name"] = rng.choice(_REGISTERED)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_fuzzed_configs_load_built_ins_or_are_refused(tmp_path, monkeypatch, fmt):
  module, marker = _payload_module(tmp_path, monkeypatch)
  rng = random.Random(1234)
  loaded = refused = 0
  for index in range(40):
    edit = functools.partial(_mutate, rng=rng, module=module)
    path = (
      _keras_file(tmp_path, edit, name=f"fuzz{index}.keras")
      if fmt == "keras"
      else _h5_file(tmp_path, edit_config=edit, name=f"fuzz{index}.h5")
    )
    try:
      model = loading.load_model(path)
    except UserError:
      refused += 1
    else:
      loaded += 1
      for layer in model.layers:
        assert type(layer).__module__.startswith("tf_keras."), type(layer)
    assert not marker.exists() and module not in sys.modules, f"mutation {index} ran code"
  assert refused and loaded, (loaded, refused)  # both outcomes were exercised


# --- Our own bugs are not the file's fault ------------------------------------------------------


def _planted_bug(*args, **kwargs):
  raise ZeroDivisionError("planted bug in tl_keras")


@pytest.mark.parametrize(
  "fmt, module, function",
  [
    ("h5", "h5_check", "check_h5"),
    ("h5", "config_check", "_object_problems"),
    ("h5", "budgets", "check_activations"),
    ("keras", "keras_archive", "_members"),
    ("savedmodel", "graph_check", "_graph_ops"),
  ],
)
def test_a_bug_in_the_loader_is_not_reported_as_a_bad_file(
  tmp_path, monkeypatch, fmt, module, function
):
  if fmt == "savedmodel":
    path = _module_saved_model(tmp_path, "plain", _features)
  else:
    path = _keras_file(tmp_path, lambda c: None) if fmt == "keras" else _h5_file(tmp_path)
  loading.load_model(path)  # a good file
  monkeypatch.setattr(importlib.import_module(f"tl_keras.loading.{module}"), function, _planted_bug)
  with pytest.raises(ZeroDivisionError, match="planted"):  # not a UserError
    loading.load_model(path)


@pytest.mark.slow
def test_a_bug_in_the_loader_exits_1_not_2(tmp_path):
  path = _h5_file(tmp_path)
  output_dir = tmp_path / "out"
  script = (
    "import sys\n"
    "from tl_keras import cli\n"
    "from tl_keras.loading import budgets\n"
    "def bug(*args, **kwargs):\n"
    "  raise ZeroDivisionError('planted bug')\n"
    "budgets.check_activations = bug\n"
    f"sys.argv = ['tl-transfer', '--model={path}', '--output_dir={output_dir}']\n"
    "cli.transfer_main()\n"
  )
  result = run_command(["-c", script])
  assert result.returncode == 1, result.stderr[-2000:]
  assert "internal error (ZeroDivisionError: planted bug)" in result.stderr
  assert "cannot load model" not in result.stderr
