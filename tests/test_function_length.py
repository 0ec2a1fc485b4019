"""No function in tl_keras/ is longer than 60 lines and no module longer than 500
(DEVELOPERS.md): read from the source, so this test starts no TensorFlow and runs in the fast
tier."""

import ast
import os

from conftest import REPO_ROOT

PACKAGE_DIR = os.path.join(REPO_ROOT, "tl_keras")
MAX_LINES = 60


def function_lengths(path: str) -> dict[str, int]:
  """{qualified name: lines from `def` to its last line, decorators excluded} in `path`."""
  tree = ast.parse(open(path).read(), path)
  lengths = {}

  def visit(node, prefix):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        name = f"{prefix}{child.name}"
        if not isinstance(child, ast.ClassDef):
          lengths[name] = child.end_lineno - child.lineno + 1
        visit(child, f"{name}.")
      else:
        visit(child, prefix)

  visit(tree, "")
  return lengths


def long_functions() -> dict[str, int]:
  """{'module.py:function': lines} of every function in tl_keras/ over MAX_LINES."""
  found = {}
  for folder, _, filenames in os.walk(PACKAGE_DIR):
    for filename in sorted(filenames):
      if filename.endswith(".py"):
        path = os.path.join(folder, filename)
        relative = os.path.relpath(path, REPO_ROOT).replace(os.sep, "/")
        for name, lines in function_lengths(path).items():
          if lines > MAX_LINES:
            found[f"{relative}:{name}"] = lines
  return found


def test_no_function_is_longer_than_60_lines():
  over = long_functions()
  assert not over, f"functions over {MAX_LINES} lines: {over}"


def test_the_length_check_can_fail(tmp_path):
  path = tmp_path / "long.py"
  body = "".join(f"  x{i} = {i}\n" for i in range(MAX_LINES))
  path.write_text(
    f"class A:\n  def method(self):\n{body.replace('  ', '    ')}\ndef short():\n  pass\n"
  )
  assert function_lengths(str(path)) == {"A.method": MAX_LINES + 1, "short": 2}


MAX_MODULE_LINES = 500


def test_no_module_is_longer_than_500_lines():
  over = {}
  for folder, _, filenames in os.walk(PACKAGE_DIR):
    for filename in filenames:
      if filename.endswith(".py"):
        path = os.path.join(folder, filename)
        with open(path) as f:
          count = sum(1 for _ in f)
        if count > MAX_MODULE_LINES:
          over[os.path.relpath(path, REPO_ROOT)] = count
  assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"
