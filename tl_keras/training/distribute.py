"""The one place that decides how training is distributed over devices and machines."""

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from tl_keras import interrupts
from tl_keras import untrusted
from tl_keras.config.choices import STRATEGIES
from tl_keras.errors import UserError

_TF_CONFIG_HELP = "see README 'Training on several machines'"
# A cluster of thousands of addresses fits in 1 MiB; TF_CONFIG nests 3 levels (cluster, job,
# addresses).
_MAX_TF_CONFIG_BYTES = 1 << 20
_MAX_TF_CONFIG_DEPTH = 8
_TASK_TYPES = ("chief", "worker")


def get_distribution_strategy(name: str = "auto") -> tf.distribute.Strategy:
  """Returns the tf.distribute strategy for `name`.

  auto: MirroredStrategy over all GPUs when there are several, OneDeviceStrategy on the GPU
  when there is one, else the default strategy (CPU). mirrored: all GPUs, or all logical CPU
  devices when there is no GPU. multi_worker: MultiWorkerMirroredStrategy configured by the
  TF_CONFIG environment variable; it must be created before any other TensorFlow op runs.
  """
  if name not in STRATEGIES:
    raise UserError(f"unknown --strategy={name!r}: use one of {', '.join(STRATEGIES)}")
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise UserError(
        "--strategy=multi_worker needs the TF_CONFIG environment variable "
        f"(cluster and task of this worker); {_TF_CONFIG_HELP}"
      )
    _check_own_port(check_tf_config(os.environ["TF_CONFIG"]))
    return tf.distribute.MultiWorkerMirroredStrategy()
  # Physical, not logical, devices: listing logical ones would start the runtime, after which
  # logical devices can no longer be configured.
  gpus = tf.config.list_physical_devices("GPU")
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "default"
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
  # mirrored: all GPUs, else every logical CPU device.
  devices = None if gpus else tuple(d.name for d in tf.config.list_logical_devices("CPU"))
  return _mirrored(devices)


@functools.cache
def _mirrored(devices: tuple[str, ...] | None) -> tf.distribute.MirroredStrategy:
  """One MirroredStrategy per device set and process: each new one numbers its collective
  ops from the same start over the same devices, and TF then matches one run's all-reduce
  with another's (seen here: "Shape mismatch in the collective instance 100" when a second
  strategy trained other weights first)."""
  return tf.distribute.MirroredStrategy(list(devices) if devices else None)


def check_devices(mixed_precision: bool = False) -> None:
  """Refuses what this machine cannot run: --mixed_precision without a GPU."""
  if mixed_precision and not tf.config.list_physical_devices("GPU"):
    raise UserError(
      "--mixed_precision needs a GPU: float16 on a CPU is slower, not faster; drop the flag here"
    )


def check_tf_config(text: str) -> dict[str, Any]:
  """Parses TF_CONFIG; a UserError unless it is a JSON object whose `cluster` maps job names
  ('chief', 'worker', ...) to lists of 'host:port' and whose `task` names a 'chief' or 'worker'
  job of it and an `index` into that job's list."""

  def refuse(problem):
    raise UserError(f"invalid TF_CONFIG for --strategy=multi_worker: {problem}; {_TF_CONFIG_HELP}")

  def short(value):
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."

  try:  # bounded in size and depth before json.loads (TensorFlow parses it again later)
    config = untrusted.parse_json(
      text, "TF_CONFIG", dict, _MAX_TF_CONFIG_BYTES, _MAX_TF_CONFIG_DEPTH
    )
  except UserError as e:
    refuse(f"{e} (a JSON object with 'cluster' and 'task' expected)")
  cluster, task = config.get("cluster"), config.get("task")
  if not isinstance(cluster, dict) or not cluster:
    refuse("'cluster' must map job names to lists of 'host:port' addresses")
  for job, addresses in cluster.items():
    if (
      not isinstance(addresses, list)
      or not addresses
      or not all(
        isinstance(a, str)
        and re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:.]+\]:\d{1,5}", a)
        and 0 < int(a.rsplit(":", 1)[1]) < 65536
        for a in addresses
      )
    ):
      refuse(
        f"cluster job {job!r} must be a non-empty list of 'host:port' addresses, got "
        f"{short(addresses)}"
      )
  if not isinstance(task, dict):
    refuse("'task' must be an object with this worker's 'type' and 'index'")
  task_type, index = task.get("type"), task.get("index")
  if task_type not in _TASK_TYPES or task_type not in cluster:
    jobs = " or ".join(repr(t) for t in _TASK_TYPES if t in cluster) or "'chief' or 'worker'"
    refuse(f"task type {short(task_type)} must be {jobs}, a job of the cluster")
  if (
    isinstance(index, bool)
    or not isinstance(index, int)
    or not 0 <= index < len(cluster[task_type])
  ):
    refuse(
      f"task index {short(index)} must be a whole number from 0 to "
      f"{len(cluster[task_type]) - 1} (the cluster has {len(cluster[task_type])} "
      f"{task_type!r} address(es))"
    )
  return config


def _check_own_port(config: dict[str, Any]) -> None:
  """Refuses a TF_CONFIG whose address for this task has a port another program listens on
  (TensorFlow would fail to start its server with an internal error)."""
  task = config["task"]
  address = config["cluster"][task["type"]][task["index"]]
  port = int(address.rsplit(":", 1)[1])
  with socket.socket(socket.AF_INET6 if address.startswith("[") else socket.AF_INET) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
    try:
      probe.bind(("", port))
    except OSError as e:
      raise UserError(
        f"TF_CONFIG gives this worker ({task['type']} {task['index']}) the address {address}, "
        f"but port {port} cannot be opened ({e.strerror}): free it or give another port; "
        f"{_TF_CONFIG_HELP}"
      ) from e


def global_batch_size(
  strategy: tf.distribute.Strategy, batch_size: int, per_replica_batch_size: int | None = None
) -> int:
  """The batch one training step takes over all replicas.

  `batch_size` is global (split over the replicas) unless `per_replica_batch_size` is given,
  which is multiplied by the number of replicas.
  """
  if per_replica_batch_size:
    return per_replica_batch_size * strategy.num_replicas_in_sync
  return batch_size


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True unless this process is a non-chief worker of a multi-worker cluster.

  The chief is task 'chief', or worker 0 in a cluster without one (TF_CONFIG conventions).
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  task_type = resolver.task_type if resolver else None
  if not task_type:
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return task_type == "chief" or (not has_chief and task_type == "worker" and resolver.task_id == 0)


_WORKER_DIR_PREFIX = "tl_keras_worker_"


@contextlib.contextmanager
def worker_output_dir(strategy: tf.distribute.Strategy, output_dir: str) -> Iterator[str]:
  """Yields `output_dir` on the chief and a temporary folder, removed afterwards, elsewhere.

  Every multi-worker replica must take part in saving a model, but only the chief's files
  are kept. A folder this function already made for this worker is yielded as it is, so a
  pipeline can keep one worker folder across its stages.
  """
  if is_chief(strategy) or os.path.basename(output_dir).startswith(_WORKER_DIR_PREFIX):
    yield output_dir
    return
  with interrupts.uninterrupted():
    temp = tempfile.mkdtemp(prefix=_WORKER_DIR_PREFIX)
    interrupts.track(temp)
  try:
    yield temp
  finally:
    shutil.rmtree(temp, ignore_errors=True)
    interrupts.untrack(temp)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
  """The strategy's public tf.distribute name, or 'default'."""
  # Not type(strategy).__name__: MultiWorkerMirroredStrategy's class is named
  # CollectiveAllReduceStrategy.
  for public, name in (
    (tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
    (tf.distribute.MirroredStrategy, "MirroredStrategy"),
    (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy"),
  ):
    if isinstance(strategy, public):
      return name
  return "default"
