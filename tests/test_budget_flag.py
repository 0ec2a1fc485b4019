"""--memory_budget_mb: every command takes it, it wins over $TL_KERAS_MEMORY_BUDGET_MB, and the
limits derived from the budget follow it in the process that runs the stage."""

import os

import numpy as np
import pytest
from conftest import run_command

from tl_keras import limits

COMMANDS = ("pretrain", "transfer", "finetune", "pipeline", "export", "fuse", "rank")


@pytest.mark.parametrize("script", COMMANDS)
def test_every_command_takes_the_budget_flag(script):
  result = run_command([f"scripts/{script}.py", "--help"])
  assert result.returncode == 0, result.stderr
  assert "--memory_budget_mb" in result.stdout


@pytest.mark.parametrize("value", ["100", "8388608"])
def test_a_budget_outside_its_range_is_refused_in_one_line(tmp_path, value):
  output_dir = tmp_path / "out"
  result = run_command(
    ["scripts/transfer.py", f"--memory_budget_mb={value}", f"--output_dir={output_dir}"]
  )
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "--memory_budget_mb must be a whole number from 256" in lines[0]
  assert not output_dir.exists()


def test_a_bad_environment_budget_is_one_line_not_an_import_error(tmp_path):
  result = run_command(
    ["scripts/transfer.py", f"--output_dir={tmp_path / 'out'}"],
    env={limits.BUDGET_ENV: "lots"},
  )
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and limits.BUDGET_ENV in lines[0], lines


# A model taking 256x256 grey images (tiny weights) and an .npz of 600 1x1 images: as stored a
# few KB, fitted to the input 600 x 256 KiB = 150 MiB of float32, over the 128 MiB a 256 MiB
# budget allows and under the 512 MiB of the default.
def _write_payload(path):
  from tl_keras.keras_api import keras
  from tl_keras.outputs import model_io

  inputs = keras.Input((256, 256, 1))
  x = keras.layers.Conv2D(2, 8, strides=8)(inputs)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(3, activation="softmax")(x)
  model_io.save_h5(keras.Model(inputs, outputs), path, {})


_TRANSFER = """
import sys
from tl_keras import cli
sys.argv = ["tl-transfer", *sys.argv[1:]]
try:
  cli.transfer_main()
finally:
  print("PEAK_KB", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


@pytest.mark.slow
def test_the_flag_sets_the_limits_the_stage_checks(tmp_path):
  model = str(tmp_path / "wide_input.h5")
  _write_payload(model)  # in this process: the commands under test run in their own
  x, y = np.zeros((300, 1, 1), np.uint8), np.arange(300) % 3
  np.savez(tmp_path / "tiny.npz", x_train=x, y_train=y, x_test=x, y_test=y)
  marker = tmp_path / "marker"
  marker.write_bytes(b"untouched")
  flags = [f"--model={model}", f"--target=npz:{tmp_path / 'tiny.npz'}"]
  # The environment asks for more; the flag wins.
  env = {limits.BUDGET_ENV: "4096"}
  small = tmp_path / "small"
  refused = run_command(
    ["-c", _TRANSFER, *flags, f"--output_dir={small}", "--memory_budget_mb=256"], env=env
  )
  assert refused.returncode == 2, refused.stderr[-3000:]
  lines = refused.stderr.strip().splitlines()
  assert len(lines) == 1 and "fitted to the model's input 256x256x1" in lines[0], lines
  assert "--memory_budget_mb" in lines[0]
  assert not small.exists() or not os.listdir(small)
  default = tmp_path / "default"
  accepted = run_command(["-c", _TRANSFER, *flags, f"--output_dir={default}"])
  assert accepted.returncode == 0, accepted.stderr[-3000:]
  assert (default / "transfer_metrics.json").exists()
  # Blank images score NaN; the metrics are still strict JSON, read back into the report.
  assert "left out of report.md" not in accepted.stderr, accepted.stderr[-2000:]
  for result in (refused, accepted):
    assert int(result.stdout.split("PEAK_KB")[1].split()[0]) < 2048 * 1024, result.stdout[-500:]
  assert marker.read_bytes() == b"untouched"
