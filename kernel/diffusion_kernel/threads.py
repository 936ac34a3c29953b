"""How many CPU threads ``generate`` and ``train`` run torch with.

OpenMP's worker threads wait for each other at the end of every parallel region; when one of them
shares its core with another busy process it is descheduled for a whole time slice, and every
small operation waits for it. Small models (thousands of tiny convolutions per sample) then run
several times slower on two threads than on one (docs/benchmarks.md, "Threads"). So the commands
use as many threads as there are idle cores: the cores this process may run on minus the
one-minute load average, rounded, at least one. ``--threads N`` or ``OMP_NUM_THREADS`` decide
instead. Importing the library never changes torch's thread setting: only the two commands do,
in their own process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

THREADS_ENV = "OMP_NUM_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Usable cores minus the one-minute load average, rounded; at least 1."""
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform: assume idle
        load = 0.0
    return max(1, min(cores, round(cores - load)))


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """The thread count and why: ``requested`` (``--threads``), else ``OMP_NUM_THREADS``, else
    the idle cores."""
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), THREADS_ENV
    idle = idle_cores()
    return idle, f"{idle} of {usable_cores()} cores idle"


@contextmanager
def command_threads(requested: int | None = None) -> Iterator[str]:
    """Run a command with torch's intra-op thread count set as ``choose_threads`` says, and put
    the caller's setting back afterwards (``cli.main`` may run inside a user's program). Yields a
    short note for the command's log line."""
    import torch

    before = torch.get_num_threads()
    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    try:
        yield f"{threads} thread{'s' if threads != 1 else ''} ({why})"
    finally:
        torch.set_num_threads(before)
