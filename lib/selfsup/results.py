"""Sweep results: one row per run (results.csv), read back into tables for notebooks 01, 02 and 05.

    run_summary(run_dir)        -> the headline numbers of one run folder
    load_results("demo")        -> runs/demo/results.csv as a DataFrame
    collect_results("runs")     -> every sweep's table in one DataFrame
    axis_results(df, "lr")      -> the rows that vary one axis, in its order
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .runs import Run

RESULTS = "results.csv"
# Columns of results.csv after the per-key parameter columns.
# Accuracy columns are named as in eval.json's summary (val_knn = course k-NN on val, ...), so rows
# plug straight into selfsup.plots; random_init_* is the floor: the same network untrained.
ACCURACY_COLUMNS = ("val_knn", "ood_knn", "val_knn_weighted", "ood_knn_weighted", "val_linear", "ood_linear",
                    "random_init_val_knn", "random_init_ood_knn", "random_init_val_linear",
                    "random_init_ood_linear")
RESULT_COLUMNS = ("status", "epochs", "train_loss", *ACCURACY_COLUMNS, "wall_clock_s", "config_hash",
                  "run_dir", "error")

def run_summary(run_dir: str | Path) -> dict:
    """Headline numbers of one run folder (selfsup.runs.Run.headline); missing -> NaN.

    Keys: status, epochs, train_loss, wall_clock_s, config_hash and ACCURACY_COLUMNS (fractions in
    [0, 1], named as in eval.json's summary)."""
    h = Run(run_dir).headline()
    return {**{k: h.get(k, math.nan) for k in RESULT_COLUMNS if k not in ("run_dir", "error")},
            "config_hash": h.get("config_hash", "")}


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
        return p / RESULTS
    return Path(runs_root) / str(name_or_csv) / RESULTS


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
    return sorted(Path(runs_root).glob(f"*/{RESULTS}"))


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
