"""Errors that carry a message meant for the user, not a traceback."""


class UserError(Exception):
  """Bad input from the user (flags, files, data); the CLI prints it on one line, exit 2."""
