"""The report's content from results: headline and protocol tables, Figures 1-3 of a run,
ablation tables and plots, what differs between the compared methods, and the sentences that put
numbers from results into the report's prose. Notebooks 01, 02, 04 and 05 call it; selfsup.workbook
exports the executed report.

Every value read from files (names, paths, axis values, error texts, run.json's environment) goes
into the Markdown through display.text or display.code, so it shows as text and never as markup.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from . import plots
from .data import load_dataset
from .display import (
    code,
    fmt,
    is_missing,
    listing,
    markdown_table,
    pct,
    plural,
    settings_read,
    show_figure,
    show_markdown,
    show_plot,
    text,
)
from .evaluate import SELECT_FRACTION, ensure_eval, ood_parts, run_features
from .methods import REGISTRY, titled
from .results import SUMMARY_CSV, above_floor, axis_results, load_results, read_summary, results_path, separated
from .runs import Run, read_json, write_json
from .sweep import course_axes

METHOD_NAMES = {name: m.title for name, m in REGISTRY.items()}
FIGURES_MANIFEST = "figures.json"


def settings_that_differ(run_dirs: dict) -> dict[str, dict]:
    """{name: run folder} -> {name: {key: value}}: the settings, as trained, in which the runs differ
    ('method' aside; the augmentation recipe and head sizes resolved as the method uses them). A
    run lists only the settings its method reads (display.settings_read): no temperature for BYOL."""
    resolved = {}
    for name, run_dir in run_dirs.items():
        cfg = Run(run_dir).config()
        resolved[name] = {**settings_read(cfg.to_dict()), "recipe": cfg.aug_recipe, **cfg.heads}
    keys = [
        k
        for k in dict.fromkeys(k for r in resolved.values() for k in r)
        if k != "method" and len({repr(r.get(k)) for r in resolved.values()}) > 1
    ]
    return {name: {k: r[k] for k in keys if k in r} for name, r in resolved.items()}


def headline_rows(ev: dict) -> list[dict]:
    """eval.json -> rows (protocol, val, ood, floor_val, floor_ood) for HEADLINE_COLUMNS."""
    s, val = ev["summary"], ev["trained"]["val"]
    names = (
        ("knn", f"k-NN, course protocol (k={val.get('k', 5)}, euclidean)"),
        ("knn_weighted", f"k-NN, weighted cosine (k={val.get('weighted_k', 20)})"),
        ("linear", "linear probe"),
    )
    return [
        dict(
            protocol=name,
            val=s.get(f"val_{key}"),
            ood=s.get(f"ood_{key}"),
            floor_val=s.get(f"random_init_val_{key}"),
            floor_ood=s.get(f"random_init_ood_{key}"),
        )
        for key, name in names
        if f"val_{key}" in s
    ]


HEADLINE_COLUMNS = [
    ("protocol", "protocol"),
    ("val", "val, trained", pct),
    ("floor_val", "val, random init", pct),
    ("ood", "OOD, trained", pct),
    ("floor_ood", "OOD, random init", pct),
]


def protocol_markdown(rows: list[dict]) -> str:
    """evaluate.protocol_table rows -> one Markdown table: (split, features, metric) x k."""
    ks = sorted({r["k"] for r in rows})
    table: dict = {}
    for r in rows:
        votes = "exp(cos/T) votes" if r["weights"] == "distance" else r["weights"]
        key = (r["split"], r["features"], f"{r['metric']}, {votes}")
        table.setdefault(key, {})[r["k"]] = r["accuracy"]
    out = [dict(split=s, features=f, metric=m, **{f"k{k}": v.get(k) for k in ks}) for (s, f, m), v in table.items()]
    return markdown_table(
        out,
        [("split", "split"), ("features", "features"), ("metric", "metric"), *[(f"k{k}", f"k={k}", pct) for k in ks]],
    )


def tsne_embeddings(run_dir, features: dict, seed: int = 0) -> dict:
    """t-SNE of the val and OOD features, cached in run_dir/tsne.npz keyed by the features' bytes
    and the seed (t-SNE takes minutes on 10k points; the report and the explorer reuse it)."""
    keys = [k for k in ("val", "ood") if k in features]
    digest = hashlib.sha1(b"".join(features[k].tobytes() for k in keys) + str(seed).encode()).hexdigest()
    run = Run(run_dir)
    cached = run.cached_tsne(digest)
    if cached is not None:
        return cached
    emb = {k: plots.tsne_embedding(features[k], seed) for k in keys}
    run.save_tsne(digest, emb)
    return emb


def make_figures(
    run_dir,
    data_dir,
    figures_dir,
    *,
    n_images: int = 10,
    tsne_classes: int = 20,
    seed: int = 0,
    dataset=None,
    ev=None,
    features=None,
) -> dict:
    """Figures 1-3 of the report for a finished run, written to figures_dir/Figure{1,2,3}.png with a
    manifest figures.json (which run, config and eval they show).

    Figure 1: loss and k-NN accuracy per epoch (metrics.jsonl). Figure 2: n_images random val and
    OOD (probe-test) images with true and course k-NN predicted labels (eval.json). Figure 3: t-SNE of
    val and OOD backbone features, tsne_classes classes coloured. Returns dict(paths, features,
    embeddings, eval) for further use (the explorer)."""
    run_dir, figures_dir = Path(run_dir), Path(figures_dir)
    run = Run(run_dir)
    info = run.require_finished()
    dataset = dataset if dataset is not None else load_dataset(data_dir)
    ev = ev if ev is not None else ensure_eval(run_dir, data_dir)
    features = features if features is not None else run_features(run_dir, data_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = {f"Figure{i}": figures_dir / f"Figure{i}.png" for i in (1, 2, 3)}
    cfg = ev["config"]
    plots.figure1_curves(
        run.metrics(), paths["Figure1"], title=f"{cfg['method']} {cfg['backbone']}, {cfg['epochs']} epochs"
    )
    tr = ev["trained"]
    ood_kw = {}
    if dataset.ood is not None and tr.get("ood"):
        _, test = ood_parts(len(dataset.ood))  # the OOD predictions are of the probe-test part
        ood_kw = dict(
            ood_images=dataset.ood.images[test],
            ood_true=dataset.ood.labels[test],
            ood_pred=tr["ood"]["predictions"]["knn"],
            ood_class_names=dataset.ood.class_names,
        )
    plots.figure2_predictions(
        dataset.val.images,
        dataset.val.labels,
        tr["val"]["predictions"]["knn"],
        dataset.val.class_names,
        n=n_images,
        seed=seed,
        path=paths["Figure2"],
        **ood_kw,
    )
    emb = tsne_embeddings(run_dir, features, seed)
    plots.figure3_tsne(
        features["val"],
        dataset.val.labels,
        features.get("ood"),
        dataset.ood.labels if dataset.ood is not None else None,
        n_highlight=tsne_classes,
        seed=seed,
        class_names=dataset.val.class_names,
        ood_class_names=dataset.ood.class_names if dataset.ood is not None else None,
        embeddings=emb,
        path=paths["Figure3"],
    )
    manifest = dict(
        run_dir=str(run_dir.resolve()),
        config_hash=info.get("config_hash"),
        data=str(Path(data_dir).resolve()),
        eval_seconds=ev.get("seconds"),
        n_images=n_images,
        tsne_classes=tsne_classes,
        seed=seed,
        figures={k: p.name for k, p in paths.items()},
    )
    write_json(figures_dir / FIGURES_MANIFEST, manifest)
    return dict(paths=paths, features=features, embeddings=emb, eval=ev)


def neighbour_galleries(ev: dict, dataset) -> dict:
    """{"val": Figure[, "ood": Figure]}: the random queries eval.json recorded (val images; OOD
    probe-test images) with their nearest reference images (training; OOD probe-train)."""
    out = {}
    for split, refs in (("val", dataset.train), ("ood", dataset.ood)):
        gallery = ev["trained"]["gallery"].get(split)
        if gallery:
            queries = getattr(dataset, split)
            q = np.asarray(gallery["query"])
            out[split] = plots.neighbour_gallery(
                queries.images[q],
                refs.images,
                gallery["neighbours"],
                refs.labels,
                refs.class_names,
                query_labels=queries.labels[q],
            )
    return out


def figures_current(run_dir, data_dir, figures_dir) -> bool:
    """True when figures_dir holds Figures 1-3 made (by make_figures) from this run and data."""
    m = read_json(Path(figures_dir) / FIGURES_MANIFEST)
    info = Run(run_dir).info()
    return (
        bool(m)
        and m.get("run_dir") == str(Path(run_dir).resolve())
        and m.get("data") == str(Path(data_dir).resolve())
        and m.get("config_hash") == info.get("config_hash")
        and all((Path(figures_dir) / f"Figure{i}.png").is_file() for i in (1, 2, 3))
    )


def figure_caption(key: str, figures_dir) -> str:
    """The caption of Figure1..3 as made by make_figures (its settings from figures.json)."""
    m = read_json(Path(figures_dir) / FIGURES_MANIFEST)
    n, k = text(m.get("n_images", 10)), text(m.get("tsne_classes", 20))
    return {
        "Figure1": "Figure 1. Training curves of the final run: SSL loss on training and validation images "
        "(left) and the course k-NN accuracy on val (right), per epoch.",
        "Figure2": f"Figure 2. {n} random validation images (top) and {n} random out-of-distribution images "
        "(bottom) with their true and predicted labels (course k-NN; green right, red wrong).",
        "Figure3": "Figure 3. t-SNE of the backbone features of the validation (left) and out-of-distribution "
        f"(right) images; up to {k} classes coloured, the rest grey.",
    }[key]


# --------------------------------------------------------------------------------------------
# Results over seeds: tables with intervals, findings that follow the intervals (notebooks 01, 02, 05)

INTERVAL_NOTE = (
    "Accuracies in %, mean ± 95% interval: over the seeds (t-interval) when a point has two or more, "
    "else the binomial (Wilson) interval of one run on that many images. *Floor*: the same network "
    "at its random initialisation; a point is above it when its gain, each seed against its own "
    "untrained network, stays above zero over its 95% interval."
)


def pm(row: dict, metric: str) -> str:
    """'38.1 ± 1.2' (percent) from a summary row; 'n/a' when missing."""
    mean, interval = row.get(metric), row.get(f"{metric}_interval")
    if is_missing(mean):
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if is_missing(interval) else f" ± {100 * interval:.1f}")


def summary_table(rows: list[dict], key: str, label: str, linear: bool = True, extra=()) -> str:
    """A Markdown table of summary rows (results.summarise): the point, seeds, k-NN (and linear
    probe) accuracies on val and OOD with intervals, each beside its random-init floor. Short
    headers, so it fits a PDF page; INTERVAL_NOTE explains them."""
    metrics = [("val_knn", "k-NN val"), ("ood_knn", "k-NN OOD")] + ([("val_linear", "linear val")] if linear else [])
    cols = [(key, label), ("seeds", "seeds")]
    text = []
    for r in rows:
        t = {
            key: fmt(r.get(key)),
            "seeds": str(r.get("n_seeds", "")) if r.get("status") == "finished" else r.get("status", ""),
        }
        for m, _ in metrics:
            t[m], t[f"floor_{m}"] = pm(r, m), pm(r, f"random_init_{m}")
        for k, _, f in extra:
            t[k] = f(r.get(k))
        text.append(t)
    for m, header in metrics:
        cols += [(m, header, str), (f"floor_{m}", "floor", str)]
    cols += [(k, h, str) for k, h, _ in extra]
    return markdown_table(text, [(c[0], c[1], str) for c in cols])


def findings(rows: list[dict], key: str, metric: str = "val_knn", what: str = "k-NN on val") -> str:
    """What the results say, computed from the intervals (results.separated): the best point, the
    points it is ahead of (intervals separate), those it is not distinguishable from at this
    number of seeds, and the points not clearly above their random-init floor (results.above_floor:
    paired by seed), or the smallest paired gain when every point is."""
    ok = [r for r in rows if r.get("status") == "finished" and not is_missing(r.get(metric))]
    if not ok:
        return "No finished points."
    best = max(ok, key=lambda r: r[metric])
    seeds = min(r.get("n_seeds", 1) for r in ok)
    ahead = [text(r[key]) for r in ok if r is not best and separated(best, r, metric) == 1]
    tied = [text(r[key]) for r in ok if r is not best and separated(best, r, metric) == 0]
    out = [f"Best by {what}: **{text(best[key])}** ({pm(best, metric)}%)."]
    if ahead:
        out.append(f"It is ahead of {listing(ahead)}: the intervals separate.")
    if tied:
        out.append(
            f"It is not distinguishable from {listing(tied)} at {plural(seeds, 'seed')} (the intervals overlap)."
        )
    below = [text(r[key]) for r in ok if not above_floor(r, metric)]
    paired = [r for r in ok if not is_missing(r.get(f"{metric}_gain_ci95"))]
    if below:
        out.append(f"Not clearly above the random-init floor ({what}): {listing(below)}.")
    elif len(paired) == len(ok):
        low = min(paired, key=lambda r: r[f"{metric}_gain"] - r[f"{metric}_gain_ci95"])
        gain, ci = 100 * low[f"{metric}_gain"], 100 * low[f"{metric}_gain_ci95"]
        out.append(
            f"Every point is above its random-init floor ({what}; each seed against its own untrained "
            f"network, the smallest gain is {gain:+.1f} ± {ci:.1f} points, {text(low[key])})."
        )
    else:
        out.append(f"Every point is above its random-init floor beyond the intervals ({what}).")
    return " ".join(out)


def chosen(rows: list[dict], key: str, metric: str = "val_knn", select: str = "select_knn") -> str:
    """The point to keep, chosen without val or OOD: the best by the selection k-NN (training
    images held out of its reference set, selfsup.evaluate.select_parts), with its score on
    `metric`; '' when the rows have no selection numbers (runs evaluated before it existed)."""
    ok = [
        r
        for r in rows
        if r.get("status") == "finished" and not is_missing(r.get(select)) and not is_missing(r.get(metric))
    ]
    if not ok:
        return ""
    pick, best = max(ok, key=lambda r: r[select]), max(ok, key=lambda r: r[metric])
    return (
        f"Chosen without looking at val or OOD (k-NN on {SELECT_FRACTION:.0%} of the training images, held out "
        f"of its reference set): **{text(pick[key])}** ({pm(pick, select)}% there, {pm(pick, metric)}% on val"
        + ("; also the best on val)." if pick is best else f"; the best on val is {text(best[key])}).")
    )


def ablation_columns(axis: str) -> list:
    seconds = lambda v: fmt(v) if is_missing(v) else f"{v:.0f}"  # noqa: E731
    return [("train_loss", "loss", fmt), ("wall_clock_s", "time (s)", seconds)]


def _axes(value) -> list[str]:
    """summary.csv's `axes` cell ("lr|temperature") as a list (kept when already one)."""
    return list(value) if isinstance(value, (list, tuple)) else [a for a in str(value or "").split("|") if a]


def sweep_summaries(runs_root, sweeps=None, ignore=("compare_*",)):
    """Sweeps' summary.csv files (one row per point over its seeds, as the sweep wrote them) in one
    DataFrame: a `sweep` column tells them apart, `axes` is a list per row.

    sweeps: names / folders / CSV paths; None = every runs_root/*/summary.csv whose sweep name
    matches none of the `ignore` globs (the method comparisons by default). Sweeps named
    explicitly but not run yet are skipped; nothing run gives an empty DataFrame."""
    import fnmatch

    import pandas as pd

    if sweeps is None:
        paths = [
            p
            for p in sorted(Path(runs_root).glob(f"*/{SUMMARY_CSV}"))
            if not any(fnmatch.fnmatch(p.parent.name, pat) for pat in (ignore or ()))
        ]
    else:
        names = [sweeps] if isinstance(sweeps, (str, Path)) else list(sweeps)
        paths = [results_path(s, runs_root).parent / SUMMARY_CSV for s in names]
    frames = []
    for path in paths:
        if path.is_file():
            df = read_summary(path)
            frames.append(df.assign(sweep=path.parent.name, axes=df["axes"].map(_axes), error=df["error"].fillna("")))
    if not frames:
        return pd.DataFrame(columns=["point", "axes", "sweep", "status", "n_seeds", "error"])
    return pd.concat(frames, ignore_index=True)


def sweeps_found(summaries) -> str:
    """'5 sweep points from 2 sweeps: `demo` and `lr`.' (or that none has been run)."""
    names = list(dict.fromkeys(summaries["sweep"]))
    if not names:
        return "No sweep has been run yet."
    return f"{plural(len(summaries), 'sweep point')} from {plural(len(names), 'sweep')}: {listing(map(code, names))}."


def show_ablations(
    summaries, axes: list[str], figures_dir=None, level: int = 3, metric: str = "val_knn", root="."
) -> dict:
    """The ablation axes in order: per axis that a sweep varied, a heading, then per sweep a table
    (mean ± interval over seeds), what it shows (findings) and a plot with interval bands (saved
    as figures_dir/ablation_<axis>_<sweep>.png); the axes nobody ran are listed in one paragraph
    at the end with the command that runs them. summaries: sweep_summaries(...). Returns
    {axis: {sweep: {...}}} for the run ones."""
    course = course_axes(root)
    out, not_run = {}, []
    for axis in axes:
        rows = axis_results(summaries, axis)
        if rows is None or len(rows) == 0:
            not_run.append(axis)
            continue
        title = text(course.get(axis, {}).get("title", axis))
        show_markdown(f"{'#' * level} {title} ({code(axis)})")
        out[axis] = {}
        for name, grp in rows.groupby("sweep", sort=False):
            points = grp.to_dict("records")
            show_markdown(
                f"Sweep {code(name)}: {plural(len(points), 'point')}.\n\n"
                + summary_table(points, axis, axis, linear=False, extra=ablation_columns(axis))
                + "\n\n"
                + findings(points, axis, metric)
                + " "
                + chosen(points, axis, metric)
            )
            for r in points:
                if r["status"] != "finished":
                    error = text(r.get("error") or "see its run folder")
                    show_markdown(f"Point {code(r['point'])} {text(r['status'])}: {error}")
            ok = [r for r in points if r["n_seeds"] and not is_missing(r.get(metric))]
            best = max(ok, key=lambda r: r[metric]) if ok else None
            if ok:
                stem = re.sub(r"[^\w.-]+", "_", f"ablation_{axis}_{name}")  # names from results: no path in it
                path = None if figures_dir is None else Path(figures_dir) / f"{stem}.png"
                fig = plots.ablation_plot(
                    ok, axis, title=f"{course.get(axis, {}).get('title', axis)} (sweep {name})", path=path
                )
                if path is None:
                    show_plot(fig)
                else:
                    show_figure(path, f"{title}: mean and 95% interval band.")
            out[axis][name] = {
                "values": [r[axis] for r in points],
                "best": best[axis] if best else None,
                f"best_{metric}": best[metric] if best else None,
                "failed": sum(r["status"] != "finished" for r in points),
            }
    if not_run:
        how = [
            f"{text(course[a]['title'].lower())} ({code('selfsup sweep ' + course[a]['file'])})"
            if a in course
            else code(a)
            for a in not_run
        ]
        show_markdown(f"**Not run here:** {listing(how)}.")
    return out


def comparison(runs_root, name=None) -> dict | None:
    """The method comparison: sweep `name` (None: the newest runs_root/compare_*) as one row per
    method over its seeds (its summary.csv), and the settings in which the methods' runs differ (a
    finished run folder per method, from its results.csv). None when it has not been run."""
    if name:
        path = results_path(name, runs_root).parent / SUMMARY_CSV
    else:
        found = sorted(Path(runs_root).glob(f"compare_*/{SUMMARY_CSV}"), key=lambda p: p.stat().st_mtime)
        path = found[-1] if found else None
    if path is None or not path.is_file():
        return None
    rows = sweep_summaries(runs_root, [path]).to_dict("records")
    first_run: dict = {}
    for r in load_results(path.parent).to_dict("records"):
        if r["status"] == "finished":
            first_run.setdefault(r["method"], r["run_dir"])
    done = [r["method"] for r in rows if r["n_seeds"] and r["method"] in first_run]
    return dict(sweep=path.parent.name, rows=rows, settings=settings_that_differ({m: first_run[m] for m in done}))


def comparison_figure(c: dict | None, path) -> Path | None:
    """The bar chart of a comparison (k-NN per method with intervals and floors) saved at path;
    None when no method finished."""
    done = {r["method"]: r for r in titled(c["rows"]) if r["n_seeds"]} if c else {}
    if not done:
        return None
    plots.comparison_bar(done, title=f"Methods compared (sweep {c['sweep']})", path=path)
    return Path(path)
