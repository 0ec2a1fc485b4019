"""The stages' work called in one process (one TensorFlow import for many runs): pretrain a
source on a subset of MNIST, and finetune a source on a target with the flags a user would pass,
without writing the artefacts (SavedModel export) a bench does not read.

Import after `import_tf()`; every function here is what `tl-pretrain` / `tl-finetune` run.
"""

import os
import time
from typing import Any

import numpy as np


def import_tf():
  """TensorFlow as the CLI starts it (legacy Keras, quiet logs)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  import tensorflow as tf

  tf.get_logger().setLevel("ERROR")
  return tf


def pretrain(
  output_dir: str,
  data_dir: str,
  classes: str,
  conv_filters: str = "16,32",
  epochs: int = 2,
  max_images: int | None = 6000,
  augment: bool = False,
  seed: int = 1,
  random_weights: bool = False,
) -> dict[str, Any]:
  """A source model trained by the pretrain stage on a seeded draw of `max_images` MNIST
  training images of `classes` (all test images of them); `random_weights`: built, not trained.
  Returns {"path", "source_test_accuracy", "seconds"}."""
  from tl_keras import __version__
  from tl_keras.config import settings
  from tl_keras.data import mnist
  from tl_keras.models import networks
  from tl_keras.outputs import model_io
  from tl_keras.stages import pretrain as pretrain_stage

  start = time.perf_counter()
  data = mnist.mnist_subset(mnist.parse_classes(classes), data_dir)
  if max_images and len(data.y_train) > max_images:
    keep = np.sort(np.random.default_rng(seed).choice(len(data.y_train), max_images, False))
    data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
  path = os.path.join(output_dir, "source_model.h5")
  if random_weights:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = networks.build_source_model(
      (28, 28, 1), data.num_classes, networks.parse_conv_filters(conv_filters)
    )
    os.makedirs(output_dir, exist_ok=True)
    metadata = {
      **data.metadata(),
      "stage": "pretrain",
      "source_class_names": data.class_names,
      "framing": mnist.FRAMING,
      "tl_keras_version": __version__,
    }
    model_io.save_h5(model, path, metadata)
    return {"path": path, "source_test_accuracy": None, "seconds": time.perf_counter() - start}
  config = settings.make(
    settings.PretrainConfig,
    output_dir=output_dir,
    data_dir=data_dir,
    source_classes=classes,
    conv_filters=conv_filters,
    epochs=epochs,
    augment=augment,
    seed=seed,
  )
  metrics = pretrain_stage.run(config, datasets_override=data)
  return {
    "path": path,
    "source_test_accuracy": metrics["test_accuracy"],
    "seconds": time.perf_counter() - start,
  }


def target_data(source_path: str, target: str, data_dir: str, per_class: int, seed: int):
  """The target as `tl-finetune --target=TARGET --train_per_class=N --seed=S` prepares it for
  the source at `source_path`: (LabeledData, loaded source)."""
  from tl_keras.config import settings
  from tl_keras.data import targets
  from tl_keras.stages import base

  config = settings.make(
    settings.FinetuneConfig, model=source_path, target=target, train_per_class=per_class
  )
  source = base.load_source_of(config.load)
  data = targets.prepare_target(
    config.target, source.input_shape, data_dir, seed, source.framing, ""
  )
  return data, source


def finetune(
  source_path: str,
  target: str,
  data_dir: str,
  per_class: int,
  seed: int,
  output_dir: str,
  flags: dict[str, Any] | None = None,
  keep_model: bool = False,
  data=None,
) -> dict[str, Any]:
  """`tl-finetune --model=SOURCE --target=TARGET --train_per_class=N --seed=S` plus `flags`
  (setting name: value), trained as the stage trains (its data-dependent defaults), without
  the files. `data`: the prepared target (LabeledData) to train on instead (the seed then
  seeds the training only). Returns {"test_accuracy", "seconds", "defaults", "phases"} and, with
  `keep_model`, "classifier" (the TransferClassifier) and "data"."""
  from tl_keras import api
  from tl_keras.config import settings

  start = time.perf_counter()
  config = settings.make(
    settings.FinetuneConfig,
    model=source_path,
    target=target,
    train_per_class=per_class,
    seed=seed,
    output_dir=output_dir,
    data_dir=data_dir,
    **(flags or {}),
  )
  settings.validate(config)
  if data is None:
    data, source = target_data(source_path, target, data_dir, per_class, seed)
  else:
    source = target_data(source_path, target, data_dir, per_class, seed)[1]
  clf = api.TransferClassifier.from_source(
    source.model,
    data.class_names,
    unfreeze=config.finetune.unfreeze,
    seed=seed,
    features_layer=config.head.features_layer,
    source_path=source.path,
    metadata=source.metadata,
  )
  result = clf.fit_config(data, config)
  out = {
    "test_accuracy": result.test_accuracy,
    "seconds": time.perf_counter() - start,
    "defaults": result.defaults,
    "phases": result.phases,
  }
  if keep_model:
    out.update(classifier=clf, data=data)
  return out


def load() -> str:
  """The 1-, 5- and 15-minute load averages, as `uptime` prints them."""
  return " ".join(f"{value:.2f}" for value in os.getloadavg())
