"""tl-rank: candidate sources scored for a target before any finetuning, end to end."""

import inspect
import json
import math
import os
import re

import pytest
from conftest import assert_refused
from conftest import run_command

from tl_keras import loading
from tl_keras.config import settings
from tl_keras.errors import UserError
from tl_keras.keras_api import keras
from tl_keras.outputs import model_io
from tl_keras.ranking import rank
from tl_keras.stages import rank as rank_stage


def _strict(text):
  """JSON parsed refusing NaN and Infinity, which strict JSON has not."""

  def refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")

  return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def random_source(source_model, tmp_path_factory):
  """The trained source's architecture and metadata with freshly initialised weights."""
  path = source_model[0]
  trained = loading.load_model(path)
  keras.utils.set_random_seed(7)
  model = keras.models.clone_model(trained)  # new weights from the layers' initialisers
  random_path = str(tmp_path_factory.mktemp("random_source") / "random_model.h5")
  model_io.save_h5(model, random_path, model_io.read_metadata(path))
  return random_path


def test_the_settings_offer_every_score_rank_sources_computes():
  assert set(settings.RANK_SCORES) == set(rank.SCORES)
  assert settings.RankConfig().by == "h_score"
  assert inspect.signature(rank.rank_sources).parameters["by"].default == "h_score"


def test_trained_source_is_picked_over_random_weights(
  source_model, random_source, small_mnist_dir, tmp_path
):
  output_dir = tmp_path / "rank"
  trained = source_model[0]
  result = run_command(
    [
      "scripts/rank.py",
      f"--models={random_source},{trained}",
      "--target=mnist:5-9",
      "--train_per_class=10",
      "--max_images=200",
      f"--data_dir={small_mnist_dir}",
      f"--output_dir={output_dir}",
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = _strict((output_dir / rank_stage.RANK_METRICS).read_text())
  assert metrics["by"] == "h_score" and metrics["pick"] == trained  # spelled as given
  assert [entry["model"] for entry in metrics["candidates"]] == [trained, random_source]
  assert metrics["num_train"] == 50 and metrics["num_test"] == 200
  for entry in metrics["candidates"]:
    for score in rank.SCORES:
      value = entry[score]
      assert (value is None) == (score in entry["reasons"]), (score, entry)
      assert value is None or math.isfinite(value)
    assert {"load", "features", "logme", "linear_probe_accuracy"} <= set(entry["seconds"])
  first, second = metrics["candidates"]
  assert first["h_score"] > second["h_score"] and first["logme"] > second["logme"]
  assert f"pick: {trained} (highest h_score)" in result.stdout
  assert os.path.getsize(output_dir / rank_stage.RANK_PLOT) > 0


@pytest.mark.parametrize(
  "models_flag, fragment",
  [
    ("a.h5,,b.h5", "invalid --models='a.h5,,b.h5'"),
    ("", "invalid --models=''"),
    ("a.h5,a.h5", "--models names a.h5 more than once"),
  ],
)
def test_bad_models_flag_is_one_line(models_flag, fragment):
  with pytest.raises(UserError, match=re.escape(fragment)):
    settings.validate(settings.make(settings.RankConfig, models=models_flag))


def test_missing_model_is_refused_in_one_line(tmp_path):
  output_dir = tmp_path / "out"
  missing = str(tmp_path / "nowhere.h5")
  result = run_command(["scripts/rank.py", f"--models={missing}", f"--output_dir={output_dir}"])
  assert_refused(result, output_dir, "model not found", missing)
  result = run_command(["scripts/rank.py", "--models=a.h5,,b.h5", f"--output_dir={output_dir}"])
  assert_refused(result, output_dir, "invalid --models=")


def test_non_finite_scores_become_null_with_a_reason():
  entry = {
    "model": "m",
    **dict.fromkeys(rank.SCORES, 0.5),
    "seconds": {"leep": 0.001234567},
    "reasons": {},
  }
  entry["leep"], entry["nce"] = -math.inf, math.nan
  rank_stage._finite_only(entry)
  assert entry["leep"] is None and entry["nce"] is None and entry["logme"] == 0.5
  assert "-inf" in entry["reasons"]["leep"] and "nan" in entry["reasons"]["nce"]
  json.dumps(entry, allow_nan=False)
