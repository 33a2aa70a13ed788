"""The busy-machine mode of ``purerigl bench kernels|train|growth``: ``--busy N`` (issue 19).

N CPU-bound processes are started by the bench before it times anything and stopped after, always
(also on an exception or Ctrl-C): :func:`busy_processes` is a context manager whose ``finally``
terminates and reaps every process it started. Each busy process is a separate Python interpreter
(``python -I -S -c``: no site packages, no purerigl import, so it starts in milliseconds) running a
tight pure-Python integer loop that keeps one core busy. It ignores Ctrl-C (the bench stops it) and
ends by itself if the bench dies without running its ``finally`` (SIGKILL): every few million
iterations it checks that its parent is still the bench, so no busy process outlives the bench.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import click

#: The busy loop: ignore SIGINT, say "ready", spin; stop when the parent (argv[1]) is gone.
BUSY_LOOP = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
parent = int(sys.argv[1])
sys.stdout.write("ready\\n")
sys.stdout.flush()
x = 1
while os.getppid() == parent:
    for _ in range(2000000):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
"""

#: Most busy processes: 4 per CPU (more only measures the scheduler).
MAX_BUSY = max(4, 4 * (os.cpu_count() or 1))


def busy_option(fn):
    """``--busy N``: N CPU-bound processes beside the timed work (0: none, a quiet machine)."""
    return click.option(
        "--busy", type=click.IntRange(0, MAX_BUSY), default=0, show_default=True,
        help="Busy-machine mode: start N CPU-bound processes (one core each) before timing and stop them "
             "after; the load is printed with the machine.")(fn)


@contextmanager
def busy_processes(n: int, *, python: str | None = None, stop_timeout_s: float = 5.0):
    """Run ``n`` busy processes for the duration of the ``with`` block; yields their ``Popen`` objects.

    Every process has said "ready" (it is running its loop) when the block starts. On leaving the
    block, normally or by any exception (KeyboardInterrupt included), each is terminated (SIGTERM),
    waited for, and killed if it has not ended within ``stop_timeout_s``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"busy process count must be an integer >= 0, got {n!r}")
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(
                [python or sys.executable, "-I", "-S", "-c", BUSY_LOOP, str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        for p in procs:
            if p.stdout.readline().strip() != b"ready":
                raise click.ClickException(f"a busy process did not start (exit code {p.poll()})")
        yield procs
    finally:
        stop(procs, timeout_s=stop_timeout_s)


def stop(procs, *, timeout_s: float = 5.0) -> None:
    """Terminate, wait for (and if needed kill) every process of ``procs``; close their pipes."""
    for p in procs:
        if p.poll() is None:
            try:
                p.terminate()
            except ProcessLookupError:  # ended in between
                pass
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()


def load_text(n: int) -> str:
    """The load line of the report header."""
    if n == 0:
        return "load: quiet mode (no busy processes started by the bench)"
    what = "1 CPU-bound busy process" if n == 1 else f"{n} CPU-bound busy processes (one core each)"
    return f"load: busy mode, {what}: a pure-Python loop started by the bench before timing and stopped after"
