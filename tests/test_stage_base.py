"""Stages on one base: each reads its source model file once, honours or refuses every flag it
accepts, and refuses or resolves flags that cannot work together before any work."""

import collections
import importlib
import os
import shutil

import pytest
from conftest import assert_refused
from conftest import run_command

from tl_keras import loading
from tl_keras.config import settings
from tl_keras.errors import UserError
from tl_keras.models import networks
from tl_keras.outputs import model_io


@pytest.fixture
def reads(monkeypatch):
  """Counts, by file name, the model loads and metadata reads of the code under test."""
  counts = collections.Counter()
  load, read_metadata = loading.load_model, model_io.read_metadata

  def counted_load(path, *args, **kwargs):
    counts["load", os.path.basename(path)] += 1
    return load(path, *args, **kwargs)

  def counted_read_metadata(path, *args, **kwargs):
    counts["metadata", os.path.basename(path)] += 1
    return read_metadata(path, *args, **kwargs)

  monkeypatch.setattr(loading, "load_model", counted_load)
  monkeypatch.setattr(model_io, "read_metadata", counted_read_metadata)
  return counts


def _read_once(counts, name):
  return counts["load", name] == 1 and counts["metadata", name] == 1


# --- flags a stage cannot honour, and flags that cannot work together: refused at validation


@pytest.mark.parametrize(
  "config_class", [settings.TransferConfig, settings.FinetuneConfig, settings.ExportConfig]
)
def test_input_size_is_refused_for_a_model_file(config_class):
  config = settings.make(config_class, model="out/target_model.h5", input_size=64)
  with pytest.raises(UserError, match="--input_size is for --model=keras:NAME"):
    settings.validate(config)
  settings.validate(settings.replace(config, model="keras:MobileNetV2"))  # honoured there


@pytest.mark.parametrize(
  "stage, config_class",
  [
    ("transfer", settings.TransferConfig),
    ("export", settings.ExportConfig),
    ("finetune", settings.FinetuneConfig),
  ],
)
def test_input_size_reaches_the_loader(stage, config_class, monkeypatch, tmp_path):
  """Where --input_size applies (keras:NAME backbones), every stage that takes it passes it on
  (tl-export dropped it)."""
  asked = []

  def load_model(path, allow_unsafe=False, max_bytes=0, input_size=None):
    asked.append((path, input_size))
    raise UserError("loaded")

  monkeypatch.setattr(loading, "load_model", load_model)
  module = importlib.import_module(f"tl_keras.stages.{stage}")
  config = settings.make(
    config_class, model="keras:MobileNetV2", input_size=96, output_dir=str(tmp_path)
  )
  with pytest.raises(UserError, match="loaded"):
    module.run(config)
  assert asked == [("keras:MobileNetV2", 96)]


@pytest.mark.parametrize("config_class", [settings.PretrainConfig, settings.FinetuneConfig])
def test_jit_compile_turns_determinism_off_unless_asked_for(config_class):
  config = settings.make(config_class, jit_compile=True)
  settings.validate(config)
  assert not config.runtime.op_determinism()
  assert len(settings.notes(config)) == 1 and "determinism off" in settings.notes(config)[0]
  explicit = settings.replace(config, deterministic=True)
  with pytest.raises(UserError, match="--jit_compile cannot train with --deterministic"):
    settings.validate(explicit)
  plain = settings.make(config_class)
  assert plain.runtime.op_determinism() and not settings.notes(plain)
  off = settings.replace(config, deterministic=False)
  settings.validate(off)
  assert not off.runtime.op_determinism() and not settings.notes(off)


def test_pipeline_jit_compile_with_deterministic_is_refused():
  config = settings.make(settings.PipelineConfig, jit_compile=True, deterministic=True)
  with pytest.raises(UserError, match="--nodeterministic"):
    settings.validate(config)


def test_export_input_size_is_refused_before_any_work(tmp_path):
  """The bug: tl-export took --input_size and ignored it. A model file has its own size."""
  output_dir = tmp_path / "out"
  result = run_command(
    [
      "scripts/export.py",
      f"--model={tmp_path / 'model.h5'}",
      "--input_size=64",
      f"--output_dir={output_dir}",
    ]
  )
  assert_refused(result, output_dir, "--input_size is for --model=keras:NAME", "model.h5")


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_jit_compile_with_deterministic_is_one_line(command, tmp_path):
  output_dir = tmp_path / "out"
  result = run_command(
    [f"scripts/{command}.py", "--jit_compile", "--deterministic", f"--output_dir={output_dir}"]
  )
  assert_refused(result, output_dir, "--jit_compile cannot train with --deterministic")


# --- tiny runs: --jit_compile trains, saying in one line that determinism is off


def _trains_with_one_note(result):
  assert result.returncode == 0, result.stderr[-3000:]
  notes = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
  assert len(notes) == 1 and "--jit_compile turns op determinism off" in notes[0], notes
  assert "error" not in result.stderr


@pytest.mark.slow
def test_pretrain_jit_compile_trains(small_mnist_dir, tmp_path):
  result = run_command(
    [
      "scripts/pretrain.py",
      "--jit_compile",
      "--epochs=1",
      "--steps_per_epoch=4",
      f"--data_dir={small_mnist_dir}",
      f"--output_dir={tmp_path}",
    ]
  )
  _trains_with_one_note(result)
  assert os.path.isfile(tmp_path / "source_model.h5")


def test_finetune_jit_compile_trains(source_model, small_mnist_dir, tmp_path):
  result = run_command(
    [
      "scripts/finetune.py",
      "--jit_compile",
      f"--model={source_model[0]}",
      "--epochs=1",
      "--steps_per_epoch=4",
      f"--data_dir={small_mnist_dir}",
      f"--output_dir={tmp_path}",
    ]
  )
  _trains_with_one_note(result)
  assert os.path.isfile(tmp_path / "target_model.h5")


# --- each stage reads its source model file once


def test_transfer_reads_the_source_once(source_model, small_mnist_dir, tmp_path, reads):
  from tl_keras.stages import transfer

  path = source_model[0]
  transfer.run(
    settings.make(
      settings.TransferConfig, model=path, data_dir=small_mnist_dir, output_dir=str(tmp_path)
    )
  )
  assert _read_once(reads, os.path.basename(path)), reads


def test_export_reads_the_model_once(source_model, small_mnist_dir, tmp_path, reads):
  from tl_keras.stages import export

  path = source_model[0]
  export.run(
    settings.make(
      settings.ExportConfig,
      model=path,
      target="mnist:0-4",
      formats="tflite",
      data_dir=small_mnist_dir,
      output_dir=str(tmp_path),
    )
  )
  assert _read_once(reads, os.path.basename(path)), reads


def test_finetune_reads_the_source_once_and_predicts_the_test_set_once(
  source_model, small_mnist_dir, tmp_path, reads, monkeypatch
):
  """Also with --compare_scratch, which builds the same model from the source's architecture."""
  from tl_keras.stages import finetune

  predicted = collections.Counter()
  predict = networks.predict

  def counted_predict(model, images, *args, **kwargs):
    predicted[model.name, len(images)] += 1
    return predict(model, images, *args, **kwargs)

  monkeypatch.setattr(networks, "predict", counted_predict)
  path = source_model[0]
  metrics = finetune.run(
    settings.make(
      settings.FinetuneConfig,
      model=path,
      epochs=1,
      compare_scratch=True,
      strategy="default",
      data_dir=small_mnist_dir,
      output_dir=str(tmp_path),
    )
  )
  assert _read_once(reads, os.path.basename(path)), reads
  num_test = metrics["num_test"]
  # The finetuned model and the one trained from scratch, each once; the source model once
  # (its accuracy before training).
  assert predicted["target_model", num_test] == 2, predicted
  assert predicted["source_cnn", num_test] == 1, predicted
  assert 0.9 < metrics["test_accuracy"]  # the README promises 99% with the full data


def test_fuse_reads_each_member_once(source_model, small_mnist_dir, tmp_path, reads):
  from tl_keras.stages import fuse

  first = source_model[0]
  second = str(tmp_path / "second.h5")
  shutil.copy(first, second)
  fuse.run(
    settings.make(
      settings.FuseConfig,
      models=f"{first},{second}",
      target="mnist:0-4",
      data_dir=small_mnist_dir,
      output_dir=str(tmp_path / "out"),
    )
  )
  assert _read_once(reads, os.path.basename(first)), reads
  assert _read_once(reads, "second.h5"), reads


@pytest.mark.slow
def test_pipeline_reads_the_source_it_trains_once(small_mnist_dir, tmp_path, reads):
  from tl_keras.stages import pipeline

  pipeline.run(
    settings.make(
      settings.PipelineConfig,
      pretrain_epochs=1,
      finetune_epochs=1,
      strategy="default",
      data_dir=small_mnist_dir,
      output_dir=str(tmp_path),
    )
  )
  assert _read_once(reads, "source_model.h5"), reads
