"""The package's layers: each module imports only modules of its own layer or below, and the
bottom layers and the CLI start without TensorFlow (these processes start no TensorFlow, so
they run in the fast tier)."""

import ast
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from conftest import run_command

PACKAGE_DIR = os.path.join(REPO_ROOT, "tl_keras")
# Bottom to top; a package stands for all its modules.
LAYERS = (
  (
    "tl_keras",
    "version",
    "sinks",
    "errors",
    "limits",
    "ranges",
    "config",
    "artifacts",
    "keras_api",
    "interrupts",
    "untrusted",
  ),
  ("data",),
  ("models", "adaptation", "loading", "evaluation", "ranking"),
  ("training",),
  ("outputs",),
  ("api",),
  ("stages",),
  ("cli",),
)
# Inside a package, modules import only modules of their own package's layer or below; the
# finer order inside `data` (preprocessing, then the readers, then targets and pipelines) is
# kept by each module importing only what it names.
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
COMMANDS = ("pretrain", "transfer", "finetune", "pipeline", "export", "fuse", "rank")


def _modules():
  """{dotted name: path} of every module of the package."""
  modules = {}
  for folder, _, filenames in os.walk(PACKAGE_DIR):
    for filename in filenames:
      if filename.endswith(".py"):
        path = os.path.join(folder, filename)
        parts = os.path.relpath(path, REPO_ROOT)[: -len(".py")].split(os.sep)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return modules


def _layer(module: str) -> int:
  """The layer of `tl_keras.X...`: X's (the package itself is at the bottom)."""
  parts = module.split(".")
  return LEVEL[parts[1] if len(parts) > 1 else "tl_keras"]


def _imported(path: str):
  """The tl_keras modules `path` imports anywhere (inside functions too)."""
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from tl_keras.outputs import files` imports tl_keras.outputs.files (or a name of it).
      names = [f"{node.module}.{alias.name}" for alias in node.names]
      names = [
        name if name.split(".")[1] in LEVEL or len(name.split(".")) > 2 else node.module
        for name in names
      ]
    else:
      continue
    yield from (name for name in names if name.split(".")[0] == "tl_keras")


def test_every_module_has_a_layer():
  assert sorted({name.split(".")[1] for name in _modules() if "." in name}) == sorted(
    set(LEVEL) - {"tl_keras"}
  )


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_go_down_the_layers(module):
  above = [name for name in _imported(_modules()[module]) if _layer(name) > _layer(module)]
  assert not above, f"{module} (layer {_layer(module)}) imports {above} from a layer above"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_imports_the_package_root(module):
  """The root's lazy `__init__` is the public API: inside the package, each module imports the
  modules it uses (`from tl_keras.version import __version__`), never `tl_keras` itself."""
  assert "tl_keras" not in set(_imported(_modules()[module])), (
    f"{module} imports the package root; import the module that holds the name instead"
  )


def test_the_root_import_check_can_fail(tmp_path):
  """Each way of naming the root is caught; importing a module of the package is not."""
  cases = {
    "import tl_keras\n": True,
    "def f():\n  import tl_keras as t\n": True,
    "from tl_keras import __version__\n": True,
    "from tl_keras import load_model\n": True,
    "from tl_keras import artifacts\n": False,
    "from tl_keras.version import __version__\n": False,
    "import tl_keras.data.mnist\n": False,
  }
  for index, (code, names_root) in enumerate(cases.items()):
    path = tmp_path / f"m{index}.py"
    path.write_text(code)
    assert ("tl_keras" in set(_imported(str(path)))) is names_root, code


@pytest.mark.parametrize(
  "module", ["tl_keras.config.settings", "tl_keras.artifacts", "tl_keras.cli"]
)
def test_imports_without_tensorflow(module):
  code = (
    f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('tensorflow')))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_answers_without_tensorflow(command):
  result = run_command(["-X", "importtime", f"scripts/{command}.py", "--help"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--output_dir" in result.stdout
  imported = [
    line.rsplit("|", 1)[-1].strip()
    for line in result.stderr.splitlines()
    if line.startswith("import time:")
  ]
  assert "absl" in imported and not [name for name in imported if "tensorflow" in name]


def test_flag_errors_answer_without_tensorflow():
  result = run_command(["-X", "importtime", "scripts/finetune.py", "--epochs=0"])
  assert result.returncode == 2
  assert "error: --epochs must be a whole number from 1 to 10_000, got 0" in result.stderr
  assert "tensorflow" not in result.stderr


def test_only_the_cli_stages_and_config_import_the_settings():
  """Components take plain arguments or their own small config (#27 item 1): only the CLI,
  the stages and config/ see the whole-command settings."""
  settings_module = "tl_keras.config.settings"
  importers = {
    module
    for module, path in _modules().items()
    if any(
      name == settings_module or name.startswith(settings_module + ".") for name in _imported(path)
    )
  }
  others = {
    module
    for module in importers
    if module != "tl_keras.cli" and not module.startswith(("tl_keras.stages.", "tl_keras.config."))
  }
  assert not others, f"{sorted(others)} import {settings_module}"
