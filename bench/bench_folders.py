#!/usr/bin/env python3
"""Peak memory of finetuning on a dir: image folder and on one ten times larger, same run.

Builds two folders of JPEG photos (3 classes, 160x160 RGB: a colour per class plus noise),
the second with ten times the images, and a small source CNN taking 128x128 RGB. Each folder is
finetuned for one epoch by scripts/finetune.py in a fresh process, streamed from its files
(`--image_cache=none`) and, as the reference, held in memory (`--image_cache=memory`, what
the loader did before streaming), once per seed. Reports each process's peak RSS and, per
mode and seed, the ratio large/small (target for streaming: below 1.2). Writes a JSON report.

  python bench/bench_folders.py [--images_per_class=100] [--seeds=1,2]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
CLASSES = ("red", "green", "blue")
INPUT_SIZE = 128

# Runs a command and prints the peak RSS of that child alone (KiB on Linux).
PEAK_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def write_folder(root, per_class, seed):
  """`per_class` noisy 160x160 JPEGs per class, each class a tint of its own colour."""
  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(seed)
  for label, name in enumerate(CLASSES):
    os.makedirs(os.path.join(root, name))
    for index in range(per_class):
      pixels = rng.integers(0, 160, (160, 160, 3))
      pixels[..., label] += 90
      Image.fromarray(pixels.astype(np.uint8)).save(
        os.path.join(root, name, f"{index}.jpg"), quality=90
      )


def write_source_model(path):
  """A small CNN on 128x128 RGB images, saved as .h5 (named as tl_keras's source CNN)."""
  from tl_keras.keras_api import keras

  layers = keras.layers
  inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
  x = layers.Conv2D(8, 3, strides=4, activation="relu", name="features_conv1")(inputs)
  x = layers.GlobalAveragePooling2D(name="features_pool")(x)
  outputs = layers.Dense(len(CLASSES), activation="softmax", name="classifier")(x)
  keras.Model(inputs, outputs).save(path, save_format="h5")


def finetune_peak(model, folder, image_cache, seed, output_dir):
  """(peak RSS MiB, wall seconds, finetune metrics) of one finetune process."""
  command = [
    sys.executable,
    "-c",
    PEAK_WRAPPER,
    sys.executable,
    "scripts/finetune.py",
    f"--model={model}",
    f"--target=dir:{folder}",
    f"--image_cache={image_cache}",
    f"--output_dir={output_dir}",
    f"--seed={seed}",
    "--epochs=1",
    "--batch_size=32",
    "--strategy=default",
  ]
  start = time.perf_counter()
  done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if done.returncode:
    sys.exit(f"finetune on {folder} ({image_cache}) failed:\n{done.stderr[-3000:]}")
  with open(os.path.join(output_dir, "finetune_metrics.json")) as f:
    metrics = json.load(f)
  return int(done.stdout.split()[-1]) / 1024, seconds, metrics


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images_per_class", type=int, default=100, help="in the small folder")
  parser.add_argument("--scale", type=int, default=10, help="the large folder has this many times")
  parser.add_argument("--seeds", default="1,2")
  parser.add_argument("--output", default=os.path.join(HERE, "results", "folders.json"))
  args = parser.parse_args()
  seeds = [int(seed) for seed in args.seeds.split(",")]
  runs = []
  with tempfile.TemporaryDirectory(prefix="bench_folders_") as work:
    model = os.path.join(work, "source.h5")
    write_source_model(model)
    folders = {
      "small": args.images_per_class,
      "large": args.images_per_class * args.scale,
    }
    for size, per_class in folders.items():
      write_folder(os.path.join(work, size), per_class, seed=0)
    for seed in seeds:
      for image_cache in ("none", "memory"):
        for size, per_class in folders.items():
          output_dir = os.path.join(work, f"out_{size}_{image_cache}_{seed}")
          peak, seconds, metrics = finetune_peak(
            model, os.path.join(work, size), image_cache, seed, output_dir
          )
          runs.append(
            {
              "folder": size,
              "images": per_class * len(CLASSES),
              "image_cache": image_cache,
              "seed": seed,
              "peak_rss_mib": round(peak, 1),
              "wall_seconds": round(seconds, 1),
              "test_accuracy": metrics["test_accuracy"],
            }
          )
          print(json.dumps(runs[-1]), flush=True)

  def ratios(image_cache):
    peaks = {
      (run["seed"], run["folder"]): run["peak_rss_mib"]
      for run in runs
      if run["image_cache"] == image_cache
    }
    return [round(peaks[seed, "large"] / peaks[seed, "small"], 3) for seed in seeds]

  streamed, held = ratios("none"), ratios("memory")
  report = {
    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    "fitted_image_bytes": INPUT_SIZE * INPUT_SIZE * 3 * 4,
    "runs": runs,
    "peak_ratio_large_to_small": {"streamed": streamed, "in_memory": held},
    "streamed_peak_ratio_median": statistics.median(streamed),
    "target_streamed_ratio_below": 1.2,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))
  print(
    f"\npeak RSS, {args.scale}x the images: streamed x{statistics.median(streamed):.3f}, "
    f"in memory x{statistics.median(held):.3f} (target: streamed below x1.2)"
  )


if __name__ == "__main__":
  main()
