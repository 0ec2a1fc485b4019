"""Messages meant for the user, not a traceback: errors that stop a command, and warnings."""

import contextlib
import os
import sys
import tempfile

from tl_keras import sinks


class UserError(Exception):
  """Bad input from the user (flags, files, data); the CLI prints it on one line, exit 2."""


def warn(message: str) -> None:
  """Prints `warning: MESSAGE` on stderr: something the user should know, but not fatal. Control
  characters in MESSAGE (names from data or model files) are shown escaped (`sinks.terminal`)."""
  print(f"warning: {sinks.terminal(message)}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def native_stderr_captured():
  """Holds back what native code writes to stderr; replays it if the block raises.

  TensorFlow's C++ messages (oneDNN and CUDA stubs at start-up, the TFLite converter's and
  interpreter's) bypass TF_CPP_MIN_LOG_LEVEL and would clutter every command's output.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      # Native messages quote names from the model or data files: escaped, lines kept.
      sys.stderr.write(sinks.terminal_lines(captured.read().decode(errors="replace")))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
