"""The whole workflow in one process: pretrain, then transfer, then finetune."""

import dataclasses
import os
import time
from typing import Any, Dict, Optional

import tensorflow as tf

from tl_keras import distribute
from tl_keras import finetune
from tl_keras import pretrain
from tl_keras import transfer


def run(pretrain_config: pretrain.PretrainConfig, transfer_config: transfer.TransferConfig,
        finetune_config: finetune.FinetuneConfig,
        strategy_override: Optional[tf.distribute.Strategy] = None) -> Dict[str, Any]:
  """Runs the three stages in order; returns {'pretrain': ..., 'transfer': ..., 'finetune': ...}.

  All stages write to `pretrain_config.output_dir`, and transfer and finetune use the model
  pretrain writes there (their `output_dir` and `model` are replaced). One strategy serves
  both training stages (a multi-worker strategy can be created only once per process); on
  multi-worker clusters only the chief runs transfer and keeps the files.
  """
  start = time.perf_counter()
  strategy = strategy_override or distribute.get_distribution_strategy(pretrain_config.strategy)
  with distribute.worker_output_dir(strategy, pretrain_config.output_dir) as output_dir:
    source_model = os.path.join(output_dir, pretrain.SOURCE_MODEL_FILENAME)
    results = {"pretrain": pretrain.run(
        dataclasses.replace(pretrain_config, output_dir=output_dir), strategy_override=strategy)}
    if distribute.is_chief(strategy):
      results["transfer"] = transfer.run(
          dataclasses.replace(transfer_config, output_dir=output_dir, model=source_model))
    results["finetune"] = finetune.run(
        dataclasses.replace(finetune_config, output_dir=output_dir, model=source_model),
        strategy_override=strategy)
  if distribute.is_chief(strategy):
    print(f"== pipeline done in {time.perf_counter() - start:.1f} s: source accuracy "
          f"{results['pretrain']['test_accuracy']:.2%}, target accuracy after finetune "
          f"{results['finetune']['test_accuracy']:.2%} ==", flush=True)
  return results
