"""The report's figures, each a function of results -> matplotlib Figure (optionally saved).

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: no GUI backend is
touched (safe headless / under papermill), nothing accumulates in pyplot's global figure list,
and a notebook shows the returned figure exactly once. Every figure has one look, seaborn's
"whitegrid" style at its "paper" sizes, applied only while it is drawn (no global state).
The report's figures are PAGE_WIDTH wide, so that the PDF prints them at 100%, fonts included.

    figure1_curves(metrics)                      Figure 1: losses and k-NN accuracy per epoch
    figure2_predictions(images, true, pred, ...) Figure 2: val and OOD images, true vs predicted
    figure3_tsne(val_f, val_y, ood_f, ood_y)     Figure 3: t-SNE of val and of OOD features
    neighbour_gallery(...)                       queries and their nearest training images
    comparison_bar(results)                      k-NN accuracy per method / sweep point, with floor
    ablation_plot(rows, axis_key)                a metric against a swept hyperparameter
    two_views(images, v1, v2)                    a batch and its two augmented views (notebook 03)
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .pixels import MEAN, STD

DPI = 150
# Inches: the PDF report (nbconvert's LaTeX template: article, letter paper, 1 in margins) shows an
# image at its own size up to 0.9 of the 6.5 in text width, and shrinks a wider one with its fonts.
PAGE_WIDTH = 5.8
SMALL = 7  # points: labels under images and legend entries, the smallest text printed
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red titles in Figure 2 and the gallery
GREY = "#b0b0b0"


def _themed(draw):
    """Draw a figure in the one theme of every figure: seaborn's whitegrid style at paper sizes,
    as context managers, so the caller's matplotlib settings are left as they were."""

    @functools.wraps(draw)
    def themed(*args, **kwargs):
        import seaborn as sns  # here, not at the top: seaborn imports pandas, which the library's import does not need

        with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
            return draw(*args, **kwargs)

    return themed


def _fit(text: str, chars: int) -> str:
    """text cut to `chars` characters (an ellipsis at the end), so labels do not run into each other."""
    return text if len(text) <= chars else text[: chars - 1] + "\u2026"


def _save(fig: Figure, path) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    return fig


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _hwc(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 for imshow; accepts (N, 3, H, W) too."""
    images = _np(images)
    if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.transpose(0, 2, 3, 1)
    return images


def _label(metric: str) -> str:
    """'val_knn_weighted' -> 'val k-NN weighted', 'ood_linear' -> 'OOD linear'."""
    words = {"knn": "k-NN", "ood": "OOD"}
    return " ".join(words.get(w, w) for w in metric.split("_"))


def _series(metrics: list[dict], key: str):
    pts = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None


# ---------------------------------------------------------------------------------------------
# Figure 1


@_themed
def figure1_curves(metrics: list[dict], path=None, title: str | None = None) -> Figure:
    """Training curves from a run's metrics.jsonl records (list of dicts with ``epoch`` and
    ``train_loss``; optionally ``val_loss``, ``knn_acc``, ``linear_acc``).

    Left: train and val SSL loss per epoch. Right: k-NN (and linear-probe, if present) accuracy.
    """
    if not metrics:
        raise ValueError("figure1_curves: no metrics (is metrics.jsonl empty?)")
    fig = Figure(figsize=(PAGE_WIDTH, 2.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, label, style in (("train_loss", "train", "-"), ("val_loss", "val", "--")):
        s = _series(metrics, key)
        if s:
            ax_loss.plot(*s, style, marker="o" if len(s[0]) < 30 else None, ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="SSL loss", title="Loss")
    ax_loss.legend()
    plotted = False
    for key, label in (("knn_acc", "k-NN (val)"), ("linear_acc", "linear probe (val)")):
        s = _series(metrics, key)
        if s:
            ax_acc.plot(s[0], [100 * v for v in s[1]], marker="o" if len(s[0]) < 30 else None, ms=3, label=label)
            plotted = True
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Validation accuracy")
    if plotted:
        ax_acc.legend()
    else:
        ax_acc.text(0.5, 0.5, "no k-NN evaluations recorded", ha="center", va="center", transform=ax_acc.transAxes)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Figure 2


def _prediction_grid(axes, images, true, pred, names, n, rng, label):
    images, true, pred = _hwc(images), _np(true), _np(pred)
    if not (len(images) == len(true) == len(pred)):
        raise ValueError(
            f"figure2_predictions: {label}: {len(images)} images, {len(true)} true labels, "
            f"{len(pred)} predictions; expected equal lengths"
        )
    pick = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, pick):
        ax.imshow(images[i], interpolation="nearest")
        colour = RIGHT if true[i] == pred[i] else WRONG
        text = f"true: {names[int(true[i])]}\npred: {names[int(pred[i])]}"
        ax.set_title("\n".join(_fit(line, 21) for line in text.split("\n")), fontsize=SMALL, color=colour)


@_themed
def figure2_predictions(
    images,
    true_labels,
    pred_labels,
    class_names,
    ood_images=None,
    ood_true=None,
    ood_pred=None,
    ood_class_names=None,
    *,
    n: int = 10,
    seed: int = 0,
    path=None,
) -> Figure:
    """n random val images and n random OOD images with true and predicted class names; a title is
    green when the prediction is right, red when wrong. Page wide: five images a row, the labels
    in SMALL points when printed.

    images (N, H, W, 3) uint8 (or (N, 3, H, W)), true_labels / pred_labels (N,) ints indexing
    class_names. OOD: the probe-test images with their labels and predictions (e.g. from
    eval.json: ``ood.images[test_index]``), names from ood_class_names (default class_names).
    Samples are drawn with ``np.random.RandomState(seed)``.
    """
    parts = [("Validation images", images, true_labels, pred_labels, list(class_names))]
    if ood_images is not None:
        if ood_true is None or ood_pred is None:
            raise ValueError("figure2_predictions: ood_images given without ood_true and ood_pred")
        names = list(ood_class_names if ood_class_names is not None else class_names)
        parts.append(("Out-of-distribution images", ood_images, ood_true, ood_pred, names))
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    # an image a column; under it two lines of labels
    fig = Figure(figsize=(PAGE_WIDTH, len(parts) * (rows * (PAGE_WIDTH / cols + 0.3) + 0.25)), layout="constrained")
    rng = np.random.RandomState(seed)
    for sub, (label, *data) in zip(np.atleast_1d(fig.subfigures(len(parts), 1)), parts):
        sub.suptitle(label, fontweight="bold")
        _prediction_grid(sub.subplots(rows, cols, squeeze=False).ravel(), *data, n, rng, label)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Figure 3


def tsne_embedding(features, seed: int = 0, perplexity: float = 30.0, **tsne_kwargs) -> np.ndarray:
    """scikit-learn t-SNE (PCA init, seeded) of (N, D) features -> (N, 2); tsne_kwargs go to TSNE
    (e.g. max_iter)."""
    from sklearn.manifold import TSNE

    x = _np(features).astype(np.float32)
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))  # t-SNE needs perplexity < N
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, **tsne_kwargs).fit_transform(x)


def tsne_panel(ax, emb, labels, names, shown, title: str = "", legend_below: bool = False) -> None:
    """One t-SNE scatter: the classes in `shown` coloured (in that order), the rest grey.
    emb (N, 2), labels (N,), names: class names by label (or None). The legend goes to the right,
    or below in two columns (legend_below, for page-wide figures with panels side by side)."""
    labels, shown = _np(labels), list(shown)
    rest = ~np.isin(labels, shown)
    if rest.any():
        n_rest = len(np.unique(labels[rest]))
        ax.scatter(
            emb[rest, 0],
            emb[rest, 1],
            s=3,
            c=GREY,
            alpha=0.35,
            linewidths=0,
            label=f"{n_rest} other class{'es' if n_rest != 1 else ''}",
        )
    for colour, c in zip(_palette(len(shown)), shown):
        m = labels == c
        name = names[int(c)] if names is not None and int(c) < len(names) else str(c)
        ax.scatter(emb[m, 0], emb[m, 1], s=5, color=colour, linewidths=0, label=_fit(name, 20))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    where = dict(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2) if legend_below else dict(loc="upper left")
    where.setdefault("bbox_to_anchor", (1.0, 1.0))
    ax.legend(fontsize=SMALL, markerscale=2, frameon=False, handletextpad=0.1, columnspacing=0.8, **where)


def _palette(n: int):
    """n distinct colours: seaborn's tab10 up to 10, its evenly spaced husl hues beyond (tab20's
    pairs of light and dark shades are hard to tell apart in a scatter)."""
    import seaborn as sns

    return sns.color_palette("tab10" if n <= 10 else "husl", max(n, 1))


@_themed
def figure3_tsne(
    val_features,
    val_labels,
    ood_features=None,
    ood_labels=None,
    *,
    n_highlight: int = 20,
    seed: int = 0,
    class_names=None,
    ood_class_names=None,
    embeddings=None,
    tsne_kwargs: dict | None = None,
    path=None,
) -> Figure:
    """t-SNE of val features and of OOD features, two panels side by side, page wide, each with its
    legend below in SMALL points. n_highlight random classes (seeded) are coloured, the rest grey;
    with <= n_highlight classes all are coloured.

    features (N, D), labels (N,). embeddings: precomputed {"val": (N, 2), "ood": (M, 2)} to skip
    t-SNE (it takes minutes for 10k points on a CPU); tsne_kwargs go to sklearn's TSNE.
    """
    panels = [("val", val_features, val_labels, class_names, "In-distribution (val)")]
    if ood_features is not None:
        panels.append(("ood", ood_features, ood_labels, ood_class_names, "Out-of-distribution"))
    # a square panel a column, then up to n_highlight + 1 legend entries in two columns under it
    entries = min(n_highlight + 1, max(len(np.unique(_np(p[2]))) for p in panels))
    side = PAGE_WIDTH / 2
    height = side + 0.45 + math.ceil(entries / 2) * SMALL * 1.45 / 72
    fig = Figure(figsize=(side * len(panels), height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (key, feats, labels, names, title) in zip(axes, panels):
        emb = (embeddings or {}).get(key)
        if emb is None:
            emb = tsne_embedding(feats, seed, **(tsne_kwargs or {}))
        classes = np.unique(_np(labels))
        shown = (
            classes
            if len(classes) <= n_highlight
            else np.sort(np.random.RandomState(seed).choice(classes, n_highlight, replace=False))
        )
        tsne_panel(ax, _np(emb), labels, names, shown, title, legend_below=True)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Neighbours, comparisons, ablations


@_themed
def neighbour_gallery(
    query_images,
    train_images,
    neighbour_idx,
    train_labels,
    class_names,
    *,
    query_labels=None,
    query_class_names=None,
    query_titles=None,
    query_colours=None,
    path=None,
) -> Figure:
    """One row per query: the query image, then its nearest training images (nearest first)
    with their class names; green when a neighbour's class is the query's, red otherwise.

    query_images (Q, H, W, 3), train_images (N, H, W, 3), neighbour_idx (Q, k) indices into
    train_images / train_labels (e.g. eval.json's gallery), class_names for train_labels.
    query_titles / query_colours: per query, a title (and its colour) in place of "query <class>".
    """
    q_img, t_img = _hwc(query_images), _hwc(train_images)
    idx, t_lab = _np(neighbour_idx).astype(int), _np(train_labels)
    if idx.ndim != 2 or len(idx) != len(q_img):
        raise ValueError(f"neighbour_gallery: neighbour_idx must be ({len(q_img)}, k), got {idx.shape}")
    q, k = idx.shape
    fig = Figure(figsize=(1.3 * (k + 1) + 0.3, 1.45 * q + 0.3), layout="constrained")
    axes = np.asarray(fig.subplots(q, k + 1, squeeze=False))
    q_names = list(query_class_names if query_class_names is not None else class_names)
    for r in range(q):
        axes[r, 0].imshow(q_img[r], interpolation="nearest")
        qlab = None if query_labels is None else int(_np(query_labels)[r])
        title = "query" + (f"\n{q_names[qlab]}" if qlab is not None else "")
        axes[r, 0].set_title(
            title if query_titles is None else query_titles[r],
            fontsize=SMALL,
            fontweight="bold",
            color="black" if query_colours is None else query_colours[r],
        )
        for j in range(k):
            ax = axes[r, j + 1]
            ax.imshow(t_img[idx[r, j]], interpolation="nearest")
            lab = int(t_lab[idx[r, j]])
            same_classes = qlab is not None and query_class_names is None  # else labels are not comparable
            colour = (RIGHT if lab == qlab else WRONG) if same_classes else "black"
            ax.set_title(f"{j + 1}: {class_names[lab]}", fontsize=SMALL, color=colour)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)


def _floor_value(results: dict, metric: str, floor):
    """(floor, its interval or None): `floor` ({metric: value} or one value), else the mean of the
    rows' random_init_<metric> (and of their intervals)."""
    if floor is not None:
        return (floor.get(metric) if isinstance(floor, dict) else floor), None
    vals = [r[f"random_init_{metric}"] for r in results.values() if r.get(f"random_init_{metric}") is not None]
    ints = [
        r[f"random_init_{metric}_interval"]
        for r in results.values()
        if r.get(f"random_init_{metric}_interval") is not None and np.isfinite(r[f"random_init_{metric}_interval"])
    ]
    return (float(np.mean(vals)) if vals else None), (float(np.mean(ints)) if ints else None)


@_themed
def comparison_bar(
    results: dict, metrics=("val_knn", "ood_knn"), *, floor=None, labels=None, title: str | None = None, path=None
) -> Figure:
    """Grouped bars: for each method / sweep point (the keys of ``results``, each an eval.json
    ``summary`` dict or a results.summarise row), one bar per metric (accuracy in %), with error
    bars where the row has ``<metric>_interval``. The random-init floor is a dashed line per metric
    (with its interval as a band): ``floor`` ({metric: value} or one value), else the mean of the
    rows' ``random_init_<metric>`` entries.
    """
    names = list(results)
    if not names:
        raise ValueError("comparison_bar: no results")
    labels = labels or {m: _label(m) for m in metrics}
    fig = Figure(figsize=(PAGE_WIDTH, 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(metrics)
    x = np.arange(len(names))
    colours = _palette(max(len(metrics), 2))
    for i, m in enumerate(metrics):
        vals = np.array([100 * results[n][m] if results[n].get(m) is not None else np.nan for n in names])
        errs = np.array(
            [
                100 * results[n][f"{m}_interval"] if results[n].get(f"{m}_interval") is not None else np.nan
                for n in names
            ]
        )
        yerr = np.where(np.isfinite(errs), errs, 0.0) if np.isfinite(errs).any() else None
        bars = ax.bar(
            x + (i - (len(metrics) - 1) / 2) * width,
            vals,
            width,
            color=colours[i],
            label=labels.get(m, m),
            yerr=yerr,
            capsize=3,
            error_kw=dict(lw=1),
        )
        for b, v, e in zip(bars, vals, errs):
            if np.isfinite(v):
                top = v + (e if np.isfinite(e) else 0)
                ax.text(b.get_x() + b.get_width() / 2, top + 0.5, f"{v:.1f}", ha="center", va="bottom", fontsize=SMALL)
        f, f_int = _floor_value(results, m, floor)
        if f is not None:
            ax.axhline(100 * f, color=colours[i], ls="--", lw=1.2, zorder=3, label=f"{labels.get(m, m)}: random init")
            if f_int:
                ax.axhspan(100 * (f - f_int), 100 * (f + f_int), color=colours[i], alpha=0.12, lw=0)
    ax.set_xticks(
        x,
        names,
        rotation=20 if max(len(n) for n in names) > 10 else 0,
        ha="right" if max(len(n) for n in names) > 10 else "center",
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="x", visible=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    return _save(fig, path)


@_themed
def ablation_plot(
    rows: list[dict],
    axis_key: str,
    metrics=("val_knn", "ood_knn"),
    *,
    group_key: str | None = None,
    log_x: bool | None = None,
    title: str | None = None,
    path=None,
) -> Figure:
    """A sweep table (list of dicts, e.g. config values + eval summaries) as lines: ``metrics``
    (accuracies in [0, 1], drawn in %) against ``axis_key``, one line per metric (and per value of
    ``group_key``), with a band of ``<metric>_interval`` where the rows have it. Numeric axes are
    sorted, on a log scale when positive and spanning more than two decades (log_x overrides);
    other values are placed in first-seen order.
    """
    rows = [r for r in rows if r.get(axis_key) is not None]
    if not rows:
        raise ValueError(f"ablation_plot: no rows with {axis_key!r}")
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get(group_key) if group_key else None, []).append(r)
    xs_all = [r[axis_key] for r in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs_all)
    if numeric:
        positive = min(xs_all) > 0
        if log_x is None:
            log_x = positive and max(xs_all) / min(xs_all) > 100
    else:
        categories = list(dict.fromkeys(map(str, xs_all)))
    fig = Figure(figsize=(PAGE_WIDTH, 3.4), layout="constrained")
    ax = fig.subplots()
    colours = _palette(max(len(metrics) * len(groups), 2))
    styles = ["-o", "--s", ":^", "-.v"]
    c = 0
    for g, grows in groups.items():
        grows = sorted(grows, key=lambda r: r[axis_key]) if numeric else grows
        x = [r[axis_key] for r in grows] if numeric else [categories.index(str(r[axis_key])) for r in grows]
        for mi, m in enumerate(metrics):
            y = np.array([100 * r[m] if r.get(m) is not None else np.nan for r in grows], dtype=float)
            e = np.array(
                [100 * r[f"{m}_interval"] if r.get(f"{m}_interval") is not None else np.nan for r in grows], dtype=float
            )
            label = _label(m) + (f" ({group_key}={g})" if group_key else "")
            colour = colours[c % len(colours)]
            ax.plot(x, y, styles[mi % len(styles)], color=colour, ms=4, label=label)
            if np.isfinite(e).any():  # the 95% interval of each point (over seeds, or one run's binomial)
                ax.fill_between(x, y - np.nan_to_num(e), y + np.nan_to_num(e), color=colour, alpha=0.15, lw=0)
            c += 1
    if numeric and log_x:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(categories)), categories)
    ax.set(xlabel=axis_key, ylabel="accuracy (%)")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# What a self-supervised method trains on


def two_views(images, v1, v2, path=None, title: str | None = None) -> Figure:
    """One column per image: the image (N, H, W, 3) uint8, then its two augmented views (N, 3, S, S)
    as selfsup.augment.TwoViews returns them (normalised with MEAN/STD; shown un-normalised)."""
    images, n = _hwc(images), len(images)
    views = [np.clip(_hwc(v) * np.array(STD) + np.array(MEAN), 0, 1) for v in (v1, v2)]
    fig = Figure(figsize=(1.3 * n, 4.2), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    for row, (label, shown) in enumerate((("image", images), ("view 1", views[0]), ("view 2", views[1]))):
        for i in range(n):
            axes[row, i].imshow(shown[i])
            axes[row, i].set(xticks=[], yticks=[])
        axes[row, 0].set_ylabel(label)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
