"""README's figures for the limits on untrusted input are the code's (a test reads both)."""

import os
import re

import pytest
from conftest import REPO_ROOT

from tl_keras import limits

README = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
MIB = limits.MIB

# (a README phrase with one number in it, the value in the code)
PROMISES = [
  (r"at most `--max_model_mb` \((\d+)\) MiB of declared tensors", limits.MAX_MODEL_BYTES // MIB),
  (r"no more than (\d+) times what the file stores", limits.MAX_INFLATION),
  (r"what the file stores plus (\d+) MiB", limits.MIN_MODEL_BUDGET_BYTES // MIB),
  (r"configs and Keras metadata up to (\d+) MiB", limits.MAX_CONFIG_BYTES // MIB),
  (r"graphs up to (\d+) MiB", limits.MAX_MODEL_DESCRIPTION_BYTES // MIB),
  (r"no layer may output more than (\d+) MiB per image", limits.MAX_ACTIVATION_BYTES // MIB),
  (r"arrays larger than (\d+) MiB", limits.MAX_DATA_BYTES // MIB),
  (r"or (\d+) MiB \(a decompression bomb\)", limits.MAX_IMAGE_FILE_BYTES // MIB),
  (r"(\d+) MiB and 40 megapixels by its header", limits.MAX_IMAGE_FILE_BYTES // MIB),
  (r"MiB and (\d+) megapixels by its header", limits.MAX_IMAGE_PIXELS // 1_000_000),
]


@pytest.mark.parametrize(("phrase", "value"), PROMISES, ids=[p for p, _ in PROMISES])
def test_readme_states_the_limit_the_code_enforces(phrase, value):
  found = re.findall(phrase, re.sub(r"\s+", " ", README))
  assert found, f"README no longer says {phrase!r}: update it or this test"
  assert {int(number) for number in found} == {value}
