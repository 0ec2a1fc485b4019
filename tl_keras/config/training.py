"""The trainer's config (`training.trainer`): the groups every training stage has. A command's
config that trains (`commands`) extends it. No TensorFlow here."""

import dataclasses

from tl_keras.config.groups import PathSettings
from tl_keras.config.groups import RuntimeSettings
from tl_keras.config.groups import TrainSettings
from tl_keras.config.groups import _epochs
from tl_keras.config.schema import group


@dataclasses.dataclass
class TrainingConfig:
  """What every training stage has: paths, runtime, training settings and epochs."""

  paths: PathSettings = group(PathSettings)
  runtime: RuntimeSettings = group(RuntimeSettings)
  train: TrainSettings = group(TrainSettings)
  epochs: int = _epochs(3, "Training epochs.")
