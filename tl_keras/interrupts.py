"""Stopping a command at once on Ctrl-C (SIGINT) or SIGTERM, leaving no half-written file.

A Python signal handler runs only between bytecodes of the main thread, so it never runs
while TensorFlow is inside a C++ call that does not return (a graph that loops forever, a
collective waiting for a dead worker). Instead, `install`, which only the CLI calls, blocks
both signals in the main thread before TensorFlow starts its threads, which inherit the
mask, and a daemon thread waits for them with `sigwait`. On a signal it deletes the
temporary files registered with `track` (outputs.files.atomic_path's), prints one line on stderr
and ends the process by that same signal: the parent sees it killed by SIGINT or SIGTERM,
and a shell reports exit status 130 or 143. Training backups in OUTPUT_DIR/.tl_keras_backup
are kept, so the same command resumes. `install` also points `tempfile` (and TMPDIR, for child
processes) at a folder of this run's own, removed at exit and on a signal alike: TensorFlow's
generated `__autograph_generated_file*.py` and any other temporary file go with it.

Without `install` (the library in your own program) nothing touches signal handling; `track`
only records paths. Child processes the CLI starts inherit the blocked signals.
"""

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long the clean-up waits for a block in `uninterrupted()` (a rename) to finish.
_WAIT_SECONDS = 2.0

_lock = threading.RLock()
_temporaries: dict[str, None] = {}  # in-progress temporary files and folders, in order
_installed = False


def track(path: str) -> None:
  """Registers `path`, a temporary file or folder, for deletion if the command is stopped."""
  with _lock:
    _temporaries[path] = None


def untrack(path: str) -> None:
  """Forgets `path`: it was renamed into place or removed."""
  with _lock:
    _temporaries.pop(path, None)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
  """A short block (creating and tracking a temporary file, renaming it into place) that the
  clean-up lets finish first, so it never sees half of it."""
  with _lock:
    yield


def remove_temporaries() -> None:
  """Deletes every tracked temporary file and folder."""
  with _lock:
    paths = list(_temporaries)
    _temporaries.clear()
  _remove(paths)


def _remove(paths) -> None:
  for path in reversed(paths):
    if os.path.isdir(path) and not os.path.islink(path):
      for _ in range(5):  # TensorFlow's threads may still add a file while it goes
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
          break
    else:
      with contextlib.suppress(OSError):
        os.remove(path)


def install() -> None:
  """Stops the process on SIGINT or SIGTERM at once, even inside TensorFlow's C++ code.

  Call it from the main thread before TensorFlow is imported: threads started earlier keep
  the signals unblocked, and one of them could receive a signal no one acts on. A signal
  ignored when the process started (`nohup`, a shell's background job) stays ignored.
  """
  global _installed
  watched = [s for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
  if _installed or not watched:
    return
  for signum in watched:
    # Dies by the signal when the watcher raises it again; Python's SIGINT handler would
    # only raise KeyboardInterrupt.
    signal.signal(signum, signal.SIG_DFL)
  signal.pthread_sigmask(signal.SIG_BLOCK, watched)
  _use_own_temp_dir()
  try:
    stderr_fd = os.dup(2)  # the terminal, even while the CLI captures native stderr
  except OSError:  # no stderr
    stderr_fd = 2
  threading.Thread(
    target=_watch, args=(watched, stderr_fd), name="tl_keras_interrupts", daemon=True
  ).start()
  _installed = True


def _use_own_temp_dir() -> None:
  """Makes a temporary folder for this process the default for `tempfile` and for children,
  tracked (a signal removes it) and removed at exit."""
  try:
    folder = tempfile.mkdtemp(prefix="tl_keras_run_")
  except OSError:  # no writable temporary folder: files go where they would have
    return
  track(folder)
  tempfile.tempdir = folder
  os.environ["TMPDIR"] = folder
  atexit.register(shutil.rmtree, folder, ignore_errors=True)


def _watch(watched, stderr_fd: int) -> None:
  signum = signal.sigwait(watched)
  # Held from here on: a rename in progress finishes first, no new temporary file appears
  # after the clean-up (its creator blocks on the lock until the process ends).
  _lock.acquire(timeout=_WAIT_SECONDS)
  paths = []
  for _ in range(3):  # without the lock (a rename stuck on a hung disk), it may change meanwhile
    with contextlib.suppress(RuntimeError):
      paths = list(_temporaries)
      break
  _remove(paths)
  _flush(sys.stdout)
  with contextlib.suppress(OSError):
    os.write(stderr_fd, f"error: interrupted by {signal.Signals(signum).name}\n".encode())
  signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
  signal.raise_signal(signum)  # default action: the process ends, killed by `signum`
  os._exit(128 + signum)  # not reached


def _flush(stream) -> None:
  """Flushes `stream`, giving up after a second (the main thread may hold its lock)."""

  def flush():
    with contextlib.suppress(Exception):
      stream.flush()

  flusher = threading.Thread(target=flush, daemon=True)
  flusher.start()
  flusher.join(1.0)
