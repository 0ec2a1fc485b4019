"""TFLite files of a trained model, each evaluated on the target's test set with the interpreter.

Every file takes raw uint8 pixels [N,H,W,C] at the model's input size, as the SavedModel's
serving signatures do: preprocessing is inside the converted graph. Formats
(`settings.EXPORT_FORMATS`):

- `tflite`: float32; `tflite_dynamic`: weights stored as int8, computed in float
  (dynamic-range quantisation); `tflite_float16`: weights stored as float16;
- `tflite_int8`: full integer: int8 weights and activations, uint8 input (raw pixels: scale 1,
  zero point 0) and uint8 output (probabilities, scale 1/256), value ranges calibrated on
  training images of the target.

The class names go beside the files in labels.txt, one per line in output order.
"""

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import artifacts
from tl_keras.data.labeled import LabeledData
from tl_keras.data.preprocessing import preprocess_images
from tl_keras.errors import native_stderr_captured
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs.files import atomic_path

EVALUATION_BATCH = 256
LATENCY_IMAGES = 200  # single-image invocations timed per file, after LATENCY_WARMUP,
LATENCY_WARMUP = 10  # on the first EVALUATION_BATCH test images


def interpreter_class():
  """(Interpreter class, its name): ai-edge-litert's, else TensorFlow's tf.lite one."""
  try:
    from ai_edge_litert import interpreter as litert

    return litert.Interpreter, "ai_edge_litert"
  except ImportError:  # ai-edge-litert is a dependency, but has no wheel for every platform
    return tf.lite.Interpreter, "tf.lite"


def as_pixels(images: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
  """`images` as uint8 pixels [N,H,W,C]: float images in [0, 1] (targets fitted to the model's
  size) are scaled back to 0-255."""
  if images.dtype != np.uint8:
    images = np.clip(np.rint(np.asarray(images, np.float32) * 255), 0, 255).astype(np.uint8)
  return images.reshape((len(images), *input_shape))


def _representative_images(
  target: LabeledData, input_shape: Sequence[int], count: int, seed: int
) -> np.ndarray:
  """`count` training images drawn at random, as float32 pixels 0-255. The first has its
  contrast stretched to exactly 0-255, so the calibrated input range is 0-255 and the int8
  file's uint8 input takes raw pixels (scale 1, zero point 0)."""
  rng = np.random.default_rng(seed)
  chosen = rng.permutation(len(target.x_train))[:count]
  images = as_pixels(target.x_train[np.sort(chosen)], input_shape).astype(np.float32)
  first = images[0]
  span = float(first.max() - first.min())
  if span:
    images[0] = (first - first.min()) * (255.0 / span)
  else:  # a blank image: black with one white pixel
    images[0] = 0.0
    images[0].flat[-1] = 255.0
  return images


def convert(model: keras.Model, fmt: str, representative: np.ndarray | None = None) -> bytes:
  """The TFLite flatbuffer of `model` in format `fmt`, preprocessing included.

  `representative`: float32 pixels 0-255 [N,H,W,C] that calibrate tflite_int8.
  """
  input_shape = tuple(model.input_shape[1:])
  if fmt == "tflite_int8":
    # Float pixels 0-255 in the graph; the converter turns that input into uint8 with scale 1.
    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name="images")])
    def serve(images):
      return {
        "probabilities": model(preprocess_images(images / 255.0, input_shape), training=False)
      }

  else:

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name="images")])
    def serve(images):
      return {"probabilities": model(preprocess_images(images, input_shape), training=False)}

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
    [serve.get_concrete_function()], model
  )
  if fmt != "tflite":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if fmt == "tflite_float16":
    converter.target_spec.supported_types = [tf.float16]
  elif fmt == "tflite_int8":

    def calibration():
      for image in representative:
        yield [image[np.newaxis]]

    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
  content = converter.convert()
  if fmt == "tflite_int8":
    scale, zero_point = _interpreter(content).get_input_details()[0]["quantization"]
    if (scale, zero_point) != (1.0, 0):
      raise RuntimeError(
        f"the int8 file's input has scale {scale} and zero point {zero_point}, not raw pixels"
      )
  return content


def _interpreter(content: bytes, num_threads: int | None = None):
  interpreter, _ = interpreter_class()
  return interpreter(model_content=content, num_threads=num_threads)


class _Classifier:
  """A TFLite file in the interpreter: class probabilities (float32 [N,k]) of uint8 pixel
  batches [N,H,W,C], the input resized to each batch size it gets."""

  def __init__(self, content: bytes):
    self.interpreter = _interpreter(content)
    self.input = self.interpreter.get_input_details()[0]
    self.output = self.interpreter.get_output_details()[0]
    self.allocated = None

  def __call__(self, pixels: np.ndarray) -> np.ndarray:
    if len(pixels) != self.allocated:
      self.interpreter.resize_tensor_input(self.input["index"], pixels.shape)
      self.interpreter.allocate_tensors()
      self.allocated = len(pixels)
    self.interpreter.set_tensor(self.input["index"], pixels.astype(self.input["dtype"]))
    self.interpreter.invoke()
    output = self.interpreter.get_tensor(self.output["index"]).astype(np.float32)
    scale, zero_point = self.output["quantization"]
    return (output - zero_point) * scale if scale else output


def _pixel_batches(images, input_shape: Sequence[int]):
  """uint8 pixel batches of an image array or `ImageFiles`, read a batch at a time."""
  for start in range(0, len(images), EVALUATION_BATCH):
    yield as_pixels(
      images[np.arange(start, min(start + EVALUATION_BATCH, len(images)))], input_shape
    )


def latency_ms(content: bytes, pixels: np.ndarray) -> float:
  """Median milliseconds of one single-image invocation on one thread, over up to
  LATENCY_IMAGES test images after LATENCY_WARMUP."""
  interpreter = _interpreter(content, num_threads=1)
  input_details = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(input_details["index"], [1, *pixels.shape[1:]])
  interpreter.allocate_tensors()
  images = pixels[: LATENCY_IMAGES + LATENCY_WARMUP].astype(input_details["dtype"])
  times = []
  for index, image in enumerate(images):
    interpreter.set_tensor(input_details["index"], image[np.newaxis])
    start = time.perf_counter()
    interpreter.invoke()
    if index >= min(LATENCY_WARMUP, len(images) - 1):
      times.append(time.perf_counter() - start)
  return round(float(np.median(times)) * 1000, 4)


def tensor_types(content: bytes) -> list[str]:
  """The dtypes of all tensors of a TFLite file (weights, activations, inputs, outputs)."""
  return sorted({np.dtype(t["dtype"]).name for t in _interpreter(content).get_tensor_details()})


def export_and_evaluate(
  model: keras.Model,
  target: LabeledData,
  formats: Sequence[str],
  output_dir: str,
  class_names: Sequence[str],
  representative_images: int = 300,
  seed: int = 42,
) -> dict[str, Any]:
  """Converts `model` to each of `formats`, evaluates each file on the target's test set with
  the interpreter, then writes the files (artifacts.TFLITE_FILES) and labels.txt into
  `output_dir`; nothing is written if a conversion fails. Returns the metrics: the Keras
  model's test accuracy and, under `formats`, each file's test accuracy (and its change from
  the Keras model's), agreement with the Keras model's predictions, size and latency."""
  input_shape = tuple(model.input_shape[1:])
  # The test images as loaded (the Keras model's accuracy as finetune reports it); the TFLite
  # files get them as uint8 pixels, read a batch at a time (ImageFiles stream from disk).
  keras_predicted = networks.predict(model, target.x_test).argmax(axis=1)
  representative = None
  if "tflite_int8" in formats:
    representative = _representative_images(target, input_shape, representative_images, seed)
  _, interpreter_name = interpreter_class()
  contents, convert_seconds = _convert_all(model, formats, representative)
  results = _evaluate_all(contents, target, input_shape, keras_predicted, convert_seconds)
  _write_files(contents, class_names, output_dir)
  keras_accuracy = float((keras_predicted == target.y_test).mean())
  for result in results.values():
    result["accuracy_change"] = round(result["test_accuracy"] - keras_accuracy, 6)
  if "tflite" in results:
    for result in results.values():
      result["times_smaller_than_float32"] = round(
        results["tflite"]["size_bytes"] / result["size_bytes"], 3
      )
  return {
    "keras_test_accuracy": keras_accuracy,
    "formats": results,
    "labels": artifacts.TFLITE_LABELS,
    "interpreter": interpreter_name,
    "representative_images": len(representative) if representative is not None else 0,
    "num_test": int(len(target.x_test)),
    "classes": list(class_names),
  }


def _convert_all(model: keras.Model, formats: Sequence[str], representative):
  """({format: the converted file's bytes}, {format: seconds the conversion took})."""
  contents, convert_seconds = {}, {}
  # The converter's and interpreter's native messages ("fully_quantize: 0, ...", "Created
  # TensorFlow Lite XNNPACK delegate for CPU.") are held back unless something fails.
  for fmt in formats:
    print(f"export: converting to {fmt}", flush=True)
    start = time.perf_counter()
    with native_stderr_captured():
      contents[fmt] = convert(model, fmt, representative)
    convert_seconds[fmt] = round(time.perf_counter() - start, 2)
  return contents, convert_seconds


def _evaluate_all(
  contents: dict[str, bytes], target: LabeledData, input_shape, keras_predicted, convert_seconds
) -> dict[str, dict[str, Any]]:
  """{format: its file's test accuracy, agreement with the Keras model's predictions, size,
  latency, conversion time and tensor types}, each file run by the interpreter."""
  print(f"export: evaluating on {len(target.x_test)} test images", flush=True)
  predicted = {fmt: [] for fmt in contents}
  with native_stderr_captured():
    classifiers = {fmt: _Classifier(content) for fmt, content in contents.items()}
    first = None
    for pixels in _pixel_batches(target.x_test, input_shape):
      first = pixels if first is None else first
      for fmt, classify in classifiers.items():
        predicted[fmt].append(classify(pixels).argmax(axis=1))
    latencies = {fmt: latency_ms(content, first) for fmt, content in contents.items()}
    types = {fmt: tensor_types(content) for fmt, content in contents.items()}
  results = {}
  for fmt, content in contents.items():
    labels = np.concatenate(predicted[fmt])
    results[fmt] = {
      "file": artifacts.TFLITE_FILES[fmt],
      "size_bytes": len(content),
      "test_accuracy": float((labels == target.y_test).mean()),
      "agreement_with_keras": float((labels == keras_predicted).mean()),
      "latency_ms": latencies[fmt],
      "convert_seconds": convert_seconds[fmt],
      "tensor_types": types[fmt],
    }
  return results


def _write_files(contents: dict[str, bytes], class_names: Sequence[str], output_dir: str) -> None:
  """Writes each converted file and labels.txt into `output_dir`, each atomically."""
  for fmt, content in contents.items():
    with atomic_path(os.path.join(output_dir, artifacts.TFLITE_FILES[fmt])) as temp:
      with open(temp, "wb") as f:
        f.write(content)
  with atomic_path(os.path.join(output_dir, artifacts.TFLITE_LABELS)) as temp:
    with open(temp, "w") as f:
      f.write("".join(f"{name}\n" for name in class_names))


def print_summary(metrics: dict[str, Any], paths: dict[str, str]) -> None:
  """Prints a table of the exported files and where the files went."""
  lines = [
    f"== export done in {metrics['wall_seconds']:.1f} s: Keras model "
    f"{metrics['keras_test_accuracy']:.2%} on {metrics['num_test']} test images ==",
    f"  {'format':<15} {'size':>10} {'accuracy':>9} {'vs Keras':>9} {'latency':>10}",
  ]
  for fmt, result in metrics["formats"].items():
    lines.append(
      f"  {fmt:<15} {result['size_bytes'] / 1024:>6.0f} KiB {result['test_accuracy']:>9.2%} "
      f"{result['accuracy_change'] * 100:>+6.2f} pt {result['latency_ms']:>7.3f} ms"
    )
  lines += [f"  {name:<15} {path}" for name, path in paths.items()]
  print("\n".join(lines), flush=True)
