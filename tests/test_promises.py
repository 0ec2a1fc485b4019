"""README promises that had no test: resuming tl-pipeline, export writing nothing unless every
conversion works, --max_model_mb, the image-file size limit, and Ctrl-C in every stage."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from conftest import assert_refused
from conftest import leftovers
from conftest import run_command
from conftest import stop
from conftest import wait_for
from conftest import write_image_folder
from test_interrupts import _never_returning_model
from test_interrupts import _stuck_in_native_code

from tl_keras import artifacts
from tl_keras import limits
from tl_keras.config import settings
from tl_keras.keras_api import keras
from tl_keras.training import resume

# Every test here starts TensorFlow in a child process or trains.
pytestmark = pytest.mark.slow

# README: Ctrl-C stops any stage with one line on stderr and "exit status 130", which is what a
# shell reports (128 + 2) for a process that ended on SIGINT: Popen's returncode -2. A child
# that does not stop on the signal is killed after a minute by `stop` and reports -9.
INTERRUPTED = ["error: interrupted by SIGINT"]


def _dense_model(path, units):
  """An untrained Flatten-Dense(units)-Dense(2) model on 28x28 grey images, saved at `path`:
  its first kernel declares 784 * units * 4 bytes."""
  inputs = keras.Input((28, 28, 1))
  hidden = keras.layers.Dense(units, activation="relu")(keras.layers.Flatten()(inputs))
  outputs = keras.layers.Dense(2, activation="softmax")(hidden)
  keras.Model(inputs, outputs).save(str(path), save_format="h5")
  return str(path)


def _start(args, log_dir):
  """`python ARGS` from the repo root, stdout and stderr into files of `log_dir`."""
  out = open(log_dir / "stdout.log", "w")
  err = open(log_dir / "stderr.log", "w")
  process = subprocess.Popen(
    [sys.executable, *args], cwd=REPO_ROOT, stdout=out, stderr=err, text=True
  )
  out.close()
  err.close()
  return process


def _interrupt_when(process, condition, what):
  """Waits until `condition` holds (the stage is working), sends SIGINT; the exit code."""
  try:
    wait_for(condition, process, what)
    return stop(process, signal.SIGINT)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


def _stderr(log_dir):
  return (log_dir / "stderr.log").read_text()


def _has_checkpoint(folder):
  # tf.train.CheckpointManager writes its 'checkpoint' index file once a save is complete.
  return any("checkpoint" in names for _, _, names in os.walk(folder))


# --- resuming tl-pipeline, and Ctrl-C in it --------------------------------------------------


# The stage interrupted, the model it would have written, and the other training stage.
PIPELINE_STAGES = {
  "pretrain": (artifacts.SOURCE_MODEL, "finetune"),
  "finetune": (artifacts.TARGET_MODEL, "pretrain"),
}


@pytest.mark.parametrize("stage", list(PIPELINE_STAGES))
def test_ctrl_c_stops_the_pipeline_and_the_same_command_resumes(stage, small_mnist_dir, tmp_path):
  out = tmp_path / "out"
  model, other = PIPELINE_STAGES[stage]
  # The stage interrupted trains 3 epochs (so it resumes from epoch 1 or 2); the other only runs.
  args = [
    "scripts/pipeline.py",
    f"--data_dir={small_mnist_dir}",
    f"--output_dir={out}",
    f"--{stage}_epochs=3",
    f"--{other}_epochs=1",
    "--batch_size=32",
  ]
  backup = resume.backup_dir(str(out), stage)
  code = _interrupt_when(_start(args, tmp_path), lambda: _has_checkpoint(backup), "training")
  assert code == -signal.SIGINT, (code, _stderr(tmp_path)[-3000:])
  assert _stderr(tmp_path).splitlines() == INTERRUPTED
  assert leftovers(out) == []
  assert not (out / model).exists()
  assert _has_checkpoint(backup)  # kept for resuming

  result = run_command(args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from epoch" in result.stdout
  metrics = json.loads((out / artifacts.METRICS[stage]).read_text())
  resumed = metrics["resumed_from_epoch"]
  assert 1 <= resumed < 3
  assert len(metrics["history"]["loss"]) == 3 - resumed
  assert json.loads((out / artifacts.METRICS[other]).read_text())["resumed_from_epoch"] == 0
  # Every stage's outputs, as an uninterrupted run leaves them, and no backup.
  names = set(os.listdir(out))
  for name in (
    artifacts.SOURCE_MODEL,
    artifacts.TARGET_MODEL,
    artifacts.SAVED_MODEL_DIR,
    artifacts.REPORT,
    artifacts.PRETRAIN_CURVES,
    *(artifacts.METRICS[part] for part in ("pretrain", "transfer", "finetune")),
  ):
    assert name in names, sorted(names)
  assert artifacts.BACKUP_DIR not in names and leftovers(out) == []


# --- export: nothing written unless every conversion works ----------------------------------


def test_export_writes_nothing_when_one_conversion_fails(
  source_model, small_mnist_dir, tmp_path, monkeypatch
):
  from tl_keras.outputs import tflite
  from tl_keras.stages import export

  converted = []
  convert = tflite.convert

  def failing_int8(model, fmt, representative=None):
    if fmt == "tflite_int8":
      raise RuntimeError("int8 conversion failed")
    content = convert(model, fmt, representative)
    converted.append(fmt)
    return content

  monkeypatch.setattr(tflite, "convert", failing_int8)
  out = tmp_path / "out"
  config = settings.make(
    settings.ExportConfig,
    model=source_model[0],
    target="mnist:0-4",
    data_dir=small_mnist_dir,
    formats="tflite,tflite_dynamic,tflite_int8",
    representative_images=10,
    output_dir=str(out),
  )
  with pytest.raises(RuntimeError, match="int8 conversion failed"):
    export.run(config)
  assert converted == ["tflite", "tflite_dynamic"]  # converted, then the last one failed
  # Nothing at all: no .tflite file, labels.txt, export_metrics.json, report or temporary file.
  assert not out.exists() or os.listdir(out) == []


# --- --max_model_mb ----------------------------------------------------------------------------


def test_max_model_mb_refuses_a_larger_model_and_a_larger_value_loads_it(small_mnist_dir, tmp_path):
  from tl_keras import api

  # 784 x 512 float32 weights: 1.5 MiB declared, over 1 MiB and under 2.
  path = _dense_model(tmp_path / "wide.h5", 512)
  out = tmp_path / "out"
  result = run_command(
    [
      "scripts/transfer.py",
      f"--model={path}",
      f"--data_dir={small_mnist_dir}",
      f"--output_dir={out}",
      "--max_model_mb=1",
    ]
  )
  assert_refused(result, out, "--max_model_mb", "wide.h5")
  with pytest.raises(Exception, match="--max_model_mb"):
    api.load_model(path, max_model_mb=1)
  model = api.load_model(path, max_model_mb=2)
  assert model.count_params() == 784 * 512 + 512 + 512 * 2 + 2


# --- the image-file size limit -------------------------------------------------------------------


def test_image_file_over_the_size_limit_is_refused_naming_it(tmp_path):
  model = _dense_model(tmp_path / "model.h5", 8)
  images = np.zeros((8, 28, 28), np.uint8)
  images[:, 10:18, 10:18] = 255
  folder = write_image_folder(tmp_path / "images", images, np.arange(8) % 2, ["a", "b"])
  huge = os.path.join(folder, "b", "huge.png")
  # A sparse file: one byte over the limit by its size, no disk used.
  with open(huge, "wb") as f:
    f.truncate(limits.MAX_IMAGE_FILE_BYTES + 1)
  out = tmp_path / "out"
  result = run_command(
    [
      "scripts/export.py",
      f"--model={model}",
      f"--target=dir:{folder}",
      f"--output_dir={out}",
      "--formats=tflite",
    ]
  )
  line = assert_refused(result, out, "huge.png")
  assert f"more than the limit of {limits.MAX_IMAGE_FILE_BYTES:,}" in line


# --- Ctrl-C in every stage (finetune's is in test_interrupts.py) --------------------------------


def test_ctrl_c_stops_pretrain_while_it_trains(small_mnist_dir, tmp_path):
  out = tmp_path / "out"
  args = [
    "scripts/pretrain.py",
    f"--data_dir={small_mnist_dir}",
    f"--output_dir={out}",
    "--epochs=200",
    "--batch_size=32",
  ]
  backup = resume.backup_dir(str(out), "pretrain")
  code = _interrupt_when(_start(args, tmp_path), lambda: _has_checkpoint(backup), "training")
  # 200 epochs would take many minutes: ending on the signal is stopping on it.
  assert code == -signal.SIGINT, (code, _stderr(tmp_path)[-3000:])
  assert _stderr(tmp_path).splitlines() == INTERRUPTED
  assert leftovers(out) == []
  assert not (out / artifacts.SOURCE_MODEL).exists()
  assert _has_checkpoint(backup)


def _stage_args(stage, model, data_dir, out):
  if stage == "fuse":
    # A model without class names classifies 0..k-1.
    return [
      "scripts/fuse.py",
      f"--models={model},{model}",
      f"--data_dir={data_dir}",
      "--target=mnist:0-4",
    ]
  return [f"scripts/{stage}.py", f"--model={model}", f"--data_dir={data_dir}"] + (
    ["--formats=tflite"] if stage == "export" else []
  )


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
@pytest.mark.parametrize("stage", ["transfer", "export", "fuse"])
def test_ctrl_c_stops_a_stage_inside_a_model_that_never_returns(stage, small_mnist_dir, tmp_path):
  # The stage is working (its model computes) and would never finish on its own: the command
  # ending at all is stopping on the signal.
  model = _never_returning_model(tmp_path / "forever")
  out = tmp_path / "out"
  args = [*_stage_args(stage, model, small_mnist_dir, out), f"--output_dir={out}"]
  process = _start(args, tmp_path)
  code = _interrupt_when(process, lambda: _stuck_in_native_code(process.pid), "computing")
  assert code == -signal.SIGINT, (code, _stderr(tmp_path)[-3000:])
  assert _stderr(tmp_path).splitlines() == INTERRUPTED
  assert leftovers(out) == []
  assert not out.exists() or not os.listdir(out)
