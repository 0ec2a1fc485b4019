"""Transferability before finetuning: the linear probe alone, and with LogME (tested with the
other scores in test_ranking) in the transfer stage."""

import numpy as np
from conftest import blobs

from tl_keras.config import settings
from tl_keras.evaluation import probes
from tl_keras.keras_api import keras
from tl_keras.models import networks
from tl_keras.outputs import model_io
from tl_keras.stages import transfer


def test_linear_probe_separates_informative_features_only():
  train, train_labels = blobs(True, seed=0)
  test, test_labels = blobs(True, seed=1)
  assert probes.linear_probe_accuracy(train, train_labels, test, test_labels) > 0.9
  noise, _ = blobs(False, seed=2)
  noise_test, _ = blobs(False, seed=3)
  assert (
    probes.linear_probe_accuracy(noise, train_labels, noise_test, test_labels) < 0.6
  )  # chance is 1/3


def test_linear_probe_weights_apply_to_the_raw_features():
  train, labels = blobs(True, seed=0)
  train = train * 50 + 7  # far from standardised
  kernel, bias = probes.fit_linear_probe(train, labels, 3)
  assert kernel.shape == (16, 3) and bias.shape == (3,)
  assert (np.argmax(train @ kernel + bias, axis=1) == labels).mean() > 0.95


def test_trained_source_ranks_above_random_source_on_digits_5_to_9(
  source_model, small_mnist_dir, tmp_path
):
  keras.utils.set_random_seed(0)
  random_path = str(tmp_path / "random.h5")
  model_io.save_h5(networks.build_source_model((28, 28, 1), 5), random_path, {})
  results = {}
  for name, path in (("trained", source_model[0]), ("random", random_path)):
    config = settings.make(
      settings.TransferConfig,
      model=path,
      data_dir=small_mnist_dir,
      train_per_class=100,
      output_dir=str(tmp_path / name),
    )
    results[name] = transfer.run(config)
  trained, random = results["trained"], results["random"]
  assert trained["num_train"] == 500
  # Random convolutions make fair MNIST features too (83% here), so the probe's margin is small.
  assert trained["linear_probe_accuracy"] > random["linear_probe_accuracy"]
  assert trained["linear_probe_accuracy"] > 0.85
  assert trained["logme"] > random["logme"] + 0.05
