"""tl_keras: source-to-target transfer learning with TensorFlow and tf_keras.

The Python API (see `tl_keras.api`): `load_model`, `load_target`, `TransferClassifier`,
`FitResult`, `transferability`, `LabeledData` and `rank_sources` (`tl_keras.ranking.rank`).
They are imported on first use, so that `import tl_keras` stays fast and imports no TensorFlow.
"""

import importlib

from tl_keras.version import __version__

_API = ("load_model", "load_target", "TransferClassifier", "FitResult", "transferability")
__all__ = ["__version__", "LabeledData", "rank_sources", *_API]


def __getattr__(name: str):
  if name in _API:
    return getattr(importlib.import_module("tl_keras.api"), name)
  if name == "rank_sources":
    return importlib.import_module("tl_keras.ranking.rank").rank_sources
  if name == "LabeledData":
    return importlib.import_module("tl_keras.data.labeled").LabeledData
  raise AttributeError(f"module 'tl_keras' has no attribute {name!r}")
