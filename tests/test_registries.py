"""Methods registered, not switched: adaptation and fusion methods are named only in
`config.methods` (and their own modules); each registered method has its code and trains or
fuses; flags take their choices and help from the registry."""

import ast
import dataclasses
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT

from tl_keras import adaptation
from tl_keras.adaptation import base
from tl_keras.adaptation import registry
from tl_keras.config import methods
from tl_keras.config import settings
from tl_keras.keras_api import keras
from tl_keras.models import fusion
from tl_keras.outputs import summary

PACKAGE_DIR = os.path.join(REPO_ROOT, "tl_keras")
ADAPTATION = tuple(methods.ADAPTATION)
FUSION = tuple(methods.FUSION)
NAMES = {methods.AUTO, *ADAPTATION, *FUSION}
# Words other settings take too ('auto' strategy, 'none' class weight): named as methods only
# where compared with an adapt or method setting.
SHARED_WORDS = {"auto", "none"}
METHOD_FOLDERS = ("adaptation", os.path.join("models", "fusion"))


def _python_files():
  for folder, _, filenames in os.walk(PACKAGE_DIR):
    for filename in filenames:
      if filename.endswith(".py"):
        yield os.path.join(folder, filename)


def _allowed(path):
  """The registry, and a method's own module (which may give its name to its layers)."""
  relative = os.path.relpath(path, PACKAGE_DIR)
  folder, stem = os.path.dirname(relative), os.path.basename(relative)[: -len(".py")]
  return relative == os.path.join("config", "methods.py") or (
    folder in METHOD_FOLDERS and stem in NAMES
  )


def _skipped_strings(tree):
  """Docstrings and other bare strings (documentation), and settings' help texts."""
  skipped = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
      skipped.add(id(node.value))
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setting":
      skipped.update(id(child) for child in ast.walk(node))
  return skipped


def _method_names_used(path):
  """(line, what) for each place `path` names a method: a string equal to a method's name
  (for 'auto' and 'none', compared with an expression naming adapt or method), or a message
  saying --adapt=NAME or --method=NAME."""
  source = open(path).read()
  tree = ast.parse(source, path)
  skipped = _skipped_strings(tree)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare):
      operands = [node.left, *node.comparators]
      constants = [
        leaf.value
        for operand in operands
        for leaf in ast.walk(operand)
        if isinstance(leaf, ast.Constant) and leaf.value in SHARED_WORDS
      ]
      text = ast.get_source_segment(source, node)
      if constants and re.search(r"adapt|method", text):
        found.append((node.lineno, text))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
      if node.value in NAMES - SHARED_WORDS:
        found.append((node.lineno, repr(node.value)))
      elif re.search(rf"--(adapt|method)=({'|'.join(NAMES)})\b", node.value):
        found.append((node.lineno, repr(node.value)))
  return found


def test_only_the_registry_names_methods():
  used = {
    os.path.relpath(path, REPO_ROOT): _method_names_used(path)
    for path in _python_files()
    if not _allowed(path)
  }
  assert {path: found for path, found in used.items() if found} == {}


def test_the_name_check_finds_a_switch(tmp_path):
  # The check above can fail: each kind of switch it looks for is found.
  path = tmp_path / "switch.py"
  path.write_text(
    "def f(config, plan):\n"
    "  '''Docstrings may say self_training.'''\n"
    "  if config.adapt.adapt == 'auto':\n"
    "    return {'stacking': 1}\n"
    "  if plan.method not in ('none', 'x'):\n"
    "    raise ValueError(f'use --method=average, not {plan.method}')\n"
    "  return config.strategy == 'auto'\n"
  )
  assert sorted(line for line, _ in _method_names_used(str(path))) == [3, 4, 5, 6]


def test_flags_take_choices_and_help_from_the_registry():
  adapt = {field.name: field for field in dataclasses.fields(settings.AdaptSettings)}
  assert adapt["adapt"].metadata["choices"] == (methods.AUTO, *ADAPTATION)
  fuse = {field.name: field for field in dataclasses.fields(settings.FuseSettings)}
  assert fuse["method"].metadata["choices"] == FUSION
  for name, method in methods.ADAPTATION.items():
    assert f"{name} ({method.help})" in adapt["adapt"].metadata["help"] or not method.help
  for name, method in methods.FUSION.items():
    assert f"{name} ({method.help})" in fuse["method"].metadata["help"]


def test_auto_takes_the_first_method_that_applies():
  assert methods.choose_adaptation(methods.AUTO, 0) == methods.AUTO_ORDER[-1]
  assert methods.choose_adaptation(methods.AUTO, 5) == methods.AUTO_ORDER[0]
  for name in ADAPTATION:
    assert methods.choose_adaptation(name, 0) == name  # a method given is kept
  # The last of the order applies to any data: auto always finds one.
  assert methods.ADAPTATION[methods.AUTO_ORDER[-1]].applies(0)


@pytest.mark.parametrize("name", ADAPTATION)
def test_each_adaptation_method_has_its_code(name):
  method = methods.ADAPTATION[name]
  terms = registry.terms(name)
  assert bool(terms) == method.uses_unlabeled
  assert all(issubclass(term, base.Term) for term in terms)
  names = registry.metric_names(name)
  assert names[:2] == ("loss", "accuracy") and len(set(names)) == len(names)
  for flag in method.flags:
    assert hasattr(settings.AdaptSettings(), flag)
    assert flag in {field.name for field in dataclasses.fields(adaptation.Adaptation)}


@pytest.mark.parametrize("name", FUSION)
def test_each_fusion_method_has_its_code(name):
  module = fusion.method(name)
  for function in ("fit", "probabilities", "combine", "unconstrained_weights"):
    assert callable(getattr(module, function))
  with pytest.raises(ValueError, match="unknown fusion method"):
    fusion.method("__init__")


def _tiny_model(seed=0):
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((8, 8, 1))
  x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
  features = keras.layers.Dense(8, activation="relu")(x)
  outputs = keras.layers.Dense(3, activation="softmax", name="classifier")(features)
  return keras.Model(inputs, outputs), features


def _element(with_source, seed=0):
  """One element of `pipelines.make_adaptation_dataset`: 6 labelled images of 3 classes, 12
  unlabelled (weak, strong, hidden labels) and, for methods that align, 6 source images."""
  rng = np.random.default_rng(seed)

  def images(count):
    return tf.constant(rng.random((count, 8, 8, 1)), tf.float32)

  weak = images(12)
  labeled = (images(6), tf.constant(np.arange(6) % 3, tf.int64))
  unlabeled = (weak, weak + 0.1, tf.constant(np.arange(12) % 3, tf.int64))
  return (labeled, unlabeled, images(6)) if with_source else (labeled, unlabeled)


def _adaptation_model(name, model, features):
  settings_ = adaptation.Adaptation(
    method=name,
    confidence_threshold=0.0,  # every pseudo-label counts: the unlabelled loss is not 0
    unlabeled_weight=1.0,
    unlabeled_ratio=2,
    align_weight=0.1,
    total_steps=4,
  )
  trainer = adaptation.AdaptationModel(model, features, settings_)
  trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
  return trainer


@pytest.mark.slow
@pytest.mark.parametrize("name", ADAPTATION)
def test_each_adaptation_method_trains_a_step(name):
  model, features = _tiny_model()
  before = [weights.copy() for weights in model.get_weights()]
  trainer = _adaptation_model(name, model, features)
  element = _element(methods.ADAPTATION[name].needs_source)
  history = trainer.fit(
    tf.data.Dataset.from_tensors(element).repeat(), epochs=2, steps_per_epoch=2, verbose=0
  ).history
  assert tuple(history) == registry.metric_names(name)
  assert all(np.isfinite(values).all() and len(values) == 2 for values in history.values())
  assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
  if "unlabeled_loss" in history:
    assert history["unlabeled_loss"][-1] > 0  # the unlabelled images were learnt from
    assert history["pseudo_label_rate"][-1] == 1.0  # threshold 0: every pseudo-label counts
  if "im_loss" in history:
    # Mean entropy minus the entropy of the mean prediction: below 0 unless every unlabelled
    # image gets the same prediction (entropy is concave).
    assert history["im_loss"][-1] < 0
  assert not methods.ADAPTATION[name].uses_unlabeled or {"unlabeled_loss", "im_loss"} & set(history)


@pytest.mark.slow
def test_terms_run_their_epoch_hooks():
  class Counting(base.Term):
    def __init__(self, settings_, num_classes, feature_size):
      super().__init__(settings_, num_classes, feature_size, name="counting")
      self.epochs = []

    def on_epoch_end(self, epoch):
      self.epochs.append(epoch)

  model, features = _tiny_model()
  trainer = _adaptation_model(ADAPTATION[0], model, features)
  counting = Counting(trainer.adaptation, 3, 8)
  trainer.terms.append(counting)
  dataset = tf.data.Dataset.from_tensors(_element(False)).repeat()
  trainer.fit(dataset, epochs=3, steps_per_epoch=1, verbose=0)
  assert counting.epochs == [0, 1, 2]


def test_summary_shows_the_methods_own_settings(capsys):
  for name, method in methods.ADAPTATION.items():
    recorded = adaptation.Adaptation(name, 0.95, 1.0, 3, 0.25, 10).as_metrics()
    metrics = {
      "adapt": recorded,
      "num_unlabeled": 100,
      "history": {"pseudo_label_rate": [0.5]},
      "classes": ["a", "b"],
      "wall_seconds": 1.0,
    }
    summary.print_summary("finetune", metrics, {})
    line = next(line for line in capsys.readouterr().out.splitlines() if "adaptation" in line)
    assert (", align weight 0.25" in line) == ("align_weight" in method.flags), line
