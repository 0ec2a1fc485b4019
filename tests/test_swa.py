"""--average_weights_from_epoch (SWA): the mean of the last epochs' weights kept as the model."""

import json

import numpy as np
import pytest
from conftest import finetune_config

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.data import targets
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.stages import finetune
from tl_keras.training import swa


def _tiny():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((3,))
  return keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))


@pytest.mark.parametrize("from_epoch, expected", [(1, 2.25), (2, 3.0), (4, 4.0), (5, None)])
def test_the_callback_averages_the_epochs_from_the_given_one(from_epoch, expected):
  model = _tiny()
  before = model.get_weights()
  averager = swa.AverageWeights(model, from_epoch)
  for epoch, value in enumerate((0.0, 1.0, 4.0, 4.0)):  # the weights at each epoch's end
    model.set_weights([np.full(w.shape, value, w.dtype) for w in before])
    averager.on_epoch_end(epoch)
  averaged = averager.apply()
  assert averaged == (0 if expected is None else 5 - from_epoch)
  for weights in model.get_weights():
    # Nothing averaged: the model keeps its last weights.
    np.testing.assert_allclose(weights, 4.0 if expected is None else expected)


def test_a_real_finetune_with_swa_runs_and_saves_the_average(
  source_model, small_mnist_dir, tmp_path
):
  results = {}
  for name, from_epoch in (("plain", 0), ("swa", 2)):
    config = finetune_config(
      source_model[0],
      tmp_path / name,
      data_dir=small_mnist_dir,
      train_per_class=20,
      epochs=4,
      average_weights_from_epoch=from_epoch,
    )
    results[name] = finetune.run(config)
  print(json.dumps({name: m["test_accuracy"] for name, m in results.items()}))
  assert results["swa"]["phases"][-1]["averaged_epochs"] == 3
  assert "averaged_epochs" not in results["plain"]["phases"][-1]
  # The model saved is the averaged one: it scores what the metrics say.
  saved = loading.load_model(str(tmp_path / "swa" / artifacts.TARGET_MODEL))
  target = targets.load_target("mnist:5-9", small_mnist_dir, (28, 28, 1))
  predicted = networks.predict(saved, target.x_test).argmax(axis=1)
  assert (predicted == target.y_test).mean() == pytest.approx(results["swa"]["test_accuracy"])
  assert results["swa"]["test_accuracy"] > 0.5  # chance is 0.2
