"""What the benches share: running the project's scripts as fresh processes, reading JSON."""

import argparse
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(command, env=None):
  """Runs `command` in the repository: (wall seconds, its stdout); exits with its stderr if it
  fails."""
  start = time.perf_counter()
  completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if completed.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
  return seconds, completed.stdout


def run(script, *flags):
  """Runs scripts/SCRIPT.py with `flags`; exits with its stderr if it fails."""
  timed([sys.executable, f"scripts/{script}.py", *flags])


def parser_with_data_dir(description):
  """An argument parser taking --data_dir (default: $TL_KERAS_DATA_DIR, else the shared
  datasets beside the repository)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument(
    "--data_dir",
    default=os.environ.get(
      "TL_KERAS_DATA_DIR", os.path.join(REPO_ROOT, "..", "shared", "datasets")
    ),
  )
  return parser


def read(folder, name):
  """The JSON file `name` in `folder`."""
  with open(os.path.join(folder, name)) as f:
    return json.load(f)
