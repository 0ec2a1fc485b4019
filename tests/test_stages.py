"""The three stages called as functions on small real-MNIST data."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import finetune_config
from conftest import run_command

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.config import settings
from tl_keras.data import labeled
from tl_keras.data import preprocessing
from tl_keras.data import targets
from tl_keras.models import networks
from tl_keras.outputs import model_io
from tl_keras.stages import finetune
from tl_keras.stages import pretrain
from tl_keras.stages import transfer

COMMON_METRICS = {"test_accuracy", "wall_seconds", "epochs", "num_train", "num_test", "classes"}


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def test_pretrain_learns_the_source_digits(source_model):
  path, metrics = source_model
  assert metrics["test_accuracy"] > 0.95  # chance is 0.2
  assert COMMON_METRICS <= set(metrics)
  assert metrics["classes"] == ["0", "1", "2", "3", "4"]
  assert metrics["num_train"] == 5 * 600 and metrics["num_test"] == 5 * 200
  saved = _read_json(os.path.join(os.path.dirname(path), artifacts.METRICS["pretrain"]))
  assert saved["test_accuracy"] == metrics["test_accuracy"]
  assert model_io.read_metadata(path)["class_names"] == ["0", "1", "2", "3", "4"]


def test_pretrain_accepts_injected_data(tmp_path):
  rng = np.random.default_rng(0)
  # Two trivially separable classes: dark and bright images.
  x = np.concatenate([rng.integers(0, 60, (64, 28, 28)), rng.integers(200, 256, (64, 28, 28))])
  y = np.repeat([0, 1], 64)
  dataset = labeled.LabeledData(x.astype(np.uint8), y, x.astype(np.uint8), y, ["dark", "bright"])
  metrics = pretrain.run(
    settings.make(settings.PretrainConfig, output_dir=str(tmp_path), epochs=3, batch_size=16),
    datasets_override=dataset,
  )
  assert metrics["test_accuracy"] == 1.0
  assert model_io.read_metadata(str(tmp_path / "source_model.h5"))["class_names"] == [
    "dark",
    "bright",
  ]


def test_transfer_matches_classes_by_name(source_model, small_mnist_dir, tmp_path):
  path, _ = source_model
  # Digits 3 and 4 are source classes: the source model should already know them.
  config = settings.make(
    settings.TransferConfig,
    model=path,
    target="mnist:3-4",
    data_dir=small_mnist_dir,
    output_dir=str(tmp_path),
  )
  metrics = transfer.run(config)
  assert COMMON_METRICS <= set(metrics)
  assert metrics["num_matched_by_name"] == 400
  assert metrics["test_accuracy"] > 0.95
  assert metrics["epochs"] == 0 and metrics["images_per_second"] > 0
  with open(tmp_path / artifacts.PREDICTIONS) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 400
  assert set(rows[0]) == {"index", "predicted_class", "confidence", "true_label"}
  correct = sum(row["predicted_class"] == row["true_label"] for row in rows)
  assert correct / len(rows) == pytest.approx(metrics["test_accuracy"])


def test_transfer_to_new_classes_has_no_accuracy(source_model, small_mnist_dir, tmp_path):
  path, _ = source_model
  config = settings.make(
    settings.TransferConfig,
    model=path,
    target="mnist:5-9",
    data_dir=small_mnist_dir,
    output_dir=str(tmp_path),
  )
  metrics = transfer.run(config)
  assert metrics["test_accuracy"] is None and metrics["num_matched_by_name"] == 0
  assert set(metrics["predicted_source_classes"]) == {"5", "6", "7", "8", "9"}
  # The mean of the source model's top probability on each target test image, as written per
  # image to predictions.csv and as the model itself gives it.
  target = targets.load_target("mnist:5-9", small_mnist_dir)
  top = networks.predict(loading.load_model(path), target.x_test).max(axis=1)
  with open(tmp_path / artifacts.PREDICTIONS) as f:
    written = [float(row["confidence"]) for row in csv.DictReader(f)]
  np.testing.assert_allclose(written, top, atol=1e-5)
  assert metrics["mean_confidence"] == pytest.approx(top.mean(), abs=1e-5)
  # A trained 0-4 model is sure of itself on other digits too (it cannot say "none of
  # these"): measured 0.77; an untrained one is near 1/5, the least a softmax of 5 can give.
  assert metrics["mean_confidence"] > 0.6


def _finetune(source_model, small_mnist_dir, output_dir, **overrides):
  return finetune_config(source_model[0], output_dir, data_dir=small_mnist_dir, **overrides)


def test_finetune_learns_the_target_and_exports(target_model, small_mnist_dir, tmp_path):
  # The session's target model: this stage, this config (conftest.finetune_config), run once.
  output_dir, metrics = target_model
  assert metrics["test_accuracy"] > 0.9  # chance is 0.2
  assert COMMON_METRICS <= set(metrics)
  assert metrics["classes"] == ["5", "6", "7", "8", "9"]
  assert metrics["source_classes"] == ["0", "1", "2", "3", "4"]
  h5_path = str(output_dir / artifacts.TARGET_MODEL)
  metadata = model_io.read_metadata(h5_path)
  assert metadata["class_names"] == ["5", "6", "7", "8", "9"]
  assert metadata["source_class_names"] == ["0", "1", "2", "3", "4"]
  assert metadata["label_map"] == {"5": 0, "6": 1, "7": 2, "8": 3, "9": 4}
  assert sorted(os.listdir(output_dir)) == sorted(
    [
      artifacts.TARGET_MODEL,
      artifacts.SAVED_MODEL_DIR,
      artifacts.METRICS["finetune"],
      artifacts.FINETUNE_CURVES,
      artifacts.CONFUSION,
      artifacts.MISCLASSIFIED,
      "report.md",
    ]
  )

  # The SavedModel, in a fresh process that never imports tl_keras, takes raw uint8 images.
  target = targets.load_target("mnist:5-9", small_mnist_dir)
  images_path = tmp_path / "images.npz"
  np.savez(images_path, x=target.x_test[:, :, :, None], y=target.y_test)
  script = f"""
import json, numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(output_dir / artifacts.SAVED_MODEL_DIR)!r})
serve = loaded.signatures["serving_default"]
batch = np.load({str(images_path)!r})
out = serve(images=tf.constant(batch["x"]))
print(json.dumps({{"accuracy": float((out["class_id"].numpy() == batch["y"]).mean()),
                  "shape": out["probabilities"].shape.as_list(),
                  "probabilities": out["probabilities"].numpy()[:5].tolist()}}))
"""
  result = run_command(["-c", script])
  assert result.returncode == 0, result.stderr[-2000:]
  served = json.loads(result.stdout.strip().splitlines()[-1])
  assert served["shape"] == [1000, 5]
  assert served["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
  reloaded = loading.load_model(h5_path)
  expected = reloaded.predict(
    preprocessing.preprocess_images(target.x_test[:5], (28, 28, 1)), verbose=0
  )
  np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
  with open(output_dir / artifacts.SAVED_MODEL_DIR / "assets" / artifacts.CLASS_NAMES_ASSET) as f:
    assert f.read().split() == ["5", "6", "7", "8", "9"]


def test_finetune_mirrored_over_two_logical_cpus(mirrored_target):
  assert len(tf.config.list_logical_devices("CPU")) == 2
  _, metrics = mirrored_target  # trained once, shared with test_distribute
  assert metrics["strategy"] == "MirroredStrategy" and metrics["num_replicas"] == 2
  assert metrics["test_accuracy"] > 0.9


def test_finetune_only_head_keeps_source_features(source_model, small_mnist_dir, tmp_path):
  path, _ = source_model
  metrics = finetune.run(
    _finetune(source_model, small_mnist_dir, tmp_path, unfreeze="none", learning_rate=0.01)
  )
  assert metrics["trainable_layers"] == ["target_classifier"]
  source = loading.load_model(path)
  target = loading.load_model(str(tmp_path / artifacts.TARGET_MODEL))
  for name in ("features_conv1", "features_conv2", "features_dense"):
    for before, after in zip(
      source.get_layer(name).get_weights(), target.get_layer(name).get_weights()
    ):
      np.testing.assert_array_equal(before, after)
  assert metrics["test_accuracy"] > 0.6  # chance is 0.2: frozen 0-4 features carry over


def test_tensorboard_logs_go_under_the_output_dir(tmp_path):
  x = np.zeros((32, 28, 28), np.uint8)
  y = np.repeat([0, 1], 16)
  dataset = labeled.LabeledData(x, y, x, y, ["a", "b"])
  pretrain.run(
    settings.make(settings.PretrainConfig, output_dir=str(tmp_path), epochs=1, tensorboard=True),
    datasets_override=dataset,
  )
  events = [name for _, _, files in os.walk(tmp_path / "logs" / "pretrain") for name in files]
  assert any(name.startswith("events.out.tfevents") for name in events)
