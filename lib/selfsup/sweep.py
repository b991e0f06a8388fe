"""Sweeps: the training notebook executed by papermill once per point, resumable, into one table.

A sweep file is YAML (every path relative to the directory the sweep is started from,
normally the repository root):

    name: demo                        # folder runs/<name>/ (default: the file's stem)
    notebook: notebooks/03_train.ipynb  # executed once per point (this is the default)
    preset: configs/demo.yaml         # the base config every point starts from (required)
    data: data/demo                   # dataset folder (required here or via --data)
    evaluate: true                    # run the k-NN / linear probes after training (default true)
    overrides: {epochs: 4}            # fixed config overrides, applied to every point
    grid:                             # cartesian product over these keys ...
      temperature: [0.05, 0.1, 0.5]
    axes:                             # ... and/or one key at a time, the others at the base
      optimizer: [adam, adamw]
    points:                           # ... and/or explicit points (each a dict of overrides)
      - {method: byol, lr: 0.001}
    seeds: 3                          # each point trained with seeds 0, 1, 2 (or a list [0, 5, 7]);
                                      # default: the preset's `seeds`, else one run at its `seed`
    parameters: {}                    # extra papermill parameters for the notebook (optional)

The points are the union of the three lists; points that resolve to the same config (say
`temperature: 0.1` in `axes` when the base already has 0.1) run once and belong to every axis
they came from (the `axes` column of the table). Each point runs in `runs/<name>/<slug>/`
(slug: `temperature-0.05`, `optimizer-adam`, or `base`), which holds the run files, the
executed notebook and, when it failed, `error.txt`; with seeds, each seed of a point is its own
run in `runs/<name>/<slug>/seed-<s>/`, resumed and retried on its own.

Resuming: a point is done when its run.json says "finished" with the point's config hash
(and eval.json exists when `evaluate` is on); an unfinished run of the same config continues
from its checkpoint; an unfinished run of another config is cleared and run again; a finished
run of another config is never deleted: the sweep stops with an error naming the folder.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import re
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import config, plan
from .config import ConfigError
from .data import fingerprint, load_dataset
from .results import RESULT_COLUMNS, RESULTS, run_summary, write_results
from .runs import Run, RunError, write_json
from .workbook import execute_notebook

DEFAULT_NOTEBOOK = "notebooks/03_train.ipynb"
SWEEP_KEYS = (
    "name",
    "title",
    "seeds",
    "notebook",
    "preset",
    "data",
    "evaluate",
    "overrides",
    "grid",
    "axes",
    "points",
    "parameters",
)
# The course report's ablation sweeps, in the report's order: configs/sweeps/course_<stem>.yaml.
# Their axes, values and titles are read from the files (course_axes), the one source.
COURSE_SWEEPS = ("temperature", "optimizer", "lr", "batch", "backbone", "epochs")
DEFINITION = "sweep.json"


def course_axes(root=".") -> dict[str, dict]:
    """{axis: {"title", "values", "file"}} of the course sweeps under root/configs/sweeps, in the
    report's order (an axis whose file is missing is left out)."""
    out = {}
    for stem in COURSE_SWEEPS:
        file = f"configs/sweeps/course_{stem}.yaml"  # as run from the repository root
        path = Path(root) / file
        if not path.is_file():
            continue
        spec = config.read_yaml_mapping(path, "sweep")
        for axis, values in (spec.get("axes") or {}).items():
            out[axis] = dict(title=spec.get("title", axis), values=list(values), file=file)
    return out


@dataclass
class Point:
    """One sweep point: its overrides (on top of the sweep's fixed ones), the axes it belongs to,
    its resolved config (None when the values are invalid) and its run folder."""

    overrides: dict
    axes: list[str]
    slug: str = ""  # the run's folder under the sweep: the point's name (+ /seed-<s>)
    cfg: config.Config | None = None
    error: str = ""
    run_dir: Path = field(default_factory=Path)
    point: str = ""  # the point's name, shared by its seeds
    seed: int | None = None  # set when the sweep has seeds


@dataclass
class Sweep:
    name: str
    notebook: Path
    preset: Path
    data: Path
    evaluate: bool
    overrides: dict
    parameters: dict
    points: list[Point]
    keys: list[str]  # the varied config keys, in first-seen order: the table's parameter columns
    source: str


# --------------------------------------------------------------------------------------------
# Reading a sweep file


def _slug(overrides: dict) -> str:
    if not overrides:
        return "base"
    parts = [f"{k}-{_fmt(v)}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _mapping(spec: dict, key: str, source: str) -> dict:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: key {key!r} must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(keys, where: str, source: str) -> None:
    known = {f.name for f in dataclasses.fields(config.Config)}
    for key in keys:
        if key not in known:
            raise ConfigError(f"{source}: unknown config key {key!r} in {where!r} (known: {', '.join(sorted(known))})")


def _values(spec: dict, key: str, source: str) -> dict[str, list]:
    table = _mapping(spec, key, source)
    _check_keys(table, key, source)
    for k, v in table.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{source}: '{key}.{k}' must be a non-empty list of values, got {v!r}")
    return table


def _resolve(candidates: list[Point], preset: Path, fixed: dict, root: Path) -> tuple[list[Point], list[str]]:
    """Each point's config (or its error), points with the same config merged (the base of several
    axes runs once), and a distinct folder under root each. Returns (points, varied keys)."""
    # Resolve configs; merge points with the same config (the base of several axes runs once).
    merged: dict[str, Point] = {}
    out: list[Point] = []
    keys: list[str] = []
    for p in candidates:
        for k in p.overrides:
            if k not in keys:
                keys.append(k)
        try:
            p.cfg = config.load(preset, {**fixed, **p.overrides})  # a point's method picks its section
        except ConfigError as e:
            p.error = str(e)
        ident = p.cfg.hash() if p.cfg else f"invalid:{_slug(p.overrides)}"
        if ident in merged:
            merged[ident].axes += [a for a in p.axes if a not in merged[ident].axes]
            continue
        merged[ident] = p
        out.append(p)
    slugs = set()
    for p in out:
        p.slug = _slug(p.overrides)
        if p.slug in slugs:  # e.g. 0.1 and "0.1" that resolve differently; keep folders distinct
            p.slug += f"_{p.cfg.hash() if p.cfg else len(slugs)}"
        slugs.add(p.slug)
        p.run_dir, p.point = root / p.slug, p.slug
    return out, keys


def _with_seeds(points: list[Point], seeds: list[int] | None) -> list[Point]:
    """Each point once per seed, in its own folder <slug>/seed-<s> (None: the points as they are)."""
    if seeds is None:
        return points
    out = []
    for p in points:
        for s in seeds:
            cfg = p.cfg.replace(seed=s) if p.cfg is not None else None
            out.append(
                Point(
                    overrides={**p.overrides, "seed": s},
                    axes=p.axes,
                    slug=f"{p.slug}/seed-{s}",
                    cfg=cfg,
                    error=p.error,
                    run_dir=p.run_dir / f"seed-{s}",
                    point=p.slug,
                    seed=s,
                )
            )
    return out


def load_sweep(file: str | Path | dict, data: str | Path | None = None, runs_root: str | Path = "runs") -> Sweep:
    """Read and check a sweep (a YAML file, or the same content as a dict) -> Sweep.

    Relative paths resolve against the current directory. Every structural problem (unknown key,
    wrong type, missing preset) raises ConfigError naming the file and the key; an invalid *value*
    for one point is kept as that point's error, so the other points still run.
    """
    if isinstance(file, dict):
        spec, source, stem = dict(file), "sweep", file.get("name", "sweep")
    else:
        path = Path(file)
        source, stem = str(path), path.stem
        spec = config.read_yaml_mapping(path, "sweep")
    for key in spec:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{source}: unknown sweep key {key!r} (known: {', '.join(SWEEP_KEYS)})")

    name = str(spec.get("name") or stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"{source}: key 'name' must be a folder name (letters, digits, . _ -), got {name!r}")
    if not spec.get("preset"):
        raise ConfigError(f"{source}: key 'preset' is required (a config preset, e.g. configs/demo.yaml)")
    preset = Path(spec["preset"])
    if not preset.is_file():
        raise ConfigError(f"{source}: key 'preset': {preset} not found")
    notebook = Path(spec.get("notebook") or DEFAULT_NOTEBOOK)
    if not notebook.is_file():
        raise ConfigError(f"{source}: key 'notebook': {notebook} not found")
    data = data if data is not None else spec.get("data")
    if not data:
        raise ConfigError(f"{source}: key 'data' is required (or pass --data)")
    evaluate = spec.get("evaluate", True)
    if not isinstance(evaluate, bool):
        raise ConfigError(f"{source}: key 'evaluate' must be true or false, got {evaluate!r}")
    fixed = _mapping(spec, "overrides", source)
    _check_keys(fixed, "overrides", source)
    parameters = _mapping(spec, "parameters", source)
    reserved = {"root", "config", "data", "run_dir", "overrides", "evaluate", "resume"}
    if reserved & set(parameters):
        raise ConfigError(
            f"{source}: key 'parameters' may not set {sorted(reserved & set(parameters))} (the sweep sets them)"
        )
    try:  # a bad fixed override fails the whole sweep: every point needs it
        config.load(preset, fixed)
    except ConfigError as e:
        raise ConfigError(f"{source}: key 'overrides' or preset {preset}: {e}") from None

    candidates: list[Point] = []
    grid = _values(spec, "grid", source)
    if grid:
        for combo in itertools.product(*grid.values()):
            candidates.append(Point(dict(zip(grid, combo)), list(grid)))
    for key, values in _values(spec, "axes", source).items():
        candidates += [Point({key: v}, [key]) for v in values]
    points = spec.get("points") or []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"{source}: key 'points' must be a list of mappings of config overrides")
    for i, p in enumerate(points):
        _check_keys(p, f"points[{i}]", source)
        candidates.append(Point(dict(p), list(p)))
    if not candidates:
        raise ConfigError(f"{source}: no points: give at least one of 'grid', 'axes' or 'points'")

    out, keys = _resolve(candidates, preset, fixed, Path(runs_root) / name)
    seeds = config.parse_seeds(spec["seeds"], source) if "seeds" in spec else config.preset_seeds(preset)
    out = _with_seeds(out, seeds)
    return Sweep(
        name=name,
        notebook=notebook,
        preset=preset,
        data=Path(data),
        evaluate=evaluate,
        overrides=fixed,
        parameters=parameters,
        points=out,
        keys=keys,
        source=source,
    )


# --------------------------------------------------------------------------------------------
# Run-folder states


def point_state(run_dir: Path, cfg_hash: str, evaluate: bool = True, data_id: str | None = None) -> str:
    """What to do with a point's folder: "done", "resume" (same config and data, unfinished or not
    yet evaluated), "fresh" (empty or cleared). Clears a folder that holds an unfinished run of
    another config or data, or no run at all; raises RunError for a finished run of another config
    or trained on other data (data_id: `selfsup.data.fingerprint` of the train split)."""
    run = Run(run_dir)
    if run.is_empty():
        return "fresh"
    info = run.info()
    if data_id and info.get("data_fingerprint") not in (None, data_id):
        if info.get("status") == "finished":
            raise RunError(
                f"{run_dir}: holds a finished run trained on other data (fingerprint "
                f"{info['data_fingerprint']}, now {data_id}); move or delete that folder"
            )
        shutil.rmtree(run_dir)
        return "fresh"
    if info.get("config_hash") == cfg_hash:
        if info.get("status") == "finished":
            if evaluate and not run.eval_current(cfg_hash):
                return "resume"  # trained, not evaluated: train(resume=True) returns at once
            return "done"
        if run.has_checkpoint():
            return "resume"
    elif info.get("status") == "finished":
        raise RunError(
            f"{run_dir}: holds a finished run of another config (hash {info.get('config_hash')}, "
            f"this point {cfg_hash}); move or delete that folder, or give the sweep another name"
        )
    # An unfinished run of another config, or a failed start: nothing worth keeping.
    shutil.rmtree(run_dir)
    return "fresh"


# --------------------------------------------------------------------------------------------
# Executing points


def _execute_point(task: dict) -> dict:
    """Run one point (in this process or a pool worker). Returns its outcome; never raises for a
    failing notebook (the error goes to error.txt and the outcome)."""
    run = Run(task["run_dir"])
    run.path.mkdir(parents=True, exist_ok=True)
    run.clear_error()
    t0 = time.perf_counter()
    try:
        execute_notebook(task["notebook"], run.file(Path(task["notebook"]).name), task["parameters"], cwd=task["cwd"])
        return dict(slug=task["slug"], ok=True, seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a failing point is recorded; the sweep goes on
        message = _error_text(e)
        run.write_error(message)
        return dict(
            slug=task["slug"],
            ok=False,
            error=message.splitlines()[0] if message else type(e).__name__,
            seconds=time.perf_counter() - t0,
        )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _error_text(e: Exception) -> str:
    """The cell error's name, value and traceback (papermill), else the Python traceback."""
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
    if ename:
        tb = "\n".join(getattr(e, "traceback", []) or [])
        return _ANSI.sub("", f"{ename}: {evalue}\n\n{tb}").strip()
    return "".join(traceback.format_exception(e)).strip()


def _init_worker(gpu_queue, threads: int | None) -> None:
    """Pool worker setup: pin one GPU per worker (the kernel it starts inherits the environment),
    or split the CPU cores between workers so kernels do not oversubscribe them."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))


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


def run_sweep(file, data=None, runs_root="runs", jobs=None, progress=True) -> Path:
    """Execute the sweep `file` (YAML path or dict, see the module docstring); returns the path of
    runs/<name>/results.csv (one row per point). Finished points are skipped; failing points are
    recorded and the others still run. jobs: points in parallel (default: one per visible GPU,
    else 1); with several GPUs each worker sees one (CUDA_VISIBLE_DEVICES)."""
    sweep = load_sweep(file, data=data, runs_root=runs_root)
    root = Path(runs_root) / sweep.name
    with Run(root).lock("sweep folder"):  # one sweep at a time per folder: a second one is refused
        return _run_sweep(sweep, root, jobs, progress)


def _run_sweep(sweep: Sweep, root: Path, jobs, progress: bool) -> Path:
    _write_definition(sweep, root)

    _log(progress, f"[{sweep.name}] {len(sweep.points)} points -> {root}")
    data_id = fingerprint(load_dataset(sweep.data).train)
    tasks = []
    for p in sweep.points:
        if p.cfg is None:  # invalid values: record, do not run
            Run(p.run_dir).write_error(p.error)
            _log(progress, f"[{sweep.name}] {p.slug}: invalid ({p.error})")
            continue
        state = point_state(p.run_dir, p.cfg.hash(), sweep.evaluate, data_id)
        if state == "done":
            _log(progress, f"[{sweep.name}] {p.slug}: finished earlier, skipped")
            continue
        # progress off by default: nobody watches a sweep point's kernel (a sweep file may turn it on
        # to keep the bar in each executed notebook)
        params = {"progress": False, **sweep.parameters}
        params.update(
            root=str(Path.cwd().resolve()),
            config=str(sweep.preset.resolve()),
            data=str(sweep.data.resolve()),
            run_dir=str(p.run_dir.resolve()),
            overrides={**sweep.overrides, **p.overrides},
            evaluate=sweep.evaluate,
            resume=state == "resume",
        )
        tasks.append(
            dict(
                slug=p.slug,
                run_dir=str(p.run_dir),
                notebook=str(sweep.notebook.resolve()),
                parameters=params,
                cwd=str(Path.cwd().resolve()),
                state=state,
            )
        )

    if progress and tasks:  # what the runs will cost, before it is spent (selfsup.plan)
        todo = {t["slug"] for t in tasks}
        _log(
            progress, f"[{sweep.name}] " + plan.sweep_total([p.cfg for p in sweep.points if p.slug in todo], sweep.data)
        )
    gpus = visible_gpus() if tasks else []
    if jobs is None:
        jobs = max(1, len(gpus))
    jobs = max(1, min(int(jobs), len(tasks) or 1))
    outcomes = {}
    _log(progress, f"[{sweep.name}] {len(tasks)} to run, {jobs} at a time")
    if jobs == 1:
        for t in tasks:
            _log(progress, f"[{sweep.name}] {t['slug']}: {'resuming' if t['state'] == 'resume' else 'running'} ...")
            outcomes[t["slug"]] = out = _execute_point(t)
            _report_outcome(progress, sweep.name, out)
    else:
        _log(progress, f"[{sweep.name}] running {', '.join(t['slug'] for t in tasks)}")
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA state
        gpu_queue = manager = None
        if len(gpus) > 1:
            manager = ctx.Manager()  # kept referenced: the queue dies with its manager
            gpu_queue = manager.Queue()
            for i in range(jobs):
                gpu_queue.put(gpus[i % len(gpus)])
        threads = None if gpus else max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(gpu_queue, threads)) as pool:
            futures = [pool.submit(_execute_point, t) for t in tasks]
            for fut in as_completed(futures):
                out = fut.result()
                outcomes[out["slug"]] = out
                _report_outcome(progress, sweep.name, out)
        if manager is not None:
            manager.shutdown()

    rows = [result_row(p, sweep, outcomes.get(p.slug)) for p in sweep.points]
    table = write_results(rows, sweep.keys, root / RESULTS)  # + summary.csv: one row per point
    failed = sum(r["status"] != "finished" for r in rows)
    _log(progress, f"[{sweep.name}] results: {table} ({len(rows) - failed} finished, {failed} failed)")
    return table


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _report_outcome(progress: bool, name: str, out: dict) -> None:
    if out["ok"]:
        _log(progress, f"[{name}] {out['slug']}: finished in {out['seconds']:.0f}s")
    else:
        _log(progress, f"[{name}] {out['slug']}: FAILED after {out['seconds']:.0f}s: {out['error']}")


def _write_definition(sweep: Sweep, root: Path) -> None:
    """runs/<name>/sweep.json: the resolved sweep, so the results folder describes itself."""
    d = dict(
        name=sweep.name,
        source=sweep.source,
        notebook=str(sweep.notebook),
        preset=str(sweep.preset),
        data=str(sweep.data),
        evaluate=sweep.evaluate,
        overrides=sweep.overrides,
        keys=sweep.keys,
        points=[
            dict(
                slug=p.slug,
                point=p.point,
                seed=p.seed,
                overrides=p.overrides,
                axes=p.axes,
                config_hash=p.cfg.hash() if p.cfg else None,
            )
            for p in sweep.points
        ],
    )
    write_json(root / DEFINITION, d)


# --------------------------------------------------------------------------------------------
# Results


def result_row(p: Point, sweep: Sweep, outcome: dict | None) -> dict:
    row = {
        "point": p.point or p.slug,
        "seed": p.seed if p.seed is not None else (p.cfg.seed if p.cfg else ""),
        "axes": "|".join(p.axes),
    }
    resolved = p.cfg.to_dict() if p.cfg else {**sweep.overrides, **p.overrides}
    for k in sweep.keys:
        row[k] = resolved.get(k, "")
    summary = run_summary(p.run_dir)
    row.update({k: summary[k] for k in RESULT_COLUMNS if k in summary})
    row["run_dir"] = str(p.run_dir)
    run = Run(p.run_dir)
    if p.cfg is None:
        row["status"] = "invalid"
    elif run.has_error():
        row["status"] = "failed"
    row["error"] = run.error()
    if outcome and outcome.get("ok") is False and not row["error"]:
        row["error"] = outcome.get("error", "")
    return row
