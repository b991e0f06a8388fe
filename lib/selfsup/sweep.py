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
    parameters: {}                    # extra papermill parameters the notebook declares (optional)

The points are the union of the three lists; points that resolve to the same config (say
`temperature: 0.1` in `axes` when the base already has 0.1) run once and belong to every axis
they came from (the `axes` column of the table). Each point runs in `runs/<name>/<slug>/`
(slug: `temperature-0.05`, `optimizer-adam`, or `base`), which holds the run files, the
executed notebook and, when it failed, `error.txt`; with seeds, each seed of a point is its own
run in `runs/<name>/<slug>/seed-<s>/`, resumed and retried on its own.

Each point's notebook gets its resolved config once (the `settings` parameter); the notebook
trains and evaluates it with selfsup.pipeline.run, and its results are read back from its run
folder into results.csv (one row per run) and summary.csv (one row per point over its seeds).

Resuming: a point is done when its run.json says "finished" with the point's config hash
(and eval.json exists when `evaluate` is on); an unfinished run of the same config continues
from its checkpoint; an unfinished run of another config is cleared and run again. Nothing else
is ever deleted: a finished run of another config or data, an unreadable run.json, a folder with
files a run does not write, or a point reached through a symbolic link stops the sweep with an
error naming the folder; the sweep's folder is a plain name inside the runs root.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import cluster, config, launch, plan
from .config import ConfigError
from .data import fingerprint, load_dataset
from .results import RESULTS, run_summary, write_results
from .runs import Run, RunError, write_json
from .workbook import check_parameters

DEFAULT_NOTEBOOK = "notebooks/03_train.ipynb"
SWEEP_KEYS = tuple(
    "name title seeds notebook preset data evaluate overrides grid axes points parameters cluster".split()
)
# The course report's ablation sweeps, in the report's order: configs/sweeps/course_<stem>.yaml.
# Their axes, values and titles are read from the files (course_axes), the one source.
COURSE_SWEEPS = ("temperature", "optimizer", "lr", "batch", "backbone", "epochs")
DEFINITION = "sweep.json"
# The notebook parameters the sweep sets for every point (a sweep file's `parameters` may not).
RESERVED = ("root", "preset", "overrides", "settings", "data_dir", "run_dir", "evaluate", "resume")


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
    root: Path  # runs/<name>: the sweep's folder
    cluster: dict | None = None  # the file's cluster block, for --executor slurm


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
    return [
        dataclasses.replace(
            p,
            overrides={**p.overrides, "seed": s},
            slug=f"{p.slug}/seed-{s}",
            cfg=p.cfg.replace(seed=s) if p.cfg is not None else None,
            run_dir=p.run_dir / f"seed-{s}",
            seed=s,
        )
        for p in points
        for s in seeds
    ]


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
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or not name.strip("."):
        raise ConfigError(
            f"{source}: key 'name' must be a folder name (letters, digits, . _ -; not . or ..), got {name!r}"
        )
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
    if set(RESERVED) & set(parameters):
        raise ConfigError(
            f"{source}: key 'parameters' may not set {sorted(set(RESERVED) & set(parameters))} (the sweep sets them)"
        )
    check_parameters(notebook, list(parameters), f"{source}: key 'parameters'")
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

    root = Path(runs_root) / name
    out, keys = _resolve(candidates, preset, fixed, root)
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
        root=root,
        cluster=cluster.checked_block(spec.get("cluster"), source),  # for --executor slurm (selfsup.cluster)
    )


# --------------------------------------------------------------------------------------------
# Point folders: a sweep stays inside its runs root and clears only what it can tell is its own


def _check_inside(path: Path, parent: Path, what: str) -> None:
    """RunError unless `path` (built as parent / names) is a folder inside parent, not reached
    through a symbolic link: a link would let the sweep write into, or clear, someone else's folder."""
    if path.resolve() != parent.resolve() / path.relative_to(parent):
        raise RunError(
            f"{path}: is a symbolic link or below one (to {path.resolve()}); {what} must be a folder "
            f"inside {parent}: remove the link"
        )


def point_state(
    run_dir: Path,
    cfg_hash: str,
    evaluate: bool = True,
    data_id: str | None = None,
    notebook: str = Path(DEFAULT_NOTEBOOK).name,
) -> str:
    """What to do with a point's folder: "done", "resume" (same config and data, unfinished or not
    yet evaluated) or "fresh" (empty, or cleared). A folder is cleared only when it holds nothing
    but an unfinished run of another config or data, or a failed start (run files and the executed
    `notebook`'s file name). RunError naming the folder for a finished run of another config or
    trained on other data (data_id: `selfsup.data.fingerprint` of the train split), an unreadable
    run.json, or files a run does not write: never deleted."""
    run = Run(run_dir)
    if run.is_empty():
        return "fresh"
    info = run.info(strict=True)
    finished = info.get("status") == "finished"
    if data_id and info.get("data_fingerprint") not in (None, data_id):
        if finished:
            raise RunError(
                f"{run_dir}: holds a finished run trained on other data (fingerprint "
                f"{info['data_fingerprint']}, now {data_id}); move or delete that folder"
            )
    elif info.get("config_hash") == cfg_hash:
        if finished:  # trained, not evaluated: "resume" (training returns at once, then it is evaluated)
            return "resume" if evaluate and not run.eval_current(cfg_hash) else "done"
        if run.has_checkpoint():
            return "resume"
    elif finished:
        raise RunError(
            f"{run_dir}: holds a finished run of another config (hash {info.get('config_hash')}, "
            f"this point {cfg_hash}); move or delete that folder, or give the sweep another name"
        )
    foreign = run.foreign(notebook)
    if foreign:
        raise RunError(
            f"{run_dir}: holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}, which a run "
            "does not write, so it is not cleared; move that folder away, or give the sweep another name"
        )
    shutil.rmtree(run_dir)  # an unfinished run of another config or data, or a failed start
    return "fresh"


# --------------------------------------------------------------------------------------------
# Running a sweep: the points' states, their executions (selfsup.launch), the tables


def run_sweep(
    file, data=None, runs_root="runs", jobs=None, progress=True, executor="local", cluster_args=None, detach=False
) -> list[dict]:
    """Execute the sweep `file` (YAML path, dict or a loaded Sweep, see the module docstring):
    write runs/<name>/results.csv and summary.csv and return results.csv's rows (one per point
    and seed). Finished points are skipped; failing points are recorded and the others still run.
    jobs: points in parallel (default: one per visible GPU, else 1); with several GPUs each
    worker sees one (CUDA_VISIBLE_DEVICES). executor "slurm": the points as one SLURM job array
    (selfsup.cluster; cluster_args override the file's `cluster:` block; detach: submit and return
    without waiting, the rows then saying which runs are still to come)."""
    sweep = file if isinstance(file, Sweep) else load_sweep(file, data=data, runs_root=runs_root)
    _check_inside(sweep.root, sweep.root.parent, "a sweep")
    opts = executor == "slurm" and cluster.cluster_options(sweep.cluster, cluster_args, sweep.source)
    slurm = opts and dict(opts=opts, detach=detach, progress=progress)
    with Run(sweep.root).lock("sweep folder"):  # one sweep at a time per folder: a second one is refused
        if slurm and cluster.attach([(p.slug, str(p.run_dir)) for p in sweep.points], sweep.name, **slurm):
            return []  # detached while runs of an earlier submission are still in flight: nothing new
        return _run_sweep(sweep, jobs, progress, slurm)


def _run_sweep(sweep: Sweep, jobs, progress: bool, slurm=None) -> list[dict]:
    _write_definition(sweep)
    _log(progress, f"[{sweep.name}] {len(sweep.points)} points -> {sweep.root}")
    for p in sweep.points:
        _check_inside(p.run_dir, sweep.root, "a sweep point")
    # The data a run was trained on is checked only when a point folder holds something: a fresh
    # sweep loads its dataset once per point (in the notebook), not here.
    held = any(not Run(p.run_dir).is_empty() for p in sweep.points if p.cfg is not None)
    data_id = fingerprint(load_dataset(sweep.data).train) if held else None
    tasks = []
    for p in sweep.points:
        if p.cfg is None:  # invalid values: record, do not run
            Run(p.run_dir).write_error(p.error)
            _log(progress, f"[{sweep.name}] {p.slug}: invalid ({p.error})")
            continue
        state = point_state(p.run_dir, p.cfg.hash(), sweep.evaluate, data_id, sweep.notebook.name)
        if state == "done":
            _log(progress, f"[{sweep.name}] {p.slug}: finished earlier, skipped")
            continue
        tasks.append(dict(slug=p.slug, run_dir=str(p.run_dir), state=state, **_execution(sweep, p, state)))
    if progress and tasks and not slurm:  # what the runs will cost, before it is spent (selfsup.plan)
        todo = {t["slug"] for t in tasks}
        _log(
            progress, f"[{sweep.name}] " + plan.sweep_total([p.cfg for p in sweep.points if p.slug in todo], sweep.data)
        )
    if slurm:  # one SLURM job array, each task running launch.execute_point on a node
        outcomes = cluster.run_array(tasks, launch.execute_point, sweep.root, sweep.name, **slurm)
    else:
        outcomes = launch.run_points(tasks, jobs, lambda message: _log(progress, f"[{sweep.name}] {message}"))
    rows = [_row(p, sweep, outcomes.get(p.slug)) for p in sweep.points]
    write_results(rows, sweep.keys, sweep.root / RESULTS)  # and summary.csv: one row per point
    failed = sum(r["status"] != "finished" for r in rows)
    _log(progress, f"[{sweep.name}] results: {sweep.root / RESULTS} ({len(rows) - failed} finished, {failed} failed)")
    return rows


def _execution(sweep: Sweep, p: Point, state: str) -> dict:
    """How a point's notebook is executed: its papermill parameters (the resolved config, given
    once: the notebook does not resolve it again) and where."""
    cwd = str(Path.cwd().resolve())
    # progress off by default: nobody watches a sweep point's kernel (a sweep file may turn it on
    # to keep the bar in each executed notebook)
    parameters = {"progress": False, **sweep.parameters}
    parameters.update(
        root=cwd,
        settings=p.cfg.to_dict(),
        data_dir=str(sweep.data.resolve()),
        run_dir=str(p.run_dir.resolve()),
        evaluate=sweep.evaluate,
        resume=state == "resume",
    )
    return dict(notebook=str(sweep.notebook.resolve()), parameters=parameters, cwd=cwd)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _write_definition(sweep: Sweep) -> None:
    """runs/<name>/sweep.json: the resolved sweep, so the results folder describes itself."""
    fields = ("name", "source", "notebook", "preset", "data", "evaluate", "overrides", "keys")
    points = [
        dict(
            slug=p.slug,
            point=p.point,
            seed=p.seed,
            overrides=p.overrides,
            axes=p.axes,
            config_hash=p.cfg.hash() if p.cfg else None,
        )
        for p in sweep.points
    ]
    write_json(sweep.root / DEFINITION, {**{f: getattr(sweep, f) for f in fields}, "points": points})


def _row(p: Point, sweep: Sweep, outcome: dict | None) -> dict:
    """The point's row of results.csv: its name, seed, axes, varied keys, and the run folder's
    headline (results.run_summary: read from the folder once), status and error."""
    resolved = p.cfg.to_dict() if p.cfg else {**sweep.overrides, **p.overrides}
    row = {
        "point": p.point or p.slug,
        "seed": p.seed if p.seed is not None else resolved.get("seed", ""),
        "axes": "|".join(p.axes),
        **{k: resolved.get(k, "") for k in sweep.keys},
        **run_summary(p.run_dir),
        "run_dir": str(p.run_dir),
    }
    run = Run(p.run_dir)
    if p.cfg is None:
        row["status"] = "invalid"
    elif run.has_error():
        row["status"] = "failed"
    row["error"] = run.error() or row["error"] or (outcome or {}).get("error", "")
    return row
