"""Command-line entry points: absl flags for each stage and the pipeline.

Each command defines only its own flags, turns them into the stage's config, validates it
(every config of the pipeline before its first stage), and runs it. How a command ends:

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
touch signal handling and import TensorFlow: importing this module does neither.
"""

import contextlib
import os
import sys
import tempfile
import traceback

from absl import app
from absl import flags
from absl import logging

from tl_keras import interrupts
from tl_keras import ranges
from tl_keras.errors import UserError


@contextlib.contextmanager
def _native_stderr_captured():
  """Holds back what native code writes to stderr; replays it if the block raises.

  TensorFlow's C++ start-up messages (oneDNN, CUDA stubs) bypass TF_CPP_MIN_LOG_LEVEL and
  would open every command's output.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


FLAGS = flags.FLAGS
# The stage modules, imported by `_start` (they import TensorFlow).
data = distribute = finetune = models = pipeline = pretrain = training = transfer = None


def _start():
  """Command start-up: signal handling first, then TensorFlow, whose threads inherit the
  blocked signals (see `interrupts`)."""
  global data, distribute, finetune, models, pipeline, pretrain, training, transfer
  interrupts.install()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with _native_stderr_captured():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices("GPU")  # logs CUDA probing once, here
  tf.get_logger().setLevel("ERROR")  # TF's Python INFO/WARNING chatter (SavedModel export etc.)
  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from tl_keras import data, distribute, finetune, models, pipeline, pretrain, training
  from tl_keras import transfer


def _one_line(text):
  """`text` with its lines joined by spaces."""
  return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _first_line(text, limit=300):
  """The first line of `text`, cut to `limit` characters."""
  lines = str(text).strip().splitlines()
  first = lines[0].strip() if lines else ""
  return first if len(first) <= limit else first[:limit - 3] + "..."


def _print_error(message):
  """Prints `error: MESSAGE` on stderr as one line, whatever line breaks MESSAGE holds."""
  print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)


def _with_range(help_text, name):
  """`help_text` and the allowed range of setting `name`, for --help."""
  allowed = ranges.describe(name)
  return f"{help_text} {allowed[0].upper()}{allowed[1:]}."


def _define_output_flags():
  flags.DEFINE_string("output_dir", "saved_models", "Folder for models, metrics and predictions.")
  flags.DEFINE_string("data_dir", None, "Folder holding mnist.npz (default: $TL_KERAS_DATA_DIR, "
                      "then the Keras cache, downloading there if needed).")


def _define_training_flags():
  defaults = training.TrainSettings
  flags.DEFINE_enum("optimizer", defaults.optimizer, list(models.OPTIMIZERS),
                    "Training optimizer.")
  flags.DEFINE_float("learning_rate", None, _with_range(
      "Learning rate (default per optimizer: " + ", ".join(
          f"{name} {rate:g}" for name, rate in models.DEFAULT_LEARNING_RATES.items()) + ").",
      "learning_rate"))
  flags.DEFINE_integer("batch_size", defaults.batch_size, _with_range(
      "Global batch size, split over the replicas.", "batch_size"))
  flags.DEFINE_integer("seed", defaults.seed, _with_range(
      "Random seed for initialisation and shuffling.", "seed"))
  flags.DEFINE_enum("strategy", defaults.strategy, list(distribute.STRATEGIES),
                    "tf.distribute strategy. auto: all GPUs mirrored, one GPU, else CPU; "
                    "multi_worker reads TF_CONFIG.")
  flags.DEFINE_bool("resume", defaults.resume, "Resume an interrupted run from its last finished "
                    "epoch; --noresume starts over.")
  flags.DEFINE_bool("deterministic", defaults.deterministic, "TF op determinism for identical "
                    "results with the same --seed; --nodeterministic may be faster on GPUs.")
  flags.DEFINE_integer("per_replica_batch_size", None, _with_range(
      "Batch size per replica; when set, the global batch is this times the number of "
      "replicas and --batch_size is ignored.", "per_replica_batch_size"))
  flags.DEFINE_bool("mixed_precision", defaults.mixed_precision, "Float16 compute on GPUs "
                    "(classifier layers stay float32); refused on CPU.")
  flags.DEFINE_bool("jit_compile", defaults.jit_compile, "XLA-compile the training step "
                    "(faster on GPUs, slower on CPU).")
  flags.DEFINE_bool("tensorboard", defaults.tensorboard, "Write TensorBoard logs to "
                    "OUTPUT_DIR/logs/STAGE.")
  flags.DEFINE_bool("augment", defaults.augment, "Random shifts, rotations and zoom of the "
                    "training images.")
  flags.DEFINE_float("validation_split", defaults.validation_split, _with_range(
      "Fraction of each class's training images held out for validation; when set, training "
      "stops early once the validation loss stalls and keeps the best epoch's weights.",
      "validation_split"))
  flags.DEFINE_integer("patience", defaults.patience, _with_range(
      "With --validation_split: epochs without a better validation loss before stopping.",
      "patience"))


def _define_source_flags():
  flags.DEFINE_string("source_classes", pretrain.PretrainConfig.source_classes,
                      "MNIST digits to pretrain on: 'all', or digits and ranges such as '0-4' "
                      "or '0,2,4-6'.")
  flags.DEFINE_string("conv_filters", pretrain.PretrainConfig.conv_filters,
                      "Filters of each convolution of the source CNN, e.g. 16,32 (fast) or "
                      "32,64 (transfers better to a few target labels); one to three, each "
                      f"{ranges.describe('conv_filters')}.")


def _define_target_flags():
  defaults = data.TargetOptions
  flags.DEFINE_string("target", defaults.target,
                      "Target data: 'mnist:CLASSES' (e.g. mnist:5-9; labels become 0..k-1), "
                      "'npz:PATH' (keys x_train y_train x_test y_test; any size, 1 or 3 channels) "
                      "or 'dir:PATH' (a folder per class of PNG/JPEG/BMP/GIF images, optionally "
                      "inside train/ and test/ folders).")
  flags.DEFINE_enum("target_fit", defaults.target_fit, list(data.FITS),
                    "How target images of another size reach the model's input: resize "
                    "(stretch) or pad (keep the aspect ratio, centre, pad with black).")
  flags.DEFINE_float("test_split", defaults.test_split, _with_range(
      "For dir: targets without train/ and test/ folders: the fraction of each class held out "
      "for testing (seeded).", "test_split"))
  flags.DEFINE_integer("train_per_class", defaults.train_per_class, _with_range(
      "Use only this many training images per target class (a seeded, stratified subset).",
      "train_per_class"))


def _define_features_layer_flag():
  flags.DEFINE_string("features_layer", None, "Source layer whose output the new head sits on "
                      "(its later layers are dropped); default: the source classifier's input.")


def _define_finetune_flags():
  defaults = finetune.FinetuneConfig
  _define_features_layer_flag()
  flags.DEFINE_string("unfreeze", defaults.unfreeze,
                      "Source layers that train besides the new head: none, all, last:N (the last "
                      "N layers with weights) or comma-separated layer names. BatchNormalization "
                      "layers always stay frozen, in inference mode.")
  flags.DEFINE_integer("warmup_epochs", defaults.warmup_epochs, _with_range(
      "Epochs that train only the new head before the --unfreeze'd layers join it.",
      "warmup_epochs"))
  flags.DEFINE_float("finetune_learning_rate", None, _with_range(
      "Learning rate after the warmup epochs (default: a tenth of --learning_rate).",
      "finetune_learning_rate"))
  flags.DEFINE_integer("head_units", defaults.head_units, _with_range(
      "Units of a hidden ReLU Dense layer in the new head; 0: the classifier sits directly on "
      "the source features.", "head_units"))
  flags.DEFINE_float("head_dropout", defaults.head_dropout, _with_range(
      "Dropout rate in the new head.", "head_dropout"))
  flags.DEFINE_float("head_l2", defaults.head_l2, _with_range(
      "L2 weight decay on the new head's kernels.", "head_l2"))
  flags.DEFINE_enum("head_init", defaults.head_init, list(models.HEAD_INITS),
                    "How the new classifier starts: random, or probe (a linear probe fitted on "
                    "the frozen source features; best with few target labels).")
  flags.DEFINE_bool("compare_scratch", defaults.compare_scratch, "Also train the same model from "
                    "random weights for as many epochs and report the transfer gain.")


def _define_model_flags():
  flags.DEFINE_string("model", finetune.FinetuneConfig.model, "Source model: an .h5 or .keras "
                      "file, a SavedModel folder or a TF Hub handle.")
  flags.DEFINE_bool("allow_unsafe_deserialization", False,
                    "Load models holding Lambda layers, custom classes or graph ops outside "
                    "the allowlist. This runs code from the file: only for files you trust.")
  flags.DEFINE_integer("max_model_mb", finetune.FinetuneConfig.max_model_mb, _with_range(
      "Refuse model files that declare more tensor data (weights, constants) than this many "
      "MiB.", "max_model_mb"))


def _define_epochs_flag(name, default, help_text):
  flags.DEFINE_integer(name, default, _with_range(help_text, "epochs"))


def _flag_values(*names):
  return {name: FLAGS[name].value for name in names}


_TRAINING_FLAGS = ("output_dir", "data_dir", "optimizer", "learning_rate", "batch_size", "seed",
                   "strategy", "resume", "deterministic", "per_replica_batch_size",
                   "mixed_precision", "jit_compile", "tensorboard", "augment", "validation_split",
                   "patience")
_TARGET_FLAGS = ("target", "target_fit", "test_split", "train_per_class")
_FINETUNE_FLAGS = ("features_layer", "unfreeze", "warmup_epochs", "finetune_learning_rate",
                   "head_units", "head_dropout", "head_l2", "head_init", "compare_scratch")


def _pretrain_config(epochs):
  return pretrain.PretrainConfig(epochs=epochs,
                                 **_flag_values("source_classes", "conv_filters",
                                                *_TRAINING_FLAGS))


def _model_flag_values():
  # The pipeline has no such flags: it only loads the model it has just trained.
  return {name: FLAGS[name].value for name in ("allow_unsafe_deserialization", "max_model_mb")
          if name in FLAGS}


def _finetune_config(epochs, model=None):
  config = finetune.FinetuneConfig(
      epochs=epochs, **_model_flag_values(),
      **_flag_values(*_TARGET_FLAGS, *_FINETUNE_FLAGS, *_TRAINING_FLAGS))
  if model:
    config.model = model
  return config


def _validated(config, epochs_flag):
  """`config` after its validate(), for the pipeline, which checks every stage's settings
  before the first stage runs; errors about `epochs` name `epochs_flag`, the flag that
  fills it."""
  try:
    config.validate()
  except UserError as e:
    raise UserError(str(e).replace("--epochs ", f"--{epochs_flag} ")) from e
  return config


def _transfer_config(model=None):
  config = transfer.TransferConfig(**_model_flag_values(),
                                   **_flag_values(*_TARGET_FLAGS, "data_dir", "output_dir", "seed",
                                                  "features_layer"))
  if model:
    config.model = model
  config.validate()
  return config


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


def _run(main, description):
  """Runs `main` under absl: a UserError is one line on stderr and exit code 2, any other
  exception one line and exit code 1 (see the module docstring)."""
  def guarded_main(argv):
    if len(argv) > 1:
      _print_error(f"unexpected arguments {' '.join(argv[1:])}. Try --help.")
      sys.exit(2)
    try:
      main()
    except UserError as e:
      if logging.get_verbosity() >= 1:
        traceback.print_exc()
      _print_error(e)
      sys.exit(2)
    except Exception as e:  # pylint: disable=broad-except
      if logging.get_verbosity() >= 1:
        traceback.print_exc()
      # TensorFlow's messages can run to pages (node stacks): their first line only.
      first = _first_line(e)
      _print_error(f"internal error ({type(e).__name__}{': ' + first if first else ''}); rerun "
                   "with --verbosity=1 for the traceback")
      sys.exit(1)
  sys.modules["__main__"].__doc__ = description  # absl's --help starts with it
  for flag in FLAGS.get_flags_for_module(__name__):  # list them in --help, not only --helpfull
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(guarded_main, flags_parser=_parse_flags)


def pretrain_main():
  """tl-pretrain: train the source CNN on MNIST digits, save source_model.h5."""
  _start()
  _define_output_flags()
  _define_training_flags()
  _define_epochs_flag("epochs", pretrain.PretrainConfig.epochs, "Training epochs.")
  _define_source_flags()
  _run(lambda: pretrain.run(_pretrain_config(FLAGS.epochs)), pretrain_main.__doc__)


def transfer_main():
  """tl-transfer: predict on target data with a saved model, before any training."""
  _start()
  _define_output_flags()
  _define_model_flags()
  _define_target_flags()
  flags.DEFINE_integer("seed", transfer.TransferConfig.seed, _with_range(
      "Random seed for --train_per_class and --test_split.", "seed"))
  _define_features_layer_flag()
  _run(lambda: transfer.run(_transfer_config(FLAGS.model)), transfer_main.__doc__)


def finetune_main():
  """tl-finetune: a new head on the source model, trained on the target."""
  _start()
  _define_output_flags()
  _define_training_flags()
  _define_epochs_flag("epochs", finetune.FinetuneConfig.epochs, "Training epochs.")
  _define_model_flags()
  _define_target_flags()
  _define_finetune_flags()
  _run(lambda: finetune.run(_finetune_config(FLAGS.epochs, FLAGS.model)), finetune_main.__doc__)


def pipeline_main():
  """tl-pipeline: pretrain, transfer and finetune in sequence into one output folder."""
  _start()
  _define_output_flags()
  _define_training_flags()
  _define_epochs_flag("pretrain_epochs", pretrain.PretrainConfig.epochs,
                      "Epochs of the pretrain stage.")
  _define_epochs_flag("finetune_epochs", finetune.FinetuneConfig.epochs,
                      "Epochs of the finetune stage.")
  _define_source_flags()
  _define_target_flags()
  _define_finetune_flags()

  def run_pipeline():
    # Every stage's settings are checked before the first stage writes anything. The pipeline
    # points transfer and finetune at the model its pretrain stage writes.
    pipeline.run(_validated(_pretrain_config(FLAGS.pretrain_epochs), "pretrain_epochs"),
                 _transfer_config(),
                 _validated(_finetune_config(FLAGS.finetune_epochs), "finetune_epochs"))

  _run(run_pipeline, pipeline_main.__doc__)
