"""What the benches share: running the project's scripts as fresh processes, reading JSON."""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *flags):
  """Runs scripts/SCRIPT.py with `flags`; exits with its stderr if it fails."""
  command = [sys.executable, f"scripts/{script}.py", *flags]
  completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
  if completed.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")


def read(folder, name):
  """The JSON file `name` in `folder`."""
  with open(os.path.join(folder, name)) as f:
    return json.load(f)
