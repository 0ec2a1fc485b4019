"""Ctrl-C and SIGTERM: every stage stops, even inside TensorFlow's C++ code, with one line on
stderr and no half-written file. Real processes, real signals."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from conftest import leftovers
from conftest import stop
from conftest import wait_for

from tl_keras.training import resume

# Every test here starts processes or trains: the full suite only.
pytestmark = pytest.mark.slow

# A shell reports a process killed by signal N as exit status 128 + N: 130 and 143. A process
# that ends on the signal it was sent (exit code -N, after removing its temporary files) has
# stopped on it; one that does not is killed after a minute and reports -9, so no test here
# measures time.


def test_importing_the_package_leaves_signals_alone():
  # The library in someone else's program: no handler, no blocked signal, no watcher thread.
  code = textwrap.dedent("""
      import signal, threading
      from tl_keras import cli, interrupts
      from tl_keras.outputs import model_io
      from tl_keras.stages import finetune, pipeline, pretrain, transfer
      print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            signal.getsignal(signal.SIGINT) is signal.default_int_handler,
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
            [t.name for t in threading.enumerate() if t.name.startswith("tl_keras")])
  """)
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split("\n")[0] == "[] True True []"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_signal_removes_the_files_being_written(sig, tmp_path):
  # Two atomic writes in progress, a file and a folder, when the signal comes.
  code = textwrap.dedent("""
      import os, sys, time
      from tl_keras import interrupts
      interrupts.install()
      from tl_keras.outputs import files
      out = sys.argv[1]
      with files.atomic_path(os.path.join(out, "model.h5")) as temp, \\
          files.atomic_path(os.path.join(out, "savedmodel"), is_dir=True) as temp_dir:
        with open(temp, "w") as f:
          f.write("half")
        with open(os.path.join(temp_dir, "saved_model.pb"), "w") as f:
          f.write("half")
        print("writing", flush=True)
        time.sleep(120)
  """)
  out = tmp_path / "out"
  out.mkdir()
  process = subprocess.Popen(
    [sys.executable, "-c", code, str(out)],
    cwd=REPO_ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  assert process.stdout.readline() == "writing\n", process.communicate()[1][-3000:]
  assert len(leftovers(out)) == 2
  # The child would sleep two minutes: ending on the signal is stopping on it.
  assert stop(process, sig) == -sig
  lines = process.stderr.read().splitlines()  # TF's start-up chatter, then ours
  assert [line for line in lines if line.startswith("error")] == [
    f"error: interrupted by {sig.name}"
  ] and lines[-1].startswith("error"), lines
  assert os.listdir(out) == []


def test_ctrl_c_stops_finetune_while_it_trains(source_model, small_mnist_dir, tmp_path):
  out = tmp_path / "out"
  backup = resume.backup_dir(str(out), "finetune")
  with open(tmp_path / "stdout.log", "w") as log, open(tmp_path / "stderr.log", "w+") as err:
    process = subprocess.Popen(
      [
        sys.executable,
        "scripts/finetune.py",
        f"--model={source_model[0]}",
        f"--data_dir={small_mnist_dir}",
        f"--output_dir={out}",
        "--epochs=200",
        "--batch_size=32",
      ],
      cwd=REPO_ROOT,
      stdout=log,
      stderr=err,
    )
    try:
      # Training: the first epoch's backup is on disk, and the next epoch is under way.
      wait_for(lambda: resume.has_backup(backup), process, "training")
      time.sleep(0.5)
      code = stop(process, signal.SIGINT)
    finally:
      if process.poll() is None:
        process.kill()
    err.seek(0)
    stderr = err.read()
  # 200 epochs would take minutes: ending on the signal is stopping on it.
  assert code == -signal.SIGINT, (code, stderr[-3000:])
  assert stderr.splitlines() == ["error: interrupted by SIGINT"]
  assert leftovers(out) == []
  assert not (out / "target_model.h5").exists()
  assert resume.has_backup(backup)  # the same command resumes from there


def _never_returning_model(path):
  """A non-Keras SavedModel (TF Hub's reusable form) whose forward pass loops forever: its loop
  bound is computed from the input, so no graph optimisation removes the loop."""

  class Forever(tf.Module):
    def __init__(self):
      super().__init__()
      self.scale = tf.Variable(1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def __call__(self, images):
      limit = tf.reduce_min(images) - 1.0  # below 0 for images in [0, 1]
      (count,) = tf.while_loop(lambda i: i > limit, lambda i: (i + 1.0,), (tf.constant(0.0),))
      return tf.reshape(images, [-1, 28 * 28])[:, :5] * self.scale + count * 0.0

  module = Forever()
  root = tf.train.Checkpoint()
  root.__call__ = module.__call__
  root.variables = [module.scale]
  root.trainable_variables = [module.scale]
  tf.saved_model.save(root, str(path))
  return str(path)


def _stuck_in_native_code(pid, window=2.0):
  """True if over `window` seconds the main thread sleeps (waiting on TensorFlow) while the
  process keeps a CPU busy: TF's threads run a graph that does not return."""

  def main_state():
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0]

  def cpu_ticks():
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
      try:
        with open(f"/proc/{pid}/task/{task}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      total += int(fields[11]) + int(fields[12])  # utime, stime
    return total

  try:
    start = cpu_ticks()
    for _ in range(int(window / 0.25)):
      if main_state() != "S":
        return False
      time.sleep(0.25)
    return (cpu_ticks() - start) / os.sysconf("SC_CLK_TCK") > 0.75 * window
  except OSError:  # it has ended
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_sigterm_stops_a_model_that_never_returns(small_mnist_dir, tmp_path):
  # A Python signal handler would never run here: the main thread waits inside TF's C++ code.
  model = _never_returning_model(tmp_path / "forever")
  out = tmp_path / "out"
  pid_file = tmp_path / "pid"
  # Through a shell, to see the exit status it reports.
  shell = ['"$@" & echo $! > "$PID_FILE"; wait $!; echo "exit status $?"']
  process = subprocess.Popen(
    [
      "bash",
      "-c",
      *shell,
      "bash",
      sys.executable,
      "scripts/transfer.py",
      f"--model={model}",
      f"--data_dir={small_mnist_dir}",
      f"--output_dir={out}",
    ],
    cwd=REPO_ROOT,
    env=dict(os.environ, PID_FILE=str(pid_file)),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  pid = None
  try:
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), process, "started")
    pid = int(pid_file.read_text())
    wait_for(lambda: _stuck_in_native_code(pid), process, "stuck in the model")
    os.kill(pid, signal.SIGTERM)
    # The model never returns: the command ending at all is stopping on the signal.
    stdout, stderr = process.communicate(timeout=60)
  finally:
    if pid and process.poll() is None:
      try:
        os.kill(pid, signal.SIGKILL)  # not left spinning
      except ProcessLookupError:
        pass
    if process.poll() is None:
      process.kill()
      process.wait()
  assert stdout.splitlines()[-1] == "exit status 143", (stdout[-2000:], stderr[-3000:])
  assert stderr.splitlines() == ["error: interrupted by SIGTERM"]
  assert leftovers(out) == [] and not os.listdir(out)
