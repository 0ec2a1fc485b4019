"""The exported SavedModel, used the way a serving client would: no tl_keras anywhere."""

import json
import os
import sys

import numpy as np
import pytest
from conftest import run_command

from tl_keras import artifacts
from tl_keras.data import targets
from tl_keras.outputs import model_io
from tl_keras.outputs import tflite


@pytest.fixture(scope="module")
def export_dir(target_model):
  return str(target_model[0] / artifacts.SAVED_MODEL_DIR)


@pytest.fixture(scope="module")
def target_test(small_mnist_dir):
  return targets.load_target("mnist:5-9", small_mnist_dir)


def _saved_model_cli(*args):
  # Installed with TensorFlow, beside this interpreter.
  tool = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  return run_command([tool, *args])


def test_saved_model_cli_show_names_the_signature(export_dir):
  result = _saved_model_cli("show", "--dir", export_dir, "--all")
  assert result.returncode == 0, result.stderr[-2000:]
  signature = result.stdout.split("signature_def['serving_default']")[1].split("signature_def[")[0]
  assert "inputs['images']" in signature and "dtype: DT_UINT8" in signature
  assert "outputs['probabilities']" in signature and "outputs['class_id']" in signature


def test_saved_model_cli_run_classifies_raw_pixels(export_dir, target_test, tmp_path):
  images = target_test.x_test[:8]
  np.save(tmp_path / "images.npy", images)  # [N,28,28] grey, uint8
  result = _saved_model_cli(
    "run",
    "--dir",
    export_dir,
    "--tag_set",
    "serve",
    "--signature_def",
    "serving_default",
    "--inputs",
    f"images={tmp_path / 'images.npy'}",
    "--outdir",
    str(tmp_path / "out"),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  class_id = np.load(tmp_path / "out" / "class_id.npy")
  assert class_id.shape == (8,)
  assert (class_id == target_test.y_test[:8]).mean() >= 0.75


def test_rest_request_shape_needs_nothing_from_tl_keras(export_dir, target_test, target_model):
  # TF Serving's REST row format: one nested list per image.
  request = json.dumps({"instances": target_test.x_test.tolist()})
  request_path = target_model[0].parent / "request.json"
  request_path.write_text(request)
  script = f"""
import json, sys, numpy as np, tensorflow as tf
serve = tf.saved_model.load({export_dir!r}).signatures["serving_default"]
instances = json.load(open({str(request_path)!r}))["instances"]
outputs = serve(images=tf.constant(instances, dtype=tf.uint8))
with open({os.path.join(export_dir, "assets", "class_names.txt")!r}) as f:
  names = f.read().split()
assert "tl_keras" not in sys.modules
print(json.dumps({{"predictions": [names[i] for i in outputs["class_id"].numpy()],
                  "rows": outputs["probabilities"].shape[0]}}))
"""
  result = run_command(["-c", script])
  assert result.returncode == 0, result.stderr[-2000:]
  response = json.loads(result.stdout.strip().splitlines()[-1])
  assert response["rows"] == len(target_test.x_test)
  truth = [target_test.class_names[y] for y in target_test.y_test]
  accuracy = np.mean([p == t for p, t in zip(response["predictions"], truth)])
  assert accuracy == pytest.approx(target_model[1]["test_accuracy"], abs=1e-6)


def test_signature_takes_grey_batches_with_or_without_channel_axis(export_dir, target_test):
  import tensorflow as tf

  serve = tf.saved_model.load(export_dir).signatures["serving_default"]
  images = target_test.x_test[:4]
  without_axis = serve(images=tf.constant(images))["probabilities"].numpy()
  with_axis = serve(images=tf.constant(images[..., None]))["probabilities"].numpy()
  np.testing.assert_allclose(without_axis, with_axis, atol=1e-6)
  # Wrong size: refused, not silently resized.
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
    serve(images=tf.zeros([1, 32, 32, 1], tf.uint8))


@pytest.mark.slow
def test_fixed_rank_signature_converts_to_tflite(export_dir, target_test):
  import tensorflow as tf

  loaded = tf.saved_model.load(export_dir)
  fixed = loaded.signatures[model_io.FIXED_RANK_SIGNATURE]
  assert fixed.structured_input_signature[1]["images"].shape.as_list() == [None, 28, 28, 1]
  images = target_test.x_test[:16]
  expected = loaded.signatures["serving_default"](images=tf.constant(images))
  got = fixed(images=tf.constant(images[..., None]))
  np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-6)
  assert fixed(images=tf.zeros([0, 28, 28, 1], tf.uint8))["class_id"].shape == (0,)
  # The signature the issue asks for: TFLite's converter takes it as it is.
  converter = tf.lite.TFLiteConverter.from_saved_model(
    export_dir, signature_keys=[model_io.FIXED_RANK_SIGNATURE]
  )
  content = converter.convert()
  interpreter_class, _ = tflite.interpreter_class()
  runner = interpreter_class(model_content=content).get_signature_runner(
    model_io.FIXED_RANK_SIGNATURE
  )
  outputs = runner(images=images[..., None])
  np.testing.assert_array_equal(outputs["class_id"], expected["class_id"].numpy())
  assert runner(images=np.zeros([0, 28, 28, 1], np.uint8))["probabilities"].shape == (0, 5)
