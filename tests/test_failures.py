"""Bad input on the command line: exit code 2, one line naming the problem, no traceback,
nothing written to the output folder."""

import os

import numpy as np
import pytest

from conftest import run_command
from tl_keras import model_io
from tl_keras.keras_api import keras


def _npz(folder, **changes):
  x = np.zeros((6, 28, 28), np.uint8)
  y = np.array([0, 1, 2, 0, 1, 2])
  arrays = dict(x_train=x, y_train=y, x_test=x, y_test=y)
  arrays.update(changes)
  arrays = {key: value for key, value in arrays.items() if value is not None}
  np.savez(folder / "target.npz", **arrays)
  return f"--target=npz:{folder / 'target.npz'}"


def _vector_model(folder):
  inputs = keras.Input((10,))
  model_io.save_h5(keras.Model(inputs, keras.layers.Dense(3)(inputs)), str(folder / "v.h5"), {})
  return f"--model={folder / 'v.h5'}"


def _file(folder, name, content):
  (folder / name).write_bytes(content)
  return f"--model={folder / name}"


def _folder_with_empty_class(folder):
  (folder / "images" / "a").mkdir(parents=True)
  (folder / "images" / "a" / "x.png").write_bytes(b"not a png")
  return f"--target=dir:{folder / 'images'}"


CASES = {
    # name: (script, flags made from a scratch folder, message)
    "missing MNIST file": ("pretrain", lambda d: [f"--data_dir={d / 'nowhere'}"],
                           "MNIST file not found"),
    "unknown target": ("finetune", lambda d: ["--target=cifar10"], "unknown --target 'cifar10'"),
    "missing model": ("transfer", lambda d: [f"--model={d / 'none.h5'}"], "model not found"),
    "random bytes model": ("transfer", lambda d: [_file(d, "r.h5", os.urandom(3000))],
                           "not a valid HDF5"),
    "truncated model": ("finetune", lambda d: [_file(d, "t.h5", (d / "source.h5").read_bytes()[:5000])],
                        "cannot"),
    "model takes no images": ("transfer", lambda d: [_vector_model(d)],
                              "cannot take the target images"),
    "npz missing key": ("transfer", lambda d: [_npz(d, y_test=None)], "lacks key(s) y_test"),
    "npz x/y lengths": ("finetune", lambda d: [_npz(d, y_train=np.array([0, 1]))],
                        "x_train has 6 images but y_train has shape (2,)"),
    "npz NaN pixels": ("finetune", lambda d: [_npz(d, x_test=np.full((6, 28, 28), np.inf))],
                       "NaN or infinite"),
    "npz negative label": ("finetune", lambda d: [_npz(d, y_train=np.array([0, 1, -1, 0, 1, 2]))],
                           "non-negative"),
    "npz unseen test label": ("transfer", lambda d: [_npz(d, y_test=np.array([0, 1, 7, 0, 1, 2]))],
                              "never occur in y_train"),
    "npz empty split": ("finetune", lambda d: [_npz(d, x_test=np.zeros((0, 28, 28), np.uint8),
                                                    y_test=np.zeros(0, int))], "x_test is empty"),
    "unknown optimizer": ("finetune", lambda d: ["--optimizer=sgd"], "--optimizer"),
    "unknown strategy": ("pretrain", lambda d: ["--strategy=tpu"], "--strategy"),
    "unknown unfreeze": ("finetune", lambda d: ["--unfreeze=bottom"], "--unfreeze='bottom'"),
    "unknown layer name": ("finetune", lambda d: ["--unfreeze=features_conv9"], "features_conv9"),
    "missing target folder": ("finetune", lambda d: [f"--target=dir:{d / 'nowhere'}"],
                              "target folder not found"),
    "class folder without images": ("transfer", lambda d: [_folder_with_empty_class(d)],
                                    "holds no readable images"),
    "unknown target fit": ("transfer", lambda d: ["--target_fit=crop"], "--target_fit"),
    "zero train per class": ("finetune", lambda d: ["--train_per_class=0"],
                             "--train_per_class must be at least 1"),
    "head dropout of 1.5": ("finetune", lambda d: ["--head_dropout=1.5"], "--head_dropout"),
    "probe head with a hidden layer": ("finetune", lambda d: ["--head_init=probe",
                                                              "--head_units=8"], "--head_units=0"),
    "bad conv filters": ("pretrain", lambda d: ["--conv_filters=16,x"], "--conv_filters"),
    "validation split of 1": ("finetune", lambda d: ["--validation_split=1"],
                              "--validation_split must lie in [0, 1)"),
    "unwritable output": ("finetune", lambda d: [f"--output_dir={d / 'source.h5' / 'out'}"],
                          "cannot write to output folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, source_model, small_mnist_dir, tmp_path):
  script, make_flags, message = CASES[case]
  (tmp_path / "source.h5").write_bytes(open(source_model[0], "rb").read())
  output_dir = tmp_path / "out"
  flags = [f"--model={tmp_path / 'source.h5'}", f"--output_dir={output_dir}",
           f"--data_dir={small_mnist_dir}", *make_flags(tmp_path)]
  if script == "pretrain":
    flags = [f for f in flags if not f.startswith("--model")]
  result = run_command([f"scripts/{script}.py", *flags])
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert message in lines[0]
  assert not output_dir.exists() or not os.listdir(output_dir)
