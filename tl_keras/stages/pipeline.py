"""The whole workflow in one process: pretrain, then transfer, then finetune."""

import os
import time
from typing import Any

import tensorflow as tf

from tl_keras import artifacts
from tl_keras.config import settings
from tl_keras.stages import base
from tl_keras.stages import finetune
from tl_keras.stages import pretrain
from tl_keras.stages import transfer
from tl_keras.training import distribute


def run(
  config: settings.PipelineConfig, strategy_override: tf.distribute.Strategy | None = None
) -> dict[str, Any]:
  """Runs the three stages of `config.stages()` in order; returns {'pretrain': ...,
  'transfer': ..., 'finetune': ...}.

  Every stage's settings are checked before the first stage writes anything. All stages write
  to `config.paths.output_dir`, and transfer and finetune use the model pretrain writes there.
  The source model pretrain writes is read once, for transfer and finetune. One strategy
  serves both training stages (a multi-worker strategy can be created only once
  per process); on multi-worker clusters only the chief runs transfer and keeps the files.
  """
  start = base.begin(config)
  pretrain_config, transfer_config, finetune_config = config.stages()
  for stage_config in (pretrain_config, transfer_config, finetune_config):
    settings.validate(stage_config)
  strategy = base.strategy_for(config.runtime, strategy_override)
  with distribute.worker_output_dir(strategy, config.paths.output_dir) as output_dir:
    source_model = os.path.join(output_dir, artifacts.SOURCE_MODEL)
    results = {
      "pretrain": pretrain.run(
        settings.replace(pretrain_config, output_dir=output_dir), strategy_override=strategy
      )
    }
    finetune_config = settings.replace(finetune_config, output_dir=output_dir, model=source_model)
    source = base.load_source_of(finetune_config.load)  # read once for both stages
    if distribute.is_chief(strategy):
      results["transfer"] = transfer.run(
        settings.replace(transfer_config, output_dir=output_dir, model=source_model),
        source=source,
      )
    results["finetune"] = finetune.run(finetune_config, strategy_override=strategy, source=source)
  if distribute.is_chief(strategy):
    print(
      f"== pipeline done in {time.perf_counter() - start:.1f} s: source accuracy "
      f"{results['pretrain']['test_accuracy']:.2%}, target accuracy after finetune "
      f"{results['finetune']['test_accuracy']:.2%} ==",
      flush=True,
    )
  return results
