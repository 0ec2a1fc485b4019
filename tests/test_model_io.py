"""Tests for tl_keras.outputs.model_io: metadata, reload fidelity, unsafe files, atomicity."""

import json
import os

import h5py
import numpy as np
import pytest
from conftest import run_command

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.data import mnist
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import files
from tl_keras.outputs import model_io


def test_h5_reload_gives_identical_predictions_and_metadata(tmp_path):
  model = networks.build_source_model((28, 28, 1), 3)
  path = str(tmp_path / "m.h5")
  model_io.save_h5(model, path, {"class_names": ["a", "b", "c"]})
  images = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
  reloaded = loading.load_model(path)
  np.testing.assert_array_equal(
    model.predict(images, verbose=0), reloaded.predict(images, verbose=0)
  )
  assert model_io.class_names_of(reloaded, model_io.read_metadata(path)) == ["a", "b", "c"]
  assert os.listdir(tmp_path) == ["m.h5"]  # no temporary file left behind


def _lambda_model(marker):
  # The payload a malicious file would carry: code that runs when the layer is rebuilt.
  payload = eval(f"lambda x: (open({str(marker)!r}, 'w').write('ran'), x)[1]")
  inputs = keras.Input((4,))
  return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(payload)(inputs)))


def test_lambda_h5_is_refused_and_runs_no_code(tmp_path):
  marker = tmp_path / "payload_ran"
  path = str(tmp_path / "evil.h5")
  model_io.save_h5(_lambda_model(marker), path, {})
  marker.unlink()  # building the model above ran the payload once
  with pytest.raises(UserError, match=r"refusing to load .*Lambda.*--allow_unsafe_deserialization"):
    loading.load_model(path)
  assert not marker.exists()
  # The payload is real: opting in runs it (which is why it is off by default).
  loading.load_model(path, allow_unsafe=True)
  assert marker.exists()


def test_unknown_class_is_refused():
  config = {
    "class_name": "Functional",
    "config": {
      "layers": [
        {"class_name": "Dense", "config": {"kernel_initializer": {"class_name": "GlorotUniform"}}},
        {"class_name": "Custom>Backdoor", "config": {}},
      ]
    },
  }
  with pytest.raises(UserError, match="Custom>Backdoor"):
    loading.check_model_config(config, "x.h5")


@pytest.mark.parametrize(
  "content, message",
  [
    (None, "model not found"),
    (b"\x89HDF\r\n" + os.urandom(500), "not a valid HDF5"),
    (os.urandom(1000), "not a valid HDF5"),
  ],
)
def test_missing_or_corrupt_model_file(tmp_path, content, message):
  path = tmp_path / "m.h5"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(UserError, match=message):
    loading.load_model(str(path))


def test_truncated_h5_is_refused(tmp_path):
  path = tmp_path / "m.h5"
  model_io.save_h5(networks.build_source_model((28, 28, 1), 2), str(path), {})
  path.write_bytes(path.read_bytes()[:4096])
  with pytest.raises(UserError, match="cannot (read|load) model"):
    loading.load_model(str(path))


def test_failed_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / "metrics.json"
  files.write_json(str(path), {"good": 1})
  with pytest.raises(TypeError):
    files.write_json(str(path), {"bad": object()})
  assert path.read_text().strip() == '{\n  "good": 1\n}'
  assert os.listdir(tmp_path) == ["metrics.json"]


def test_unwritable_output_dir_is_a_user_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(UserError, match="cannot write to output folder"):
    files.prepare_output_dir(str(blocker / "sub"))


def test_weights_only_h5_is_refused(tmp_path):
  path = str(tmp_path / "w.h5")
  networks.build_source_model((28, 28, 1), 2).save_weights(path)
  with pytest.raises(UserError, match="weights only"):
    loading.load_model(path)
  with h5py.File(path) as f:
    assert "model_config" not in f.attrs


@pytest.mark.slow
@pytest.mark.parametrize("keras_module", ["keras", "tf_keras"])
def test_h5_loads_in_plain_keras_without_tl_keras(tmp_path, keras_module):
  model = networks.build_source_model((28, 28, 1), 3)
  path = tmp_path / "m.h5"
  model_io.save_h5(model, str(path), {"class_names": ["a", "b", "c"]})
  images = np.random.default_rng(1).random((4, 28, 28, 1), dtype=np.float32)
  np.save(tmp_path / "images.npy", images)
  script = f"""
import sys, numpy as np, {keras_module} as keras
assert keras.__version__.startswith({"3" if keras_module == "keras" else "2"!r}), keras.__version__
model = keras.models.load_model({str(path)!r}, compile=False)
images = np.load({str(tmp_path / "images.npy")!r})
np.save({str(tmp_path / "out.npy")!r}, model.predict(images, verbose=0))
assert "tl_keras" not in sys.modules
"""
  result = run_command(["-c", script])
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_allclose(
    np.load(tmp_path / "out.npy"), model.predict(images, verbose=0), atol=1e-6
  )


@pytest.mark.parametrize(
  "framing", [{"box": 100_000, "centred_by": "mass", "ink": "light_on_dark"}, {"box": "x"}, "20"]
)
def test_metadata_framing_other_than_mnists_is_refused(tmp_path, framing):
  # The box size sets what --target_fit=source allocates: 100,000 asked for about 650 TB before.
  path = str(tmp_path / "model.h5")
  with h5py.File(path, "w") as f:
    f.attrs[artifacts.METADATA_ATTR] = json.dumps({"framing": framing})
  with pytest.raises(UserError, match="the framing in its metadata is not MNIST's"):
    model_io.read_metadata(path)
  with h5py.File(path, "w") as f:
    f.attrs[artifacts.METADATA_ATTR] = json.dumps({"framing": mnist.FRAMING})
  assert model_io.read_metadata(path)["framing"] == mnist.FRAMING


def _with_metadata(tmp_path, kind, text):
  """The path of an .h5 file ('h5') or SavedModel folder ('savedmodel') holding only `text`
  (str or bytes) where tl_keras keeps its metadata."""
  if kind == "h5":
    path = str(tmp_path / "model.h5")
    with h5py.File(path, "w") as f:
      f.attrs[artifacts.METADATA_ATTR] = text
    return path
  path = str(tmp_path / "savedmodel")
  os.makedirs(os.path.join(path, "assets"))
  with open(os.path.join(path, "assets", artifacts.METADATA_ASSET), "wb") as f:
    f.write(text.encode() if isinstance(text, str) else text)
  return path


@pytest.mark.parametrize("text", ["{not json", b"\xff\xfe", '{"class_names": ["a", "b"'])
@pytest.mark.parametrize("kind", ["h5", "savedmodel"])
def test_corrupt_metadata_is_refused_in_one_line_naming_the_file(tmp_path, kind, text):
  # Not silently {}: the classes would then be named 0..k-1 and every output would look right.
  path = _with_metadata(tmp_path, kind, text)
  with pytest.raises(UserError, match="is not valid JSON") as error:
    model_io.read_metadata(path)
  assert path in str(error.value) and "\n" not in str(error.value)


def test_metadata_that_is_not_text_is_refused_and_none_is_empty(tmp_path):
  path = str(tmp_path / "model.h5")
  with h5py.File(path, "w") as f:
    f.attrs[artifacts.METADATA_ATTR] = np.arange(3)
  with pytest.raises(UserError, match=f"{artifacts.METADATA_ATTR} is not text"):
    model_io.read_metadata(path)
  with h5py.File(path, "w") as f:
    f.attrs["other"] = 1
  assert model_io.read_metadata(path) == {}  # a model from elsewhere: no metadata
  assert model_io.read_metadata("keras:MobileNetV2") == {}


@pytest.mark.parametrize("kind", ["h5", "savedmodel"])
def test_metadata_nested_100000_deep_is_one_line_not_a_recursion_error(tmp_path, kind):
  text = "[" * 100_000 + "]" * 100_000
  path = _with_metadata(tmp_path, kind, text)
  with pytest.raises(UserError, match="100,000 levels deep") as error:
    model_io.read_metadata(path)
  assert path in str(error.value) and "\n" not in str(error.value)


def test_metadata_that_is_not_an_object_is_refused(tmp_path):
  path = str(tmp_path / "model.h5")
  with h5py.File(path, "w") as f:
    f.attrs[artifacts.METADATA_ATTR] = json.dumps(["a", "b"])
  with pytest.raises(UserError, match="list JSON where an object belongs"):
    model_io.read_metadata(path)
