"""Training shared by the pretrain and finetune stages: settings, fit, evaluation, summaries."""

import dataclasses
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

import tensorflow as tf

from tl_keras import data
from tl_keras import distribute
from tl_keras import models
from tl_keras.errors import UserError
from tl_keras.keras_api import keras


@dataclasses.dataclass
class TrainSettings:
  """Settings every training stage shares; the CLI flags of the same names fill them."""
  output_dir: str = "saved_models"
  data_dir: Optional[str] = None
  optimizer: str = "adam"
  learning_rate: Optional[float] = None  # None: the optimizer's default in models.py
  epochs: int = 3
  batch_size: int = 128
  seed: int = 42
  strategy: str = "auto"

  def validate(self) -> None:
    if self.epochs < 1:
      raise UserError(f"--epochs must be at least 1, got {self.epochs}")
    if self.batch_size < 1:
      raise UserError(f"--batch_size must be at least 1, got {self.batch_size}")
    models.make_optimizer(self.optimizer, self.learning_rate)  # raises on bad names/rates


def progress_verbosity() -> int:
  """Keras fit verbosity: a live progress bar on a terminal, one line per epoch otherwise."""
  return 1 if sys.stdout.isatty() else 2


def fit_and_evaluate(build_model: Callable[[], keras.Model], dataset: data.LabeledData,
                     settings: TrainSettings,
                     strategy: tf.distribute.Strategy) -> Tuple[keras.Model, Dict[str, Any]]:
  """Builds and compiles the model inside `strategy`'s scope, trains, and evaluates on test.

  Returns the trained model and the metrics shared by all training stages.
  """
  keras.utils.set_random_seed(settings.seed)
  with strategy.scope():
    model = build_model()
    models.compile_classifier(model, models.make_optimizer(settings.optimizer,
                                                           settings.learning_rate))
  input_shape = model.input_shape[1:]
  train = data.make_dataset(dataset.x_train, dataset.y_train, settings.batch_size, input_shape,
                            shuffle_seed=settings.seed)
  test = data.make_dataset(dataset.x_test, dataset.y_test, settings.batch_size, input_shape)
  start = time.perf_counter()
  history = model.fit(train, epochs=settings.epochs, verbose=progress_verbosity())
  train_seconds = time.perf_counter() - start
  _, test_accuracy = model.evaluate(test, verbose=0)
  return model, {
      "test_accuracy": float(test_accuracy),
      "train_seconds": round(train_seconds, 2),
      "train_images_per_second": round(settings.epochs * len(dataset.x_train) / train_seconds, 1),
      "epochs": settings.epochs,
      "num_train": int(len(dataset.x_train)),
      "num_test": int(len(dataset.x_test)),
      "classes": dataset.class_names,
      "history": {name: [round(float(v), 5) for v in values]
                  for name, values in history.history.items()},
      "optimizer": settings.optimizer,
      "learning_rate": float(model.optimizer.learning_rate.numpy()),
      "batch_size": settings.batch_size,
      "seed": settings.seed,
      "strategy": distribute.strategy_name(strategy),
      "num_replicas": strategy.num_replicas_in_sync,
  }


def print_summary(stage: str, metrics: Dict[str, Any], artifacts: Dict[str, str]) -> None:
  """Prints a short end-of-stage summary: key metrics and where the files went."""
  lines = [f"== {stage} done in {metrics['wall_seconds']:.1f} s =="]
  accuracy = metrics.get("test_accuracy")
  if accuracy is not None:
    lines.append(f"  test accuracy   {accuracy:.2%} on {metrics['num_test']} images")
  if "train_seconds" in metrics:
    lines.append(f"  training        {metrics['epochs']} epochs on {metrics['num_train']} images, "
                 f"{metrics['train_seconds']:.1f} s ({metrics['strategy']}, "
                 f"{metrics['num_replicas']} replica(s))")
  if "images_per_second" in metrics:
    lines.append(f"  inference       {metrics['images_per_second']:.0f} images/s, mean confidence "
                 f"{metrics['mean_confidence']:.2%}")
  lines.append(f"  classes         {', '.join(metrics['classes'])}")
  for name, path in artifacts.items():
    lines.append(f"  {name:<15} {path}")
  print("\n".join(lines), flush=True)
