"""`TransferClassifier` is a Keras model: built from constructor arguments, trained by
`compile()` then `fit(x, y)`, its config and saved file round-trip, the caller's source model
untouched."""

import numpy as np
import pytest

from tl_keras import api
from tl_keras import loading
from tl_keras.keras_api import keras
from tl_keras.models import classifier
from tl_keras.models import networks


def _source():
  return networks.build_source_model((28, 28, 1), 5)


def _blobs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Raw uint8 images [N, 28, 28]: noise, and a bright square top left (class 0) or bottom
  right (class 1)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, count)
  images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
  for image, label in zip(images, labels):
    corner = slice(3, 12) if label == 0 else slice(16, 25)
    image[corner, corner] = 255
  return images, labels


def test_a_classifier_is_a_keras_model_built_from_its_arguments():
  backbone = classifier.backbone_of(_source())
  model = classifier.TransferClassifier(backbone, ["a", "b", "c"], head_units=16)
  assert isinstance(model, keras.Model)
  assert isinstance(api.TransferClassifier.from_source(_source(), ["a", "b"]), keras.Model)
  assert model.output_shape == (None, 3)
  assert [layer.name for layer in model.head] == ["target_head_dense", "target_classifier"]
  assert model.backbone.output_shape == backbone.output_shape
  # Compiled with working defaults.
  assert isinstance(model.optimizer, keras.optimizers.Adam)
  assert model.loss == "sparse_categorical_crossentropy"


@pytest.mark.slow
def test_compile_then_fit_trains_on_raw_images():
  x_train, y_train = _blobs(256, seed=0)
  x_test, y_test = _blobs(200, seed=1)
  clf = api.TransferClassifier.from_source(_source(), ["top left", "bottom right"])
  clf.compile()
  history = clf.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
  assert isinstance(history, keras.callbacks.History)
  losses = history.history["loss"]
  assert losses[-1] < 0.5 * losses[0]
  # Two classes: a model that learnt nothing scores about 0.5.
  loss, accuracy = clf.evaluate(x_test, y_test, verbose=0)
  assert accuracy > 0.9
  assert clf.evaluate((x_test, y_test))["accuracy"] == pytest.approx(accuracy, abs=1e-6)
  # The caller's compile() is what fit uses: a zero learning rate changes nothing.
  clf.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
  before = [weight.copy() for weight in clf.get_weights()]
  clf.fit(x_train, y_train, epochs=1, verbose=0)
  for old, new in zip(before, clf.get_weights()):
    np.testing.assert_array_equal(old, new)


def test_get_config_and_from_config_round_trip():
  clf = api.TransferClassifier.from_source(
    _source(), ["a", "b"], unfreeze="last:1", head_units=8, head_dropout=0.25, head_l2=0.01
  )
  config = clf.get_config()
  copy = api.TransferClassifier.from_config(config)
  assert type(copy) is api.TransferClassifier
  assert copy.get_config() == config
  assert [(layer.name, layer.trainable) for layer in copy.layers] == [
    (layer.name, layer.trainable) for layer in clf.layers
  ]
  assert copy.count_params() == clf.count_params()


def test_save_and_the_safe_loader_round_trip(tmp_path):
  clf = api.TransferClassifier.from_source(_source(), ["a", "b"], head_units=8)
  images, _ = _blobs(16, seed=2)
  path = str(tmp_path / "classifier.h5")
  clf.save(path)
  loaded = loading.load_model(path)  # built-in layers only, so the allowlist accepts it
  np.testing.assert_allclose(networks.predict(loaded, images), clf.predict(images), atol=1e-6)
  again = api.TransferClassifier.from_model(loaded, clf.class_names)
  assert isinstance(again, api.TransferClassifier)
  np.testing.assert_allclose(again.predict(images), clf.predict(images), atol=1e-6)


def test_from_source_leaves_the_callers_model_alone():
  source = _source()
  names = [layer.name for layer in source.layers]
  flags = [layer.trainable for layer in source.layers]
  weights = [weight.copy() for weight in source.get_weights()]
  clf = api.TransferClassifier.from_source(source, ["a", "b"], unfreeze="none", seed=3)
  assert [layer.name for layer in source.layers] == names
  assert [layer.trainable for layer in source.layers] == flags
  for old, new in zip(weights, source.get_weights()):
    np.testing.assert_array_equal(old, new)
  # The classifier's layers are copies: freezing them left the source's trainable.
  assert not any(clf.get_layer(name).trainable for name in names[1:-1])
  assert not set(map(id, clf.layers)) & set(map(id, source.layers))
