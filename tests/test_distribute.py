"""Distribution: strategy choice, and real multi-worker training in two local processes."""

import json
import os

import pytest
from conftest import run_two_workers

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.training import distribute


def test_strategy_choice_on_cpu():
  assert distribute.strategy_name(distribute.get_distribution_strategy("auto")) == "default"
  assert distribute.get_distribution_strategy("mirrored").num_replicas_in_sync == 2
  assert distribute.get_distribution_strategy("one_device").num_replicas_in_sync == 1
  with pytest.raises(UserError, match="TF_CONFIG"):
    distribute.get_distribution_strategy("multi_worker")
  with pytest.raises(UserError, match="unknown --strategy"):
    distribute.get_distribution_strategy("tpu")


@pytest.mark.slow
def test_multi_worker_training_in_two_processes(source_model, small_mnist_dir, tmp_path):
  output_dir = tmp_path / "out"
  # --head_init=probe: each worker fits the probe; the replicas must still agree.
  outputs = run_two_workers(
    source_model[0], small_mnist_dir, output_dir, tmp_path, ["--epochs=3", "--head_init=probe"]
  )

  metrics = json.loads((output_dir / artifacts.METRICS["finetune"]).read_text())
  assert metrics["strategy"] == "MultiWorkerMirroredStrategy" and metrics["num_replicas"] == 2
  assert metrics["test_accuracy"] > 0.9
  assert "== finetune done" in outputs[0][0] and "== finetune done" not in outputs[1][0]
  # Worker 1 saved into a temporary folder of its own, removed afterwards.
  assert os.listdir(tmp_path / "tmp1") == []
  # Synchronous training: both replicas ended with the weights the chief saved.
  saved = networks.weights_fingerprint(loading.load_model(str(output_dir / artifacts.TARGET_MODEL)))
  assert metrics["weights_sha256"] == saved
  assert f"weights sha256 {saved}" in outputs[1][0]


@pytest.mark.parametrize(
  "batch_size, per_replica, strategy, expected",
  [
    (128, None, "default", 128),
    (128, None, "mirrored", 128),
    (128, 32, "mirrored", 64),
    (128, 32, "one_device", 32),
  ],
)
def test_global_batch_size(batch_size, per_replica, strategy, expected):
  chosen = distribute.get_distribution_strategy(strategy)
  assert distribute.global_batch_size(chosen, batch_size, per_replica) == expected


@pytest.mark.slow
def test_per_replica_batch_under_mirrored(mirrored_target):
  _, metrics = mirrored_target  # --per_replica_batch_size=50, trained once (conftest)
  assert metrics["batch_size"] == 100 and metrics["per_replica_batch_size"] == 50
  assert metrics["history"]["loss"] and metrics["num_replicas"] == 2


def test_mixed_precision_is_refused_on_cpu(tmp_path):
  with pytest.raises(UserError, match="--mixed_precision needs a GPU"):
    distribute.check_devices(mixed_precision=True)


@pytest.mark.slow
def test_mixed_precision_keeps_classifiers_float32(source_model):
  # What --mixed_precision does on a GPU, checked for structure (not speed) on the CPU.
  source = loading.load_model(source_model[0])
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    mixed = networks.with_global_dtype_policy(source)
    target = networks.build_target_model(mixed, 3)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert target.get_layer("features_conv2").compute_dtype == "float16"
  assert target.get_layer("features_dense").compute_dtype == "float16"
  assert target.get_layer(networks.TARGET_CLASSIFIER).compute_dtype == "float32"
  assert target.output.dtype == "float32"
  assert networks.weights_fingerprint(mixed) == networks.weights_fingerprint(source)
