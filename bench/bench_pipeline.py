#!/usr/bin/env python3
"""Times the default tl_keras pipeline against the classic Keras transfer recipe, same run.

The classic recipe (keras/examples/mnist_transfer_cnn.py): conv32-conv32 CNN, Adadelta lr=1.0,
batch 128, 5 epochs on digits 0-4, convolutions frozen, 5 epochs on digits 5-9. The default
pipeline runs twice: as `tl-pipeline` in one process, and as scripts/pretrain.py,
scripts/transfer.py and scripts/finetune.py in sequence (three fresh processes, one output
folder). All run as fresh processes on the same full MNIST, one after the other, so the wall
times include TensorFlow start-up, data loading and saving. Also measures the pipeline's peak
memory and inference throughput against a plain `model.predict`. Writes a JSON report and
prints both ratios to the classic recipe.

  python bench/bench_pipeline.py --data_dir=../shared/datasets
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

from common import parser_with_data_dir  # bench/common.py: on sys.path when run as a script
from common import timed

HERE = os.path.dirname(os.path.abspath(__file__))


def classic_recipe(data_dir):
  """Runs the classic recipe in this process; returns its accuracies and training times."""
  import numpy as np
  import tf_keras as keras

  keras.utils.set_random_seed(1)
  with np.load(os.path.join(data_dir, "mnist.npz")) as mnist:
    x_train, y_train, x_test, y_test = (
      mnist[k] for k in ("x_train", "y_train", "x_test", "y_test")
    )

  def subset(x, y, low):
    keep = (y >= low) & (y < low + 5)
    return x[keep][..., None].astype("float32") / 255.0, y[keep] - low

  layers = keras.layers
  feature_layers = [
    layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
    layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(2),
    layers.Dropout(0.25),
    layers.Flatten(),
  ]
  classification_layers = [
    layers.Dense(128, activation="relu"),
    layers.Dropout(0.5),
    layers.Dense(5, activation="softmax"),
  ]
  model = keras.Sequential(feature_layers + classification_layers)
  result = {}
  for stage, low in (("source", 0), ("target", 5)):
    if stage == "target":
      for layer in feature_layers:
        layer.trainable = False
    model.compile(
      keras.optimizers.Adadelta(learning_rate=1.0), "sparse_categorical_crossentropy", ["accuracy"]
    )
    x, y = subset(x_train, y_train, low)
    start = time.perf_counter()
    model.fit(x, y, batch_size=128, epochs=5, verbose=0)
    result[f"{stage}_train_seconds"] = round(time.perf_counter() - start, 2)
    result[f"{stage}_test_accuracy"] = float(
      model.evaluate(*subset(x_test, y_test, low), verbose=0)[1]
    )
  return result


def inference_speed(data_dir, model_path, repeats=3):
  """Images/s on MNIST 5-9 test: plain `model.predict` on NumPy floats vs `networks.predict`."""
  import numpy as np

  from tl_keras import loading
  from tl_keras.data import mnist
  from tl_keras.models import networks

  model = loading.load_model(model_path)
  images = mnist.mnist_subset(range(5, 10), data_dir).x_test
  floats = images[..., None].astype(np.float32) / 255.0

  def best(run):
    run()  # warm-up: tracing
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      run()
      seconds.append(time.perf_counter() - start)
    return round(len(images) / min(seconds), 1)

  plain = best(lambda: model.predict(floats, verbose=0))
  ours = best(lambda: networks.predict(model, images))
  return {
    "images": len(images),
    "plain_predict_images_per_second": plain,
    "tl_keras_predict_images_per_second": ours,
    "speedup": round(ours / plain, 2),
  }


def stage_scripts(output_dir, env):
  """The default pipeline as its three scripts in sequence: (wall seconds, each stage's)."""
  model = os.path.join(output_dir, "source_model.h5")
  stages = {}
  for script, flags in (
    ("pretrain", []),
    ("transfer", [f"--model={model}"]),
    ("finetune", [f"--model={model}"]),
  ):
    stages[script], _ = timed(
      [sys.executable, f"scripts/{script}.py", f"--output_dir={output_dir}", *flags], env
    )
  return sum(stages.values()), {stage: round(seconds, 2) for stage, seconds in stages.items()}


def spread(values):
  """Median, min and max of a list of numbers."""
  return {
    "median": round(statistics.median(values), 3),
    "min": round(min(values), 3),
    "max": round(max(values), 3),
  }


def one_repeat(args, env):
  """One run each of tl-pipeline, the three scripts in sequence and the classic recipe."""
  with tempfile.TemporaryDirectory() as output_dir:
    pipeline_seconds, _ = timed(
      [sys.executable, "scripts/pipeline.py", f"--output_dir={output_dir}"], env
    )
    # Only finished children count, so this is the largest peak of any process so far: the
    # first repeat's figure is the pipeline's own.
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ours = {
      stage: json.load(open(os.path.join(output_dir, f"{stage}_metrics.json")))
      for stage in ("source", "transfer", "finetune")
    }
    _, inference_out = timed(
      [
        sys.executable,
        __file__,
        f"--data_dir={args.data_dir}",
        f"--inference_only={os.path.join(output_dir, 'source_model.h5')}",
      ]
    )
    inference = json.loads(inference_out.strip().splitlines()[-1])
  with tempfile.TemporaryDirectory() as output_dir:
    scripts_seconds, scripts_stage_seconds = stage_scripts(output_dir, env)
    scripts = {
      stage: json.load(open(os.path.join(output_dir, f"{stage}_metrics.json")))
      for stage in ("source", "finetune")
    }
  classic_seconds, classic_out = timed(
    [sys.executable, __file__, "--classic_only", f"--data_dir={args.data_dir}"]
  )
  classic = json.loads(classic_out.strip().splitlines()[-1])
  return {
    "pipeline_seconds": round(pipeline_seconds, 2),
    "pipeline_source_test_accuracy": ours["source"]["test_accuracy"],
    "pipeline_target_test_accuracy": ours["finetune"]["test_accuracy"],
    "pipeline_stage_wall_seconds": {stage: ours[stage]["wall_seconds"] for stage in ours},
    "pipeline_train_seconds": {
      "pretrain": ours["source"]["train_seconds"],
      "finetune": ours["finetune"]["train_seconds"],
    },
    "transfer_images_per_second": ours["transfer"]["images_per_second"],
    "peak_memory_mib": round(peak_mib, 1),
    "scripts_seconds": round(scripts_seconds, 2),
    "scripts_process_wall_seconds": scripts_stage_seconds,
    "scripts_source_test_accuracy": scripts["source"]["test_accuracy"],
    "scripts_target_test_accuracy": scripts["finetune"]["test_accuracy"],
    "inference": inference,
    "classic_seconds": round(classic_seconds, 2),
    "classic": classic,
    "wall_time_ratio": round(pipeline_seconds / classic_seconds, 3),
    "scripts_wall_time_ratio": round(scripts_seconds / classic_seconds, 3),
  }


def main():
  parser = parser_with_data_dir(__doc__.split("\n\n")[0])
  parser.add_argument("--output", default=os.path.join(HERE, "results", "pipeline.json"))
  parser.add_argument("--classic_only", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--inference_only", help=argparse.SUPPRESS)
  parser.add_argument("--repeats", type=int, default=3, help="repeats of all three runs")
  args = parser.parse_args()
  load_before = os.getloadavg()
  if args.classic_only:
    print(json.dumps(classic_recipe(args.data_dir)))
    return
  if args.inference_only:
    print(json.dumps(inference_speed(args.data_dir, args.inference_only)))
    return

  env = dict(os.environ, TL_KERAS_DATA_DIR=args.data_dir)
  runs = [one_repeat(args, env) for _ in range(args.repeats)]
  report = {
    "machine": {
      "cpus": os.cpu_count(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "load_average_before": list(load_before),
      "load_average_after": list(os.getloadavg()),
    },
    "repeats": runs,
    "summary": {
      key: spread([run[key] for run in runs])
      for key in (
        "wall_time_ratio",
        "scripts_wall_time_ratio",
        "pipeline_seconds",
        "scripts_seconds",
        "classic_seconds",
      )
    },
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))
  summary = report["summary"]
  print(
    f"\n{args.repeats} repeats (load {load_before[0]:.2f} before): tl-pipeline / classic "
    f"{summary['wall_time_ratio']['median']:.3f} ({summary['wall_time_ratio']['min']:.3f}-"
    f"{summary['wall_time_ratio']['max']:.3f}); scripts in sequence / classic "
    f"{summary['scripts_wall_time_ratio']['median']:.3f} "
    f"({summary['scripts_wall_time_ratio']['min']:.3f}-"
    f"{summary['scripts_wall_time_ratio']['max']:.3f})"
  )


if __name__ == "__main__":
  main()
