"""The memory budget: every limit derives from it, and a model's activations are counted per
batch and inside layers (attention scores) before TensorFlow allocates them.

Payloads are tiny models the tests build; what they would allocate is computed, not allocated,
except where a child process shows the bound holds (its peak RSS).
"""

import json
import types

import numpy as np
import pytest
from conftest import run_command

from tl_keras import limits
from tl_keras import loading
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.loading import budgets
from tl_keras.models import networks
from tl_keras.outputs import model_io

MIB = limits.MIB


def _attention_model(tokens=4096, heads=8):
  """A 64x64 grey image read as `tokens` tokens through self-attention: every layer output is
  under 1 MiB per image; the scores inside are heads x tokens^2 (8 x 4096^2: 512 MiB)."""
  inputs = keras.Input((64, 64, 1))
  x = keras.layers.Reshape((tokens, 4096 // tokens))(inputs)
  x = keras.layers.Dense(4)(x)
  x = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=2)(x, x)
  x = keras.layers.GlobalAveragePooling1D()(x)
  return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def _wide_conv_model(filters=1024):
  """40 KB of weights whose 1x1 convolution outputs 64x64x`filters` floats per image (16 MiB
  at 1024): at 1024 images a batch, 4.3 * 10^9 elements, past TensorFlow's 2^31."""
  inputs = keras.Input((64, 64, 1))
  x = keras.layers.Conv2D(filters, 1)(inputs)
  x = keras.layers.GlobalMaxPooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_every_scaled_limit_derives_from_the_budget(monkeypatch):
  monkeypatch.delenv(limits.BUDGET_ENV, raising=False)
  assert limits.memory_budget_mb() == 1024
  defaults = {name: getattr(limits, name) for name in limits._SCALED}
  assert defaults["MAX_ACTIVATION_BYTES"] == 256 * MIB  # the README's figures
  assert defaults["MAX_FITTED_DATA_BYTES"] == 512 * MIB
  monkeypatch.setenv(limits.BUDGET_ENV, "4096")
  assert all(getattr(limits, name) == 4 * value for name, value in defaults.items())
  with limits.memory_budget(2048):
    assert limits.MAX_BATCH_ACTIVATION_BYTES == 2 * defaults["MAX_BATCH_ACTIVATION_BYTES"]
  for bad in ("lots", "-1", "100"):
    monkeypatch.setenv(limits.BUDGET_ENV, bad)
    with pytest.raises(UserError, match=limits.BUDGET_ENV):
      limits.memory_budget_mb()


def test_attention_scores_inside_a_layer_are_counted_and_refused(tmp_path):
  model = _attention_model()
  # Every output is small: the per-output check alone would pass this model.
  assert all(np.prod(layer.output_shape[1:]) * 4 < MIB for layer in model.layers[1:])
  with pytest.raises(UserError, match="multi_head_attention.*inside") as error:
    budgets.check_activations(model, "attention.h5")
  assert "TL_KERAS_MEMORY_BUDGET_MB" in str(error.value) and "\n" not in str(error.value)
  small = _attention_model(tokens=256)  # 8 x 256^2 scores: 4 MiB, loads
  assert budgets.check_activations(small, "small").largest >= 8 * 256**2


def test_attention_over_unknown_token_counts_is_refused():
  inputs = keras.Input((None, 8))
  x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=2)(inputs, inputs)
  model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(x))
  with pytest.raises(UserError, match="cannot be estimated"):
    budgets.check_activations(model, "unknown.h5")


def test_prediction_batches_fit_the_budget_and_tensorflows_element_limit():
  model = _wide_conv_model()
  batch = budgets.prediction_batch_size(model, 1024)
  costs = budgets.model_costs(model, "wide")
  assert 1 <= batch < 1024
  assert batch * costs.step * 4 <= limits.MAX_BATCH_ACTIVATION_BYTES
  with limits.memory_budget(1 << 22):  # 4 TiB: memory would allow 1024, TF's indexing not
    batch = budgets.prediction_batch_size(model, 1024)
    assert batch * costs.largest <= limits.MAX_TENSOR_ELEMENTS < 1024 * costs.largest
  # The default pipeline's source model keeps its batch of 1024 (speed unchanged).
  assert budgets.prediction_batch_size(networks.build_source_model((28, 28, 1), 10), 1024) == 1024


def test_training_that_cannot_fit_its_batch_is_refused_naming_both_flags():
  model = _wide_conv_model()
  budgets.check_training_batch(model, 16, "wide")  # 16 x 2 x 16 MiB fits 1024 MiB; 31 is the most
  with pytest.raises(UserError, match=r"--batch_size=1024") as error:
    budgets.check_training_batch(model, 1024, "wide")
  message = str(error.value)
  assert "TL_KERAS_MEMORY_BUDGET_MB" in message and "--batch_size=31 or less" in message
  assert "\n" not in message


_PREDICT = """
import sys
import numpy as np
sys.path.insert(0, "tests")
from test_budgets import _wide_conv_model
from tl_keras.models import networks
out = networks.predict(_wide_conv_model(), np.zeros((1024, 64, 64, 1), np.uint8))
print("OUTPUTS", out.shape)
print("PEAK_KB", [line.split()[1] for line in open("/proc/self/status")
                  if line.startswith("VmHWM")][0])
"""


@pytest.mark.slow
def test_a_wide_model_predicts_1024_images_within_the_budget():
  # Before: one batch of 1024 (4.3 * 10^9 elements, 16 GiB): a segfault or killed.
  result = run_command(["-c", _PREDICT])
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert "OUTPUTS (1024, 3)" in result.stdout
  peak_kb = int(result.stdout.split("PEAK_KB")[1])
  assert peak_kb < 2048 * 1024, f"peak {peak_kb >> 10} MiB"


def _transfer_with_peak(path, output_dir):
  """tl-transfer of the model at `path` in a fresh process that prints "PEAK_KB N", its peak
  resident memory (VmHWM), however it ends."""
  script = (
    "import sys\n"
    "from tl_keras import cli\n"
    f"sys.argv = ['tl-transfer', '--model={path}', '--output_dir={output_dir}']\n"
    "try:\n"
    "  cli.transfer_main()\n"
    "finally:\n"
    "  print('PEAK_KB', [l.split()[1] for l in open('/proc/self/status')\n"
    "                    if l.startswith('VmHWM')][0])\n"
  )
  return run_command(["-c", script])


@pytest.mark.slow
def test_an_attention_model_is_refused_in_one_line_by_the_cli(tmp_path):
  path = str(tmp_path / "attention.h5")
  model_io.save_h5(_attention_model(), path, {})  # the payload file; the CLI's process reads it
  result = _transfer_with_peak(path, tmp_path / "out")
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "inside" in lines[0] and "TL_KERAS_MEMORY_BUDGET_MB" in lines[0], lines
  assert int(result.stdout.split("PEAK_KB")[1]) < 2048 * 1024, result.stdout


def test_fused_members_are_bounded_in_total(tmp_path, monkeypatch):
  # The same file given 32 times, each load 8 MiB of weights: 256 MiB, above the 128 MiB a
  # 256 MiB budget allows; refused at the 17th member, having held 16 x 8 MiB.
  import tensorflow as tf

  from tl_keras.config import settings
  from tl_keras.stages import fuse

  class Member:
    model = types.SimpleNamespace(weights=[tf.zeros((2 * MIB,))])
    input_shape = (28, 28, 1)

    def class_names(self):
      return ["a", "b"]

  loaded = []
  monkeypatch.setattr(fuse.base, "load_source", lambda path, *args: loaded.append(path) or Member())
  path = tmp_path / "member.h5"
  path.write_bytes(b"")
  with limits.memory_budget(256), pytest.raises(UserError, match="fuse fewer models") as error:
    fuse._load_members([str(path)] * 32, settings.FuseSettings())
  assert len(loaded) == 17 and "\n" not in str(error.value)
  with limits.memory_budget(512):
    assert len(fuse._load_members([str(path)] * 32, settings.FuseSettings())[0]) == 32


def _separable_model(depth_multiplier, layer=keras.layers.SeparableConv2D, shape=(28, 28, 1)):
  """`layer` with 2 filters, kernel 3 on `shape`: its output is under 6 KB per image whatever
  `depth_multiplier`; inside, the depthwise result is positions x channels x depth_multiplier."""
  inputs = keras.Input(shape)
  x = layer(2, 3, depth_multiplier=depth_multiplier, name="conv")(inputs)
  x = keras.layers.Flatten()(x)
  return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_a_separable_convolutions_depthwise_intermediate_is_counted_and_refused():
  # The red-team payload's model: 26 x 26 x 400000 floats inside (1.08 GB), 5 KB out.
  model = _separable_model(400_000)
  assert all(np.prod(layer.output_shape[1:]) * 4 < MIB for layer in model.layers[1:])
  with pytest.raises(UserError, match=r"layer conv holds .* inside .*TL_KERAS_MEMORY") as error:
    budgets.check_activations(model, "sepconv.h5")
  assert "1,031 MiB" in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(UserError, match="layer conv holds"):  # 1D: 26 x 3 x 1_000_000
    budgets.check_activations(
      _separable_model(1_000_000, keras.layers.SeparableConv1D, (28, 3)), "sepconv1d.h5"
    )
  normal = _separable_model(4, shape=(28, 28, 3))  # 26 x 26 x 3 x 4 inside: loads
  assert budgets.check_activations(normal, "normal").largest == 26 * 26 * 3 * 4
  # A separable layer's step counts its input, output and intermediate: batches shrink.
  assert budgets.model_costs(_separable_model(20_000), "mid").step >= 26 * 26 * 20_000


def test_a_depthwise_convolutions_expansion_is_its_output_and_is_refused():
  def depthwise(depth_multiplier, layer=keras.layers.DepthwiseConv2D, shape=(28, 28, 1)):
    inputs = keras.Input(shape)
    x = layer(3, depth_multiplier=depth_multiplier, name="depthwise")(inputs)
    return keras.Model(
      inputs, keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((-1, x.shape[-1]))(x))
    )

  with pytest.raises(UserError, match="layer depthwise outputs"):
    budgets.check_activations(depthwise(400_000), "depthwise.h5")
  with pytest.raises(UserError, match="layer depthwise outputs"):
    budgets.check_activations(
      depthwise(1_000_000, keras.layers.DepthwiseConv1D, (28, 3)), "depthwise1d.h5"
    )
  assert budgets.check_activations(depthwise(8), "normal").largest == 26 * 26 * 8


def test_a_layer_whose_output_shape_is_unknown_is_refused():
  # RandomHeight's upper factor is unbounded: 28 rows may become 28 000 in training, and its
  # output (None, None, 28, 1) leaves it and every layer after it uncountable.
  inputs = keras.Input((28, 28, 1))
  x = keras.layers.RandomHeight((0.0, 1000.0), name="taller")(inputs)
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(512, 3)(x))
  with pytest.raises(UserError, match="output of layer taller cannot be estimated") as error:
    budgets.check_activations(keras.Model(inputs, x), "taller.h5")
  assert "\n" not in str(error.value)


def _write_sepconv_payload(path, depth):
  """The red-team builder's file: a separable model saved at depth 1, then its config set to
  ask for `depth` and its weights declared at that size in chunks never written, so the file
  stores about nothing of them."""
  import h5py

  model_io.save_h5(_separable_model(1), path, {"class_names": ["a", "b", "c"]})
  with h5py.File(path, "r+") as f:
    config = json.loads(f.attrs["model_config"])
    conv = next(layer for layer in config["config"]["layers"] if layer["name"] == "conv")
    conv["config"]["depth_multiplier"] = depth
    f.attrs["model_config"] = json.dumps(config)
    group = f["model_weights/conv/conv"]
    del group["depthwise_kernel:0"], group["pointwise_kernel:0"]
    chunk = min(depth, 4096)
    group.create_dataset("depthwise_kernel:0", (3, 3, 1, depth), "f4", chunks=(3, 3, 1, chunk))
    group.create_dataset("pointwise_kernel:0", (1, 1, depth, 2), "f4", chunks=(1, 1, chunk, 2))


@pytest.mark.slow
def test_the_separable_payload_is_refused_in_one_line_by_the_cli(tmp_path):
  # Before: tl-transfer grew past 4 GiB on this 37 KB file (red-team F4).
  path = str(tmp_path / "sepconv.h5")
  _write_sepconv_payload(path, 400_000)
  assert (tmp_path / "sepconv.h5").stat().st_size < 256 * 1024  # declares 17 MB of weights
  result = _transfer_with_peak(path, tmp_path / "out")
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "layer conv holds" in lines[0] and "inside" in lines[0], lines
  assert int(result.stdout.split("PEAK_KB")[1]) < 2048 * 1024, result.stdout
  # A normal separable model saved the same way still loads.
  _write_sepconv_payload(str(tmp_path / "normal.h5"), 4)
  assert len(loading.load_model(str(tmp_path / "normal.h5")).layers) == 4


@pytest.mark.slow
def test_finetune_refuses_a_batch_that_cannot_fit_before_training(
  source_model, small_mnist_dir, tmp_path
):
  from conftest import finetune_config

  from tl_keras.stages import finetune

  config = finetune_config(
    source_model[0], tmp_path / "out", data_dir=small_mnist_dir, batch_size=65_536
  )
  with pytest.raises(UserError, match=r"cannot train .* at --batch_size=65536: .*--batch_size="):
    finetune.run(config)
  assert not (tmp_path / "out" / "target_model.h5").exists()
  # The same run at a batch that fits trains.
  small = finetune_config(source_model[0], tmp_path / "ok", data_dir=small_mnist_dir, epochs=1)
  assert finetune.run(small)["epochs"] == 1
