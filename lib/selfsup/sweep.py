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
    parameters: {}                    # extra papermill parameters for the notebook (optional)

The points are the union of the three lists; points that resolve to the same config (say
`temperature: 0.1` in `axes` when the base already has 0.1) run once and belong to every axis
they came from (the `axes` column of the table). Each point runs in `runs/<name>/<slug>/`
(slug: `temperature-0.05`, `optimizer-adam`, or `base`), which holds the run files, the
executed notebook and, when it failed, `error.txt`.

Resuming: a point is done when its run.json says "finished" with the point's config hash
(and eval.json exists when `evaluate` is on); an unfinished run of the same config continues
from its checkpoint; an unfinished run of another config is cleared and run again; a finished
run of another config is never deleted: the sweep stops with an error naming the folder.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
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

from . import config
from .config import ConfigError
from .data import fingerprint, load_dataset
from .evaluate import eval_matches
from .train import RunError, read_json, read_metrics, write_json

DEFAULT_NOTEBOOK = "notebooks/03_train.ipynb"
SWEEP_KEYS = ("name", "notebook", "preset", "data", "evaluate", "overrides", "grid", "axes", "points",
              "parameters")
# Columns of results.csv after the per-key parameter columns.
# Accuracy columns are named as in eval.json's summary (val_knn = course k-NN on val, ...), so rows
# plug straight into selfsup.plots; random_init_* is the floor: the same network untrained.
ACCURACY_COLUMNS = ("val_knn", "ood_knn", "val_knn_weighted", "ood_knn_weighted", "val_linear", "ood_linear",
                    "random_init_val_knn", "random_init_ood_knn", "random_init_val_linear",
                    "random_init_ood_linear")
RESULT_COLUMNS = ("status", "epochs", "train_loss", *ACCURACY_COLUMNS, "wall_clock_s", "config_hash",
                  "run_dir", "error")

# The course report's ablation axes, in the report's order, with the values it tried.
ABLATION_AXES = {
    "temperature": dict(title="NT-Xent temperature", values=[0.05, 0.1, 0.5],
                        file="configs/sweeps/course_temperature.yaml"),
    "optimizer": dict(title="Optimizer", values=["adam", "adamw"], file="configs/sweeps/course_optimizer.yaml"),
    "lr": dict(title="Learning rate", values=[1e-3, 2e-3, 4e-3, 8e-3], file="configs/sweeps/course_lr.yaml"),
    "batch_size": dict(title="Batch size", values=[256, 512, 1024], file="configs/sweeps/course_batch.yaml"),
    "backbone": dict(title="Backbone", values=["resnet18", "resnet34", "resnet50"],
                     file="configs/sweeps/course_backbone.yaml"),
    "epochs": dict(title="Training epochs", values=[50, 100, 200, 300], file="configs/sweeps/course_epochs.yaml"),
}


@dataclass
class Point:
    """One sweep point: its overrides (on top of the sweep's fixed ones), the axes it belongs to,
    its resolved config (None when the values are invalid) and its run folder."""

    overrides: dict
    axes: list[str]
    slug: str = ""
    cfg: config.Config | None = None
    error: str = ""
    run_dir: Path = field(default_factory=Path)


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
            raise ConfigError(f"{source}: unknown config key {key!r} in {where!r} "
                              f"(known: {', '.join(sorted(known))})")


def _values(spec: dict, key: str, source: str) -> dict[str, list]:
    table = _mapping(spec, key, source)
    _check_keys(table, key, source)
    for k, v in table.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{source}: '{key}.{k}' must be a non-empty list of values, got {v!r}")
    return table


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
        raise ConfigError(f"{source}: key 'parameters' may not set {sorted(reserved & set(parameters))} "
                          "(the sweep sets them)")
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
    root = Path(runs_root) / name
    slugs = set()
    for p in out:
        p.slug = _slug(p.overrides)
        if p.slug in slugs:  # e.g. 0.1 and "0.1" that resolve differently; keep folders distinct
            p.slug += f"_{p.cfg.hash() if p.cfg else len(slugs)}"
        slugs.add(p.slug)
        p.run_dir = root / p.slug
    return Sweep(name=name, notebook=notebook, preset=preset, data=Path(data), evaluate=evaluate,
                 overrides=fixed, parameters=parameters, points=out, keys=keys, source=source)


# --------------------------------------------------------------------------------------------
# Run-folder states


def point_state(run_dir: Path, cfg_hash: str, evaluate: bool = True, data_id: str | None = None) -> str:
    """What to do with a point's folder: "done", "resume" (same config and data, unfinished or not
    yet evaluated), "fresh" (empty or cleared). Clears a folder that holds an unfinished run of
    another config or data, or no run at all; raises RunError for a finished run of another config
    or trained on other data (data_id: `selfsup.data.fingerprint` of the train split)."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "fresh"
    info = read_json(run_dir / "run.json")
    if data_id and info.get("data_fingerprint") not in (None, data_id):
        if info.get("status") == "finished":
            raise RunError(f"{run_dir}: holds a finished run trained on other data (fingerprint "
                           f"{info['data_fingerprint']}, now {data_id}); move or delete that folder")
        shutil.rmtree(run_dir)
        return "fresh"
    if info.get("config_hash") == cfg_hash:
        if info.get("status") == "finished":
            if evaluate and not eval_matches(read_json(run_dir / "eval.json"), cfg_hash):
                return "resume"  # trained, not evaluated: train(resume=True) returns at once
            return "done"
        if (run_dir / "checkpoint.pt").exists():
            return "resume"
    elif info.get("status") == "finished":
        raise RunError(f"{run_dir}: holds a finished run of another config (hash {info.get('config_hash')}, "
                       f"this point {cfg_hash}); move or delete that folder, or give the sweep another name")
    # An unfinished run of another config, or a failed start: nothing worth keeping.
    shutil.rmtree(run_dir)
    return "fresh"


# --------------------------------------------------------------------------------------------
# Executing points


def execute_notebook(notebook, output, parameters: dict, cwd=None, progress: bool = False) -> None:
    """Run `notebook` top to bottom with papermill (kernel python3), writing the executed copy to
    `output`. Raises papermill's PapermillExecutionError when a cell fails."""
    import papermill

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    # log_level=ERROR: ipykernel 7 warns at every start that the local kernel talks plain TCP,
    # which is how every Jupyter kernel has run; one such line per sweep point buries the progress.
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                               progress_bar=progress, cwd=None if cwd is None else str(cwd),
                               extra_arguments=["--IPKernelApp.log_level=ERROR"])


def _execute_point(task: dict) -> dict:
    """Run one point (in this process or a pool worker). Returns its outcome; never raises for a
    failing notebook (the error goes to error.txt and the outcome)."""
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        execute_notebook(task["notebook"], run_dir / Path(task["notebook"]).name, task["parameters"],
                         cwd=task["cwd"])
        return dict(slug=task["slug"], ok=True, seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a failing point is recorded; the sweep goes on
        message = _error_text(e)
        (run_dir / "error.txt").write_text(message + "\n")
        return dict(slug=task["slug"], ok=False, error=message.splitlines()[0] if message else type(e).__name__,
                    seconds=time.perf_counter() - t0)


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
    root.mkdir(parents=True, exist_ok=True)
    _write_definition(sweep, root)

    _log(progress, f"[{sweep.name}] {len(sweep.points)} points -> {root}")
    data_id = fingerprint(load_dataset(sweep.data).train)
    tasks = []
    for p in sweep.points:
        if p.cfg is None:  # invalid values: record, do not run
            p.run_dir.mkdir(parents=True, exist_ok=True)
            (p.run_dir / "error.txt").write_text(p.error + "\n")
            _log(progress, f"[{sweep.name}] {p.slug}: invalid ({p.error})")
            continue
        state = point_state(p.run_dir, p.cfg.hash(), sweep.evaluate, data_id)
        if state == "done":
            _log(progress, f"[{sweep.name}] {p.slug}: finished earlier, skipped")
            continue
        # progress off by default: nobody watches a sweep point's kernel (a sweep file may turn it on
        # to keep the bar in each executed notebook)
        params = {"progress": False, **sweep.parameters}
        params.update(root=str(Path.cwd().resolve()), config=str(sweep.preset.resolve()),
                      data=str(sweep.data.resolve()), run_dir=str(p.run_dir.resolve()),
                      overrides={**sweep.overrides, **p.overrides}, evaluate=sweep.evaluate,
                      resume=state == "resume")
        tasks.append(dict(slug=p.slug, run_dir=str(p.run_dir), notebook=str(sweep.notebook.resolve()),
                          parameters=params, cwd=str(Path.cwd().resolve()), state=state))

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
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(gpu_queue, threads)) as pool:
            futures = [pool.submit(_execute_point, t) for t in tasks]
            for fut in as_completed(futures):
                out = fut.result()
                outcomes[out["slug"]] = out
                _report_outcome(progress, sweep.name, out)
        if manager is not None:
            manager.shutdown()

    rows = [result_row(p, sweep, outcomes.get(p.slug)) for p in sweep.points]
    table = write_results(rows, sweep.keys, root / "results.csv")
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
    d = dict(name=sweep.name, source=sweep.source, notebook=str(sweep.notebook), preset=str(sweep.preset),
             data=str(sweep.data), evaluate=sweep.evaluate, overrides=sweep.overrides, keys=sweep.keys,
             points=[dict(slug=p.slug, overrides=p.overrides, axes=p.axes,
                          config_hash=p.cfg.hash() if p.cfg else None) for p in sweep.points])
    write_json(root / "sweep.json", d)


# --------------------------------------------------------------------------------------------
# Results


def run_summary(run_dir: str | Path) -> dict:
    """Headline numbers of one run folder (run.json, metrics.jsonl, eval.json); missing -> NaN.

    Keys: status, epochs, train_loss, wall_clock_s, config_hash and ACCURACY_COLUMNS (fractions in
    [0, 1], named as in eval.json's summary)."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json")
    metrics = read_metrics(run_dir)
    summary = read_json(run_dir / "eval.json").get("summary", {})
    out = dict(status=info.get("status", "missing"), epochs=len(metrics),
               train_loss=metrics[-1]["train_loss"] if metrics else math.nan,
               wall_clock_s=info.get("wall_clock_s", math.nan), config_hash=info.get("config_hash", ""))
    out.update({k: summary.get(k, math.nan) for k in ACCURACY_COLUMNS})
    return out


def result_row(p: Point, sweep: Sweep, outcome: dict | None) -> dict:
    row = {"point": p.slug, "axes": "|".join(p.axes)}
    resolved = p.cfg.to_dict() if p.cfg else {**sweep.overrides, **p.overrides}
    for k in sweep.keys:
        row[k] = resolved.get(k, "")
    summary = run_summary(p.run_dir)
    row.update({k: summary[k] for k in RESULT_COLUMNS if k in summary})
    row["run_dir"] = str(p.run_dir)
    error_file = p.run_dir / "error.txt"
    if p.cfg is None:
        row["status"] = "invalid"
    elif error_file.exists():
        row["status"] = "failed"
    row["error"] = error_file.read_text().splitlines()[0] if error_file.exists() else ""
    if outcome and outcome.get("ok") is False and not row["error"]:
        row["error"] = outcome.get("error", "")
    return row


def write_results(rows: list[dict], keys: list[str], path: Path) -> Path:
    columns = ["point", "axes", *keys, *RESULT_COLUMNS]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k, ""))
                        for k in columns})
    os.replace(tmp, path)
    return path


def results_path(name_or_csv: str | Path, runs_root: str | Path = "runs") -> Path:
    """A sweep name, a sweep folder or a results.csv path -> the results.csv path (may not exist)."""
    p = Path(name_or_csv)
    if p.suffix == ".csv":
        return p
    if p.is_dir():
        return p / "results.csv"
    return Path(runs_root) / str(name_or_csv) / "results.csv"


def load_results(name_or_csv: str | Path, runs_root: str | Path = "runs"):
    """A sweep's results table as a pandas DataFrame (one row per point; `axes` is a list).

    name_or_csv: a sweep name (read from runs_root/<name>/results.csv), its folder, or a CSV path.
    Raises FileNotFoundError naming the path when the sweep has not been run."""
    import pandas as pd

    path = results_path(name_or_csv, runs_root)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep results (run `selfsup sweep` first)")
    text_columns = ("point", "axes", "status", "config_hash", "run_dir", "error")
    df = pd.read_csv(path, dtype={c: str for c in text_columns})
    for c in text_columns:
        df[c] = df[c].fillna("")
    df["axes"] = df["axes"].map(lambda s: [a for a in s.split("|") if a])
    df["sweep"] = path.parent.name
    return df


def find_results(runs_root: str | Path = "runs") -> list[Path]:
    """Every runs_root/<sweep>/results.csv, sorted by sweep name."""
    return sorted(Path(runs_root).glob("*/results.csv"))


def collect_results(runs_root: str | Path = "runs", sweeps=None, ignore=("compare_*",)):
    """Several sweeps' tables in one DataFrame (a `sweep` column tells them apart).

    sweeps: names / folders / CSV paths; None = every runs_root/*/results.csv whose sweep name
    matches none of the `ignore` globs (the method comparisons by default). Sweeps named
    explicitly but not run yet are skipped. Returns an empty DataFrame when nothing was run."""
    import fnmatch

    import pandas as pd

    if sweeps is None:
        paths = [p for p in find_results(runs_root)
                 if not any(fnmatch.fnmatch(p.parent.name, pat) for pat in (ignore or ()))]
    else:
        names = [sweeps] if isinstance(sweeps, (str, Path)) else list(sweeps)
        paths = [results_path(s, runs_root) for s in names]
    frames = [load_results(p) for p in paths if p.is_file()]
    if not frames:
        return pd.DataFrame(columns=["point", "axes", "sweep", *RESULT_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def axis_results(results, axis: str):
    """The rows of `results` (DataFrame from load_results, possibly several sweeps concatenated)
    that vary `axis`, sorted by its value; empty when the axis was not run."""
    if results is None or len(results) == 0 or axis not in results.columns:
        return results.iloc[0:0] if results is not None else None
    rows = results[results["axes"].map(lambda a: axis in a)]
    order = sorted(range(len(rows)), key=lambda i: _sort_key(rows[axis].iloc[i]))
    return rows.iloc[order].reset_index(drop=True)


def _sort_key(v):
    # Numbers by value; names (resnet18/34/50, adam/adamw) by their text.
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))
