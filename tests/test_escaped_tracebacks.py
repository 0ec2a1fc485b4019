"""Untrusted text reaching the process: --verbosity=1 tracebacks reach the terminal escaped, as
every other message does (a layer or file name from the input cannot rewrite the screen), and
TF_CONFIG is parsed bounded and type-checked, one line on anything malformed."""

import textwrap

import pytest
from conftest import run_command

_RAISE = textwrap.dedent("""
  import sys
  from tl_keras import cli
  from tl_keras.errors import UserError
  cli._start = lambda: None  # no TensorFlow: the stage below raises at once
  def fail(config):
    raise {exception}("layer \\x1b[2K\\rtransfer done: test accuracy 99.9%\\x07")
  cli._run_transfer = fail
  sys.argv = ["tl-transfer", "--verbosity=1", "--output_dir=" + sys.argv[1]]
  cli.transfer_main()
""")


@pytest.mark.parametrize(("exception", "code"), [("UserError", 2), ("RuntimeError", 1)])
def test_a_traceback_quoting_escape_sequences_is_escaped(tmp_path, exception, code):
  result = run_command(["-c", _RAISE.format(exception=exception), str(tmp_path / "out")])
  assert result.returncode == code, result.stderr[-3000:]
  assert "Traceback" in result.stderr and "\\x1b[2K\\rtransfer done" in result.stderr
  assert not any(ord(c) < 32 and c != "\n" for c in result.stderr), result.stderr[-1000:]
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
  ("text", "message"),
  [
    ("[" * 100_000 + "]" * 100_000, "nests JSON 100,000 levels deep"),
    ('{"cluster": {"worker": ["h:1"]}, "task": "' + "x" * (2 << 20) + '"}', "bytes of JSON"),
    ("[1, 2]", "holds list JSON where an object belongs"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": NaN}}', "not valid"),
  ],
)
def test_a_hostile_tf_config_is_one_line(text, message):
  from tl_keras.errors import UserError
  from tl_keras.training import distribute

  with pytest.raises(UserError, match=message) as error:
    distribute.check_tf_config(text)
  assert str(error.value).startswith("invalid TF_CONFIG for --strategy=multi_worker: ")
  assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_metrics_are_written_as_strict_json_the_bounded_reader_reads_back(tmp_path):
  import numpy as np

  from tl_keras import untrusted
  from tl_keras.outputs import files

  path = str(tmp_path / "x_metrics.json")
  files.write_json(path, {"logme": float("nan"), "history": [np.float64("inf"), 0.5]})
  assert untrusted.read_json(path) == {"logme": None, "history": [None, 0.5]}
