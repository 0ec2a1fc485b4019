"""Command-line entry points: absl flags for each stage and the pipeline.

Each command's flags are generated from its stage config (`settings`): the command turns them
into the config, validates it (every config of the pipeline before its first stage), and only
then imports TensorFlow and the stage and runs it, so --help and bad flags answer at once. How
a command ends:

- bad input (`UserError`, a bad flag value): one line `error: ...` on stderr (newlines in
  the message joined), exit code 2, nothing written to the output folder;
- any other exception, a bug or a failure of TensorFlow's: one line
  `error: internal error (TypeName: message); rerun with --verbosity=1 for the traceback`,
  exit code 1;
- Ctrl-C (SIGINT) or SIGTERM, even inside TensorFlow's C++ code: within a second or two, one
  line `error: interrupted by SIGINT` (or SIGTERM), temporary files deleted, and the process
  ends by that signal (a shell shows exit status 130 or 143); see `interrupts`. Training
  backups stay in OUTPUT_DIR/.tl_keras_backup, so the same command resumes.

`--verbosity=1` or higher adds the traceback to the first two. Only the `*_main` functions
touch signal handling and import TensorFlow, once the flags are valid: importing this module
does neither.
"""

import contextlib
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging

from tl_keras import interrupts
from tl_keras import limits
from tl_keras import sinks
from tl_keras.config import settings
from tl_keras.errors import UserError
from tl_keras.errors import native_stderr_captured
from tl_keras.errors import warn

FLAGS = flags.FLAGS


def _start():
  """Start-up once the flags are valid: signal handling first, then TensorFlow, whose threads
  inherit the blocked signals (see `interrupts`)."""
  interrupts.install()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # TensorFlow's own modules (SavedModel saving among them) would import Keras 3 as tf.keras
  # beside the tf_keras we use (see keras_api): about 0.5-1 s of every stage's start-up.
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  with native_stderr_captured():
    import tensorflow as tf

    tf.config.list_physical_devices("GPU")  # logs CUDA probing once, here
  tf.get_logger().setLevel("ERROR")  # TF's Python INFO/WARNING chatter (SavedModel export etc.)


def _one_line(text):
  """`text` with its lines joined by spaces."""
  return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _first_line(text, limit=300):
  """The first line of `text`, cut to `limit` characters."""
  lines = str(text).strip().splitlines()
  first = lines[0].strip() if lines else ""
  return first if len(first) <= limit else first[: limit - 3] + "..."


def _print_error(message):
  """Prints `error: MESSAGE` on stderr as one line, whatever line breaks MESSAGE holds."""
  print(f"error: {sinks.terminal(_one_line(message))}", file=sys.stderr, flush=True)


def _print_traceback():
  """The traceback being handled on stderr, every line escaped as every message is (it quotes
  file names, layer names and messages that come from the input)."""
  print(sinks.terminal_lines(traceback.format_exc().rstrip("\n")), file=sys.stderr, flush=True)


def _define_flags(config_class) -> None:
  """Defines a flag for every setting of `config_class` (see `settings`), by its type."""
  for owner, field in settings.leaves(config_class()):
    name = settings.flag_name(field)
    if name is None:
      continue
    default = getattr(owner, field.name)
    help_text = settings.flag_help(field)
    kind = settings.value_type(field)
    if field.metadata.get("choices"):
      flags.DEFINE_enum(name, default, list(field.metadata["choices"]), help_text)
    elif kind is bool:
      flags.DEFINE_bool(name, default, help_text)
    elif kind is int:
      flags.DEFINE_integer(name, default, help_text)
    elif kind is float:
      flags.DEFINE_float(name, default, help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


def _config_from_flags(config_class):
  """A `config_class` holding the flags' values."""
  config = config_class()
  for owner, field in settings.leaves(config):
    name = settings.flag_name(field)
    if name is not None:
      setattr(owner, field.name, FLAGS[name].value)
  return config


@contextlib.contextmanager
def _memory_budget(config):
  """The stage runs in the budget --memory_budget_mb names (it wins over the environment's,
  which it replaces for child processes and threads too); flags left at a default derived from
  the budget take the budget's value."""
  budget = config.paths.memory_budget_mb
  if budget is not None:
    os.environ[limits.BUDGET_ENV] = str(budget)
  with limits.memory_budget(budget):
    limits.memory_budget_mb()  # a bad $TL_KERAS_MEMORY_BUDGET_MB is refused here
    for owner, field in settings.leaves(config):
      name = settings.flag_name(field)
      if name == "max_model_mb" and FLAGS[name].using_default_value:
        setattr(owner, field.name, limits.MAX_MODEL_BYTES // limits.MIB)
    yield


def _parse_flags(argv):
  """Parses flags; a bad flag is a one-line error with exit code 2, like any bad input."""
  try:
    remaining = FLAGS(argv)
    if FLAGS["verbosity"].using_default_value:
      # Warnings only: TensorFlow logs INFO through absl on every save (--verbosity=0 shows it).
      # Set here, as absl's app.run raises a default verbosity to INFO after this parser.
      FLAGS.verbosity = -1
    return remaining
  except flags.Error as e:
    _print_error(f"{e}. Try --help.")
    sys.exit(2)
  except SystemExit:
    # absl exits 1 after printing --help; asking for help is not a failure.
    if any(arg.lstrip("-") in ("help", "helpfull", "helpshort", "h", "?") for arg in argv[1:]):
      sys.exit(0)
    raise


def _run(config_class, run_stage, description):
  """Defines the flags of `config_class` and runs `run_stage(config)` under absl once they are
  valid: a UserError is one line on stderr and exit code 2, any other exception one line and
  exit code 1 (see the module docstring)."""
  _define_flags(config_class)

  def guarded_main(argv):
    if len(argv) > 1:
      _print_error(f"unexpected arguments {' '.join(argv[1:])}. Try --help.")
      sys.exit(2)
    try:
      config = _config_from_flags(config_class)
      settings.validate(config)
      with _memory_budget(config):
        for note in settings.notes(config):
          warn(note)
        _start()
        run_stage(config)
    except UserError as e:
      if logging.get_verbosity() >= 1:
        _print_traceback()
      _print_error(e)
      sys.exit(2)
    except Exception as e:
      if logging.get_verbosity() >= 1:
        _print_traceback()
      # TensorFlow's messages can run to pages (node stacks): their first line only.
      first = _first_line(e)
      _print_error(
        f"internal error ({type(e).__name__}{': ' + first if first else ''}); rerun "
        "with --verbosity=1 for the traceback"
      )
      sys.exit(1)

  sys.modules["__main__"].__doc__ = description  # absl's --help starts with it
  for flag in FLAGS.get_flags_for_module(__name__):  # list them in --help, not only --helpfull
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(guarded_main, flags_parser=_parse_flags)


# Each command imports its stage (and so TensorFlow) only once its flags are valid.
def _run_pretrain(config):
  from tl_keras.stages import pretrain

  pretrain.run(config)


def _run_transfer(config):
  from tl_keras.stages import transfer

  transfer.run(config)


def _run_finetune(config):
  from tl_keras.stages import finetune

  finetune.run(config)


def _run_pipeline(config):
  from tl_keras.stages import pipeline

  pipeline.run(config)


def _run_export(config):
  from tl_keras.stages import export

  export.run(config)


def _run_fuse(config):
  from tl_keras.stages import fuse

  fuse.run(config)


def _run_rank(config):
  from tl_keras.stages import rank

  rank.run(config)


def pretrain_main():
  """tl-pretrain: train the source CNN on MNIST digits, save source_model.h5."""
  _run(settings.PretrainConfig, _run_pretrain, pretrain_main.__doc__)


def transfer_main():
  """tl-transfer: predict on target data with a saved model, before any training."""
  _run(settings.TransferConfig, _run_transfer, transfer_main.__doc__)


def finetune_main():
  """tl-finetune: a new head on the source model, trained on the target."""
  _run(settings.FinetuneConfig, _run_finetune, finetune_main.__doc__)


def pipeline_main():
  """tl-pipeline: pretrain, transfer and finetune in sequence into one output folder."""
  _run(settings.PipelineConfig, _run_pipeline, pipeline_main.__doc__)


def export_main():
  """tl-export: TFLite files of a trained model (float32, dynamic-range, float16, full integer),
  each evaluated on the target's test set with the TFLite interpreter."""
  _run(settings.ExportConfig, _run_export, export_main.__doc__)


def fuse_main():
  """tl-fuse: combine several models trained for the same classes into one."""
  _run(settings.FuseConfig, _run_fuse, fuse_main.__doc__)


def rank_main():
  """tl-rank: score candidate source models for the target before finetuning any of them."""
  _run(settings.RankConfig, _run_rank, rank_main.__doc__)
