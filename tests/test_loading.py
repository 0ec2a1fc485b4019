"""Model sources other than our .h5 (SavedModel folders, TF Hub handles, .keras) and the
refusal of files that would run code when loaded."""

import hashlib
import os
import shutil
import struct
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.config import settings
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import model_io
from tl_keras.stages import finetune
from tl_keras.stages import transfer


@pytest.fixture(scope="module")
def feature_saved_model(source_model, tmp_path_factory):
  """The pretrained source's penultimate features exported as a non-Keras SavedModel."""
  source = loading.load_model(source_model[0])
  features = keras.Model(source.inputs, networks.feature_tensor(source))
  # A plain (non-Keras) SavedModel in TF Hub's reusable form: images in, features out.
  exported = tf.train.Checkpoint()
  exported.variables = list(features.variables)
  exported.trainable_variables = list(features.trainable_variables)
  exported.__call__ = tf.function(
    lambda images: features(images, training=False),
    input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)],
  )
  path = str(tmp_path_factory.mktemp("hub") / "features")
  tf.saved_model.save(exported, path)
  return path


def test_keras_saved_model_as_transfer_source(target_model, small_mnist_dir, tmp_path):
  output_dir, finetune_metrics = target_model
  config = settings.make(
    settings.TransferConfig,
    model=str(output_dir / artifacts.SAVED_MODEL_DIR),
    target="mnist:5-9",
    data_dir=small_mnist_dir,
    output_dir=str(tmp_path),
  )
  metrics = transfer.run(config)
  # Class names come from the SavedModel's assets, so predictions match the target by name.
  assert metrics["source_classes"] == ["5", "6", "7", "8", "9"]
  assert metrics["test_accuracy"] == pytest.approx(finetune_metrics["test_accuracy"], abs=1e-6)


# Frozen, only the head learns (chance is 0.2); trainable, the hub layer's weights learn too.
@pytest.mark.parametrize("unfreeze, min_accuracy", [("none", 0.7), ("all", 0.9)])
def test_plain_saved_model_as_finetune_source(
  feature_saved_model, small_mnist_dir, tmp_path, unfreeze, min_accuracy
):
  config = settings.make(
    settings.FinetuneConfig,
    model=feature_saved_model,
    data_dir=small_mnist_dir,
    output_dir=str(tmp_path),
    epochs=3,
    unfreeze=unfreeze,
    learning_rate=0.003,
    strategy="default",
  )
  metrics = finetune.run(config)
  assert metrics["trainable_layers"] == (
    ["hub", "target_classifier"] if unfreeze == "all" else ["target_classifier"]
  )
  assert metrics["test_accuracy"] > min_accuracy
  assert os.path.isdir(tmp_path / artifacts.SAVED_MODEL_DIR)


def test_hub_handle_resolves_from_tfhub_cache_dir(feature_saved_model, tmp_path, monkeypatch):
  handle = "https://example.org/models/mnist-features/1"
  cache = tmp_path / "hub_cache"
  shutil.copytree(feature_saved_model, cache / hashlib.sha1(handle.encode()).hexdigest())
  monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
  model = loading.load_model(handle)  # offline: only the cache can answer
  assert model.output_shape == (None, 128)
  images = np.zeros((2, 28, 28, 1), np.float32)
  np.testing.assert_allclose(
    model.predict(images, verbose=0),
    loading.load_model(feature_saved_model).predict(images, verbose=0),
  )


def test_unreachable_hub_handle_is_a_user_error(tmp_path, monkeypatch):
  monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
  with pytest.raises(UserError, match="cannot fetch model"):
    loading.load_model("https://127.0.0.1:9/nothing/here/1")


def test_model_that_takes_no_images_is_refused(tmp_path, small_mnist_dir):
  inputs = keras.Input((10,))
  path = str(tmp_path / "vector.h5")
  model_io.save_h5(keras.Model(inputs, keras.layers.Dense(3)(inputs)), path, {})
  config = settings.make(
    settings.TransferConfig, model=path, data_dir=small_mnist_dir, output_dir=str(tmp_path / "out")
  )
  with pytest.raises(UserError, match="cannot take the target images"):
    transfer.run(config)


# Planted payloads: each would create `marker` if the loader ran code from the file.


def _payload(marker):
  return eval(f"lambda x: (open({str(marker)!r}, 'w').write('ran'), x)[1]")


def _lambda_model(marker):
  inputs = keras.Input((28, 28, 1))
  return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(_payload(marker))(inputs)))


@pytest.mark.parametrize("save_format", ["keras", "tf"])
def test_lambda_in_keras_file_or_saved_model_is_refused(tmp_path, save_format):
  marker = tmp_path / "payload_ran"
  path = str(tmp_path / ("model.keras" if save_format == "keras" else "savedmodel"))
  _lambda_model(marker).save(path, save_format=save_format)
  marker.unlink()  # building and saving ran it
  with pytest.raises(UserError, match="refusing to load .*Lambda"):
    loading.load_model(path)
  assert not marker.exists()


def test_saved_model_graph_that_writes_files_is_refused(tmp_path):
  marker = tmp_path / "payload_ran"

  class Writer(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def __call__(self, images):
      with tf.control_dependencies([tf.io.write_file(str(marker), "ran")]):
        return tf.reduce_mean(images, axis=[1, 2])

  path = str(tmp_path / "writer")
  tf.saved_model.save(Writer(), path)
  with pytest.raises(UserError, match="WriteFile"):
    loading.load_model(path)
  assert not marker.exists()
  # The payload is real: opting in and calling the model writes the file.
  loading.load_model(path, allow_unsafe=True).predict(np.zeros((1, 28, 28, 1)), verbose=0)
  assert marker.exists()


def _zip_directory_bombs(tmp_path):
  """A .keras of 100,000 empty entries, and one of 3 entries whose Zip64 end record declares
  10^9 entries and a 1 TB directory."""
  many = tmp_path / "many.keras"
  with zipfile.ZipFile(many, "w") as archive:
    for index in range(100_000):
      archive.writestr(f"{index}", b"")
  lying = tmp_path / "lying.keras"
  with zipfile.ZipFile(lying, "w") as archive:
    for name in ("config.json", "metadata.json", "model.weights.h5"):
      archive.writestr(name, b"{}")
  raw = bytearray(lying.read_bytes())
  end = raw.rfind(b"PK\x05\x06")
  zip64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 10**9, 10**9, 10**12, 0)
  locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end, 1)
  lying.write_bytes(bytes(raw[:end]) + zip64 + locator + bytes(raw[end:]))
  return many, lying


def test_zip_entry_count_is_checked_before_zipfile_parses_the_directory(tmp_path, monkeypatch):
  many, lying = _zip_directory_bombs(tmp_path)
  assert many.stat().st_size < 12_000_000

  def parsing(*args, **kwargs):
    raise AssertionError("zipfile parsed the central directory before the check")

  monkeypatch.setattr(zipfile, "ZipFile", parsing)
  with pytest.raises(UserError, match="declares 100,000 entries") as error:
    loading.load_model(str(many))
  assert "\n" not in str(error.value)
  with pytest.raises(UserError, match="declares 1,000,000,000 entries"):
    loading.load_model(str(lying))
