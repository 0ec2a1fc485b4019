"""Stage 1: train the source CNN on MNIST digits and save it as an .h5 file."""

import os
from typing import Any

import tensorflow as tf

from tl_keras import artifacts
from tl_keras.config import settings
from tl_keras.data import mnist
from tl_keras.data.labeled import LabeledData
from tl_keras.models import networks
from tl_keras.outputs import files
from tl_keras.outputs import model_io
from tl_keras.outputs import summary
from tl_keras.stages import base
from tl_keras.training import distribute
from tl_keras.training import trainer
from tl_keras.version import __version__

MNIST_INPUT_SHAPE = (28, 28, 1)


def run(
  config: settings.PretrainConfig,
  datasets_override: LabeledData | None = None,
  strategy_override: tf.distribute.Strategy | None = None,
) -> dict[str, Any]:
  """Trains the source model; writes source_model.h5 and source_metrics.json. Returns metrics.

  `datasets_override` replaces the MNIST subset (tests pass small data); `strategy_override`
  replaces the strategy named by `config.runtime.strategy`.
  """
  start = base.begin(config)
  strategy = base.strategy_for(config.runtime, strategy_override)
  classes = mnist.parse_classes(config.source.source_classes)
  conv_filters = networks.parse_conv_filters(config.source.conv_filters)
  output_dir = files.prepare_output_dir(config.paths.output_dir)
  dataset = datasets_override or mnist.mnist_subset(classes, config.paths.data_dir)

  model, result = trainer.fit_and_evaluate(
    lambda: networks.build_source_model(MNIST_INPUT_SHAPE, dataset.num_classes, conv_filters),
    dataset,
    config,
    strategy,
    stage="pretrain",
    log=summary.say,
    verbose=trainer.progress_verbosity(),
  )
  metrics = result.as_metrics()
  metrics["conv_filters"] = list(conv_filters)

  metadata = {
    **dataset.metadata(),
    "stage": "pretrain",
    "source_class_names": dataset.class_names,
    "framing": mnist.FRAMING,
    "tl_keras_version": __version__,
  }
  with distribute.worker_output_dir(strategy, output_dir) as save_dir:
    artifact_paths = {
      "model": os.path.join(save_dir, artifacts.SOURCE_MODEL),
      "metrics": os.path.join(save_dir, artifacts.METRICS["pretrain"]),
    }
    model_io.save_h5(model, artifact_paths["model"], metadata)
    if distribute.is_chief(strategy):
      from tl_keras.outputs import plots  # matplotlib

      artifact_paths["plot"] = plots.plot_training_curves(
        metrics["history"],
        os.path.join(save_dir, artifacts.PRETRAIN_CURVES),
        f"pretrain on {dataset.description}",
        first_epoch=metrics["resumed_from_epoch"] + 1,
      )
      metrics["plots"] = [artifacts.PRETRAIN_CURVES]
    artifact_paths["report"] = base.write_metrics(
      metrics, artifact_paths["metrics"], start, distribute.is_chief(strategy)
    )
  summary.print_summary("pretrain", metrics, artifact_paths, strategy)
  return metrics
