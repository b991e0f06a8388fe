"""A CPU run's thread count (selfsup.threads): what other jobs leave free when it starts, unless a
launcher, the user or the run's checkpoint says otherwise; and a resume keeps its count."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import TINY_RUN, make_tiny
from selfsup import config, data, threads, train

CPU = torch.device("cpu")


@pytest.fixture
def auto(monkeypatch):
    """Neither OMP_NUM_THREADS nor SELFSUP_CPU_THREADS: the choice is made from the free cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SELFSUP_CPU_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # torch's count: the most it takes
    return monkeypatch


@pytest.mark.parametrize("free, expected", [(0.0, 1), (0.6, 1), (1.0, 1), (1.9, 2), (3.8, 4), (16.0, 4), (None, 4)])
def test_the_run_takes_the_cores_other_jobs_leave_free(auto, free, expected):
    auto.setattr(threads, "free_cores", lambda: free)
    assert threads.chosen(CPU) == expected


def test_a_launcher_the_user_or_the_checkpoint_decides_first(auto):
    auto.setattr(threads, "free_cores", lambda: pytest.fail("measured although told"))
    assert threads.chosen(CPU, resumed=3) == 3
    auto.setenv("SELFSUP_CPU_THREADS", "2")
    assert threads.chosen(CPU) == 2
    auto.setenv("OMP_NUM_THREADS", "1")  # torchrun, the sweep pool, SLURM: torch's count is theirs
    assert threads.chosen(CPU, resumed=3) == 4
    assert threads.chosen(torch.device("meta")) == 4  # not a CPU run: nothing to choose
    auto.delenv("OMP_NUM_THREADS")
    auto.setenv("SELFSUP_CPU_THREADS", "two")
    with pytest.raises(ValueError, match="SELFSUP_CPU_THREADS: expected a whole number of threads >= 1, got 'two'"):
        threads.chosen(CPU)


def test_a_sequential_sweep_chooses_once_for_all_its_points(auto):
    """Its points are child processes: each would measure the load anew and could train on another
    count (like another seed); for_children chooses once and hands the count down."""
    auto.setattr(threads, "free_cores", lambda: 1.2)
    with threads.for_children() as count:
        assert count == 1 and os.environ["SELFSUP_CPU_THREADS"] == "1"
        auto.setattr(threads, "free_cores", lambda: 4.0)  # the load changes during the sweep
        assert threads.chosen(CPU) == 1
    assert "SELFSUP_CPU_THREADS" not in os.environ
    auto.setenv("OMP_NUM_THREADS", "3")  # a launcher's split already decides: left as it is
    with threads.for_children() as count:
        assert count is None and "SELFSUP_CPU_THREADS" not in os.environ


def test_free_cores_sees_another_busy_process():
    """One busy loop pinned to this process's first core: at most the others stay free."""
    cores = sorted(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spin.pid, {cores[0]})
        free = threads.free_cores(interval=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert free is not None and free <= len(cores) - 0.5


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, monkeypatch):
    ds = data.load_dataset(make_tiny(tmp_path / "data"))
    cfg = config.load(None, TINY_RUN)
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SELFSUP_CPU_THREADS", "1")
    train.train(cfg, ds, tmp_path / "run", progress=False, stop_after=1)
    assert torch.get_num_threads() == before  # the caller's count is back after the run
    monkeypatch.setenv("SELFSUP_CPU_THREADS", "2")  # not taken: the checkpoint says 1
    train.train(cfg, ds, tmp_path / "run", resume=True, progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["threads"] == 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["environment"]["threads"] == 1
