"""Figures are written, non-empty, of the expected size, and built without pyplot."""

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from selfsup import plots

NAMES = [f"class{i}" for i in range(25)]


def images(n, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def check_png(path, min_kb=5):
    assert path.stat().st_size > min_kb * 1024, path.stat().st_size
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.std() > 0.01  # not a blank canvas
    return img.shape


def printed_at_full_size(fig):
    """The report's PDF shows a figure no wider than PAGE_WIDTH at its own size (wider ones shrink,
    fonts included): so it must fit, and its smallest text must be plots.SMALL points or more."""
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH + 1e-9
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")) if t.get_text()]
    assert texts and min(t.get_fontsize() for t in texts) >= plots.SMALL


def test_report_page_fits_figures():
    """PAGE_WIDTH: the width nbconvert's LaTeX template (article, letter paper, 1 in margins) shows
    an image at its own size, at most 0.9 of the text width."""
    assert plots.PAGE_WIDTH <= 0.9 * (8.5 - 2)


def test_figures_leave_the_callers_matplotlib_settings_alone():
    import matplotlib

    before = dict(matplotlib.rcParams)
    plots.figure1_curves([dict(epoch=1, train_loss=1.0)])
    assert dict(matplotlib.rcParams) == before


def test_figure1_curves(tmp_path):
    metrics = [
        dict(
            epoch=e,
            train_loss=5 - 0.3 * e,
            val_loss=5.2 - 0.25 * e if e % 2 == 0 else None,
            knn_acc=0.2 + 0.05 * e,
            lr=1e-3,
        )
        for e in range(1, 11)
    ]
    fig = plots.figure1_curves(metrics, tmp_path / "figs" / "Figure1.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    printed_at_full_size(fig)
    h, w, _ = check_png(tmp_path / "figs" / "Figure1.png")
    assert (w, h) == (870, 390)  # PAGE_WIDTH x 2.6 inches at 150 dpi
    with pytest.raises(ValueError, match="no metrics"):
        plots.figure1_curves([])


def test_figure2_predictions_colours_right_and_wrong(tmp_path):
    n = 30
    true = np.arange(n) % 5
    pred = true.copy()
    pred[::2] = (pred[::2] + 1) % 5
    ood_true = np.arange(12) % 3
    fig = plots.figure2_predictions(
        images(n),
        true,
        pred,
        NAMES[:5],
        images(12, seed=1),
        ood_true,
        ood_true,
        ["o0", "o1", "o2"],
        n=10,
        seed=0,
        path=tmp_path / "Figure2.png",
    )
    check_png(tmp_path / "Figure2.png")
    printed_at_full_size(fig)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 20
    colours = {ax.get_title(): ax.title.get_color() for ax in titled[:10]}
    assert plots.RIGHT in colours.values() and plots.WRONG in colours.values()
    assert all(ax.title.get_color() == plots.RIGHT for ax in titled[10:])  # OOD all right here
    # seeded: the same seed picks the same images
    again = plots.figure2_predictions(images(n), true, pred, NAMES[:5], n=10, seed=0)
    assert [a.get_title() for a in again.axes if a.get_title()] == [a.get_title() for a in titled[:10]]
    with pytest.raises(ValueError, match="equal lengths"):
        plots.figure2_predictions(images(5), true, pred, NAMES)


@pytest.fixture
def one_thread():
    """Small t-SNE on a shared CPU: one OpenMP thread avoids spin-wait contention (seconds -> 0.2 s)."""
    import sklearn.manifold  # noqa: F401  (threadpoolctl only limits runtimes already loaded)

    with threadpool_limits(limits=1):
        yield


def test_figure3_tsne_highlights_twenty_classes(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    val_y = np.arange(75) % 25  # 25 classes: 20 coloured, 5 grey
    val_f = rng.normal(size=(75, 8)) + 3 * np.eye(25, 8)[val_y]
    ood_y = np.arange(30) % 3
    ood_f = rng.normal(size=(30, 8))
    fig = plots.figure3_tsne(
        val_f, val_y, ood_f, ood_y, class_names=NAMES, tsne_kwargs=dict(max_iter=250), path=tmp_path / "Figure3.png"
    )
    check_png(tmp_path / "Figure3.png")
    printed_at_full_size(fig)
    ax_val, ax_ood = fig.axes
    legend_val = [t.get_text() for t in ax_val.get_legend().get_texts()]
    assert len(legend_val) == 21 and legend_val[0] == "5 other classes"
    assert len(ax_ood.get_legend().get_texts()) == 3  # <= 20 classes: all coloured, no grey


def test_figure3_accepts_precomputed_embeddings(tmp_path):
    rng = np.random.default_rng(1)
    y = np.arange(40) % 4
    emb = rng.normal(size=(40, 2))
    fig = plots.figure3_tsne(None, y, embeddings={"val": emb}, path=tmp_path / "t.png")
    assert len(fig.axes) == 1
    check_png(tmp_path / "t.png", min_kb=3)


def test_neighbour_gallery(tmp_path):
    q, train = images(4, seed=2), images(50, seed=3)
    idx = np.arange(20).reshape(4, 5)
    labels = np.arange(50) % 5
    fig = plots.neighbour_gallery(
        q, train, idx, labels, NAMES[:5], query_labels=[0, 1, 2, 3], path=tmp_path / "gallery.png"
    )
    assert len(fig.axes) == 4 * 6
    check_png(tmp_path / "gallery.png")
    assert fig.axes[1].get_title() == "1: class0"
    assert fig.axes[1].title.get_color() == plots.RIGHT and fig.axes[2].title.get_color() == plots.WRONG
    with pytest.raises(ValueError, match="neighbour_idx"):
        plots.neighbour_gallery(q, train, idx[:2], labels, NAMES)


def test_comparison_bar_with_floor(tmp_path):
    results = {
        m: dict(val_knn=a, ood_knn=b, random_init_val_knn=0.25, random_init_ood_knn=0.3)
        for m, a, b in (("simclr", 0.7, 0.5), ("byol", 0.65, 0.55), ("barlow", 0.6, None))
    }
    fig = plots.comparison_bar(results, path=tmp_path / "bar.png")
    check_png(tmp_path / "bar.png", min_kb=3)
    ax = fig.axes[0]
    assert len(ax.patches) == 6
    floors = sorted(line.get_ydata()[0] for line in ax.get_lines())
    assert floors == pytest.approx([25.0, 30.0])


def test_ablation_plot_numeric_categorical_and_groups(tmp_path):
    rows = [
        dict(temperature=t, method=m, val_knn=0.5 + t / 10, ood_knn=0.4)
        for t in (0.05, 0.1, 0.5, 1.0)
        for m in ("simclr", "byol")
    ]
    fig = plots.ablation_plot(rows, "temperature", group_key="method", path=tmp_path / "abl.png")
    check_png(tmp_path / "abl.png", min_kb=3)
    assert len(fig.axes[0].get_lines()) == 4
    xs = fig.axes[0].get_lines()[0].get_xdata()
    assert list(xs) == sorted(xs)
    cat = plots.ablation_plot(
        [dict(recipe="simclr", val_knn=0.5), dict(recipe="asymmetric", val_knn=0.6)], "recipe", metrics=("val_knn",)
    )
    assert [t.get_text() for t in cat.axes[0].get_xticklabels()] == ["simclr", "asymmetric"]
    wide = plots.ablation_plot([dict(lr=v, val_knn=0.5) for v in (1e-4, 1e-3, 1e-1)], "lr", metrics=("val_knn",))
    assert wide.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="no rows"):
        plots.ablation_plot(rows, "missing")
