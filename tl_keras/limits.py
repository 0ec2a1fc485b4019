"""Resource limits for untrusted input, checked before anything of that size is allocated.

One memory budget (`memory_budget_mb`: 1024 MiB, raised by $TL_KERAS_MEMORY_BUDGET_MB or,
from Python, `limits.memory_budget`) sets every limit on what an input makes tl_keras
allocate: each limit named in `_SCALED` is its fraction of the budget (at the default budget,
the number its comment gives), read when used, so raising the budget raises them all. Sizes of
descriptions (configs, graphs, JSON) and decoder work are fixed.

Model files, data files and image folders may come from anyone. Each limit below is checked
against what the input *declares* (tensor shapes, zip entry sizes, image headers), so a small
file that would inflate to gigabytes is refused while it is still small. Peak memory on any
refused input stays far below these numbers.
"""

import contextlib
import contextvars
import os
from collections.abc import Iterator

from tl_keras.errors import UserError

MIB = 1 << 20

BUDGET_ENV = "TL_KERAS_MEMORY_BUDGET_MB"
DEFAULT_MEMORY_BUDGET_MB = 1024
MEMORY_BUDGET_RANGE_MB = (256, 1 << 22)
_budget_mb: contextvars.ContextVar[int | None] = contextvars.ContextVar("budget_mb", default=None)
# TensorFlow's kernels index many tensors with 32-bit integers: a tensor of more elements than
# this can crash the process (a native segfault), not raise.
MAX_TENSOR_ELEMENTS = 2**31 - 1

# Declared tensor data of one model (weights, constants, variables). `--max_model_mb` raises it.
# MAX_MODEL_BYTES: derived from the memory budget (_SCALED below).
# What a small model file may inflate to: a file whose tensors store S bytes may declare at
# most MAX_INFLATION * S + MIN_MODEL_BUDGET_BYTES of them. Weights compress by 1.1x at most
# and Keras stores them uncompressed; loading takes about 5x the declared bytes at its peak.
MAX_INFLATION = 2
# MIN_MODEL_BUDGET_BYTES: derived from the memory budget (_SCALED below).
# A model's description: a Keras JSON config (ResNet50's is 0.1 MiB) or metadata, and a
# SavedModel graph (ResNet50's is 3 MiB; parsing takes about 20x its size).
MAX_CONFIG_BYTES = 16 * MIB
# How deep a Keras config or Keras metadata may nest (a Functional model: about 10 levels, and
# about 8 more for each model nested in it); deeper is refused before json.loads recurses.
MAX_CONFIG_DEPTH = 256
MAX_MODEL_DESCRIPTION_BYTES = 32 * MIB
# Memory for reading an HDF5 file's attributes (layer and weight names) in a child process.
# MAX_ATTRIBUTE_READ_BYTES: derived from the memory budget (_SCALED below).
# One layer's output for one image (ResNet50 at 224x224: 3 MiB at most).
# MAX_ACTIVATION_BYTES: derived from the memory budget (_SCALED below).
# Declared size of the arrays in one .npz data file (MNIST's is 53 MiB).
# MAX_DATA_BYTES: derived from the memory budget (_SCALED below).
# One image file on disk, and its pixel count as its header declares it (a 10000x10000 PNG
# compresses to 100 KB and decodes to 300 MB). Photos of 40 megapixels still pass.
MAX_IMAGE_FILE_BYTES = 64 * MIB
MAX_IMAGE_PIXELS = 40_000_000
# Scans of one JPEG: a progressive JPEG is decoded in one pass over the image per scan (photos
# have about 10; tens of thousands in 2 MB decode for minutes). NVIDIA nvImageCodec's default.
MAX_JPEG_SCANS = 256
# The tl_keras metadata (class names etc.) of one model file or SavedModel folder.
MAX_METADATA_BYTES = 16 * MIB
# Any JSON tl_keras reads back (metrics files, backup settings, metadata): its size, and how
# deep it may nest (json.loads recurses once per level; tl_keras writes at most 5 levels).
MAX_JSON_BYTES = 16 * MIB
MAX_JSON_DEPTH = 64
# The zip directory of an .npz data file, checked before it is parsed (a target has 4 arrays;
# each entry takes at least 46 bytes, and zipfile about 0.5 KiB to hold it).
MAX_NPZ_ENTRIES = 1024
MAX_NPZ_DIRECTORY_BYTES = 1 * MIB
# Images as the model takes them (float32 at its input size), held in memory for an .npz or
# mnist: target (train and test; unlabelled images apart): counted after framing, so that
# many 1x1 images in a small file do not become gigabytes (full MNIST at 28x28: 210 MiB).
# MAX_FITTED_DATA_BYTES: derived from the memory budget (_SCALED below).
# The fitted images of a dir: target kept in memory with --image_cache=auto; a larger folder
# is streamed from its files (224x224 RGB: about 850 images).
# MAX_IMAGE_CACHE_BYTES: derived from the memory budget (_SCALED below).
# Activations of one batch while predicting (each layer's inputs, outputs and internal tensors
# such as attention scores, times the batch size): prediction picks its batch size to fit.
# MAX_BATCH_ACTIVATION_BYTES = 512 MiB; training refuses a batch whose one layer's step
# (forward and gradient) would take more than MAX_TRAINING_STEP_BYTES = 1024 MiB.

# Limit name -> its fraction of the memory budget.
_SCALED = {
  "MAX_MODEL_BYTES": 2.0,
  "MIN_MODEL_BUDGET_BYTES": 1 / 16,
  "MAX_ATTRIBUTE_READ_BYTES": 1.0,
  "MAX_ACTIVATION_BYTES": 1 / 4,
  "MAX_DATA_BYTES": 1 / 2,
  "MAX_FITTED_DATA_BYTES": 1 / 2,
  "MAX_IMAGE_CACHE_BYTES": 1 / 2,
  "MAX_BATCH_ACTIVATION_BYTES": 1 / 2,
  "MAX_TRAINING_STEP_BYTES": 1.0,
  # The weights of all models held at once (tl-fuse's members): 512 MiB.
  "MAX_FUSED_WEIGHT_BYTES": 1 / 2,
  # Classes of a target or outputs of a model (each sets a row of logits, one-hot labels,
  # per-class metrics and loops): one per 64 KiB of the budget, 16,384 at the default.
  "MAX_CLASSES": 1 / (64 * 1024),
}


def memory_budget_mb() -> int:
  """The memory budget in MiB: `memory_budget`'s, else $TL_KERAS_MEMORY_BUDGET_MB, else 1024."""
  chosen = _budget_mb.get()
  if chosen is not None:
    return chosen
  text = os.environ.get(BUDGET_ENV, "").strip()
  if not text:
    return DEFAULT_MEMORY_BUDGET_MB
  low, high = MEMORY_BUDGET_RANGE_MB
  if not text.isdigit() or not low <= int(text) <= high:
    raise UserError(f"${BUDGET_ENV} must be a whole number of MiB from {low} to {high}")
  return int(text)


@contextlib.contextmanager
def memory_budget(mb: int | None) -> Iterator[None]:
  """Within the block, the budget is `mb` MiB (None: the environment's or the default)."""
  token = _budget_mb.set(mb)
  try:
    yield
  finally:
    _budget_mb.reset(token)


def __getattr__(name: str) -> int:
  """The limits of `_SCALED`, from the budget as it is now."""
  if name in _SCALED:
    return int(_SCALED[name] * memory_budget_mb() * MIB)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
