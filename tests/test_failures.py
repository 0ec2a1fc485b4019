"""Bad input on the command line: exit code 2, one line naming the problem, no traceback,
nothing written to the output folder."""

import os

import numpy as np
import pytest
from conftest import assert_refused
from conftest import run_command
from conftest import write_npz

from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import model_io


def _npz(folder, **changes):
  return f"--target={write_npz(folder / 'target.npz', **changes)}"


def _vector_model(folder):
  inputs = keras.Input((10,))
  model_io.save_h5(keras.Model(inputs, keras.layers.Dense(3)(inputs)), str(folder / "v.h5"), {})
  return f"--model={folder / 'v.h5'}"


def _file(folder, name, content):
  (folder / name).write_bytes(content)
  return f"--model={folder / name}"


def _classifier(folder, name, class_names, input_shape=(28, 28, 1), softmax=True):
  """A small untrained CNN saved as FOLDER/NAME with `class_names` in its metadata."""
  model = networks.build_source_model(input_shape, len(class_names))
  if not softmax:
    model.get_layer(networks.SOURCE_CLASSIFIER).activation = keras.activations.linear
  model_io.save_h5(model, str(folder / name), {"class_names": class_names})
  return str(folder / name)


def _fuse_with(folder, name, class_names, **options):
  """--models: the source model (digits 0-4) and a classifier named `name`."""
  other = _classifier(folder, name, class_names, **options)
  return [f"--models={folder / 'source.h5'},{other}", "--target=mnist:0-4"]


def _folder_without_images(folder):
  (folder / "unlabeled" / "deep" / "er").mkdir(parents=True)
  (folder / "unlabeled" / "deep" / "er" / "notes.txt").write_text("no images here")
  return folder / "unlabeled"


def _folder_with_empty_class(folder):
  (folder / "images" / "a").mkdir(parents=True)
  (folder / "images" / "a" / "x.png").write_bytes(b"not a png")
  return f"--target=dir:{folder / 'images'}"


CASES = {
  # name: (script, flags made from a scratch folder, message)
  "missing MNIST file": (
    "pretrain",
    lambda d: [f"--data_dir={d / 'nowhere'}"],
    "MNIST file not found",
  ),
  "unknown target": ("finetune", lambda d: ["--target=cifar10"], "unknown --target 'cifar10'"),
  "missing model": ("transfer", lambda d: [f"--model={d / 'none.h5'}"], "model not found"),
  "random bytes model": (
    "transfer",
    lambda d: [_file(d, "r.h5", os.urandom(3000))],
    "not a valid HDF5",
  ),
  "truncated model": (
    "finetune",
    lambda d: [_file(d, "t.h5", (d / "source.h5").read_bytes()[:5000])],
    "cannot",
  ),
  "model takes no images": (
    "transfer",
    lambda d: [_vector_model(d)],
    "cannot take the target images",
  ),
  "npz missing key": ("transfer", lambda d: [_npz(d, y_test=None)], "lacks key(s) y_test"),
  "npz x/y lengths": (
    "finetune",
    lambda d: [_npz(d, y_train=np.array([0, 1]))],
    "x_train has 6 images but y_train has shape (2,)",
  ),
  "npz NaN pixels": (
    "finetune",
    lambda d: [_npz(d, x_test=np.full((6, 28, 28), np.inf))],
    "NaN or infinite",
  ),
  "npz negative label": (
    "finetune",
    lambda d: [_npz(d, y_train=np.array([0, 1, -1, 0, 1, 2]))],
    "non-negative",
  ),
  "npz unseen test label": (
    "transfer",
    lambda d: [_npz(d, y_test=np.array([0, 1, 7, 0, 1, 2]))],
    "never occur in y_train",
  ),
  "npz empty split": (
    "finetune",
    lambda d: [_npz(d, x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, int))],
    "x_test is empty",
  ),
  "unknown optimizer": ("finetune", lambda d: ["--optimizer=sgd"], "--optimizer"),
  "unknown strategy": ("pretrain", lambda d: ["--strategy=tpu"], "--strategy"),
  "unknown unfreeze": ("finetune", lambda d: ["--unfreeze=bottom"], "--unfreeze='bottom'"),
  "unknown layer name": ("finetune", lambda d: ["--unfreeze=features_conv9"], "features_conv9"),
  "missing target folder": (
    "finetune",
    lambda d: [f"--target=dir:{d / 'nowhere'}"],
    "target folder not found",
  ),
  "class folder without images": (
    "transfer",
    lambda d: [_folder_with_empty_class(d)],
    "holds no readable images",
  ),
  "unknown target fit": ("transfer", lambda d: ["--target_fit=crop"], "--target_fit"),
  # tl-fuse: members must classify the same classes, take the same input and output probabilities.
  "fuse models of other classes": (
    "fuse",
    lambda d: _fuse_with(d, "letters.h5", ["a", "b", "c"]),
    "it classifies 3 classes (a, b, c), the first model 5 classes (0, 1, 2, 3, 4)",
  ),
  "fuse a missing model": (
    "fuse",
    lambda d: [f"--models={d / 'source.h5'},{d / 'none.h5'}", "--target=mnist:0-4"],
    "model not found",
  ),
  "fuse by an unknown method": (
    "fuse",
    lambda d: [f"--models={d / 'source.h5'},{d / 'source.h5'}", "--method=vote"],
    "--method=vote",
  ),
  "fuse one model": ("fuse", lambda d: [f"--models={d / 'source.h5'}"], "fuse 2 to 32"),
  "fuse models of other input shapes": (
    "fuse",
    lambda d: _fuse_with(d, "big.h5", list("01234"), input_shape=(32, 32, 1)),
    "it takes images of 32x32x1, the first model 28x28x1",
  ),
  "fuse models that output logits": (
    "fuse",
    lambda d: _fuse_with(d, "logits.h5", list("01234"), softmax=False),
    "not class probabilities",
  ),
  "fuse on a target of other classes": (
    "fuse",
    lambda d: [f"--models={d / 'source.h5'},{d / 'source.h5'}", "--target=mnist:5-9"],
    "but the models classify 5 classes (0, 1, 2, 3, 4)",
  ),
  # Unlabelled images and adaptation (#10).
  "zero train per class without unlabelled images": (
    "finetune",
    lambda d: ["--train_per_class=0"],
    "--train_per_class=0 leaves no labelled target images: give --unlabeled",
  ),
  "no labels and target classes the source lacks": (
    "finetune",
    lambda d: ["--train_per_class=0", "--unlabeled=rest"],  # the 0-4 source on 5-9
    "class(es) 5, 6, 7, 8, 9 are not classes of the source model",
  ),
  "unlabelled folder without images": (
    "finetune",
    lambda d: [f"--unlabeled=dir:{_folder_without_images(d)}", "--train_per_class=5"],
    "holds no readable images",
  ),
  "unknown adapt": ("finetune", lambda d: ["--adapt=mixmatch"], "--adapt"),
  "adapt without unlabelled images": (
    "pipeline",
    lambda d: ["--adapt=self_training"],
    "--adapt=self_training learns from unlabelled images: give --unlabeled",
  ),
  "head dropout of 1.5": ("finetune", lambda d: ["--head_dropout=1.5"], "--head_dropout"),
  "probe head with a hidden layer": (
    "finetune",
    lambda d: ["--head_init=probe", "--head_units=8"],
    "--head_units=0",
  ),
  "bad conv filters": ("pretrain", lambda d: ["--conv_filters=16,x"], "--conv_filters"),
  "validation split of 1": (
    "finetune",
    lambda d: ["--validation_split=1"],
    "--validation_split must be a number in [0, 1), got 1.0",
  ),
  "unwritable output": (
    "finetune",
    lambda d: [f"--output_dir={d / 'source.h5' / 'out'}"],
    "cannot write to output folder",
  ),
  # Numeric flags out of their range (tl_keras/settings.py), NaN and inf included.
  "negative seed": (
    "pretrain",
    lambda d: ["--seed=-1"],
    "--seed must be a whole number from 0 to 4_294_967_295, got -1",
  ),
  "seed beyond NumPy's": ("transfer", lambda d: [f"--seed={2**32}"], "--seed must be"),
  "huge batch": (
    "pretrain",
    lambda d: [f"--batch_size={10**12}"],
    "--batch_size must be a whole number from 1 to 65_536, got 1000000000000",
  ),
  "huge per-replica batch": (
    "finetune",
    lambda d: [f"--per_replica_batch_size={10**9}"],
    "--per_replica_batch_size must be",
  ),
  "NaN learning rate": (
    "pretrain",
    lambda d: ["--learning_rate=nan"],
    "--learning_rate must be a number in (0, 10], got nan",
  ),
  "inf learning rate": (
    "finetune",
    lambda d: ["--learning_rate=inf"],
    "--learning_rate must be a number in (0, 10], got inf",
  ),
  "zero learning rate": ("finetune", lambda d: ["--learning_rate=0"], "--learning_rate must be"),
  "NaN finetune learning rate": (
    "finetune",
    lambda d: ["--warmup_epochs=1", "--finetune_learning_rate=nan"],
    "--finetune_learning_rate must be a number in (0, 10]",
  ),
  "NaN head L2": (
    "finetune",
    lambda d: ["--head_l2=nan"],
    "--head_l2 must be a number in [0, 1], got nan",
  ),
  "inf head dropout": ("finetune", lambda d: ["--head_dropout=inf"], "--head_dropout must be"),
  "NaN validation split": (
    "pretrain",
    lambda d: ["--validation_split=nan"],
    "--validation_split must be",
  ),
  "NaN test split": (
    "transfer",
    lambda d: ["--test_split=nan"],
    "--test_split must be a number in (0, 1), got nan",
  ),
  "huge head": (
    "finetune",
    lambda d: [f"--head_units={10**8}"],
    "--head_units must be a whole number from 0 to 4_096, got 100000000",
  ),
  "huge convolution": (
    "pretrain",
    lambda d: ["--conv_filters=16,100000000"],
    "--conv_filters must be a whole number from 1 to 1_024, got 100000000",
  ),
  "negative epochs": (
    "pretrain",
    lambda d: ["--epochs=-1"],
    "--epochs must be a whole number from 1 to 10_000, got -1",
  ),
  "negative warmup": ("finetune", lambda d: ["--warmup_epochs=-1"], "--warmup_epochs must be"),
  "zero patience": ("pretrain", lambda d: ["--patience=0"], "--patience must be"),
  "negative train per class": (
    "transfer",
    lambda d: ["--train_per_class=-5"],
    "--train_per_class must be",
  ),
  "pipeline epochs": (
    "pipeline",
    lambda d: ["--finetune_epochs=0"],
    "--finetune_epochs must be a whole number from 1",
  ),
  # The pipeline checks the finetune settings before its pretrain stage writes anything.
  "pipeline head": ("pipeline", lambda d: ["--head_units=-1"], "--head_units must be"),
  # TFLite export and imbalance (#12).
  "unknown export format": (
    "export",
    lambda d: ["--formats=tflite,onnx"],
    "unknown --formats format 'onnx': use any of tflite, tflite_dynamic",
  ),
  "no export format": ("export", lambda d: ["--formats=,"], "--formats is empty"),
  "export on other classes": (
    "export",
    lambda d: [],  # the 0-4 source model on the default 5-9 target
    "classifies 0, 1, 2, 3, 4, but the target mnist:5,6,7,8,9 has classes 5, 6, 7, 8, 9",
  ),
  "no calibration images": (
    "export",
    lambda d: ["--representative_images=0"],
    "--representative_images must be a whole number from 1 to 10_000, got 0",
  ),
  "unknown finetune export format": (
    "finetune",
    lambda d: ["--export_formats=tflite_int4"],
    "unknown --export_formats format 'tflite_int4'",
  ),
  "pipeline export format": (
    "pipeline",
    lambda d: ["--export_formats=saved_model"],
    "unknown --export_formats format 'saved_model'",
  ),
  "unknown class weight": ("finetune", lambda d: ["--class_weight=inverse"], "--class_weight"),
  "label smoothing of 1": (
    "finetune",
    lambda d: ["--label_smoothing=1"],
    "--label_smoothing must be a number in [0, 1), got 1.0",
  ),
  "NaN label smoothing": ("pipeline", lambda d: ["--label_smoothing=nan"], "--label_smoothing"),
  "TF_CONFIG not JSON": (
    "finetune",
    lambda d: ["--strategy=multi_worker"],
    "invalid TF_CONFIG for --strategy=multi_worker: TF_CONFIG is not valid JSON",
    {"TF_CONFIG": "worker 0"},
  ),
  "TF_CONFIG of the wrong structure": (
    "pretrain",
    lambda d: ["--strategy=multi_worker"],
    "cluster job 'worker' must be a non-empty list of 'host:port' addresses",
    {
      "TF_CONFIG": '{"cluster": {"worker": "127.0.0.1:2222"}, '
      '"task": {"type": "worker", "index": 0}}'
    },
  ),
  "TF_CONFIG index out of range": (
    "pipeline",
    lambda d: ["--strategy=multi_worker"],
    "task index 2 must be a whole number from 0 to 1",
    {
      "TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, '
      '"task": {"type": "worker", "index": 2}}'
    },
  ),
}


# Refused while the flags are checked, before TensorFlow starts or any file is read: these run
# in the fast tier, with no trained model (test_bad_flag checks that TensorFlow stays out).
FLAG_CASES = (
  "unknown optimizer",
  "unknown strategy",
  "unknown target fit",
  "fuse by an unknown method",
  "fuse one model",
  "zero train per class without unlabelled images",
  "unknown adapt",
  "adapt without unlabelled images",
  "head dropout of 1.5",
  "probe head with a hidden layer",
  "validation split of 1",
  "negative seed",
  "seed beyond NumPy's",
  "huge batch",
  "huge per-replica batch",
  "NaN learning rate",
  "inf learning rate",
  "zero learning rate",
  "NaN finetune learning rate",
  "NaN head L2",
  "inf head dropout",
  "NaN validation split",
  "NaN test split",
  "huge head",
  "negative epochs",
  "negative warmup",
  "zero patience",
  "negative train per class",
  "pipeline epochs",
  "pipeline head",
  "unknown export format",
  "no export format",
  "no calibration images",
  "unknown finetune export format",
  "pipeline export format",
  "unknown class weight",
  "label smoothing of 1",
  "NaN label smoothing",
)


def _run_case(case, source_path, data_dir, tmp_path, *python_flags):
  """Runs CASES[case]'s script with its flags; (result, output folder)."""
  script, make_flags, _, *env = CASES[case]
  output_dir = tmp_path / "out"
  flags = [
    f"--model={source_path}",
    f"--output_dir={output_dir}",
    f"--data_dir={data_dir}",
    *make_flags(tmp_path),
  ]
  if script in ("pretrain", "pipeline", "fuse"):
    flags = [f for f in flags if not f.startswith("--model=")]
  command = [*python_flags, f"scripts/{script}.py", *flags]
  return run_command(command, env=env[0] if env else {}), output_dir


def test_flag_cases_are_cases():
  assert len(set(FLAG_CASES)) == len(FLAG_CASES) and set(FLAG_CASES) <= set(CASES)


@pytest.mark.parametrize("case", FLAG_CASES)
def test_bad_flag(case, tmp_path):
  # The model and data are never read: a placeholder file and a folder that does not exist.
  (tmp_path / "source.h5").write_bytes(b"not read")
  result, output_dir = _run_case(
    case, tmp_path / "source.h5", tmp_path / "no_data", tmp_path, "-X", "importtime"
  )
  lines = result.stderr.splitlines()
  imported = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
  assert "absl" in imported and not [name for name in imported if "tensorflow" in name]
  result.stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
  assert_refused(result, output_dir, CASES[case][2])


@pytest.mark.slow
@pytest.mark.parametrize("case", [case for case in CASES if case not in FLAG_CASES])
def test_bad_input(case, source_model, small_mnist_dir, tmp_path):
  (tmp_path / "source.h5").write_bytes(open(source_model[0], "rb").read())
  result, output_dir = _run_case(case, tmp_path / "source.h5", small_mnist_dir, tmp_path)
  assert_refused(result, output_dir, CASES[case][2])
