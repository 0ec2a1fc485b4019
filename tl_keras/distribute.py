"""The one place that decides how training is distributed over devices and machines."""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Optional

import tensorflow as tf

from tl_keras.errors import UserError

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")


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
      raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                      "(cluster and task of this worker); see README 'Training on several "
                      "machines'")
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
  devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
  return tf.distribute.MirroredStrategy(devices)


def global_batch_size(strategy: tf.distribute.Strategy, batch_size: int,
                      per_replica_batch_size: Optional[int] = None) -> int:
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
  temp = tempfile.mkdtemp(prefix=_WORKER_DIR_PREFIX)
  try:
    yield temp
  finally:
    shutil.rmtree(temp, ignore_errors=True)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
  """The strategy's public tf.distribute name, or 'default'."""
  # Not type(strategy).__name__: MultiWorkerMirroredStrategy's class is named
  # CollectiveAllReduceStrategy.
  for public, name in ((tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
                       (tf.distribute.MirroredStrategy, "MirroredStrategy"),
                       (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy")):
    if isinstance(strategy, public):
      return name
  return "default"
