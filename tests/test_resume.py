"""Resuming interrupted training, and reproducible results: real processes, real files."""

import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO_ROOT
from conftest import run_command
from conftest import stop
from conftest import wait_for

from tl_keras.config import settings
from tl_keras.data import labeled
from tl_keras.models import networks
from tl_keras.training import distribute
from tl_keras.training import resume
from tl_keras.training import trainer

# Every test here starts processes or trains: the full suite only.
pytestmark = pytest.mark.slow

PRETRAIN_FILES = ["pretrain_curves.png", "report.md", "source_metrics.json", "source_model.h5"]


def _pretrain_args(data_dir, output_dir, *flags, epochs):
  return [
    "scripts/pretrain.py",
    f"--data_dir={data_dir}",
    f"--output_dir={output_dir}",
    f"--epochs={epochs}",
    "--batch_size=32",
    *flags,
  ]


def _has_checkpoint(folder):
  # tf.train.CheckpointManager writes its 'checkpoint' index file once a save is complete.
  return any("checkpoint" in files for _, _, files in os.walk(folder))


def _interrupt(args, backup, sig, log_path):
  """Runs `python ARGS` until `backup` holds a finished epoch, then sends it `sig`."""
  with open(log_path, "w") as log:
    process = subprocess.Popen(
      [sys.executable, *args], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
      wait_for(lambda: _has_checkpoint(backup), process, "a backup")
      assert stop(process, sig) == -sig, log_path.read_text()[-3000:]
    finally:
      if process.poll() is None:
        process.kill()
        process.wait()


def _read_metrics(output_dir):
  with open(os.path.join(output_dir, "source_metrics.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_killed_run_resumes_from_its_last_epoch(sig, small_mnist_dir, tmp_path):
  out = tmp_path / "out"
  args = _pretrain_args(small_mnist_dir, out, epochs=6)
  backup = resume.backup_dir(str(out), "pretrain")
  _interrupt(args, backup, sig, tmp_path / "interrupted.log")
  assert not (out / "source_model.h5").exists()

  result = run_command(args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from epoch" in result.stdout
  metrics = _read_metrics(out)
  resumed = metrics["resumed_from_epoch"]
  assert 1 <= resumed < 6
  assert len(metrics["history"]["loss"]) == 6 - resumed
  # Restored weights, not only the epoch count: a fresh first epoch ends near loss 0.45.
  assert metrics["history"]["loss"][0] < 0.25
  assert metrics["test_accuracy"] > 0.95
  assert not os.path.exists(os.path.dirname(backup))
  assert sorted(os.listdir(out)) == PRETRAIN_FILES


def test_killed_finetune_resumes_after_its_warmup(source_model, small_mnist_dir, tmp_path):
  out = tmp_path / "out"
  args = [
    "scripts/finetune.py",
    f"--model={source_model[0]}",
    f"--data_dir={small_mnist_dir}",
    f"--output_dir={out}",
    "--warmup_epochs=1",
    "--epochs=4",
    "--batch_size=32",
    "--finetune_learning_rate=0.0005",
  ]
  # Killed in the second phase: the rerun skips the finished warmup and resumes the finetune.
  backup = resume.backup_dir(str(out), "finetune")
  _interrupt(args, backup, signal.SIGKILL, tmp_path / "interrupted.log")
  assert not (out / "target_model.h5").exists()

  result = run_command(args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "warmup finished before the interruption" in result.stdout
  assert "resuming from epoch" in result.stdout
  with open(out / "finetune_metrics.json") as f:
    metrics = json.load(f)
  assert 2 <= metrics["resumed_from_epoch"] < 5 and metrics["epochs"] == 5
  assert [phase["name"] for phase in metrics["phases"]] == ["finetune"]
  assert metrics["test_accuracy"] > 0.9
  assert not os.path.exists(os.path.dirname(backup))


def test_resume_refuses_other_settings_and_noresume_starts_over(small_mnist_dir, tmp_path):
  out = tmp_path / "out"
  backup = resume.backup_dir(str(out), "pretrain")
  _interrupt(
    _pretrain_args(small_mnist_dir, out, epochs=3),
    backup,
    signal.SIGKILL,
    tmp_path / "interrupted.log",
  )

  changed = run_command(_pretrain_args(small_mnist_dir, out, "--seed=7", epochs=3))
  assert changed.returncode == 2, changed.stdout + changed.stderr
  assert "--seed=42 (now 7)" in changed.stderr and "--noresume" in changed.stderr
  assert _has_checkpoint(backup)

  result = run_command(_pretrain_args(small_mnist_dir, out, "--seed=7", "--noresume", epochs=3))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming" not in result.stdout
  metrics = _read_metrics(out)
  assert metrics["resumed_from_epoch"] == 0 and metrics["seed"] == 7
  assert len(metrics["history"]["loss"]) == 3
  assert sorted(os.listdir(out)) == PRETRAIN_FILES


def test_backup_accepts_one_device_strategy(tmp_path):
  # What --strategy=auto picks on one GPU; tf_keras's BackupAndRestore alone rejects it.
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.integers(0, 60, (32, 28, 28)), rng.integers(200, 256, (32, 28, 28))])
  y = np.repeat([0, 1], 32)
  dataset = labeled.LabeledData(x.astype(np.uint8), y, x.astype(np.uint8), y, ["dark", "bright"])
  config = settings.make(settings.TrainingConfig, output_dir=str(tmp_path), epochs=2, batch_size=16)
  _, result = trainer.fit_and_evaluate(
    lambda: networks.build_source_model((28, 28, 1), 2),
    dataset,
    config,
    distribute.get_distribution_strategy("one_device"),
    stage="test",
  )
  assert result.resumed_from_epoch == 0 and len(result.history["loss"]) == 2
  assert not os.listdir(tmp_path)


def _weights(h5_path):
  arrays = {}
  with h5py.File(h5_path, "r") as f:
    f["model_weights"].visititems(
      lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None
    )
  return arrays


def test_same_seed_gives_identical_results_in_fresh_processes(small_mnist_dir, tmp_path):
  runs = {}
  for name, seed in (("first", 42), ("again", 42), ("other_seed", 7)):
    out = tmp_path / name
    result = run_command(_pretrain_args(small_mnist_dir, out, f"--seed={seed}", epochs=2))
    assert result.returncode == 0, result.stderr[-3000:]
    runs[name] = _read_metrics(out), _weights(out / "source_model.h5")

  (first, first_weights), (again, again_weights), (other, _) = runs.values()
  assert first["deterministic"] and again["deterministic"]
  assert again["test_accuracy"] == first["test_accuracy"]
  assert again["history"] == first["history"]
  assert first_weights.keys() == again_weights.keys() and first_weights
  for name, value in first_weights.items():
    assert (again_weights[name] == value).all(), name
  assert other["history"] != first["history"]
