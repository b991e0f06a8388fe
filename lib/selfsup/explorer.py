"""The interactive explorer of notebook 04 (ipywidgets in JupyterLab): pick a val or OOD image to
see its prediction and nearest reference images; pick classes to highlight in the t-SNE. It
draws with selfsup.plots, from the features the evaluation scored (eval.json, features.npz).
"""

from __future__ import annotations

import html

import numpy as np

from . import plots
from .display import show_plot
from .evaluate import ood_parts
from .knn import knn_neighbors


def _views(dataset, features: dict, ev: dict) -> dict:
    """Per split: the images the slider walks through (val: all; OOD: the probe-test part, whose
    predictions eval.json holds) and the reference set their neighbours come from."""
    tr = ev["trained"]
    views = {
        "val": dict(
            images=dataset.val.images,
            labels=dataset.val.labels,
            names=list(dataset.val.class_names),
            positions=np.arange(len(dataset.val)),
            pred=np.asarray(tr["val"]["predictions"]["knn"]),
            query_f=features["val"],
            ref_f=features["train"],
            ref_images=dataset.train.images,
            ref_labels=dataset.train.labels,
            ref_name="training",
        )
    }
    if dataset.ood is not None and tr.get("ood") and "ood" in features:
        train_idx, test_idx = ood_parts(len(dataset.ood))
        views["ood"] = dict(
            images=dataset.ood.images,
            labels=dataset.ood.labels,
            names=list(dataset.ood.class_names),
            positions=test_idx,
            pred=np.asarray(tr["ood"]["predictions"]["knn"]),
            query_f=features["ood"],
            ref_f=features["ood"][train_idx],
            ref_images=dataset.ood.images[train_idx],
            ref_labels=dataset.ood.labels[train_idx],
            ref_name="OOD probe-train",
        )
    return views


def neighbours_figure(v: dict, split: str, i: int, k: int = 5):
    """Image i of a view (its slider index), titled with that index, its true and predicted class,
    then its k nearest reference images."""
    pos = int(v["positions"][i])
    kk = min(k, len(v["ref_f"]))
    _, nb = knn_neighbors(v["ref_f"], v["query_f"][pos : pos + 1], k=kk)
    true, pred = int(v["labels"][pos]), int(v["pred"][i])
    title = f"{split} image {i}\ntrue: {v['names'][true]}\npred: {v['names'][pred]}"
    return plots.neighbour_gallery(
        v["images"][pos : pos + 1],
        v["ref_images"],
        np.asarray(nb),
        v["ref_labels"],
        v["names"],
        query_labels=[true],
        query_titles=[title],
        query_colours=[plots.RIGHT if true == pred else plots.WRONG],
    )


def tsne_figure(v: dict, embedding, chosen_names, title: str = ""):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 5), layout="constrained")
    shown = [v["names"].index(c) for c in chosen_names]
    plots.tsne_panel(fig.subplots(), np.asarray(embedding), np.asarray(v["labels"]), v["names"], shown, title)
    return fig


def build_explorer(dataset, features: dict, ev: dict, embeddings: dict, k: int = 5):
    """An ipywidgets explorer for JupyterLab, returned (display it); nothing waits for input.

    Tab "images": pick val or OOD and an image number -> the image, its true and predicted label
    (course k-NN, as in eval.json) and its k nearest reference images: the training set for val,
    the OOD probe-train part for OOD (the reference set of the OOD protocol).
    Tab "t-SNE": pick val or OOD and classes to highlight in the t-SNE of the features.
    Both views are drawn once at build time, so an executed notebook shows their first state.
    features: {"train", "val", "ood"} (N, D) arrays; embeddings: {"val", "ood"} (N, 2) arrays.
    """
    import ipywidgets as W  # the explorer's own dependency: imported when one is built

    views = _views(dataset, features, ev)
    split_w = W.ToggleButtons(options=list(views), description="split")
    index_w = W.IntSlider(
        value=0, min=0, max=len(views["val"]["positions"]) - 1, description="image #", continuous_update=False
    )
    image_out = W.Output()
    caption_w = W.HTML()  # the prediction as text, beside the figure that shows it

    def draw_image(*_):
        v = views[split_w.value]
        i = min(index_w.value, len(v["positions"]) - 1)
        true, pred = int(v["labels"][int(v["positions"][i])]), int(v["pred"][i])
        # an HTML widget sets innerHTML: class names come from the data, so they are escaped to text
        true_name, pred_name = html.escape(str(v["names"][true])), html.escape(str(v["names"][pred]))
        caption_w.value = (
            f"<b>{split_w.value} image {i}</b>: true <b>{true_name}</b>, predicted "
            f"<b>{pred_name}</b> ({'right' if true == pred else 'wrong'}, course k-NN)"
        )
        fig = neighbours_figure(v, split_w.value, i, k)
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
        split = tsne_split_w.value
        fig = tsne_figure(views[split], embeddings[split], classes_w.value)
        with tsne_out:
            tsne_out.clear_output(wait=True)
            show_plot(fig)

    tsne_split_w.observe(lambda _: (set_classes(), draw_tsne()), names="value")
    classes_w.observe(draw_tsne, names="value")
    set_classes()
    draw_image()
    draw_tsne()
    tabs = W.Tab(
        children=[
            W.VBox([W.HBox([split_w, index_w]), caption_w, image_out]),
            W.VBox([W.HBox([tsne_split_w, classes_w]), tsne_out]),
        ]
    )
    tabs.set_title(0, "images")
    tabs.set_title(1, "t-SNE")
    return tabs
