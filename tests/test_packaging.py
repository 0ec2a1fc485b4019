"""Packaging: setup.cfg holds the metadata once, and a wheel built from it installs the seven
commands with the dependencies setup.cfg names."""

import configparser
import email.parser
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO_ROOT

COMMANDS = ("pretrain", "transfer", "finetune", "pipeline", "export", "fuse", "rank")
ALLOWLISTS = os.path.join("tl_keras", "loading", "allowlists")


def _setup_cfg():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO_ROOT, "setup.cfg"))
  return parser


def _lines(value):
  return [line.strip() for line in value.splitlines() if line.strip()]


def _name(requirement):
  """The distribution name a requirement line starts with, normalized (PEP 503)."""
  return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def test_pyproject_holds_only_the_build_system_and_tool_settings():
  with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
    tables = set(re.findall(r"^\[+([^\]]+)\]", f.read(), re.MULTILINE))
  assert "build-system" in tables and {"tool.ruff", "tool.pytest.ini_options"} <= tables
  assert not [t for t in tables if t != "build-system" and not t.startswith("tool.")], tables
  assert not [t for t in tables if t.startswith("tool.setuptools")], "metadata: setup.cfg"


def test_setup_cfg_names_each_dependency_and_the_version_once():
  config = _setup_cfg()
  requirements = _lines(config["options"]["install_requires"])
  for extra in config["options.extras_require"].values():
    requirements += _lines(extra)
  names = [_name(requirement) for requirement in requirements]
  assert len(names) == len(set(names)), names
  assert {"tensorflow", "tf-keras", "pytest"} <= set(names)
  # The version is read from the module, not written here.
  assert config["metadata"]["version"] == "attr: tl_keras.version.__version__"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """A wheel built offline from a copy of the sources (so no build/ lands in the checkout)."""
  source = tmp_path_factory.mktemp("source")
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO_ROOT, name), source)
  shutil.copytree(
    os.path.join(REPO_ROOT, "tl_keras"),
    source / "tl_keras",
    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
  )
  out = tmp_path_factory.mktemp("wheel")
  result = subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    + ["--wheel-dir", str(out), str(source)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  (path,) = out.glob("*.whl")
  return path


def _dist_info(wheel_path, filename):
  with zipfile.ZipFile(wheel_path) as archive:
    (name,) = [n for n in archive.namelist() if n.endswith(f".dist-info/{filename}")]
    return archive.read(name).decode()


@pytest.mark.slow
def test_wheel_metadata_is_setup_cfg(wheel):
  from tl_keras.version import __version__

  config = _setup_cfg()
  metadata = email.parser.Parser().parsestr(_dist_info(wheel, "METADATA"))
  assert _name(metadata["Name"]) == "tl-keras"
  assert metadata["Version"] == __version__
  assert metadata["Requires-Python"] == config["options"]["python_requires"] == ">=3.10"
  required = metadata.get_all("Requires-Dist")
  core = sorted(r.replace(" ", "") for r in required if "extra ==" not in r)
  assert core == sorted(_lines(config["options"]["install_requires"]))
  assert any(r.startswith("pytest") and 'extra == "test"' in r for r in required)
  assert {"test", "dev"} <= set(metadata.get_all("Provides-Extra"))


@pytest.mark.slow
def test_wheel_installs_the_seven_commands(wheel, tmp_path):
  entry_points = configparser.ConfigParser()
  entry_points.read_string(_dist_info(wheel, "entry_points.txt"))
  scripts = dict(entry_points["console_scripts"])
  assert scripts == {f"tl-{command}": f"tl_keras.cli:{command}_main" for command in COMMANDS}
  # Installed (not editable) into a folder of its own, each command answers --help from it.
  target = tmp_path / "installed"
  result = subprocess.run(
    [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target)]
    + [str(wheel)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  env = dict(os.environ, PYTHONPATH=str(target))
  where = subprocess.run(
    [sys.executable, "-c", "import tl_keras; print(tl_keras.__file__)"],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert where.stdout.strip() == str(target / "tl_keras" / "__init__.py"), where.stderr
  for command in COMMANDS:
    result = subprocess.run(
      [str(target / "bin" / f"tl-{command}"), "--help"],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--output_dir" in result.stdout


@pytest.mark.slow
def test_wheel_carries_the_loader_allowlists(wheel):
  allowlists = os.path.join(REPO_ROOT, ALLOWLISTS)
  if not os.path.isdir(allowlists):
    pytest.skip("tl_keras/loading/allowlists/ does not exist yet")
  expected = {
    f"{ALLOWLISTS.replace(os.sep, '/')}/{name}"
    for name in os.listdir(allowlists)
    if name.endswith(".txt")
  }
  assert expected
  with zipfile.ZipFile(wheel) as archive:
    assert expected <= set(archive.namelist())
