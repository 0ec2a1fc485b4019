"""Tests for tl_keras.models: source CNN, target head, unfreezing, optimizers."""

import pytest

from tl_keras.config import settings
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.models import networks


@pytest.fixture
def source():
  return networks.build_source_model((28, 28, 1), 5)


def test_source_model_has_named_features_and_classifier(source):
  classifier = source.get_layer(networks.SOURCE_CLASSIFIER)
  assert classifier is source.layers[-1]
  assert classifier.activation is keras.activations.softmax
  assert all(
    layer.name.startswith(networks.FEATURE_PREFIX) for layer in networks.feature_layers(source)
  )
  assert source.output_shape == (None, 5)


def test_target_head_replaces_the_softmax_classifier(source):
  target = networks.build_target_model(source, 3)
  names = [layer.name for layer in target.layers]
  assert networks.SOURCE_CLASSIFIER not in names
  head = target.get_layer(networks.TARGET_CLASSIFIER)
  # The new head reads the source's penultimate features, never its softmax output.
  assert head.input is source.get_layer("features_dropout2").output
  assert target.output_shape == (None, 3)


def test_conv_filters_set_the_source_convolutions():
  model = networks.build_source_model((28, 28, 1), 5, networks.parse_conv_filters("8, 12,24"))
  assert [model.get_layer(f"features_conv{i}").filters for i in (1, 2, 3)] == [8, 12, 24]
  assert model.get_layer("features_flatten").output_shape == (None, 24)  # 28 -> 13 -> 5 -> 1


@pytest.mark.parametrize("spec", ["", "16,x", "0,32", "8,8,8,8", "-4"])
def test_conv_filters_rejects_bad_specs(spec):
  with pytest.raises(UserError, match="--conv_filters"):
    networks.parse_conv_filters(spec)


def test_probe_head_init_needs_the_classifier_on_the_features():
  settings.validate(settings.HeadSettings(head_init="probe"))
  with pytest.raises(UserError, match="--head_units=0"):
    settings.validate(settings.HeadSettings(head_init="probe", head_units=8))
  with pytest.raises(UserError, match="--head_init"):
    settings.validate(settings.HeadSettings(head_init="zeros"))


def _trainable_weighted(model):
  return [layer.name for layer in model.layers if layer.trainable and layer.weights]


@pytest.mark.parametrize(
  "unfreeze, expected",
  [
    ("none", ["target_classifier"]),
    ("all", ["features_conv1", "features_conv2", "features_dense", "target_classifier"]),
    ("last:1", ["features_dense", "target_classifier"]),
    ("last:2", ["features_conv2", "features_dense", "target_classifier"]),
    ("features_conv1, features_dense", ["features_conv1", "features_dense", "target_classifier"]),
  ],
)
def test_unfreeze(source, unfreeze, expected):
  assert _trainable_weighted(networks.build_target_model(source, 2, unfreeze)) == expected


@pytest.mark.parametrize("unfreeze", ["conv9", "last:x", "features_conv1,nope", ","])
def test_unfreeze_rejects_unknown_layers(source, unfreeze):
  with pytest.raises(UserError, match="--unfreeze"):
    networks.build_target_model(source, 2, unfreeze)


def test_optimizer_defaults():
  assert networks.make_optimizer("adadelta").learning_rate.numpy() == pytest.approx(1.0)
  assert networks.make_optimizer("adam").learning_rate.numpy() == pytest.approx(1e-3)
  assert networks.make_optimizer("adam", 0.01).learning_rate.numpy() == pytest.approx(0.01)
  with pytest.raises(UserError, match="unknown optimizer"):
    networks.make_optimizer("sgd")


def test_cosine_schedule_decays_from_the_default_peak_to_zero():
  optimizer = networks.make_optimizer("adam", lr_schedule="cosine", decay_steps=100)
  schedule = keras.optimizers.schedules.deserialize(optimizer.get_config()["learning_rate"])
  rates = [float(schedule(step)) for step in (0, 50, 100)]
  assert rates == pytest.approx([3e-3, 1.5e-3, 0.0], abs=1e-9)
  assert networks.learning_rate_for("adam", lr_schedule="cosine") == 3e-3
  assert networks.learning_rate_for("adam", 0.01, lr_schedule="cosine") == 0.01
  with pytest.raises(ValueError, match="number of steps"):
    networks.make_optimizer("adam", lr_schedule="cosine")
