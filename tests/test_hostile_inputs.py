"""Hostile inputs, rounds three and four (#26): escaped strings, bounded JSON, an untrusted
output folder, sizes after framing, decoder work and failures the environment causes.

Each test builds its payload, small and fast, and checks the promise: exit 2 with one line on
stderr (or exit 0 where the input is handled), no raw control character in what is printed,
nothing outside the output folder changed, and where memory is the point the child's peak RSS.
"""

import json
import os
import random
import re
import shutil
import sys
import unicodedata

import h5py
import numpy as np
import pytest
from conftest import run_command

from tl_keras import sinks
from tl_keras import untrusted
from tl_keras.errors import UserError
from tl_keras.keras_api import keras

# Raw characters that must never reach a terminal: C0 controls but newline (a message's end),
# DEL and the C1 controls (U+009B is a one-byte CSI).
_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_MARKER = b"outside the output folder: must survive byte for byte\n"


def _no_raw_control(*texts):
  for text in texts:
    found = _RAW_CONTROL.findall(text)
    assert not found, f"raw control characters {found[:5]} in {text[-500:]!r}"


def _one_error_line(result, code=2):
  """The only stderr line, `error: ...`, of a process that exited with `code`."""
  assert result.returncode == code, result.stdout[-2000:] + result.stderr[-3000:]
  _no_raw_control(result.stdout, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


def _marker(tmp_path, name="outside"):
  """A folder outside the output folder with a marker file in it: (folder, marker path)."""
  folder = tmp_path / name
  folder.mkdir()
  (folder / "marker.txt").write_bytes(_MARKER)
  return folder, folder / "marker.txt"


# --- item 5: untrusted strings escaped for their sink ---------------------------------------


def test_terminal_sink_escapes_every_control_character_fuzzed():
  rng = random.Random(26)
  specials = "\x1b\r\x07\x08\x00\x7f\x85\x9b\u202e\u2028\ufeff\n\t"
  for _ in range(400):
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    for text in (
      raw.decode("latin-1"),
      raw.decode("utf-8", "replace"),
      raw.decode("utf-8", "surrogateescape"),
      "".join(rng.choice(specials + "ab[]") for _ in range(20)),
    ):
      shown = sinks.terminal(text)
      assert not [c for c in shown if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029"]
      _no_raw_control(shown)
      if text.isprintable():
        assert shown == text  # printable text, accents and all, is left alone
  assert sinks.terminal("a\x1b[2K\rb\x07\x9bc\u202ed") == "a\\x1b[2K\\rb\\x07\\x9bc\\u202ed"
  assert sinks.terminal_lines("one\x1b\ntwo") == "one\\x1b\ntwo"


def test_markdown_and_csv_sinks():
  assert sinks.markdown("![x](t.png)\x1b|") == "\\!\\[x\\]\\(t.png\\)\\u001b\\|"
  assert [sinks.csv_cell(t) for t in ("=1", "-2", "@x", "\tx", "a=b")] == [
    "'=1",
    "'-2",
    "'@x",
    "'\tx",
    "a=b",
  ]


def test_warnings_escape_control_characters(capsys):
  from tl_keras.errors import warn

  warn("skipped x\x1b]0;title\x07.png")
  err = capsys.readouterr().err
  assert err == "warning: skipped x\\x1b]0;title\\x07.png\n"


_FAKE = "\x1b[2K\r\x1b[32mtransfer done: test accuracy 99.9%\x1b[0m"


def _model_with_layer_name(tmp_path, name):
  """A tiny .h5 model whose Flatten layer's name, in the file's config, is `name` (Keras would
  not save such a name itself)."""
  inputs = keras.Input((28, 28, 1), name="image")
  x = keras.layers.Flatten(name="flat_evil")(inputs)
  model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="dense")(x))
  path = tmp_path / "evil.h5"
  model.save(path)
  with h5py.File(path, "a") as f:
    config = f.attrs["model_config"]
    config = config.decode() if isinstance(config, bytes) else config
    f.attrs["model_config"] = config.replace("flat_evil", json.dumps(name)[1:-1])
  return path


def test_escape_sequences_in_layer_names_and_paths_never_reach_the_terminal(tmp_path):
  model = _model_with_layer_name(tmp_path, "flat" + _FAKE)
  output_dir = tmp_path / "out"
  result = run_command(
    [
      "scripts/transfer.py",
      f"--model={model}",
      f"--output_dir={output_dir}",
      "--target=npz:/nonexistent" + _FAKE + ".npz",
    ]
  )
  line = _one_error_line(result)
  assert "\\x1b[2K" in line and "\\x1b[32m" in line, line
  # A path given as a flag, echoed in the refusal.
  result = run_command(
    [
      "scripts/transfer.py",
      f"--model={tmp_path / 'missing'}{_FAKE}.h5",
      f"--output_dir={output_dir}",
      "--target=mnist:5-9",
    ]
  )
  line = _one_error_line(result)
  assert "\\x1b[2K" in line and "\\x1b[32m" in line, line

