"""The report: execute the report notebook with papermill and export it as HTML, PDF and Markdown;
plus the few display helpers the notebooks share (repository root, Markdown tables, figures, the
final "record" cell), so that no notebook carries a copy of another's code.

    export("notebooks/05_report.ipynb", "reports", {})  -> [report.html, report.md, report.pdf]

Offline viewing: the HTML is nbconvert's "lab" template minus every script it would load from a
CDN (require.js, MathJax, mermaid, the widget manager). The report uses no LaTeX math, so nothing
is lost; its CSS and its images are inlined, so report.html is one self-contained file.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from .train import RunError, read_json, write_json

# nbconvert's lab template, minus the scripts it fetches from CDNs (see the module docstring).
_OFFLINE_HTML = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


class ToolMissing(FileNotFoundError):
    """An external program the export needs (xelatex, pandoc) is not installed."""


# --------------------------------------------------------------------------------------------
# Export


def export(notebook, out_dir, parameters: dict | None = None, progress: bool = True) -> list[Path]:
    """Execute `notebook` with papermill into out_dir/report.ipynb (kernel python3), then write
    out_dir/report.html (no code, no prompts; offline), report.md (figures in out_dir/figures/,
    linked relatively) and report.pdf (XeLaTeX). Returns the paths written.

    parameters: papermill parameters for the notebook (paths relative to the repository root).
    Raises ToolMissing (after writing HTML and Markdown) when xelatex or pandoc is missing.
    """
    from . import sweep

    notebook, out_dir = Path(notebook), Path(out_dir)
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: report notebook not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "report.ipynb"
    # cwd = the notebook's folder: the notebook finds the repository root from there.
    sweep.execute_notebook(notebook, executed, dict(parameters or {}), cwd=notebook.resolve().parent,
                           progress=progress)
    nb = prepare_for_export(executed)
    paths = [write_html(nb, out_dir / "report.html"), write_markdown(nb, out_dir / "report.md")]
    missing = [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]
    if missing:
        raise ToolMissing(f"{' and '.join(missing)} not found: the PDF report needs TeX; run `make tex` "
                          f"(wrote {paths[0]} and {paths[1]})")
    paths.append(write_pdf(nb, out_dir / "report.pdf"))
    return paths


def prepare_for_export(executed):
    """The executed notebook, ready for a reader: titled (from its first '# ' heading), without
    stderr streams (warnings, progress bars) and without cells tagged 'remove-cell'."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    nb.cells = [c for c in nb.cells if "remove-cell" not in c.get("metadata", {}).get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        elif cell.cell_type == "markdown" and "title" not in nb.metadata:
            m = re.search(r"^# (.+)$", cell.source, flags=re.M)
            if m:
                nb.metadata["title"] = m.group(1).strip()
    return nb


def for_latex(nb):
    """A copy for the PDF: the first '# ' heading dropped (the LaTeX title page carries it) and the
    other headings raised one level, so sections number 1, 2, ... instead of 1.1, 1.2, ..."""
    import copy

    nb = copy.deepcopy(nb)
    dropped = False

    def promote(text: str) -> str:
        nonlocal dropped
        if not dropped and re.search(r"^# .+$", text, flags=re.M):
            text, dropped = re.sub(r"^# .+\n?", "", text, count=1, flags=re.M), True
        return re.sub(r"^#(#+) ", r"\1 ", text, flags=re.M)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = promote(cell.source)
        elif cell.cell_type == "code":
            for o in cell.outputs:
                if "text/markdown" in o.get("data", {}):
                    o.data["text/markdown"] = promote(o.data["text/markdown"])
    return nb


def _exporter_options() -> dict:
    return dict(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)


def write_html(nb, path: Path) -> Path:
    """One self-contained HTML file: inlined CSS and images, no scripts from the network."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True, **_exporter_options(),
                            extra_loaders=[DictLoader({"selfsup_offline.html.j2": _OFFLINE_HTML})],
                            template_file="selfsup_offline.html.j2")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    path.write_text(body, encoding="utf-8")
    return path


def write_markdown(nb, path: Path) -> Path:
    """Markdown with the figures extracted beside it into figures/ (relative links). Outputs that
    carry a file name (see show_figure) keep it: figures/Figure1.png, not report_12_0.png."""
    from nbconvert import MarkdownExporter

    exporter = MarkdownExporter(**_exporter_options())
    body, resources = exporter.from_notebook_node(
        nb, resources={"output_files_dir": "figures", "unique_key": path.stem, "metadata": {"name": path.stem}})
    for name, data in (resources.get("outputs") or {}).items():
        target = path.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    # ![png](figures/Figure1.png) -> ![Figure1](figures/Figure1.png): a readable alt text
    body = re.sub(r"!\[(?:png|jpeg|svg)\]\((figures/[^)\s]+)\)", lambda m: f"![{Path(m[1]).stem}]({m[1]})", body)
    body = re.sub(r"[ \t]+$", "", body, flags=re.M)  # the exporter indents blank lines around images
    path.write_text(re.sub(r"\n{3,}", "\n\n", body).strip() + "\n", encoding="utf-8")
    return path


def write_pdf(nb, path: Path) -> Path:
    """The PDF through nbconvert's LaTeX template and XeLaTeX (no network needed)."""
    from nbconvert import PDFExporter

    exporter = PDFExporter(**_exporter_options())
    body, _ = exporter.from_notebook_node(for_latex(nb), resources={"metadata": {"name": path.stem}})
    path.write_bytes(body)
    return path


# --------------------------------------------------------------------------------------------
# Helpers for the notebooks


def find_root(root=None) -> Path:
    """The repository root: `root` when given (relative to the current directory), else the
    current directory or the nearest parent holding configs/ and notebooks/ -- so a notebook runs
    the same with the kernel started in the repository root or in notebooks/."""
    if root:
        return Path(root).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "configs").is_dir() and (d / "notebooks").is_dir():
            return d
    raise FileNotFoundError(f"{here}: no repository root (a folder with configs/ and notebooks/) here or "
                            "above; pass the `root` parameter")


def resolve(root: Path, path) -> Path | None:
    """`path` relative to the repository root (absolute paths are kept; None stays None)."""
    if path is None or path == "":
        return None
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def _missing(x) -> bool:
    """None or NaN: a value a results table does not have (shown as 'n/a')."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x, digits: int = 1) -> str:
    """0.381 -> '38.1%'; None or NaN -> 'n/a'."""
    if _missing(x):
        return "n/a"
    return f"{100 * float(x):.{digits}f}%"


def plural(n: int, word: str) -> str:
    """plural(1, "point") -> '1 point'; plural(3, "point") -> '3 points'."""
    return f"{n:g} {word}{'' if n == 1 else 's'}"


METHOD_NAMES = {"simclr": "SimCLR", "byol": "BYOL", "barlow": "Barlow Twins"}


def duration(seconds) -> str:
    """45.2 -> '45 s'; 754 -> '12.6 min'; 7300 -> '2.0 h'."""
    if _missing(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def fmt(x, digits: int = 3) -> str:
    """A table cell: floats to `digits` significant digits, NaN/None as 'n/a', the rest as text."""
    if _missing(x):
        return "n/a"
    if isinstance(x, float):
        # integers that went through a CSV column with gaps come back as floats: 4096.0 -> 4096
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.{digits}g}"
    return str(x)


def markdown_table(rows, columns) -> str:
    """A Markdown table (renders in JupyterLab, HTML, PDF and Markdown exports alike).

    rows: list of dicts (or a DataFrame); columns: list of (key, header[, formatter]) where the
    formatter turns a value into text (default: fmt)."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    cols = [(c[0], c[1], c[2] if len(c) > 2 else fmt) for c in columns]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(esc(f(r.get(k))) for k, _, f in cols) + " |")
    return "\n".join(lines)


def config_markdown(cfg) -> str:
    """A Config's settings that differ from the dataclass defaults, as a Markdown table."""
    from .config import Config

    defaults = Config()
    rows = [dict(key=k, value=v, default=getattr(defaults, k)) for k, v in cfg.to_dict().items()
            if v != getattr(defaults, k)]
    return markdown_table(rows, [("key", "key"), ("value", "value"), ("default", "default")])


def settings_that_differ(run_dirs: dict) -> dict[str, dict]:
    """{name: run folder} -> {name: {key: value}}: the settings, as trained, in which the runs differ
    ('method' aside; the augmentation recipe and head sizes resolved as the method uses them)."""
    from .config import from_dict

    resolved = {}
    for name, run_dir in run_dirs.items():
        cfg = from_dict(read_json(Path(run_dir) / "config.json"), f"{run_dir}/config.json")
        resolved[name] = {**cfg.to_dict(), "recipe": cfg.aug_recipe, **cfg.heads}
    keys = [k for k in next(iter(resolved.values()), {})
            if k != "method" and len({repr(r[k]) for r in resolved.values()}) > 1]
    return {name: {k: r[k] for k in keys} for name, r in resolved.items()}


def show_markdown(text: str) -> None:
    """Display Markdown as cell output: how the notebooks put numbers from results into prose."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def show_figure(path, caption: str | None = None, width: int | None = None) -> None:
    """Display a saved figure (embedded, so HTML and PDF exports carry it) under its file name, so
    the Markdown export links it as figures/<name>; then its caption."""
    from IPython.display import Image, display

    path = Path(path)
    # top-level output metadata "filename": nbconvert's ExtractOutputPreprocessor names the file by it
    display(Image(filename=str(path), width=width), metadata={"filename": path.name})
    if caption:
        show_markdown(f"*{caption}*")


def record(results: dict, path=None) -> None:
    """The last cell of a notebook: display the results as JSON (kept in the executed notebook,
    where papermill users read them) and, with `path`, also write them there."""
    from IPython.display import JSON, display

    clean = json.loads(json.dumps(results, default=_jsonable))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(clean, indent=2) + "\n")
    display(JSON(clean, expanded=True))


def _jsonable(x):
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def show_plot(fig, caption: str | None = None) -> None:
    """Display a matplotlib Figure (as selfsup.plots returns them) as a PNG, whatever the kernel's
    matplotlib backend (under `make`, MPLBACKEND=Agg and a Figure would show as text)."""
    import io

    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    display(Image(data=buf.getvalue()))
    if caption:
        show_markdown(f"*{caption}*")


# --------------------------------------------------------------------------------------------
# A run's results: evaluation, headline table, features, figures (notebooks 04 and 05)


def finished_run(run_dir) -> dict:
    """run.json of a finished run; RunError naming the folder otherwise."""
    info = read_json(Path(run_dir) / "run.json")
    if info.get("status") != "finished":
        state = info.get("status", "no run.json")
        raise RunError(f"{run_dir}: no finished run ({state}); train it first (notebooks/03_train.ipynb)")
    return info


def ensure_eval(run_dir, data_dir, force: bool = False, **kwargs) -> dict:
    """The run's eval.json, (re)computed with selfsup.evaluate.evaluate_run when it is missing, was
    computed for another config or data folder, or `force` is set. kwargs go to evaluate_run."""
    from .evaluate import eval_matches, evaluate_run

    run_dir = Path(run_dir)
    info = finished_run(run_dir)
    ev = read_json(run_dir / "eval.json")
    current = (eval_matches(ev, info.get("config_hash"))
               and Path(ev.get("data", "")).resolve() == Path(data_dir).resolve())
    if force or not current:
        ev = evaluate_run(run_dir, data_dir, save_features=True, **kwargs)
    return ev


def headline_rows(ev: dict) -> list[dict]:
    """eval.json -> rows (protocol, val, ood, floor_val, floor_ood) for HEADLINE_COLUMNS."""
    s, val = ev["summary"], ev["trained"]["val"]
    names = (("knn", f"k-NN, course protocol (k={val.get('k', 5)}, euclidean)"),
             ("knn_weighted", f"k-NN, weighted cosine (k={val.get('weighted_k', 20)})"),
             ("linear", "linear probe"))
    return [dict(protocol=name, val=s.get(f"val_{key}"), ood=s.get(f"ood_{key}"),
                 floor_val=s.get(f"random_init_val_{key}"), floor_ood=s.get(f"random_init_ood_{key}"))
            for key, name in names if f"val_{key}" in s]


HEADLINE_COLUMNS = [("protocol", "protocol"), ("val", "val, trained", pct), ("floor_val", "val, random init", pct),
                    ("ood", "OOD, trained", pct), ("floor_ood", "OOD, random init", pct)]


def protocol_markdown(rows: list[dict]) -> str:
    """evaluate.protocol_table rows -> one Markdown table: (split, features, metric) x k."""
    ks = sorted({r["k"] for r in rows})
    table: dict = {}
    for r in rows:
        votes = "exp(cos/T) votes" if r["weights"] == "distance" else r["weights"]
        key = (r["split"], r["features"], f"{r['metric']}, {votes}")
        table.setdefault(key, {})[r["k"]] = r["accuracy"]
    out = [dict(split=s, features=f, metric=m, **{f"k{k}": v.get(k) for k in ks}) for (s, f, m), v in table.items()]
    return markdown_table(out, [("split", "split"), ("features", "features"), ("metric", "metric"),
                                *[(f"k{k}", f"k={k}", pct) for k in ks]])


def run_features(run_dir, dataset, splits=("train", "val", "ood"), device=None) -> dict:
    """Backbone features (N, D) float32 numpy of a run's trained encoder for the given splits."""
    from .evaluate import extract_features, load_run_model

    _, model = load_run_model(run_dir, device or "cpu")
    return {s: extract_features(model.encoder, getattr(dataset, s).images).cpu().numpy()
            for s in splits if getattr(dataset, s) is not None}


def tsne_embeddings(run_dir, features: dict, seed: int = 0) -> dict:
    """t-SNE of the val and OOD features, cached in run_dir/tsne.npz keyed by the features' bytes
    and the seed (t-SNE takes minutes on 10k points; the report and the explorer reuse it)."""
    import hashlib

    import numpy as np

    from .plots import tsne_embedding

    keys = [k for k in ("val", "ood") if k in features]
    digest = hashlib.sha1(b"".join(features[k].tobytes() for k in keys) + str(seed).encode()).hexdigest()
    cache = Path(run_dir) / "tsne.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == digest:
                return {k: z[k] for k in keys}
    emb = {k: tsne_embedding(features[k], seed) for k in keys}
    np.savez(cache, key=np.array(digest), **emb)
    return emb


def make_figures(run_dir, data_dir, figures_dir, *, n_images: int = 10, tsne_classes: int = 20, seed: int = 0,
                 dataset=None, ev=None, features=None) -> dict:
    """Figures 1-3 of the report for a finished run, written to figures_dir/Figure{1,2,3}.png with a
    manifest figures.json (which run, config and eval they show).

    Figure 1: loss and k-NN accuracy per epoch (metrics.jsonl). Figure 2: n_images random val and
    OOD (probe-test) images with true and course k-NN predicted labels (eval.json). Figure 3: t-SNE of
    val and OOD backbone features, tsne_classes classes coloured. Returns dict(paths, features,
    embeddings, eval) for further use (the explorer)."""
    from . import plots
    from .data import load_dataset
    from .train import read_metrics

    run_dir, figures_dir = Path(run_dir), Path(figures_dir)
    info = finished_run(run_dir)
    dataset = dataset if dataset is not None else load_dataset(data_dir)
    ev = ev if ev is not None else ensure_eval(run_dir, data_dir)
    features = features if features is not None else run_features(run_dir, dataset, ("val", "ood"))
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = {f"Figure{i}": figures_dir / f"Figure{i}.png" for i in (1, 2, 3)}
    cfg = ev["config"]
    plots.figure1_curves(read_metrics(run_dir), paths["Figure1"],
                         title=f"{cfg['method']} {cfg['backbone']}, {cfg['epochs']} epochs")
    tr = ev["trained"]
    ood_kw = {}
    if dataset.ood is not None and tr.get("ood"):
        test = tr["ood"]["test_index"]
        ood_kw = dict(ood_images=dataset.ood.images[test], ood_true=dataset.ood.labels[test],
                      ood_pred=tr["ood"]["predictions"]["knn"], ood_class_names=dataset.ood.class_names)
    plots.figure2_predictions(dataset.val.images, dataset.val.labels, tr["val"]["predictions"]["knn"],
                              dataset.val.class_names, n=n_images, seed=seed, path=paths["Figure2"], **ood_kw)
    emb = tsne_embeddings(run_dir, features, seed)
    plots.figure3_tsne(features["val"], dataset.val.labels, features.get("ood"),
                       dataset.ood.labels if dataset.ood is not None else None, n_highlight=tsne_classes, seed=seed,
                       class_names=dataset.val.class_names,
                       ood_class_names=dataset.ood.class_names if dataset.ood is not None else None,
                       embeddings=emb, path=paths["Figure3"])
    manifest = dict(run_dir=str(run_dir.resolve()), config_hash=info.get("config_hash"),
                    data=str(Path(data_dir).resolve()), eval_seconds=ev.get("seconds"),
                    n_images=n_images, tsne_classes=tsne_classes, seed=seed,
                    figures={k: p.name for k, p in paths.items()})
    write_json(figures_dir / "figures.json", manifest)
    return dict(paths=paths, features=features, embeddings=emb, eval=ev)


def figures_current(run_dir, data_dir, figures_dir) -> bool:
    """True when figures_dir holds Figures 1-3 made (by make_figures) from this run and data."""
    m = read_json(Path(figures_dir) / "figures.json")
    info = read_json(Path(run_dir) / "run.json")
    return (bool(m) and m.get("run_dir") == str(Path(run_dir).resolve())
            and m.get("data") == str(Path(data_dir).resolve()) and m.get("config_hash") == info.get("config_hash")
            and all((Path(figures_dir) / f"Figure{i}.png").is_file() for i in (1, 2, 3)))


def figure_caption(key: str, figures_dir) -> str:
    """The caption of Figure1..3 as made by make_figures (its settings from figures.json)."""
    m = read_json(Path(figures_dir) / "figures.json")
    n, k = m.get("n_images", 10), m.get("tsne_classes", 20)
    return {
        "Figure1": "Figure 1. Training curves of the final run: SSL loss on training and validation images "
                   "(left) and the course k-NN accuracy on val (right), per epoch.",
        "Figure2": f"Figure 2. {n} random validation images (top) and {n} random out-of-distribution images "
                   "(bottom) with their true and predicted labels (course k-NN; green right, red wrong).",
        "Figure3": "Figure 3. t-SNE of the backbone features of the validation (left) and out-of-distribution "
                   f"(right) images; up to {k} classes coloured, the rest grey.",
    }[key]


# --------------------------------------------------------------------------------------------
# Ablations (notebooks 02 and 05)


def result_columns(key: str, label: str) -> list:
    """Columns of a results table (comparison or sweep): accuracies beside their random-init floors."""
    return [(key, label), ("status", "status"), ("epochs", "epochs"),
            ("val_knn", "k-NN val", pct), ("random_init_val_knn", "k-NN val, random init", pct),
            ("ood_knn", "k-NN OOD", pct), ("random_init_ood_knn", "k-NN OOD, random init", pct),
            ("val_linear", "linear val", pct), ("random_init_val_linear", "linear val, random init", pct),
            ("ood_linear", "linear OOD", pct)]


def ablation_columns(axis: str) -> list:
    seconds = lambda v: fmt(v) if _missing(v) else f"{v:.0f}"  # noqa: E731
    return result_columns(axis, axis) + [("train_loss", "final loss"), ("wall_clock_s", "train time (s)", seconds)]


def show_ablation(results, axis: str, figures_dir=None, level: int = 3, metric: str = "val_knn") -> dict:
    """One ablation axis: a heading, then per sweep that varied it a table and a plot (saved as
    figures_dir/ablation_<axis>_<sweep>.png). An axis nobody ran is reported as "not run".
    Returns {sweep: {"values": [...], "best": value by `metric`, "best_<metric>": ..., "failed": n}}
    or {} when not run."""
    from . import plots
    from .sweep import ABLATION_AXES, axis_results

    meta = ABLATION_AXES.get(axis, {})
    title = meta.get("title", axis)
    rows = axis_results(results, axis)
    show_markdown(f"{'#' * level} {title} (`{axis}`)")
    if rows is None or len(rows) == 0:
        how = (f"the course grid {', '.join(map(str, meta['values']))}: `selfsup sweep {meta['file']}`"
               if meta else "run a sweep that varies it")
        show_markdown(f"**Not run.** No sweep results vary `{axis}` ({how}).")
        return {}
    out = {}
    for name, grp in rows.groupby("sweep", sort=False):
        records = grp.to_dict("records")
        show_markdown(f"Sweep `{name}`: {plural(len(records), 'point')}.\n\n"
                      + markdown_table(records, ablation_columns(axis)))
        ok = [r for r in records if r["status"] == "finished" and not math.isnan(r.get(metric, math.nan))]
        for r in records:
            if r["status"] != "finished":
                show_markdown(f"Point `{r['point']}` {r['status']}: {r.get('error') or 'see its run folder'}")
        if ok:
            path = None if figures_dir is None else Path(figures_dir) / f"ablation_{axis}_{name}.png"
            fig = plots.ablation_plot(ok, axis, title=f"{title} (sweep {name})", path=path)
            if path is None:
                show_plot(fig)
            else:
                show_figure(path)
            best = max(ok, key=lambda r: r[metric])
            out[name] = {"values": [r[axis] for r in records], "best": best[axis], f"best_{metric}": best[metric],
                         "failed": len(records) - len(ok)}
        else:
            out[name] = {"values": [r[axis] for r in records], "best": None, "failed": len(records)}
    return out


# --------------------------------------------------------------------------------------------
# The interactive explorer (notebook 04)


def build_explorer(dataset, features: dict, ev: dict, embeddings: dict, k: int = 5):
    """An ipywidgets explorer for JupyterLab, returned (display it); nothing waits for input.

    Tab "images": pick val or OOD and an image index -> the image, its true and predicted label
    (course k-NN, as in eval.json) and its k nearest reference images: the training set for val,
    the OOD probe-train part for OOD (the reference set of the OOD protocol).
    Tab "t-SNE": pick val or OOD and classes to highlight in the t-SNE of the features.
    Both views are drawn once at build time, so an executed notebook shows their first state.
    features: {"train", "val", "ood"} (N, D) arrays; embeddings: {"val", "ood"} (N, 2) arrays.
    """
    import ipywidgets as W
    import numpy as np
    from matplotlib.figure import Figure

    from . import plots
    from .evaluate import knn_neighbors

    tr = ev["trained"]
    views = {"val": dict(images=dataset.val.images, labels=dataset.val.labels, names=list(dataset.val.class_names),
                         positions=np.arange(len(dataset.val)), pred=np.asarray(tr["val"]["predictions"]["knn"]),
                         query_f=features["val"], ref_f=features["train"], ref_images=dataset.train.images,
                         ref_labels=dataset.train.labels, ref_name="training")}
    if dataset.ood is not None and tr.get("ood") and "ood" in features:
        test, train_idx = np.asarray(tr["ood"]["test_index"]), np.asarray(tr["ood"]["train_index"])
        views["ood"] = dict(images=dataset.ood.images, labels=dataset.ood.labels, names=list(dataset.ood.class_names),
                            positions=test, pred=np.asarray(tr["ood"]["predictions"]["knn"]),
                            query_f=features["ood"], ref_f=features["ood"][train_idx],
                            ref_images=dataset.ood.images[train_idx], ref_labels=dataset.ood.labels[train_idx],
                            ref_name="OOD probe-train")

    split_w = W.ToggleButtons(options=list(views), description="split")
    index_w = W.IntSlider(value=0, min=0, max=len(views["val"]["positions"]) - 1, description="image #",
                          continuous_update=False)
    image_out = W.Output()

    def draw_image(*_):
        v = views[split_w.value]
        i = min(index_w.value, len(v["positions"]) - 1)
        pos = int(v["positions"][i])
        kk = min(k, len(v["ref_f"]))
        _, nb = knn_neighbors(v["ref_f"], v["query_f"][pos : pos + 1], k=kk)
        fig = Figure(figsize=(1.5 * (kk + 1), 2.1), layout="constrained")
        axes = fig.subplots(1, kk + 1)
        true, pred = int(v["labels"][pos]), int(v["pred"][i])
        axes[0].imshow(v["images"][pos], interpolation="nearest")
        axes[0].set_title(f"{split_w.value} #{pos}\ntrue: {v['names'][true]}\npred: {v['names'][pred]}", fontsize=7,
                          color=plots.RIGHT if true == pred else plots.WRONG)
        for j, n in enumerate(np.asarray(nb[0])):
            axes[j + 1].imshow(v["ref_images"][n], interpolation="nearest")
            axes[j + 1].set_title(f"{j + 1}: {v['names'][int(v['ref_labels'][n])]}", fontsize=7)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        with image_out:
            image_out.clear_output(wait=True)
            show_plot(fig, caption=f"nearest {v['ref_name']} images (euclidean, backbone features)")

    def on_split(_):
        index_w.value = 0
        index_w.max = len(views[split_w.value]["positions"]) - 1
        draw_image()

    split_w.observe(on_split, names="value")
    index_w.observe(draw_image, names="value")

    tsne_split_w = W.ToggleButtons(options=[s for s in views if s in embeddings], description="split")
    classes_w = W.SelectMultiple(rows=8, description="highlight")
    tsne_out = W.Output()

    def set_classes(*_):
        names = views[tsne_split_w.value]["names"]
        classes_w.options = names
        classes_w.value = tuple(names[: min(5, len(names))])

    def draw_tsne(*_):
        v = views[tsne_split_w.value]
        emb, labels = np.asarray(embeddings[tsne_split_w.value]), np.asarray(v["labels"])
        chosen = [v["names"].index(c) for c in classes_w.value]
        fig = Figure(figsize=(6.5, 5), layout="constrained")
        ax = fig.subplots()
        rest = ~np.isin(labels, chosen)
        ax.scatter(emb[rest, 0], emb[rest, 1], s=3, c=plots.GREY, alpha=0.35, linewidths=0, label="other classes")
        for colour, c in zip(plots._palette(max(len(chosen), 1)), chosen):
            m = labels == c
            ax.scatter(emb[m, 0], emb[m, 1], s=8, color=colour, linewidths=0, label=v["names"][c])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        with tsne_out:
            tsne_out.clear_output(wait=True)
            show_plot(fig)

    tsne_split_w.observe(lambda _: (set_classes(), draw_tsne()), names="value")
    classes_w.observe(draw_tsne, names="value")
    set_classes()
    draw_image()
    draw_tsne()
    tabs = W.Tab(children=[W.VBox([W.HBox([split_w, index_w]), image_out]),
                           W.VBox([W.HBox([tsne_split_w, classes_w]), tsne_out])])
    tabs.set_title(0, "images")
    tabs.set_title(1, "t-SNE")
    return tabs
