"""Shared fixtures: small real-MNIST subsets, and two logical CPU devices for strategies."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

# A shell starts background jobs with SIGINT ignored, and child processes inherit that; the
# commands under test should see Ctrl-C as at a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)

# Two logical CPUs let MirroredStrategy run with two replicas on one CPU. Must happen before
# TensorFlow's runtime starts, hence at import.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tl_keras import artifacts
from tl_keras.config import settings
from tl_keras.data import mnist
from tl_keras.stages import pretrain

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA_DIR = os.path.join(REPO_ROOT, "..", "shared", "datasets")


def mnist_file():
  """The full mnist.npz: $TL_KERAS_DATA_DIR, else ../shared/datasets, else the Keras cache."""
  if os.environ.get(mnist.DATA_DIR_ENV) or not os.path.isdir(SHARED_DATA_DIR):
    return mnist.find_mnist_file()
  return mnist.find_mnist_file(SHARED_DATA_DIR)


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory):
  """A folder with a small mnist.npz: real MNIST, 600 train and 200 test images per digit."""
  with np.load(mnist_file()) as full:
    arrays = {}
    for split, per_class in (("train", 600), ("test", 200)):
      x, y = full[f"x_{split}"], full[f"y_{split}"]
      keep = np.concatenate([np.flatnonzero(y == digit)[:per_class] for digit in range(10)])
      keep.sort()
      arrays[f"x_{split}"], arrays[f"y_{split}"] = x[keep], y[keep]
  folder = tmp_path_factory.mktemp("small_mnist")
  np.savez(folder / mnist.MNIST_FILENAME, **arrays)
  return str(folder)


@pytest.fixture(scope="session")
def source_model(small_mnist_dir, tmp_path_factory):
  """A source model pretrained on digits 0-4 of the small MNIST: (path, metrics)."""
  output_dir = str(tmp_path_factory.mktemp("source"))
  config = settings.make(
    settings.PretrainConfig,
    data_dir=small_mnist_dir,
    output_dir=output_dir,
    epochs=4,
    strategy="default",
  )
  metrics = pretrain.run(config)
  return os.path.join(output_dir, artifacts.SOURCE_MODEL), metrics


def run_command(args, **kwargs):
  """Runs `python ARGS` (or an absolute-path program) in a fresh process from the repo root."""
  env = dict(os.environ, **kwargs.pop("env", {}))
  command = args if os.path.isabs(args[0]) else [sys.executable, *args]
  return subprocess.run(
    command,
    cwd=kwargs.pop("cwd", REPO_ROOT),
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    **kwargs,
  )


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def run_two_workers(model, data_dir, output_dir, tmp_path, flags):
  """Runs scripts/finetune.py with `flags` as two MultiWorkerMirroredStrategy workers on
  127.0.0.1, each with a TMPDIR of its own (tmp_path/tmp0, tmp1); their (stdout, stderr)."""
  cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
  workers = []
  for index in range(2):
    temp = tmp_path / f"tmp{index}"
    temp.mkdir()
    env = dict(
      os.environ,
      TMPDIR=str(temp),
      TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
    )
    workers.append(
      subprocess.Popen(
        [
          sys.executable,
          "scripts/finetune.py",
          "--strategy=multi_worker",
          f"--model={model}",
          f"--data_dir={data_dir}",
          f"--output_dir={output_dir}",
          *flags,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  outputs = [worker.communicate(timeout=600) for worker in workers]
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
  return outputs


@pytest.fixture(scope="session")
def target_model(source_model, small_mnist_dir, tmp_path_factory):
  """The source model finetuned on digits 5-9 of the small MNIST: (output_dir, metrics)."""
  from tl_keras.stages import finetune

  output_dir = tmp_path_factory.mktemp("target")
  config = settings.make(
    settings.FinetuneConfig,
    model=source_model[0],
    data_dir=small_mnist_dir,
    output_dir=str(output_dir),
    epochs=3,
    strategy="default",
  )
  return output_dir, finetune.run(config)


def write_image_folder(
  folder, images, labels, class_names, extensions=("png",), size=None, rgb=False
):
  """Saves uint8 [N,28,28] `images` as files in FOLDER/CLASS_NAME/, cycling through
  `extensions` (any Pillow writes: png, jpg, bmp, gif), resized to `size` and as RGB if asked."""
  from PIL import Image  # Pillow comes with matplotlib

  for index, (pixels, label) in enumerate(zip(images, labels)):
    class_dir = os.path.join(folder, class_names[label])
    os.makedirs(class_dir, exist_ok=True)
    image = Image.fromarray(pixels)
    if size:
      image = image.resize(size)
    if rgb:
      image = image.convert("RGB")
    image.save(os.path.join(class_dir, f"{index}.{extensions[index % len(extensions)]}"))
  return str(folder)


# Fixtures that train a model: tests using them belong to the slow tier.
_TRAINING_FIXTURES = {"source_model", "target_model"}


def pytest_collection_modifyitems(items):
  """The fast tier (`-m "not slow"`) leaves out tests that use a trained model."""
  for item in items:
    if _TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)


def assert_refused(result, output_dir, *fragments):
  """Exit 2, exactly one stderr line `error: ...` holding `fragments`, nothing written."""
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  assert not os.path.exists(output_dir) or not os.listdir(output_dir)
  return lines[0]
