"""ImageNet backbones by name (#12 item 4): --model=keras:NAME with --input_size.

No test downloads anything: each writes the weights file Keras expects (the application built
with weights=None, saved under Keras's file name for it) into a temporary Keras cache.
"""

import os
import sys

import numpy as np
import pytest
from conftest import assert_refused
from conftest import run_command

from tl_keras import loading
from tl_keras.config import settings
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import model_io

SIZE = 32
# The file names Keras's applications download their no-top ImageNet weights as.
WEIGHT_FILES = {
  "MobileNetV2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
  "ResNet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
  "EfficientNetB0": "efficientnetb0_notop.h5",
}
# No download may leave the machine: any attempt fails at once.
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
  """An empty temporary Keras cache ($KERAS_HOME), offline."""
  home = tmp_path / "keras_home"
  (home / "models").mkdir(parents=True)
  monkeypatch.setenv("KERAS_HOME", str(home))
  for name, value in OFFLINE.items():
    monkeypatch.setenv(name, value)
  return home


def _write_weights(home, name):
  """Weights for `name` (random: built with weights=None) where Keras looks for ImageNet's."""
  path = os.path.join(home, "models", WEIGHT_FILES[name])
  application = getattr(keras.applications, name)
  application(
    include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg"
  ).save_weights(path)
  return path


def test_every_keras_application_is_allowlisted_by_name():
  public = {name for name in dir(keras.applications) if name[:1].isupper()}
  assert set(loading.APPLICATIONS) == public
  for name, module in loading.APPLICATIONS.items():
    assert callable(getattr(keras.applications, name))
    assert callable(getattr(keras.applications, module).preprocess_input)


@pytest.mark.parametrize(
  "name, module",
  [
    ("MobileNetV2", "mobilenet_v2"),
    pytest.param("ResNet50", "resnet50", marks=pytest.mark.slow),  # builds slowly
    pytest.param("EfficientNetB0", "efficientnet", marks=pytest.mark.slow),
  ],
)
def test_backbone_preprocesses_as_its_application_in_the_graph(name, module, keras_home):
  """Pixels in [0, 1] through the backbone equal Keras's own application (ImageNet weights,
  its preprocess_input on 0-255 pixels), for the three kinds of preprocessing: scaling to
  [-1, 1], caffe's BGR mean subtraction, and preprocessing built into the model."""
  path = _write_weights(keras_home, name)
  model = loading.load_model(f"keras:{name}", input_size=SIZE)
  assert model.input_shape == (None, SIZE, SIZE, 3) and len(model.output_shape) == 2
  assert not model.get_layer(loading.PREPROCESSING_LAYER).weights  # nothing to train there
  data_utils = sys.modules[keras.utils.get_file.__module__]
  download, data_utils.get_file = data_utils.get_file, lambda *args, **kwargs: path
  try:  # Keras's own ImageNet code path, given the same file
    reference = getattr(keras.applications, name)(
      include_top=False, weights="imagenet", input_shape=(SIZE, SIZE, 3), pooling="avg"
    )
  finally:
    data_utils.get_file = download
  pixels = np.random.default_rng(0).random((3, SIZE, SIZE, 3)).astype(np.float32)
  preprocess = getattr(keras.applications, module).preprocess_input
  expected = reference(preprocess(pixels * 255.0)).numpy()
  got = model(pixels).numpy()
  assert np.abs(expected).max() > 0
  assert np.allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
  # Grey images are replicated to three channels.
  grey = (pixels[..., 0] * 255).astype(np.uint8)
  assert np.allclose(
    networks.predict(model, grey),
    model(np.repeat(grey[..., None] / 255.0, 3, -1)).numpy(),
    atol=1e-4,
  )


def _colour_folder(root, per_class=8):
  """Noisy 40x40 JPEGs tinted red, green or blue, a folder per colour."""
  from PIL import Image

  rng = np.random.default_rng(0)
  for label, name in enumerate(("red", "green", "blue")):
    os.makedirs(root / name)
    for index in range(per_class):
      pixels = rng.integers(0, 120, (40, 40, 3))
      pixels[..., label] += 130
      Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index}.jpg")
  return root


@pytest.mark.slow
def test_backbone_from_the_cache_trains_one_epoch_on_a_colour_folder(keras_home, tmp_path):
  from tl_keras.stages import finetune

  _write_weights(keras_home, "MobileNetV2")
  output_dir = tmp_path / "out"
  metrics = finetune.run(
    settings.make(
      settings.FinetuneConfig,
      model="keras:MobileNetV2",
      input_size=SIZE,
      target=f"dir:{_colour_folder(tmp_path / 'colours')}",
      test_split=0.25,
      image_cache="none",
      epochs=1,
      batch_size=8,
      output_dir=str(output_dir),
      strategy="default",
    )
  )
  assert metrics["epochs"] == 1 and len(metrics["history"]["loss"]) == 1
  assert np.isfinite(metrics["history"]["loss"][0]) and metrics["num_test"] == 6
  assert metrics["classes"] == ["blue", "green", "red"]
  # The finetuned model loads back through the safe loader, and its SavedModel takes raw uint8.
  tuned = loading.load_model(str(output_dir / "target_model.h5"))
  assert tuned.input_shape == (None, SIZE, SIZE, 3)
  assert tuned.get_layer(loading.PREPROCESSING_LAYER)
  import tensorflow as tf

  images = np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
  serve = tf.saved_model.load(str(output_dir / "target_savedmodel")).signatures["serving_default"]
  served = serve(images=tf.constant(images))["probabilities"].numpy()
  assert np.allclose(served, tuned(images / 255.0).numpy(), atol=1e-5)
  assert model_io.read_metadata(str(output_dir / "target_model.h5"))["class_names"] == [
    "blue",
    "green",
    "red",
  ]


@pytest.mark.slow
def test_unknown_backbone_and_missing_weights_offline_exit_2(keras_home, tmp_path):
  env = {"KERAS_HOME": str(keras_home), **OFFLINE}
  target = f"--target=dir:{_colour_folder(tmp_path / 'colours', per_class=3)}"
  output_dir = tmp_path / "out"
  finetune = ["scripts/finetune.py", f"--output_dir={output_dir}", target, "--epochs=1"]
  assert_refused(
    run_command([*finetune, "--model=keras:NoSuchNet"], env=env),
    output_dir,
    "unknown backbone 'keras:NoSuchNet'",
    "MobileNetV2",
  )
  assert_refused(
    run_command([*finetune, "--model=keras:MobileNetV2", f"--input_size={SIZE}"], env=env),
    output_dir,
    WEIGHT_FILES["MobileNetV2"],
    os.path.join(str(keras_home), "models"),
  )
  assert_refused(
    run_command(
      [
        "scripts/transfer.py",
        f"--output_dir={output_dir}",
        target,
        "--model=x.h5",
        "--input_size=64",
      ],
      env=env,
    ),
    output_dir,
    "--input_size is for --model=keras:NAME",
  )


@pytest.mark.parametrize(
  "failure, message",
  [
    (
      Exception("URL fetch failure on https://x/w.h5: None -- [Errno 111] Connection refused"),
      "downloading it failed (URL fetch failure",
    ),
    (ConnectionResetError("reset by peer"), "downloading it failed (reset by peer)"),
    (ValueError("Incomplete or corrupted file detected."), "the download does not match its hash"),
    (PermissionError("Permission denied"), "it cannot be written there (Permission denied)"),
  ],
)
def test_missing_weights_are_told_apart_by_why_the_download_failed(keras_home, failure, message):
  from tl_keras.loading import applications

  def download(*args, **kwargs):
    raise failure

  data_utils = sys.modules[keras.utils.get_file.__module__]
  saved, data_utils.get_file = data_utils.get_file, download
  try:
    with applications.weights_from_cache("keras:X", 1 << 30), pytest.raises(UserError) as error:
      data_utils.get_file("w.h5", "https://x/w.h5", cache_subdir="models")
  finally:
    data_utils.get_file = saved
  text = str(error.value)
  assert text.startswith("no ImageNet weights for keras:X: w.h5 is not in ")
  assert message in text and os.path.join(str(keras_home), "models") in text
  assert ("connect to the internet" in text) == ("downloading it failed" in message)


def test_a_bug_while_fetching_weights_is_not_a_user_error(keras_home):
  from tl_keras.loading import applications

  def download(*args, **kwargs):
    raise ZeroDivisionError("planted bug")

  data_utils = sys.modules[keras.utils.get_file.__module__]
  saved, data_utils.get_file = data_utils.get_file, download
  try:
    with applications.weights_from_cache("keras:X", 1 << 30), pytest.raises(ZeroDivisionError):
      data_utils.get_file("w.h5", "https://x/w.h5", cache_subdir="models")
  finally:
    data_utils.get_file = saved
