"""Sweep results: one row per run (results.csv), one row per point over its seeds (summary.csv),
read back into tables for notebooks 01, 02 and 05.

    run_summary(run_dir)        -> the headline numbers of one run folder
    load_results("demo")        -> runs/demo/results.csv as a DataFrame (one row per seed)
    summarise(rows)             -> one row per point: mean, std, 95% interval over seeds, and the
                                   binomial interval of a single run on that val / OOD size
    write_results(rows, keys, path) -> results.csv and, beside it, summary.csv (summarise's rows)
    read_summary("demo")        -> runs/demo/summary.csv as a DataFrame (one row per point)
    collect_results("runs")     -> every sweep's table in one DataFrame (summary=True: summary.csv's)
    axis_results(df, "lr")      -> the rows that vary one axis, in its order
    separated(a, b, "val_knn")  -> +1 / -1 when the intervals of two points separate, else 0
    above_floor(row, "val_knn") -> the point beats its random-init floor (paired by seed)

The interval shown for a point (`<metric>_interval`) is the 95% t-interval over its seeds when
it has two or more, else the 95% Wilson interval of one run's accuracy on n_val (n_ood) images.
The gain over the floor (`<metric>_gain`, `_gain_ci95`) is paired: each seed's run against the same
network at that seed's initial weights, so the spread of random networks cancels out.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .runs import Run, RunError

RESULTS = "results.csv"
# Columns of results.csv after the per-key parameter columns.
# Accuracy columns are named as in eval.json's summary (val_knn = course k-NN on val, ...), so rows
# plug straight into selfsup.plots; random_init_* is the floor: the same network untrained.
ACCURACY_COLUMNS = (
    "val_knn",
    "ood_knn",
    "val_knn_weighted",
    "ood_knn_weighted",
    "val_linear",
    "ood_linear",
    "select_knn",
    "random_init_val_knn",
    "random_init_ood_knn",
    "random_init_val_linear",
    "random_init_ood_linear",
)
RESULT_COLUMNS = (
    "status",
    "epochs",
    "train_loss",
    *ACCURACY_COLUMNS,
    "n_val",
    "n_ood",
    "n_select",
    "wall_clock_s",
    "config_hash",
    "run_dir",
    "error",
)
SUMMARY_CSV = "summary.csv"  # beside results.csv: one row per point over its seeds (summarise)
# The metrics with a random-init floor (random_init_<metric>), whose paired gain summarise() reports.
FLOORED = tuple(m for m in ACCURACY_COLUMNS if f"random_init_{m}" in ACCURACY_COLUMNS)
Z95 = 1.959963984540054  # the normal distribution's 97.5% quantile


def run_summary(run_dir: str | Path) -> dict:
    """Headline numbers of one run folder (selfsup.runs.Run.headline); missing -> NaN.

    Keys: status, epochs, train_loss, wall_clock_s, config_hash, ACCURACY_COLUMNS (fractions in
    [0, 1], named as in eval.json's summary) and error. A run file holding what selfsup does not
    write there (hand-edited, foreign): status "unreadable", error naming the file and what is wrong."""
    try:
        h = Run(run_dir).headline()
    except RunError as e:
        h = dict(status="unreadable", error=str(e))
    return {
        **{k: h.get(k, math.nan) for k in RESULT_COLUMNS if k not in ("run_dir", "error")},
        "config_hash": h.get("config_hash", ""),
        "error": h.get("error", ""),
    }


def t_interval(values) -> tuple[float, float, float]:
    """(mean, sample std, half-width of the 95% t-interval of the mean); NaN where undefined."""
    from scipy import stats

    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan, math.nan
    n, mean = len(v), sum(v) / len(v)
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return mean, std, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def _minus(a, b) -> float:
    """a - b as floats; NaN when either is missing."""
    try:
        return float(a) - float(b)
    except (TypeError, ValueError):
        return math.nan


def binomial_interval(p: float, n) -> float:
    """Half-width of the 95% Wilson score interval of an accuracy p measured on n images."""
    try:
        n = float(n)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(p) and math.isfinite(n) and n > 0):
        return math.nan
    z2 = Z95**2
    return Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)


def _size_key(metric: str) -> str:
    return "n_ood" if "ood_" in metric else "n_select" if "select_" in metric else "n_val"


def summarise(rows, keys=()) -> list[dict]:
    """One row per point (the `point` column, in first-seen order) over its runs (seeds): the
    point's columns (axes, `keys`), n_seeds, seeds, status ("finished" or "k/n finished"), and per
    accuracy metric its mean over finished runs, `_std`, `_ci95` (t-interval half-width, 2+ seeds),
    `_binom95` (Wilson half-width of one run at the mean), `_interval` (the one to show); per
    metric with a floor (FLOORED), `_gain` and `_gain_ci95`: the mean and t-interval over seeds of
    each run's accuracy minus its own random-init floor's."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    points: dict = {}
    for r in rows:
        points.setdefault(r["point"], []).append(r)
    out = []
    for point, runs in points.items():
        done = [r for r in runs if r.get("status") == "finished"]
        first = runs[0]
        row = {
            "point": point,
            "axes": first.get("axes", ""),
            **{k: first.get(k) for k in keys},
            "sweep": first.get("sweep", ""),
            "n_seeds": len(done),
            "seeds": "|".join(str(r.get("seed", "")) for r in done),
            "status": "finished" if len(done) == len(runs) else f"{len(done)}/{len(runs)} finished",
            "epochs": max((r.get("epochs", 0) for r in done), default=0),
            "error": next((r.get("error") for r in runs if r.get("error")), ""),
        }
        for m in (*ACCURACY_COLUMNS, "train_loss", "wall_clock_s"):
            mean, std, ci = t_interval([r.get(m) for r in done])
            row.update({m: mean, f"{m}_std": std, f"{m}_ci95": ci})
            if m in ACCURACY_COLUMNS:
                sizes = [r.get(_size_key(m)) for r in done]
                binom = binomial_interval(mean, sizes[0] if sizes else math.nan)
                row.update({f"{m}_binom95": binom, f"{m}_interval": ci if len(done) >= 2 else binom})
            if m in FLOORED:
                gain, _, gain_ci = t_interval([_minus(r.get(m), r.get(f"random_init_{m}")) for r in done])
                row.update({f"{m}_gain": gain, f"{m}_gain_ci95": gain_ci})
        out.append(row)
    return out


def separated(a: dict, b: dict, metric: str) -> int:
    """+1 when point a's interval lies wholly above b's, -1 when wholly below, 0 when they overlap
    (or either is missing): the rule by which the report states a difference as a finding."""
    lo = lambda r: r.get(metric, math.nan) - r.get(f"{metric}_interval", math.nan)  # noqa: E731
    hi = lambda r: r.get(metric, math.nan) + r.get(f"{metric}_interval", math.nan)  # noqa: E731
    if lo(a) > hi(b):
        return 1
    if hi(a) < lo(b):
        return -1
    return 0


def above_floor(row: dict, metric: str = "val_knn") -> bool:
    """The point beats its random-init floor: with 2+ seeds, the paired gain (each seed against its
    own untrained network) minus its 95% t-interval is above zero; with one seed, the run's
    interval lies wholly above its floor's (both binomial)."""
    lower = _minus(row.get(f"{metric}_gain"), row.get(f"{metric}_gain_ci95"))
    if math.isfinite(lower):
        return lower > 0
    return (
        separated(
            row,
            {
                k.replace(f"random_init_{metric}", metric): v
                for k, v in row.items()
                if k.startswith(f"random_init_{metric}")
            },
            metric,
        )
        == 1
    )


def _write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k, "")) for k in columns})
    os.replace(tmp, path)


def write_results(rows: list[dict], keys: list[str], path: Path) -> Path:
    """results.csv (one row per run) and, beside it, summary.csv (one row per point)."""

    def columns(*names) -> list[str]:  # a swept key that is also a result column (epochs) appears once
        return list(dict.fromkeys(names))

    _write_csv(rows, columns("point", "seed", "axes", *keys, *RESULT_COLUMNS), path)
    stats = [f"{m}{suffix}" for m in ACCURACY_COLUMNS for suffix in ("", "_std", "_ci95", "_binom95", "_interval")]
    stats += [f"{m}_gain{suffix}" for m in FLOORED for suffix in ("", "_ci95")]
    _write_csv(
        summarise(rows, keys),
        columns(
            "point",
            "axes",
            *keys,
            "n_seeds",
            "seeds",
            "status",
            "epochs",
            *stats,
            "train_loss",
            "wall_clock_s",
            "error",
        ),
        path.parent / SUMMARY_CSV,
    )
    return path


def results_path(name_or_csv: str | Path, runs_root: str | Path = "runs") -> Path:
    """A sweep name, a sweep folder or a results.csv path -> the results.csv path (may not exist)."""
    p = Path(name_or_csv)
    if p.suffix == ".csv":
        return p
    if p.is_dir():
        return p / RESULTS
    return Path(runs_root) / str(name_or_csv) / RESULTS


def load_results(name_or_csv: str | Path, runs_root: str | Path = "runs"):
    """A sweep's results table as a pandas DataFrame (one row per run; `axes` is a list).

    name_or_csv: a sweep name (read from runs_root/<name>/results.csv), its folder, or a CSV path.
    Raises FileNotFoundError naming the path when the sweep has not been run."""
    path = results_path(name_or_csv, runs_root)
    return _read_table(path, ("point", "axes", "status", "config_hash", "run_dir", "error"))  # seed: a number


def read_summary(name_or_csv: str | Path, runs_root: str | Path = "runs"):
    """A sweep's summary.csv as a pandas DataFrame: one row per point over its seeds, as
    summarise() computed it when the sweep ended (`axes` a list, a `sweep` column, the varied
    keys, n_seeds, seeds "0|1|2", status, and per metric its mean, _std, _ci95, _binom95,
    _interval and, with a floor, _gain and _gain_ci95); `.to_dict("records")` gives summarise's rows.

    name_or_csv: a sweep name (runs_root/<name>/summary.csv), its folder, or its results.csv or
    summary.csv path. Raises FileNotFoundError naming the path when the sweep has not been run."""
    path = results_path(name_or_csv, runs_root).with_name(SUMMARY_CSV)
    return _read_table(path, ("point", "axes", "seeds", "status", "error"))


def _read_table(path: Path, text_columns: tuple):
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep results (run `selfsup sweep` first)")
    df = pd.read_csv(path, dtype={c: str for c in text_columns})
    for c in text_columns:
        df[c] = df[c].fillna("")
    df["axes"] = df["axes"].map(lambda s: [a for a in s.split("|") if a])
    df["sweep"] = path.parent.name
    return df


def find_results(runs_root: str | Path = "runs") -> list[Path]:
    """Every runs_root/<sweep>/results.csv, sorted by sweep name."""
    return sorted(Path(runs_root).glob(f"*/{RESULTS}"))


def collect_results(runs_root: str | Path = "runs", sweeps=None, ignore=("compare_*",), summary: bool = False):
    """Several sweeps' tables in one DataFrame (a `sweep` column tells them apart): results.csv's
    rows (one per run), or with `summary` summary.csv's (one per point, read_summary).

    sweeps: names / folders / CSV paths; None = every runs_root/*/results.csv whose sweep name
    matches none of the `ignore` globs (the method comparisons by default). Sweeps named
    explicitly but not run yet are skipped. Returns an empty DataFrame when nothing was run."""
    import fnmatch

    import pandas as pd

    if sweeps is None:
        paths = [
            p for p in find_results(runs_root) if not any(fnmatch.fnmatch(p.parent.name, pat) for pat in (ignore or ()))
        ]
    else:
        names = [sweeps] if isinstance(sweeps, (str, Path)) else list(sweeps)
        paths = [results_path(s, runs_root) for s in names]
    read = read_summary if summary else load_results
    frames = [read(p) for p in paths if p.is_file() and (not summary or p.with_name(SUMMARY_CSV).is_file())]
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
