"""How many threads a CPU run's step uses: the cores other jobs leave free when it starts.

A CPU step is a sequence of OpenMP parallel regions, each ending at a barrier where every thread
waits for the slowest. With more threads than free cores, the OS deschedules one of them and all
the others wait: measured on 2 cores with two other CPU-bound jobs (benchmarks/RESULTS.md), the
ResNet18 step ran at 56 img/s on 1 thread against 23-37 on 2, while on the quiet machine 2 threads
were 1.6-1.9x faster than 1. So the run takes, when it starts, as many threads as there are cores
that other jobs leave free (measured from /proc/stat over half a second, at least 1, at most
torch's count), unless it was told:

- OMP_NUM_THREADS (a launcher's split: torchrun, the sweep's process pool, SLURM's CPUs per task,
  or yours) keeps torch's count, which that variable set;
- SELFSUP_CPU_THREADS=N takes N;
- a resumed run takes the count its checkpoint was trained with (selfsup.runs.training_state).

Results are bit-exact only at the same thread count, so the count is part of a run's record
(run.json's environment, the checkpoint). The choice is made once, at the start: a load that comes
later is not followed. A different count also acts like another seed (the same seed ended 3-4
points of val 5-NN apart at 1 and 2 threads, benchmarks/RESULTS.md), so the runs of one sweep
share one count: `for_children` chooses it once, when the sweep starts.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch


def chosen(device: torch.device, resumed: int | None = None) -> int:
    """The thread count a run on `device` trains with (see the module doc)."""
    given = torch.get_num_threads()
    if torch.device(device).type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return given
    if resumed:
        return int(resumed)
    told = os.environ.get("SELFSUP_CPU_THREADS", "").strip()
    if told:
        if not told.isdigit() or int(told) < 1:
            raise ValueError(f"SELFSUP_CPU_THREADS: expected a whole number of threads >= 1, got {told!r}")
        return int(told)
    free = free_cores()
    return given if free is None else max(1, min(given, round(free)))


@contextmanager
def for_run(device: torch.device, resumed: int | None = None):
    """torch's thread count for the block: chosen(device, resumed); the previous count after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(chosen(device, resumed))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@contextmanager
def for_children():
    """The count chosen once, now, for every run started as a child process in the block (a
    sequential sweep's notebook kernels), as SELFSUP_CPU_THREADS; the caller's environment after
    it. Where OMP_NUM_THREADS or SELFSUP_CPU_THREADS is set, that already decides: unchanged."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("SELFSUP_CPU_THREADS"):
        yield None
        return
    count = chosen(torch.device("cpu"))
    os.environ["SELFSUP_CPU_THREADS"] = str(count)
    try:
        yield count
    finally:
        os.environ.pop("SELFSUP_CPU_THREADS", None)


def free_cores(interval: float = 0.5) -> float | None:
    """Cores of this process's CPU set that other processes leave idle, measured over `interval`
    seconds (None where /proc is not there to read)."""
    try:
        busy0, total0, own0 = _cpu_times()
        time.sleep(interval)
        busy1, total1, own1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    ncpu = os.cpu_count() or 1
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (total1 - total0) * ncpu  # in cores
    return len(os.sched_getaffinity(0)) - others


def _cpu_times() -> tuple[int, int, int]:
    """(busy, total) jiffies of all CPUs (/proc/stat) and this process's own (/proc/self/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return total - idle, total, int(own[11]) + int(own[12])  # utime + stime
