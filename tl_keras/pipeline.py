"""The whole workflow in one process: pretrain, then transfer, then finetune."""

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

  The transfer and finetune configs should name the model the pretrain stage writes. One
  strategy serves both training stages (a multi-worker strategy can be created only once).
  """
  start = time.perf_counter()
  strategy = strategy_override or distribute.get_distribution_strategy(pretrain_config.strategy)
  results = {"pretrain": pretrain.run(pretrain_config, strategy_override=strategy)}
  if distribute.is_chief(strategy):
    results["transfer"] = transfer.run(transfer_config)
  results["finetune"] = finetune.run(finetune_config, strategy_override=strategy)
  print(f"== pipeline done in {time.perf_counter() - start:.1f} s: source accuracy "
        f"{results['pretrain']['test_accuracy']:.2%}, target accuracy after finetune "
        f"{results['finetune']['test_accuracy']:.2%} ==", flush=True)
  return results
