"""The Python API: the README example as written, and each entry point's contract."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from tensorflow.python.framework import config as tf_config

import tl_keras
from tl_keras import api
from tl_keras.data import mnist
from tl_keras.errors import UserError
from tl_keras.models import networks
from tl_keras.outputs import model_io
from tl_keras.training import distribute


def _readme_example():
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    readme = f.read()
  section = readme[readme.index("## Use from Python") :]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_as_written(
  source_model, small_mnist_dir, tmp_path, monkeypatch, capsys
):
  os.makedirs(tmp_path / "saved_models")
  shutil.copy(source_model[0], tmp_path / "saved_models" / "source_model.h5")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(mnist.DATA_DIR_ENV, small_mnist_dir)
  namespace = {}
  exec(compile(_readme_example(), "README.md", "exec"), namespace)
  clf, result = namespace["clf"], namespace["result"]
  assert isinstance(result, tl_keras.FitResult) and result.epochs == 4
  assert result.num_train == 500 and len(result.history["accuracy"]) == 4
  assert clf.evaluate(namespace["data"])["accuracy"] > 0.85
  assert os.path.isfile(tmp_path / "exported" / "target_model.h5")
  # The exported files serve the same predictions.
  images = namespace["data"].x_test[:8]
  serve = tf.saved_model.load(str(tmp_path / "exported" / "target_savedmodel"))
  served = serve.signatures["serving_default"](images=tf.constant(images))["probabilities"]
  np.testing.assert_allclose(served.numpy(), clf.predict(images), atol=1e-5)
  assert "linear_probe_accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_fit_takes_arrays_and_datasets_and_restores_global_state(source_model, small_mnist_dir):
  target = api.load_target("mnist:5-9", (28, 28, 1), data_dir=small_mnist_dir, train_per_class=20)
  policy = tf.keras.mixed_precision.global_policy().name
  for fit_data in (
    (target.x_train, target.y_train),
    tf.data.Dataset.from_tensor_slices((target.x_train, target.y_train)).batch(16),
  ):
    clf = tl_keras.TransferClassifier.from_source(source_model[0], target.class_names)
    result = clf.fit(fit_data, epochs=2, batch_size=16, deterministic=True)
    assert result.num_train == 100
    assert not tf_config.is_op_determinism_enabled()
  assert tf.keras.mixed_precision.global_policy().name == policy
  first, second = (
    tl_keras.TransferClassifier.from_source(source_model[0], target.class_names) for _ in range(2)
  )
  for clf in (first, second):
    clf.fit(target, epochs=1, seed=7)
  np.testing.assert_array_equal(
    first.predict(target.x_test[:16]), second.predict(target.x_test[:16])
  )


@pytest.mark.slow
def test_fit_under_a_mirrored_strategy(source_model, small_mnist_dir):
  target = api.load_target("mnist:5-9", (28, 28, 1), data_dir=small_mnist_dir, train_per_class=20)
  strategy = distribute.get_distribution_strategy("mirrored")  # the two logical CPUs
  clf = tl_keras.TransferClassifier.from_source(
    source_model[0], target.class_names, unfreeze="none"
  )
  before = clf.evaluate(target)["accuracy"]
  result = clf.fit(
    target, epochs=2, batch_size=20, strategy=strategy, warmup_epochs=1, head_init="probe"
  )
  assert result.num_replicas == 2 and result.strategy == "MirroredStrategy"
  assert [phase["name"] for phase in result.phases] == ["warmup", "finetune"]
  assert clf.evaluate(target)["accuracy"] > max(0.7, before + 0.3)


def test_bad_arguments_are_user_errors(tmp_path):
  # Refused before any training: an untrained source file will do (the fast tier).
  source = str(tmp_path / "source.h5")
  model_io.save_h5(
    networks.build_source_model((28, 28, 1), 5), source, {"class_names": list("01234")}
  )
  with pytest.raises(UserError, match="--unfreeze"):
    tl_keras.TransferClassifier.from_source(source, ["a", "b"], unfreeze="bottom")
  clf = tl_keras.TransferClassifier.from_source(source, ["a", "b"])
  with pytest.raises(UserError, match="--learning_rate"):
    clf.compile(learning_rate=float("nan"))
  with pytest.raises(UserError, match="--epochs"):
    clf.fit((np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 0, 1])), epochs=0)
  with pytest.raises(UserError, match="images and"):
    clf.fit((np.zeros((4, 28, 28), np.uint8), np.array([0, 1])))
  with pytest.raises(TypeError, match="epoch"):  # a misspelt option is not silently Keras's
    clf.fit((np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 0, 1])), epoch=2)


def test_the_finetune_options_are_the_settings_by_name():
  """`fit(data, ...)` takes the finetune settings by flag name, defaults from the settings
  (none copied into the API); what compile() and from_source() set is not among them."""
  options = api.fit_options()
  assert {"epochs", "batch_size", "warmup_epochs", "head_init", "adapt", "seed"} <= options
  assert not {"learning_rate", "optimizer", "unfreeze", "head_units", "resume"} & options


def test_importing_tl_keras_imports_no_tensorflow():
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      "import sys, tl_keras; print('tensorflow' in sys.modules, tl_keras.__version__)",
    ],
    capture_output=True,
    text=True,
    cwd=REPO_ROOT,
    check=True,
  )
  assert result.stdout.split()[0] == "False"
