"""The settings tree: unique names, what resume records, what report.md lists, validation."""

import math
import re

import pytest

from tl_keras.config import settings
from tl_keras.errors import UserError

_TRAINING = {
  "optimizer",
  "learning_rate",
  "lr_schedule",
  "epochs",
  "batch_size",
  "steps_per_epoch",
  "seed",
  "mixed_precision",
  "per_replica_batch_size",
  "augment",
  "validation_split",
  "patience",
  "class_weight",
  "label_smoothing",
  "average_weights_from_epoch",
}


@pytest.mark.parametrize("config_class", settings.COMMAND_CONFIGS)
def test_setting_names_are_unique(config_class):
  names = [field.name for _, field in settings.leaves(config_class())]
  assert len(names) == len(set(names))


def test_resume_records_the_same_settings_as_before():
  assert set(settings.recorded_on_resume(settings.PretrainConfig())) == _TRAINING | {
    "source_classes",
    "conv_filters",
  }
  assert set(settings.recorded_on_resume(settings.FinetuneConfig())) == _TRAINING | {
    "target",
    "target_fit",
    "test_split",
    "train_per_class",
    "features_layer",
    "head_units",
    "head_dropout",
    "head_l2",
    "head_init",
    "model",
    "unfreeze",
    "warmup_epochs",
    "finetune_learning_rate",
    "compare_scratch",
    "allow_unsafe_deserialization",
    "max_model_mb",
    "input_size",
    "unlabeled",
    "adapt",
    "source_data",
    "unlabeled_ratio",
    "confidence_threshold",
    "unlabeled_weight",
    "align_weight",
    "teacher",
    "teacher_decay",
    "selection",
  }


def test_report_lists_the_same_settings_as_before():
  assert settings.report_keys() == [
    "conv_filters",
    "optimizer",
    "learning_rate",
    "lr_schedule",
    "epochs",
    "warmup_epochs",
    "batch_size",
    "steps_per_epoch",
    "strategy",
    "unfreeze",
    "features_layer",
    "head_init",
    "augment",
    "class_weight",
    "label_smoothing",
    "adapt",
    "unlabeled",
    "validation_split",
    "target",
  ]


def test_stage_defaults():
  pretrain_config = settings.PretrainConfig()
  assert (pretrain_config.epochs, pretrain_config.train.lr_schedule) == (4, "constant")
  assert settings.FinetuneConfig().train.lr_schedule == "constant"
  # Finetune's epochs, batch and augmentation are chosen by the label count (see schedule).
  finetune_config = settings.FinetuneConfig()
  assert finetune_config.epochs is finetune_config.train.batch_size is None
  assert finetune_config.train.augment is None and finetune_config.head.head_init == "auto"
  assert settings.TransferConfig().batch_size == 1024
  pretrain, transfer, finetune = settings.make(
    settings.PipelineConfig,
    output_dir="out",
    pretrain_epochs=2,
    finetune_epochs=3,
    seed=7,
    features_layer="features_dense",
  ).stages()
  assert (pretrain.epochs, finetune.epochs) == (2, 3)
  assert (pretrain.train.batch_size, pretrain.train.augment) == (128, False)
  assert finetune.train.batch_size is None and finetune.adapt.adapt == "auto"
  assert transfer.load.model == finetune.load.model == "out/source_model.h5"
  assert transfer.seed == 7 and transfer.features_layer == "features_dense"


@pytest.mark.parametrize(
  "values, message",
  [
    ({"optimizer": "sgd"}, "unknown --optimizer='sgd': use one of adadelta, adam"),
    ({"learning_rate": math.nan}, "--learning_rate must be a number in (0, 10], got nan"),
    ({"head_dropout": 1.0}, "--head_dropout must be a number in [0, 1), got 1.0"),
    ({"head_init": "probe", "head_units": 8}, "needs --head_units=0"),
    ({"warmup_epochs": -1}, "--warmup_epochs must be a whole number from 0 to 10_000, got -1"),
    ({"train_per_class": 0}, "--train_per_class=0 leaves no labelled target images: give"),
    (
      {"train_per_class": 0, "unlabeled": "rest", "features_layer": "features_flatten"},
      "--train_per_class=0 (no target labels) starts the classifier from the source's",
    ),
    ({"unlabeled": "folder/x"}, "unknown --unlabeled='folder/x': use rest, dir:PATH"),
    ({"adapt": "align"}, "--adapt=align learns from unlabelled images: give --unlabeled"),
    ({"adapt": "fixmatch"}, "unknown --adapt='fixmatch': use one of auto, self_training"),
    ({"confidence_threshold": 0.0}, "--confidence_threshold must be a number in (0, 1]"),
  ],
)
def test_validate_names_the_flag(values, message):
  config = settings.make(settings.FinetuneConfig, **values)
  with pytest.raises(UserError, match=re.escape(message)):
    settings.validate(config)


def test_make_refuses_unknown_settings():
  with pytest.raises(TypeError, match="no setting epochz"):
    settings.make(settings.PretrainConfig, epochz=3)
