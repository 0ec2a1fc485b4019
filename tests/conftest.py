"""Shared fixtures: small real-MNIST subsets, and two logical CPU devices for strategies."""

import fcntl
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time

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


def built_once(tmp_path_factory, name, build):
  """`build(folder)` run once per test session, across pytest-xdist's workers: the first
  worker builds in a fresh shared folder under a file lock and pickles the result, the others
  wait for it and read it. Tests must only read what is in the folder."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's folder, shared by its workers
  done = root / f"{name}.pickle"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if done.exists():
      return pickle.loads(done.read_bytes())
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)  # a build that failed on another worker
    folder.mkdir()
    value = build(folder)
    done.write_bytes(pickle.dumps(value))
    return value


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory):
  """A folder with a small mnist.npz: real MNIST, 600 train and 200 test images per digit."""

  def build(folder):
    with np.load(mnist_file()) as full:
      arrays = {}
      for split, per_class in (("train", 600), ("test", 200)):
        x, y = full[f"x_{split}"], full[f"y_{split}"]
        keep = np.concatenate([np.flatnonzero(y == digit)[:per_class] for digit in range(10)])
        keep.sort()
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x[keep], y[keep]
    np.savez(folder / mnist.MNIST_FILENAME, **arrays)
    return str(folder)

  return built_once(tmp_path_factory, "small_mnist", build)


@pytest.fixture(scope="session")
def source_model(small_mnist_dir, tmp_path_factory):
  """A source model pretrained on digits 0-4 of the small MNIST: (path, metrics)."""

  def build(folder):
    config = settings.make(
      settings.PretrainConfig,
      data_dir=small_mnist_dir,
      output_dir=str(folder),
      epochs=4,
      strategy="default",
    )
    metrics = pretrain.run(config)
    return str(folder / artifacts.SOURCE_MODEL), metrics

  return built_once(tmp_path_factory, "source", build)


# `python -c PEAK_WRAPPER COMMAND...` runs COMMAND, then prints "maxrss_kib N": the peak resident
# memory of COMMAND (the largest of the wrapper's children), and exits with COMMAND's code.
PEAK_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("maxrss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


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

  def build(folder):
    config = finetune_config(source_model[0], folder, data_dir=small_mnist_dir)
    return folder, finetune.run(config)

  return built_once(tmp_path_factory, "target", build)


@pytest.fixture(scope="session")
def mirrored_target(source_model, small_mnist_dir, tmp_path_factory):
  """The source model finetuned on digits 5-9 under MirroredStrategy over the two logical
  CPUs, 50 images per replica, 3 epochs: (output_dir, metrics). Trained once for the tests of
  the strategy and of the per-replica batch."""
  from tl_keras.stages import finetune

  def build(folder):
    config = finetune_config(
      source_model[0],
      folder,
      data_dir=small_mnist_dir,
      strategy="mirrored",
      per_replica_batch_size=50,
    )
    return folder, finetune.run(config)

  return built_once(tmp_path_factory, "mirrored_target", build)


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
_TRAINING_FIXTURES = {"source_model", "target_model", "mirrored_target"}


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


def first_digits(data_dir, train_per_class, test_per_class=0, spec="mnist:5-7"):
  """The first images of each class of `spec` (default the digits 5-7, labels 0-2):
  (x_train, y_train), and (x_test, y_test) after them when `test_per_class` is given."""
  from tl_keras.data import targets

  target = targets.load_target(spec, data_dir)
  classes = range(len(target.class_names))
  arrays = []
  for x, y, count in (
    (target.x_train, target.y_train, train_per_class),
    (target.x_test, target.y_test, test_per_class),
  ):
    if count:
      keep = np.concatenate([np.flatnonzero(y == c)[:count] for c in classes])
      arrays += [x[keep], y[keep]]
  return tuple(arrays)


def write_npz(path, **arrays):
  """An .npz target at `path` from x_train, y_train, x_test, y_test (by default six blank
  28x28 images of the classes 0, 1, 2 in each split; an array given as None is left out).
  Returns its target spec, `npz:PATH`."""
  x, y = np.zeros((6, 28, 28), np.uint8), np.array([0, 1, 2, 0, 1, 2])
  arrays = {**dict(x_train=x, y_train=y, x_test=x, y_test=y), **arrays}
  np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
  return f"npz:{path}"


def finetune_config(model, output_dir, **values):
  """A FinetuneConfig of a small test run: `model` to mnist:5-9 for 3 epochs with the default
  strategy, `values` over those."""
  values = {"target": "mnist:5-9", "epochs": 3, "strategy": "default", **values}
  return settings.make(settings.FinetuneConfig, model=model, output_dir=str(output_dir), **values)


def finetuned_members(model, data_dir, tmp_path_factory, runs):
  """The paths of models finetuned from `model` on digits 5-9 from 20 labels a class at batch
  32 (`finetune_config`'s run), one for each dict of setting values in `runs`."""
  from tl_keras.stages import finetune

  paths = []
  for values in runs:
    output_dir = tmp_path_factory.mktemp("member")
    values = {"train_per_class": 20, "batch_size": 32, **values}
    finetune.run(finetune_config(model, output_dir, data_dir=data_dir, **values))
    paths.append(str(output_dir / artifacts.TARGET_MODEL))
  return paths


def wait_for(condition, process, what, timeout=120):
  """Polls `condition` until it holds; fails if `process` ends first, or after `timeout`
  seconds (a guard against hanging, not a measurement)."""
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, f"ended before {what}"
    assert time.monotonic() < deadline, f"not {what} after {timeout} s"
    time.sleep(0.05)


def stop(process, sig, timeout=60):
  """Sends `sig` and returns the exit code. A process still running `timeout` seconds later
  is killed, so it reports -9 (SIGKILL), never -sig: only stopping on `sig` passes."""
  process.send_signal(sig)
  try:
    return process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    return process.wait()


def leftovers(folder):
  """Temporary files and folders of files.atomic_path (.NAME.*.tmp*) under `folder`."""
  found = []
  for root, dirs, files in os.walk(folder):
    found += [
      os.path.join(root, name) for name in dirs + files if name.startswith(".") and ".tmp" in name
    ]
  return found


def lambda_payload(marker):
  """The code a malicious model file would carry: a function that leaves `marker` when it
  runs (when a Lambda layer holding it is built or rebuilt) and returns its input."""
  return eval(f"lambda x: (open({str(marker)!r}, 'w').write('ran'), x)[1]")


def lambda_model(marker, input_shape=(28, 28, 1)):
  """A small Keras model with a Lambda layer running `lambda_payload(marker)`; building it
  runs the payload once."""
  from tl_keras.keras_api import keras

  inputs = keras.Input(input_shape)
  hidden = keras.layers.Lambda(lambda_payload(marker))(inputs)
  return keras.Model(inputs, keras.layers.Dense(2)(hidden))


def blobs(informative, seed=0, n=300, d=16):
  """Features of 3 classes: class-dependent means when `informative`, else pure noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n)
  features = rng.normal(size=(n, d))
  if informative:
    features[:, :3] += 4.0 * np.eye(3)[labels]
  return features, labels
