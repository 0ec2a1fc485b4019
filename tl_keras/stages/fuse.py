"""Fuse: combine several models trained for the same classes into one (see `fusion`).

The members' probabilities on a seeded validation split of the target's training images fit
the fusion; the target's test images only score it. Writes fused_model.h5, fused_savedmodel/
(the same serving signature as finetune's) and fuse_metrics.json with every member's test
accuracy beside the fused model's.
"""

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras import artifacts
from tl_keras import loading
from tl_keras.config import methods
from tl_keras.config import settings
from tl_keras.data import targets
from tl_keras.data.labeled import LabeledData
from tl_keras.data.labeled import split_per_class
from tl_keras.errors import UserError
from tl_keras.errors import warn
from tl_keras.keras_api import keras
from tl_keras.loading import budgets
from tl_keras.models import fusion
from tl_keras.models import networks
from tl_keras.outputs import files
from tl_keras.outputs import model_io
from tl_keras.outputs import summary
from tl_keras.stages import base
from tl_keras.version import __version__

# Members that score this much better on the validation images than on the test images most
# likely trained on them, which makes fitted weights trust overfitting.
_SEEN_VALIDATION_GAP = 0.05


def run(
  config: settings.FuseConfig, datasets_override: LabeledData | None = None
) -> dict[str, Any]:
  """Fuses the models of `config.fuse.models`; writes fused_model.h5, fused_savedmodel/ and
  fuse_metrics.json. Returns the metrics. `datasets_override` replaces the target."""
  start = base.begin(config)
  options = config.fuse
  paths = options.model_paths()
  output_dir = files.prepare_output_dir(config.paths.output_dir)
  sources, class_names = _load_members(paths, options)
  members = [source.model for source in sources]
  target = datasets_override or targets.prepare_target(
    config.target, sources[0].input_shape, config.paths.data_dir, config.seed, sources[0].framing
  )
  target = _in_class_order(target, class_names)
  x_validation, y_validation = _validation_images(target, options, config.seed)
  summary.say(
    f"fuse: {len(members)} models by {options.method}, validation on {len(y_validation)} "
    "training images"
  )
  test = [networks.predict(member, target.x_test) for member in members]
  _check_probabilities(test, paths)
  validation = (
    [networks.predict(member, x_validation) for member in members] if len(y_validation) else None
  )
  fitted, fused = _fit(
    sources, paths, validation, x_validation, y_validation, options, len(class_names)
  )
  if not options.allow_unsafe_deserialization:
    _check_loadable(fused)

  predict_start = time.perf_counter()
  probabilities = networks.predict(fused, target.x_test)
  predict_seconds = time.perf_counter() - predict_start
  fused_validation = (
    _accuracy(networks.predict(fused, x_validation), y_validation) if validation else None
  )
  metrics = {
    **_accuracies(probabilities, fused_validation, test, validation, target, y_validation),
    **_fusion_metrics(fitted, options, paths, config.seed),
    **_data_metrics(target, len(y_validation), class_names),
    "images_per_second": round(len(target.x_test) / predict_seconds, 1),
    "mean_confidence": float(probabilities.max(axis=1).mean()),
  }
  _warn_if_members_saw_validation(metrics, options, config.seed)
  artifact_paths = _write_outputs(fused, target, probabilities, options, output_dir, paths)
  metrics["plots"] = [artifacts.FUSE_CONFUSION]
  artifact_paths["report"] = base.write_metrics(metrics, artifact_paths["metrics"], start)
  summary.print_summary("fuse", metrics, artifact_paths)
  return metrics


def _validation_images(
  target: LabeledData, options: settings.FuseSettings, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """The seeded validation split of the target's training images that fits the fusion;
  refuses an empty one for a method that fits."""
  _, validation_index = split_per_class(target.y_train, options.validation_split, seed)
  if not len(validation_index) and methods.FUSION[options.method].fitted:
    raise UserError(
      f"--validation_split={options.validation_split} holds out no image of the "
      f"{len(target.y_train)} training images (each class keeps one at least) to fit "
      f"--method={options.method} on; raise it or use --method={methods.unfitted_fusion()}"
    )
  return target.x_train[validation_index], target.y_train[validation_index]


def _fit(sources, paths, validation, x_validation, y_validation, options, class_count):
  """(fitted, the fused model) by `options.method`, after warning when it fits more weights
  than there are validation images."""
  members = [source.model for source in sources]
  weights_to_fit = fusion.method(options.method).unconstrained_weights(len(members), class_count)
  if len(y_validation) < weights_to_fit:
    warn(
      f"{options.method} fits {weights_to_fit} weights on {len(y_validation)} validation "
      f"images and may overfit them; --method={methods.unfitted_fusion()} fits nothing"
    )
  if methods.FUSION[options.method].averages_weights:
    return _soup(sources, paths, validation, x_validation, y_validation, options)
  fitted = fusion.fit_fusion(
    options.method, validation, y_validation, class_count, count=len(members)
  )
  return fitted, fusion.build_fused_model(members, options.method, fitted)


def _accuracies(probabilities, fused_validation, test, validation, target, y_validation):
  """The fused model's and each member's accuracies on the test and validation images."""
  member_test = [_accuracy(p, target.y_test) for p in test]
  test_accuracy = float((probabilities.argmax(axis=1) == target.y_test).mean())
  return {
    "test_accuracy": test_accuracy,
    "member_test_accuracy": member_test,
    "best_member_test_accuracy": max(member_test),
    "worst_member_test_accuracy": min(member_test),
    "mean_member_test_accuracy": float(np.mean(member_test)),
    "fusion_gain": test_accuracy - max(member_test),
    "validation_accuracy": fused_validation,
    "member_validation_accuracy": (
      [_accuracy(p, y_validation) for p in validation] if validation else None
    ),
  }


def _fusion_metrics(fitted, options: settings.FuseSettings, paths, seed: int) -> dict[str, Any]:
  """How the models were fused: the method, its fitted weights and the members."""
  return {
    "method": options.method,
    "soup_mode": options.soup if methods.FUSION[options.method].averages_weights else None,
    # Average and weighted: one per member; stacking: the logistic regression's kernel and bias.
    "weights": (
      fitted["weights"].tolist()
      if "weights" in fitted
      else {name: np.asarray(value).tolist() for name, value in fitted.items()}
    ),
    "models": paths,
    "validation_split": options.validation_split,
    "seed": seed,
  }


def _data_metrics(target: LabeledData, num_validation: int, class_names) -> dict[str, Any]:
  """The images the fusion was fitted and scored on."""
  return {
    "epochs": 0,
    "num_train": int(len(target.y_train)),
    "num_validation": int(num_validation),
    "num_test": int(len(target.y_test)),
    "classes": class_names,
    "target": target.description,
  }


def _warn_if_members_saw_validation(metrics, options: settings.FuseSettings, seed: int) -> None:
  """Warns when the members score much better on the validation images than on the test
  images: they most likely trained on them, so a fitted fusion trusts their overfitting."""
  member_validation = metrics["member_validation_accuracy"]
  member_test = metrics["member_test_accuracy"]
  gap = np.mean(member_validation) - np.mean(member_test) if member_validation else 0
  if methods.FUSION[options.method].fitted and gap > _SEEN_VALIDATION_GAP:
    warn(
      f"the members score {np.mean(member_validation):.1%} on the validation images but "
      f"{np.mean(member_test):.1%} on the test images: they probably trained on them, so the "
      f"{options.method} fusion is fitted to their overfitting; finetune the members with "
      f"--validation_split={options.validation_split} --seed={seed} (and the same "
      "--train_per_class) to keep those images held out"
    )


def _write_outputs(fused, target, probabilities, options, output_dir, paths) -> dict[str, str]:
  """Writes the fused model (.h5 and SavedModel) and its confusion matrix; returns the
  artifacts' paths, the metrics file's included (written later)."""
  metadata = {
    **target.metadata(),
    "stage": "fuse",
    "fusion_method": options.method,
    "members": paths,
    "tl_keras_version": __version__,
  }
  artifact_paths = {
    "model": os.path.join(output_dir, artifacts.FUSED_MODEL),
    "savedmodel": os.path.join(output_dir, artifacts.FUSED_SAVED_MODEL_DIR),
    "metrics": os.path.join(output_dir, artifacts.METRICS["fuse"]),
  }
  model_io.save_h5(fused, artifact_paths["model"], metadata)
  model_io.export_saved_model(fused, artifact_paths["savedmodel"], target.class_names, metadata)
  from tl_keras.outputs import plots  # matplotlib

  plots.plot_confusion_matrix(
    target.y_test,
    probabilities.argmax(axis=1),
    target.class_names,
    os.path.join(output_dir, artifacts.FUSE_CONFUSION),
    f"Target test set, {len(paths)} models fused by {options.method}",
  )
  return artifact_paths


def _load_members(
  paths: Sequence[str], options: settings.FuseSettings
) -> tuple[list[base.Source], list[str]]:
  """The member models, each read once, and their shared class names; refuses members that
  differ in class names or input shape."""
  for path in paths:  # every missing one before loading any
    if not os.path.exists(path):
      raise UserError(f"model not found: {path}; check --models")
  sources, first_names, weights = [], None, 0
  for path in paths:
    source = base.load_source(path, options.allow_unsafe_deserialization, options.max_model_mb)
    weights = budgets.check_fused_weights(weights, source.model, path)
    names, shape = source.class_names(), source.input_shape
    if first_names is None:
      first_names = names
    elif names != first_names:
      raise UserError(
        f"cannot fuse {path} with {paths[0]}: it classifies {_listed(names)}, the first "
        f"model {_listed(first_names)} (class names from the models' metadata); fuse models "
        "trained for the same classes"
      )
    elif shape != sources[0].input_shape:
      raise UserError(
        f"cannot fuse {path} with {paths[0]}: it takes images of {_shape(shape)}, the first "
        f"model {_shape(sources[0].input_shape)}; fuse models with the same input shape"
      )
    sources.append(source)
  return sources, first_names


def _soup(sources, paths, validation, x_validation, y_validation, options):
  """(fitted, the model) of a method that averages the members' weights (see `fusion.soup`),
  after refusing members of other architectures or origins."""
  module = fusion.method(options.method)
  members = [source.model for source in sources]
  module.check_members(members, paths, [source.metadata for source in sources])
  fitted = module.fit_members(members, validation, x_validation, y_validation, options.soup)
  return fitted, module.build(members, fitted)


def _listed(names: Sequence[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit]) + (
    f" and {len(names) - limit} more" if len(names) > limit else ""
  )
  return f"{len(names)} classes ({shown})"


def _shape(shape: Sequence[int]) -> str:
  return "x".join(str(dim) for dim in shape)


def _in_class_order(target: LabeledData, class_names: list[str]) -> LabeledData:
  """`target` with its labels in the order of the models' `class_names`; refuses a target of
  other classes."""
  if sorted(target.class_names) != sorted(class_names):
    raise UserError(
      f"the target {target.description} has {_listed(target.class_names)} but the models "
      f"classify {_listed(class_names)}; use the target the models were trained for"
    )
  if target.class_names == class_names:
    return target
  order = np.array([class_names.index(name) for name in target.class_names])
  return dataclasses.replace(
    target, y_train=order[target.y_train], y_test=order[target.y_test], class_names=class_names
  )


def _check_probabilities(probabilities: Sequence[np.ndarray], paths: Sequence[str]) -> None:
  """Refuses a member whose outputs are not probabilities (logits, features): fusion mixes
  probabilities."""
  for output, path in zip(probabilities, paths):
    if (output < 0).any() or not np.allclose(output.sum(axis=1), 1, atol=1e-3):
      raise UserError(
        f"cannot fuse {path}: its outputs are not class probabilities (they do not sum to 1); "
        "fuse classifiers that end in a softmax"
      )


def _check_loadable(fused: keras.Model) -> None:
  """Refuses a fused model that the safe loader would not load back (a member of TF Hub or
  custom layers)."""
  try:
    loading.check_model_config(json.loads(fused.to_json()), "the fused model")
  except UserError as e:
    raise UserError(
      "cannot fuse these models: a member holds layers other than built-in Keras ones, so "
      "the fused .h5 could not be loaded safely; fuse .h5 or .keras models of built-in "
      "layers, or pass --allow_unsafe_deserialization if you trust them"
    ) from e


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
  return float((probabilities.argmax(axis=1) == labels).mean())
