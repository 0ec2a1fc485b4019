"""The adaptation methods of #21: SHOT's information maximisation and centroid pseudo-labels,
the mean teacher, label-free model selection and the collapse guard, each on small data with
real outcomes; and a short SHOT run with no source images beating the source model alone."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tl_keras import adaptation
from tl_keras import api
from tl_keras.adaptation import guard
from tl_keras.adaptation import selection
from tl_keras.adaptation import shot
from tl_keras.adaptation import teacher
from tl_keras.config import methods
from tl_keras.data import mnist
from tl_keras.data import pipelines
from tl_keras.data.labeled import UnlabeledImages
from tl_keras.keras_api import keras
from tl_keras.models import networks


def _entropy(*probabilities):
  return -sum(p * math.log(p) for p in probabilities)


def test_information_maximisation_on_known_probabilities():
  probabilities = np.array([[0.8, 0.2], [0.4, 0.6]], np.float32)
  # Mean per-image entropy minus the entropy of the mean prediction (0.6, 0.4), by hand.
  expected = (_entropy(0.8, 0.2) + _entropy(0.4, 0.6)) / 2 - _entropy(0.6, 0.4)
  assert expected == pytest.approx(-0.086305, abs=1e-6)
  value = float(shot.information_maximisation(tf.constant(probabilities)))
  assert value == pytest.approx(expected, abs=1e-4)
  # Confident and balanced: -log 2, the minimum; all images alike: 0.
  assert float(shot.information_maximisation(tf.eye(2))) == pytest.approx(-math.log(2), abs=1e-4)
  assert float(shot.information_maximisation(tf.fill([4, 2], 0.5))) == pytest.approx(0, abs=1e-4)
  # The selection score is the same quantity, negated, over log(classes).
  assert selection.im_score(probabilities) == pytest.approx(-expected / math.log(2), abs=1e-6)


def test_centroid_labels_recover_separable_clusters_from_noisy_predictions():
  rng = np.random.default_rng(0)
  classes, per_class = 3, 50
  directions = np.eye(classes, 8) * 5
  truth = np.repeat(np.arange(classes), per_class)
  features = directions[truth] + rng.normal(0, 0.5, [len(truth), 8])
  # The classifier is right on 70% of the images only, and not confident.
  predicted = np.where(rng.random(len(truth)) < 0.7, truth, (truth + 1) % classes)
  probabilities = np.full([len(truth), classes], 0.2)
  probabilities[np.arange(len(truth)), predicted] = 0.6
  labels, centroids, present = shot.centroid_labels(features, probabilities)
  assert (predicted == truth).mean() < 0.8
  assert (labels == truth).all()
  assert centroids.shape == (classes, 9) and present.all()
  # A class no image is predicted as is never a label.
  probabilities[:, 2] = 0.0
  labels, _, present = shot.centroid_labels(features, probabilities)
  assert not present[2] and 2 not in labels


def test_snd_prefers_tight_clusters_and_ignores_self_similarity():
  rng = np.random.default_rng(1)
  tight = np.eye(4)[rng.integers(0, 4, 200)] * 0.9 + 0.025
  loose = rng.dirichlet(np.ones(4), 200)
  assert 0 < selection.snd(loose) < selection.snd(tight) <= 1


def test_shot_is_a_source_free_method_in_the_one_list():
  method = methods.ADAPTATION["shot"]
  assert method.source_free and not method.needs_source and method.uses_unlabeled
  assert "shot" in methods.adaptation_choices()
  from tl_keras.adaptation import registry

  assert registry.terms("shot") == (shot.InformationMaximisation,)


def test_shot_trains_at_its_own_default_rate_and_a_rate_given_is_kept():
  from tl_keras.training import schedule

  plan = schedule.choose(0, 10, 5000, adapt="shot", default_learning_rate=1e-3)
  assert plan.learning_rate == pytest.approx(3e-5) and "learning rate 3e-05" in plan.message
  assert schedule.choose(0, 10, 5000, adapt="shot", learning_rate=1e-3).learning_rate == 1e-3
  # Methods without a scale of their own keep the optimizer's default (None).
  assert schedule.choose(0, 10, 5000, adapt="self_training").learning_rate is None


def _tiny_model(num_classes=3):
  inputs = keras.Input((8, 8, 1))
  x = keras.layers.Flatten()(inputs)
  x = keras.layers.Dense(16, activation="relu", name="features_dense")(x)
  outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
  return keras.Model(inputs, outputs)


def _settings(**overrides):
  values = dict(
    method="self_training",
    confidence_threshold=0.95,
    unlabeled_weight=1.0,
    unlabeled_ratio=1,
    align_weight=0.0,
    total_steps=10,
  )
  return adaptation.Adaptation(**{**values, **overrides})


def _trainer(model, images, **overrides):
  return adaptation.AdaptationModel(
    model,
    networks.feature_tensor(model),
    _settings(**overrides),
    unlabeled=UnlabeledImages(images, None, "test images"),
  )


def test_collapse_guard_restores_the_last_good_weights_on_a_forced_collapse():
  keras.utils.set_random_seed(0)
  images = np.random.default_rng(0).random([300, 8, 8], np.float32)
  model = _tiny_model()
  classifier = model.get_layer("classifier")
  # Predictions spread over the three classes: the first feature decides.
  kernel = np.zeros([16, 3], np.float32)
  classifier.set_weights([kernel, np.zeros(3, np.float32)])
  trainer = _trainer(model, images)
  events = []
  trainer._log = events.append
  watcher = trainer.guard
  watcher.set_model(trainer)
  watcher._log = events.append
  balanced = np.random.default_rng(1).normal(0, 3, [16, 3]).astype(np.float32)
  classifier.set_weights([balanced, np.zeros(3, np.float32)])
  trainer.forget_watched()
  watcher.on_train_begin()
  start = guard.class_shares(trainer.watched().probabilities)
  assert start.max() < 0.6, start
  logs = {}
  watcher.on_epoch_end(0, logs)  # nothing changed: no collapse
  assert not watcher.events and not trainer.stop_training
  assert set(logs) == {"top_class_share", "im_score", "snd"}
  good = [w.copy() for w in model.get_weights()]
  classifier.set_weights([balanced, np.array([50.0, 0, 0], np.float32)])  # all class 0
  trainer.forget_watched()
  watcher.on_epoch_end(1, {})
  assert trainer.stop_training and len(watcher.events) == 1
  assert watcher.events[0]["epoch"] == 2 and watcher.events[0]["top_share"] == 1.0
  assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), good))
  assert len(events) == 1 and events[0].startswith("collapse guard: at epoch 2 class 0 takes")
  assert guard.class_shares(trainer.watched().probabilities).max() < 0.6


def test_mean_teacher_with_decay_0_equals_the_student_after_one_step():
  keras.utils.set_random_seed(0)
  model = _tiny_model()
  student_start = [w.copy() for w in model.get_weights()]
  mean_teacher = teacher.make_teacher(model)
  assert not mean_teacher.trainable_weights
  assert all(np.array_equal(a, b) for a, b in zip(mean_teacher.get_weights(), student_start))
  model.set_weights([w + 1.0 for w in student_start])
  teacher.update(mean_teacher, model, 0.5)
  assert all(np.allclose(t, s + 0.5) for t, s in zip(mean_teacher.get_weights(), student_start))
  teacher.update(mean_teacher, model, 0.0)
  assert all(np.array_equal(t, s) for t, s in zip(mean_teacher.get_weights(), model.get_weights()))


@pytest.mark.slow
def test_mean_teacher_follows_the_student_in_the_train_step():
  keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  images = rng.random([64, 8, 8], np.float32)
  labels = rng.integers(0, 3, 64)
  model = _tiny_model()
  trainer = _trainer(model, images, teacher="ema", teacher_decay=0.0, confidence_threshold=0.5)
  start = [w.copy() for w in model.get_weights()]
  trainer.compile(optimizer=keras.optimizers.Adam(0.01))
  labeled = pipelines.make_dataset(images, labels, 16, (8, 8, 1), shuffle_seed=0, repeat=True)
  data = pipelines.make_adaptation_dataset(labeled, images, None, 16, (8, 8, 1), 0)
  trainer.fit(data, epochs=1, steps_per_epoch=3, verbose=0)
  assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), start))
  # Decay 0: after each step the teacher is the student.
  assert all(
    np.allclose(t, s) for t, s in zip(trainer.mean_teacher.get_weights(), model.get_weights())
  )


def _low_contrast_digits(small_mnist_dir, path):
  """npz:PATH of the small MNIST's digits 0-4 (the source's classes), low contrast on a grey
  ground: a target the source model reads badly."""
  with np.load(os.path.join(small_mnist_dir, mnist.MNIST_FILENAME)) as data:
    arrays = {}
    for split in ("train", "test"):
      x, y = data[f"x_{split}"], data[f"y_{split}"]
      keep = y < 5
      arrays[f"x_{split}"] = (100 + 0.35 * x[keep]).astype(np.uint8)
      arrays[f"y_{split}"] = y[keep]
  np.savez(path, **arrays)
  return f"npz:{path}"


@pytest.mark.slow
def test_shot_without_source_images_beats_the_source_model(source_model, small_mnist_dir, tmp_path):
  spec = _low_contrast_digits(small_mnist_dir, tmp_path / "low_contrast.npz")
  classifier = api.TransferClassifier.from_source(source_model[0], [str(c) for c in range(5)])
  data = api.load_target(spec, classifier.input_shape, train_per_class=0, unlabeled="rest")
  source_only = classifier.source_only_accuracy(data)
  classifier.compile(learning_rate=1e-3)  # SHOT's default, 3e-5, is for 4,000 steps, not 120
  # The source classifier's rows for these classes (the API's method; renamed in its refactor).
  rows = getattr(classifier, "source_classifier_weights", None)
  source_rows = (rows or classifier._source_classifier_weights)()
  result = classifier.fit(
    data,
    adapt="shot",
    source_data=f"npz:{tmp_path / 'absent.npz'}",  # never read: SHOT needs no source images
    epochs=3,
    steps_per_epoch=40,
    verbose=0,
  )
  adapted = classifier.evaluate(data)["accuracy"]
  # Measured: the source model scores 66.6%; SHOT 96.1% after 3 x 40 steps.
  assert adapted > source_only + 0.15, (source_only, adapted)
  assert result.adapt["method"] == "shot" and result.num_source == 0
  # The classifier stayed the source's; only the features learnt.
  for before, after in zip(source_rows, networks.classifier_layer(classifier.model).get_weights()):
    np.testing.assert_array_equal(before, after)
  assert len(result.history["im_score"]) == 3 and result.adapt["collapse_events"] == []
  assert result.adapt["kept"][0]["of"] == 3
  # The centroid labels grow more accurate than the source model was.
  assert result.history["pseudo_label_accuracy"][-1] > source_only


@pytest.mark.slow
@pytest.mark.parametrize(
  "flags",
  [
    {"adapt": "shot", "train_per_class": 0, "source_data": "npz:/nonexistent/source.npz"},
    {"adapt": "self_training", "train_per_class": 10, "teacher": "ema"},
  ],
  ids=["shot_without_labels", "mean_teacher"],
)
def test_under_mirrored_strategy(source_model, small_mnist_dir, tmp_path, flags):
  from tl_keras.config import settings
  from tl_keras.stages import finetune

  config = settings.make(
    settings.FinetuneConfig,
    model=source_model[0],
    target="mnist:0-4",
    data_dir=small_mnist_dir,
    output_dir=str(tmp_path),
    strategy="mirrored",
    unlabeled="rest",
    epochs=2,
    steps_per_epoch=5,
    **flags,
  )
  metrics = finetune.run(config)
  assert metrics["num_replicas"] == 2 and metrics["adapt"]["method"] == flags["adapt"]
  assert metrics["adapt"]["teacher"] == flags.get("teacher", "none")
  assert len(metrics["history"]["im_score"]) == 2 and metrics["adapt"]["collapse_events"] == []
  # The source's own classes, barely adapted: the source model's accuracy, about.
  assert metrics["test_accuracy"] > 0.9
