"""Where sweep points run: on this machine, one after another or in a pool of processes with one
GPU each. selfsup.sweep decides which points run and with what; this module runs them.

A task is a dict: slug (the point's name, for messages), run_dir, state ("fresh" or "resume"),
notebook, parameters (papermill's) and cwd. Each task is one papermill execution of the notebook,
its executed copy written into the run folder beside the run; a failing cell leaves error.txt
there, and the other tasks still run.

    run_points(tasks, jobs, log)  -> {slug: {"ok", "seconds"[, "error"]}}
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from pathlib import Path

from . import threads
from .runs import Run
from .workbook import error_text, execute_notebook


def execute_point(task: dict) -> dict:
    """Run one task (in this process or a pool worker). Returns its outcome; never raises for a
    failing notebook (the error goes to error.txt and the outcome)."""
    run = Run(task["run_dir"])
    run.path.mkdir(parents=True, exist_ok=True)
    run.clear_error()
    t0 = time.perf_counter()
    try:
        execute_notebook(task["notebook"], run.file(Path(task["notebook"]).name), task["parameters"], cwd=task["cwd"])
        return dict(slug=task["slug"], ok=True, seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a failing point is recorded; the sweep goes on
        message = error_text(e)
        run.write_error(message)
        return dict(slug=task["slug"], ok=False, error=message.splitlines()[0], seconds=time.perf_counter() - t0)


def _init_worker(gpu_queue, split: int | None) -> None:
    """Pool worker setup: pin one GPU per worker (the kernel it starts inherits the environment),
    or split the CPU cores between workers so kernels do not oversubscribe them."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()
    if split:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(split))


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (CUDA_VISIBLE_DEVICES order), [] without CUDA."""
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means no GPUs
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in env.split(",") if s.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


def run_points(tasks: list[dict], jobs: int | None = None, log=lambda message: None) -> dict[str, dict]:
    """Execute the tasks here: one after another, or `jobs` at a time in a pool of spawned
    processes (default: one per visible GPU, else 1; with several GPUs each worker sees one).
    log(message) is told what starts and how each ends. Returns {slug: outcome}."""
    gpus = visible_gpus() if tasks else []
    jobs = max(1, min(int(jobs or max(1, len(gpus))), len(tasks) or 1))
    log(f"{len(tasks)} to run, {jobs} at a time")
    outcomes = {}
    if jobs == 1:
        with nullcontext() if gpus else threads.for_children() as count:  # one CPU thread count for every point
            if count:
                log(f"CPU runs on {count} threads (the free cores now; resumed points keep theirs)")
            for t in tasks:
                log(f"{t['slug']}: {'resuming' if t['state'] == 'resume' else 'running'} ...")
                outcomes[t["slug"]] = _told(log, execute_point(t))
        return outcomes
    log(f"running {', '.join(t['slug'] for t in tasks)}")
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA state
    gpu_queue = manager = None
    if len(gpus) > 1:
        manager = ctx.Manager()  # kept referenced: the queue dies with its manager
        gpu_queue = manager.Queue()
        for i in range(jobs):
            gpu_queue.put(gpus[i % len(gpus)])
    split = None if gpus else max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(gpu_queue, split)) as pool:
        for fut in as_completed([pool.submit(execute_point, t) for t in tasks]):
            out = _told(log, fut.result())
            outcomes[out["slug"]] = out
    if manager is not None:
        manager.shutdown()
    return outcomes


def _told(log, out: dict) -> dict:
    if out["ok"]:
        log(f"{out['slug']}: finished in {out['seconds']:.0f}s")
    else:
        log(f"{out['slug']}: FAILED after {out['seconds']:.0f}s: {out['error']}")
    return out
