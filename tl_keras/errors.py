"""Messages meant for the user, not a traceback: errors that stop a command, and warnings."""

import sys


class UserError(Exception):
  """Bad input from the user (flags, files, data); the CLI prints it on one line, exit 2."""


def warn(message: str) -> None:
  """Prints `warning: MESSAGE` on stderr: something the user should know, but not fatal."""
  print(f"warning: {message}", file=sys.stderr, flush=True)
