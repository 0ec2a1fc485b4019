"""Finetuning on small targets: two-phase schedule, the head, BatchNormalization, validation and
early stopping, the comparison with training from scratch, and image-folder targets."""

import json

import numpy as np
import pytest
from conftest import finetune_config
from conftest import run_command
from conftest import write_image_folder

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.config import settings
from tl_keras.data import labeled
from tl_keras.data import pipelines
from tl_keras.data import targets
from tl_keras.evaluation import probes
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import model_io
from tl_keras.stages import finetune

# Every test here trains: the full suite only.
pytestmark = pytest.mark.slow


def _config(source_path, small_mnist_dir, tmp_path, **changes):
  values = dict(data_dir=small_mnist_dir, batch_size=16, epochs=2, train_per_class=20)
  return finetune_config(source_path, tmp_path / "out", **{**values, **changes})


def test_warmup_trains_the_head_then_the_unfrozen_layers(source_model, small_mnist_dir, tmp_path):
  source = loading.load_model(source_model[0])
  metrics = finetune.run(
    _config(
      source_model[0], small_mnist_dir, tmp_path, warmup_epochs=2, unfreeze="last:1", head_units=16
    )
  )
  warmup, main = metrics["phases"]
  assert warmup["name"] == "warmup" and main["name"] == "finetune"
  assert warmup["trainable_layers"] == ["target_head_dense", "target_classifier"]
  assert main["trainable_layers"] == ["features_dense", "target_head_dense", "target_classifier"]
  assert np.isclose(warmup["learning_rate"], 1e-3) and np.isclose(main["learning_rate"], 1e-4)
  assert metrics["epochs"] == 4 and len(metrics["history"]["loss"]) == 4
  target = loading.load_model(str(tmp_path / "out" / artifacts.TARGET_MODEL))
  # Frozen throughout: the convolutions; trained in the second phase: the last dense layer.
  for name, changed in (("features_conv2", False), ("features_dense", True)):
    before, after = source.get_layer(name).get_weights()[0], target.get_layer(name).get_weights()[0]
    assert np.array_equal(before, after) != changed, name


def _batchnorm_source(path):
  inputs = keras.Input((28, 28, 1))
  x = keras.layers.Conv2D(8, 3, name="features_conv")(inputs)
  x = keras.layers.BatchNormalization(name="features_bn")(x)
  x = keras.layers.ReLU(name="features_relu")(x)
  x = keras.layers.GlobalAveragePooling2D(name="features_pool")(x)
  outputs = keras.layers.Dense(5, activation="softmax", name="classifier")(x)
  model = keras.Model(inputs, outputs)
  bn = model.get_layer("features_bn")
  gamma, beta, mean, variance = bn.get_weights()
  bn.set_weights([gamma * 2, beta + 0.1, mean + 0.3, variance * 3])  # "learned on the source"
  model_io.save_h5(model, path, {})
  return model


def test_batchnorm_stays_in_inference_mode_when_unfrozen(small_mnist_dir, tmp_path):
  source = _batchnorm_source(str(tmp_path / "bn.h5"))
  finetune.run(_config(str(tmp_path / "bn.h5"), small_mnist_dir, tmp_path, unfreeze="all"))
  target = loading.load_model(str(tmp_path / "out" / artifacts.TARGET_MODEL))
  for before, after in zip(
    source.get_layer("features_bn").get_weights(), target.get_layer("features_bn").get_weights()
  ):
    assert np.array_equal(before, after)  # moving statistics, scale and offset untouched
  assert not np.array_equal(
    source.get_layer("features_conv").get_weights()[0],
    target.get_layer("features_conv").get_weights()[0],
  )


def test_head_units_dropout_and_l2(source_model, small_mnist_dir, tmp_path):
  metrics = finetune.run(
    _config(
      source_model[0],
      small_mnist_dir,
      tmp_path,
      head_units=32,
      head_dropout=0.3,
      head_l2=1e-3,
      epochs=3,
      train_per_class=100,
    )
  )
  assert metrics["test_accuracy"] > 0.7  # chance is 0.2
  target = loading.load_model(str(tmp_path / "out" / artifacts.TARGET_MODEL))
  head = target.get_layer("target_head_dense")
  assert head.units == 32 and np.isclose(head.kernel_regularizer.l2, 1e-3)
  assert target.get_layer("target_head_dropout1").rate == 0.3
  assert len(target.losses) == 2  # the two head kernels' L2 penalties


def test_validation_split_keeps_the_best_epoch(source_model, small_mnist_dir, tmp_path):
  config = _config(
    source_model[0],
    small_mnist_dir,
    tmp_path,
    validation_split=0.25,
    patience=1,
    epochs=6,
    train_per_class=40,
    learning_rate=3e-3,
  )
  metrics = finetune.run(config)
  assert metrics["num_train"] == 150 and metrics["num_validation"] == 50
  (phase,) = metrics["phases"]
  history = metrics["history"]["val_loss"]
  assert len(history) == phase["epochs_run"] <= 6
  assert phase["best_epoch"] == int(np.argmin(history)) + 1
  # The saved model is the best epoch's: its validation loss is the lowest seen.
  target = targets.prepare_target(config.target, (28, 28, 1), small_mnist_dir, config.runtime.seed)
  _, validation = labeled.split_per_class(target.y_train, 0.25, config.runtime.seed)
  model = loading.load_model(str(tmp_path / "out" / artifacts.TARGET_MODEL))
  networks.compile_classifier(model, "adam")
  loss, _ = model.evaluate(
    pipelines.make_dataset(target.x_train[validation], target.y_train[validation], 64, (28, 28, 1)),
    verbose=0,
  )
  assert np.isclose(loss, min(history), rtol=1e-3)


def test_compare_scratch_reports_the_gain_and_warns_when_transfer_hurts(
  small_mnist_dir, tmp_path, capsys
):
  # A source whose weights are all zero gives constant features: nothing to transfer.
  keras.utils.set_random_seed(0)
  useless = networks.build_source_model((28, 28, 1), 5)
  useless.set_weights([np.zeros_like(w) for w in useless.get_weights()])
  model_io.save_h5(useless, str(tmp_path / "zero.h5"), {})
  metrics = finetune.run(
    _config(
      str(tmp_path / "zero.h5"),
      small_mnist_dir,
      tmp_path,
      unfreeze="none",
      train_per_class=100,
      epochs=3,
      compare_scratch=True,
    )
  )
  assert metrics["test_accuracy"] < 0.3 < 0.6 < metrics["scratch_test_accuracy"]
  assert np.isclose(
    metrics["transfer_gain"], metrics["test_accuracy"] - metrics["scratch_test_accuracy"]
  )
  assert "warning: transfer hurt" in capsys.readouterr().err
  with open(tmp_path / "out" / artifacts.METRICS["finetune"]) as f:
    assert json.load(f)["scratch_test_accuracy"] == metrics["scratch_test_accuracy"]
  report = (tmp_path / "out" / "report.md").read_text()
  assert "transfer gain" in report


def test_ten_labels_per_class_transfer_beats_scratch(source_model, small_mnist_dir, tmp_path):
  # README's few-label recipe: the head on the convolutional features, started from a probe.
  metrics = finetune.run(
    _config(
      source_model[0],
      small_mnist_dir,
      tmp_path,
      train_per_class=10,
      features_layer="features_flatten",
      head_init="probe",
      optimizer="adadelta",
      batch_size=32,
      epochs=16,
      augment=True,
      compare_scratch=True,
    )
  )
  assert metrics["num_train"] == 50
  # This source saw only 600 images per digit: 84.8% vs 68.3% from scratch here (a random
  # head on the penultimate features: 74.7%); full-size figures in bench/bench_few_labels.py.
  assert metrics["test_accuracy"] > 0.8  # chance is 0.2
  assert metrics["transfer_gain"] > 0.1


def test_probe_head_init_starts_finetuning_from_the_linear_probe(
  source_model, small_mnist_dir, tmp_path
):
  # Nothing trains but the head, at a negligible rate: the test accuracy is the probe's.
  config = _config(
    source_model[0],
    small_mnist_dir,
    tmp_path,
    head_init="probe",
    unfreeze="none",
    epochs=1,
    optimizer="adam",
    learning_rate=1e-9,
  )
  metrics = finetune.run(config)
  target = targets.prepare_target(config.target, (28, 28, 1), small_mnist_dir, config.runtime.seed)
  source = loading.load_model(source_model[0])
  probe = probes.linear_probe_accuracy(
    probes.features_of(source, target.x_train),
    target.y_train,
    probes.features_of(source, target.x_test),
    target.y_test,
  )
  assert metrics["head_init"] == "probe" and probe > 0.6  # chance is 0.2
  assert abs(metrics["test_accuracy"] - probe) < 0.01
  random_start = finetune.run(settings.replace(config, head_init="random"))
  assert random_start["test_accuracy"] < 0.5


def test_image_folder_target_through_the_scripts(source_model, small_mnist_dir, tmp_path):
  target = targets.load_target("mnist:5-7", small_mnist_dir)
  names = ["five", "six", "seven"]
  keep = np.concatenate([np.flatnonzero(target.y_train == c)[:30] for c in range(3)])
  write_image_folder(
    tmp_path / "images",
    target.x_train[keep],
    target.y_train[keep],
    names,
    extensions=("png", "jpg"),
    size=(40, 40),
    rgb=True,
  )
  (tmp_path / "images" / "six" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
  common = [
    f"--model={source_model[0]}",
    f"--target=dir:{tmp_path / 'images'}",
    "--target_fit=pad",
    "--test_split=0.3",
    f"--output_dir={tmp_path / 'out'}",
  ]
  transfer_run = run_command(["scripts/transfer.py", *common])
  assert transfer_run.returncode == 0, transfer_run.stderr[-3000:]
  assert "broken.jpg" in transfer_run.stderr and "linear probe" in transfer_run.stdout
  result = run_command(["scripts/finetune.py", *common, "--epochs=6", "--batch_size=16"])
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "out" / artifacts.METRICS["finetune"]) as f:
    metrics = json.load(f)
  assert metrics["classes"] == ["five", "seven", "six"] and metrics["num_test"] == 27
  assert metrics["test_accuracy"] > 0.7  # chance is 1/3
  served = tmp_path / "out" / artifacts.SAVED_MODEL_DIR / "assets" / "class_names.txt"
  assert served.read_text().split() == ["five", "seven", "six"]
