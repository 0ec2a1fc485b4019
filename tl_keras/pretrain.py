"""Stage 1: train the source CNN on MNIST digits and save it as an .h5 file."""

import dataclasses
import os
import time
from typing import Any, Dict, Optional

import tensorflow as tf

import tl_keras
from tl_keras import data
from tl_keras import distribute
from tl_keras import model_io
from tl_keras import models
from tl_keras import plots
from tl_keras import training

SOURCE_MODEL_FILENAME = "source_model.h5"
METRICS_FILENAME = "source_metrics.json"
CURVES_FILENAME = "pretrain_curves.png"
MNIST_INPUT_SHAPE = (28, 28, 1)


@dataclasses.dataclass
class PretrainConfig(training.TrainSettings):
  source_classes: str = "0-4"
  epochs: int = 4
  conv_filters: str = ",".join(str(f) for f in models.DEFAULT_CONV_FILTERS)


def run(config: PretrainConfig, datasets_override: Optional[data.LabeledData] = None,
        strategy_override: Optional[tf.distribute.Strategy] = None) -> Dict[str, Any]:
  """Trains the source model; writes source_model.h5 and source_metrics.json. Returns metrics.

  `datasets_override` replaces the MNIST subset (tests pass small data); `strategy_override`
  replaces the strategy named by `config.strategy`.
  """
  start = time.perf_counter()
  config.validate()
  strategy = strategy_override or distribute.get_distribution_strategy(config.strategy)
  classes = data.parse_classes(config.source_classes)
  conv_filters = models.parse_conv_filters(config.conv_filters)
  output_dir = model_io.prepare_output_dir(config.output_dir)
  dataset = datasets_override or data.mnist_subset(classes, config.data_dir)

  model, metrics = training.fit_and_evaluate(
      lambda: models.build_source_model(MNIST_INPUT_SHAPE, dataset.num_classes,
                                         conv_filters),
      dataset, config, strategy, stage="pretrain")
  metrics["conv_filters"] = list(conv_filters)

  metadata = {**dataset.metadata(), "stage": "pretrain",
              "source_class_names": dataset.class_names, "tl_keras_version": tl_keras.__version__}
  with distribute.worker_output_dir(strategy, output_dir) as save_dir:
    artifacts = {"model": os.path.join(save_dir, SOURCE_MODEL_FILENAME),
                 "metrics": os.path.join(save_dir, METRICS_FILENAME)}
    model_io.save_h5(model, artifacts["model"], metadata)
    if distribute.is_chief(strategy):
      artifacts["plot"] = plots.plot_training_curves(
          metrics["history"], os.path.join(save_dir, CURVES_FILENAME),
          f"pretrain on {dataset.description}", first_epoch=metrics["resumed_from_epoch"] + 1)
      metrics["plots"] = [CURVES_FILENAME]
    artifacts["report"] = training.write_metrics(metrics, artifacts["metrics"], start,
                                                 distribute.is_chief(strategy))
  training.print_summary("pretrain", metrics, artifacts, strategy)
  return metrics
