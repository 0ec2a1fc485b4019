"""Where a model file is read by code that is not ours (h5py, zipfile, Keras, TensorFlow):
what that code raises on a bad file becomes a one-line refusal. Exceptions from tl_keras's own
code are not caught here, so a bug reaches the internal-error path."""

import contextlib
from collections.abc import Iterator

from tl_keras.errors import UserError

# What h5py raises on a corrupt or unusual file (TypeError: a type with no NumPy equivalent).
H5_ERRORS = (RuntimeError, KeyError, ValueError, TypeError)


def cannot_load(source: str, error: BaseException) -> UserError:
  """The refusal for a file that a reader failed on, naming what it raised."""
  return UserError(
    f"cannot load model {source} ({type(error).__name__}: {' '.join(str(error).split())[:300]})"
  )


@contextlib.contextmanager
def deserialising(source: str, refusals: list | None = None) -> Iterator[None]:
  """Around Keras or TensorFlow building a model from the (already checked) file: anything
  they raise is the file's doing, a refusal; `refusals` holds what `budgets.variable_budget`
  refused, if it stopped the build."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:
    if refusals:
      raise UserError(
        f"refusing to load {source}: its config builds {refusals[0] / 2**20:,.0f}"
        " MiB of weights or more, more than the file stores"
      ) from e
    raise cannot_load(source, e) from e
