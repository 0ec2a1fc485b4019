"""The command-line scripts, run as a user would: fresh processes, real files."""

import json
import os
import re
import textwrap

import pytest
from conftest import run_command

from tl_keras.outputs import model_io

# --help answers without TensorFlow (test_layers): those tests are in the fast tier; the others
# start TensorFlow or train.


@pytest.mark.parametrize(
  "script, flag",
  [
    ("pretrain", "--source_classes"),
    ("transfer", "--target"),
    ("finetune", "--unfreeze"),
    ("pipeline", "--finetune_epochs"),
    ("transfer", "--train_per_class"),
    ("finetune", "--warmup_epochs"),
    ("finetune", "--[no]compare_scratch"),
    ("finetune", "--validation_split"),
    ("pipeline", "--target_fit"),
    ("export", "--formats"),
    ("export", "--representative_images"),
    ("pipeline", "--export_formats"),
    ("finetune", "--class_weight"),
    ("pipeline", "--label_smoothing"),
    ("fuse", "--method: <average|weighted|stacking|soup>"),
  ],
)
def test_help_lists_the_stage_flags(script, flag):
  result = run_command([f"scripts/{script}.py", "--help"])
  assert result.returncode == 0, result.stderr
  assert flag in result.stdout and "--output_dir" in result.stdout
  assert "--helpfull" in result.stdout and "I0000" not in result.stdout + result.stderr


@pytest.mark.slow
def test_stage_scripts_in_sequence(small_mnist_dir, tmp_path):
  out = str(tmp_path / "out")
  common = [f"--data_dir={small_mnist_dir}", f"--output_dir={out}"]
  pretrain = run_command(["scripts/pretrain.py", "--epochs=3", *common])
  assert pretrain.returncode == 0, pretrain.stderr[-3000:]
  assert "== pretrain done" in pretrain.stdout
  transfer = run_command(
    ["scripts/transfer.py", f"--model={out}/source_model.h5", "--target=mnist:3-6", *common]
  )
  assert transfer.returncode == 0, transfer.stderr[-3000:]
  finetune = run_command(
    [
      "scripts/finetune.py",
      f"--model={out}/source_model.h5",
      "--epochs=3",
      "--optimizer=adadelta",
      "--unfreeze=last:2",
      *common,
    ]
  )
  assert finetune.returncode == 0, finetune.stderr[-3000:]

  for result in (pretrain, transfer, finetune):  # TF's INFO/C++ log lines stay hidden by default
    assert not re.search(r"^[IWE]\d{4} ", result.stdout + result.stderr, re.M), result.stderr

  with open(os.path.join(out, "transfer_metrics.json")) as f:
    transfer_metrics = json.load(f)
  # Digits 3 and 4 are known to the source; 5 and 6 are not and count for nothing.
  assert transfer_metrics["num_matched_by_name"] == 400
  assert transfer_metrics["test_accuracy"] > 0.9
  with open(os.path.join(out, "finetune_metrics.json")) as f:
    finetune_metrics = json.load(f)
  assert finetune_metrics["test_accuracy"] > 0.9
  assert finetune_metrics["optimizer"] == "adadelta" and finetune_metrics["learning_rate"] == 1.0
  assert finetune_metrics["trainable_layers"] == [
    "features_conv2",
    "features_dense",
    "target_classifier",
  ]


@pytest.mark.slow
def test_pipeline_end_to_end(small_mnist_dir, tmp_path):
  out = tmp_path / "out"
  result = run_command(
    ["scripts/pipeline.py", f"--output_dir={out}", "--pretrain_epochs=3", "--finetune_epochs=3"],
    env={"TL_KERAS_DATA_DIR": small_mnist_dir},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "== pipeline done" in result.stdout
  assert sorted(os.listdir(out)) == [
    "confusion_matrix.png",
    "finetune_curves.png",
    "finetune_metrics.json",
    "misclassified.png",
    "predictions.csv",
    "pretrain_curves.png",
    "report.md",
    "source_metrics.json",
    "source_model.h5",
    "target_model.h5",
    "target_savedmodel",
    "transfer_confusion.png",
    "transfer_metrics.json",
  ]
  report = (out / "report.md").read_text()
  for png in (
    "pretrain_curves",
    "transfer_confusion",
    "finetune_curves",
    "confusion_matrix",
    "misclassified",
  ):
    assert f"({png}.png)" in report
    assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  metrics = {
    stage: json.loads((out / f"{stage}_metrics.json").read_text())
    for stage in ("source", "transfer", "finetune")
  }
  assert metrics["source"]["test_accuracy"] > 0.95
  assert metrics["finetune"]["test_accuracy"] > 0.9
  assert metrics["transfer"]["classes"] == ["5", "6", "7", "8", "9"]
  assert model_io.read_metadata(str(out / "target_model.h5"))["source_class_names"] == [
    "0",
    "1",
    "2",
    "3",
    "4",
  ]


@pytest.mark.slow
def test_verbosity_shows_the_traceback(tmp_path):
  result = run_command(
    [
      "scripts/transfer.py",
      f"--model={tmp_path / 'none.h5'}",
      f"--output_dir={tmp_path}",
      "--verbosity=1",
    ]
  )
  assert result.returncode == 2
  assert "Traceback" in result.stderr and "model not found" in result.stderr


def _run_transfer_raising(exception, *flags):
  """scripts/transfer.py with transfer.run replaced by one that raises `exception` (source)."""
  code = textwrap.dedent(f"""
      import sys
      from tl_keras import cli
      cli._start()  # as the command does, before TensorFlow's start-up messages
      from tl_keras.stages import transfer
      from tl_keras.errors import UserError
      def fail(*args, **kwargs):
        raise {exception}
      transfer.run = fail
      sys.argv = ["transfer.py", *{list(flags)!r}]
      cli.transfer_main()
  """)
  return run_command(["-c", code])


@pytest.mark.slow
def test_user_error_is_one_line_whatever_its_message():
  result = _run_transfer_raising('UserError("bad input\\nsecond line\\r\\n  third")')
  assert result.returncode == 2
  assert result.stderr.splitlines() == ["error: bad input second line third"]


@pytest.mark.slow
def test_unexpected_error_is_one_line_with_exit_code_1():
  result = _run_transfer_raising('RuntimeError("boom\\n  File x, line 1")')
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.splitlines() == [
    "error: internal error (RuntimeError: boom); rerun with --verbosity=1 for the traceback"
  ]
  verbose = _run_transfer_raising('RuntimeError("boom")', "--verbosity=1")
  assert verbose.returncode == 1
  assert "Traceback" in verbose.stderr and verbose.stderr.splitlines()[-1].startswith(
    "error: internal error (RuntimeError: boom)"
  )


@pytest.mark.parametrize(
  "script, text",
  [
    ("pretrain", "Global batch size, split over the replicas. A whole number from 1 to 65_536."),
    ("finetune", "L2 weight decay on the new head's kernels. A number in [0, 1]."),
    ("pipeline", "see --steps_per_epoch). A whole number from 1 to 10_000."),
  ],
)
def test_help_shows_the_ranges(script, text):
  result = run_command([f"scripts/{script}.py", "--help"])
  assert result.returncode == 0
  assert text in " ".join(result.stdout.split())
