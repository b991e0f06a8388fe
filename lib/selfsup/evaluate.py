"""Evaluation protocols over features extracted once, and a run's eval.json.

    evaluate_features(features, dataset)  -> every protocol on val and OOD for one feature set
    evaluate_run(run_dir, data_dir)       -> the trained encoder and its random-init floor,
                                             written to run_dir/eval.json (+ features.npz)
    ensure_eval(run_dir, data_dir)        -> eval.json, recomputed only when it is not current
    ood_parts(n)                          -> the course's OOD 80/20 split as positions
    select_parts(labels)                  -> the selection split of the training images

Protocols: the course k-NN (scikit-learn's KNeighborsClassifier(n_neighbors=5), reproduced by
selfsup.knn), the weighted cosine k-NN of SSL papers (its temperature is `knn_temperature`, not
the NT-Xent one), and the linear probe (selfsup.probe). OOD: k-NN and probe fitted on the
probe-train part of the OOD set, scored on its probe-test part.

Selection: the course k-NN fitted on 90% of the labelled training images and scored on the other
10% (stratified, fixed). It never looks at val or OOD, so it is what sweeps and comparisons choose
a setting by (selfsup.report.chosen); val and OOD stay the numbers reported.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import events
from .data import OOD_MIN_IMAGES, load_dataset, ood_split
from .features import accuracy, default_device, extract_features, project, to_numpy
from .knn import _knn_multi, knn_neighbors, knn_predict
from .probe import linear_probe, stratified_split
from .runs import Run

__all__ = [
    "knn_predict",
    "extract_features",
    "linear_probe",
    "evaluate_features",
    "evaluate_run",
    "ensure_eval",
    "ood_parts",
    "select_parts",
    "protocol_table",
]

SELECT_FRACTION = 0.1  # of the training images, per class, held out of the k-NN's reference set


def ood_parts(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(probe-train, probe-test) positions in an OOD set of n images: the course's fixed 80/20
    split (selfsup.data.ood_split). Every reader of OOD predictions indexes through this."""
    mask = ood_split(n)
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def select_parts(labels) -> tuple[np.ndarray, np.ndarray]:
    """(reference, held-out) positions in the training set for the selection k-NN: per class a
    fixed shuffle (seed 0), SELECT_FRACTION held out (selfsup.probe.stratified_split)."""
    return stratified_split(to_numpy(labels), SELECT_FRACTION, seed=0)


def _take(x, idx: np.ndarray):
    """Rows idx of a numpy array or a tensor (on its device)."""
    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(np.asarray(idx)).to(x.device)]
    return np.asarray(x)[idx]


def knn_protocols(
    train_f,
    train_y,
    test_f,
    test_y,
    *,
    k: int = 5,
    weighted_k: int = 20,
    knn_temperature: float = 0.07,
    linear: bool = True,
    probe_kwargs: dict | None = None,
    device=None,
) -> dict:
    """The course k-NN (euclidean, uniform, k), the weighted cosine k-NN (weighted_k,
    knn_temperature) and the linear probe, fitted on (train_f, train_y), scored on (test_f, test_y).
    k values larger than the training set are clipped to it (tiny demo sets)."""
    n = len(train_f)
    k_c, k_w = min(k, n), min(weighted_k, n)
    course = knn_predict(train_f, train_y, test_f, k=k_c, device=device)
    weighted = knn_predict(
        train_f, train_y, test_f, k=k_w, metric="cosine", weights="distance", temperature=knn_temperature, device=device
    )
    out = dict(
        knn=accuracy(course, test_y),
        knn_weighted=accuracy(weighted, test_y),
        k=k_c,
        weighted_k=k_w,
        n_train=int(n),
        n_test=int(len(test_f)),
        predictions=dict(knn=to_numpy(course).tolist(), knn_weighted=to_numpy(weighted).tolist()),
    )
    if linear:
        probe = linear_probe(train_f, train_y, test_f, test_y, device=device, **(probe_kwargs or {}))
        out.update(
            linear=probe["accuracy"],
            linear_weight_decay=probe["weight_decay"],
            linear_val_accuracy=probe["val_accuracy"],
        )
        out["predictions"]["linear"] = probe["predictions"].tolist()
    return out


def ood_protocol(features, labels, **kw) -> dict:
    """The course's OOD protocol on OOD features (N, D) and labels (N,): knn_protocols fitted on
    the probe-train part of ood_parts(N), scored on the probe-test part. Returns knn_protocols'
    dict plus ``train_index`` and ``test_index`` (positions in the OOD set; predictions follow
    test_index)."""
    labels = to_numpy(labels)
    tr, te = ood_parts(len(labels))
    out = knn_protocols(_take(features, tr), labels[tr], _take(features, te), labels[te], **kw)
    out.update(train_index=tr.tolist(), test_index=te.tolist())
    return out


def select_protocol(train_f, train_y, *, k: int = 5, device=None) -> dict | None:
    """The course k-NN within the training images: fitted on the reference part of select_parts,
    scored on the held-out part; None when nothing is held out (one image a class)."""
    y = to_numpy(train_y)
    ref, held = select_parts(y)
    if not len(held):
        return None
    k = min(k, len(ref))
    pred = knn_predict(_take(train_f, ref), y[ref], _take(train_f, held), k=k, device=device)
    return dict(knn=accuracy(pred, y[held]), k=k, n_train=len(ref), n_test=len(held))


def protocol_table(
    feature_sets: dict,
    train_y,
    test_y,
    *,
    ks=(1, 5, 20, 200),
    variants=(("euclidean", "uniform"), ("cosine", "distance")),
    knn_temperature: float = 0.07,
    split: str = "val",
    device=None,
) -> list[dict]:
    """k-NN accuracy over k x metric x feature set, as a list of rows (plain dicts).

    feature_sets: {name: (train_features, test_features)}, e.g. {"backbone": (...), "projector": (...)}.
    variants: (metric, weights) pairs; the defaults are the course's (euclidean, uniform votes) and
    the SSL papers' (cosine, exp(cos / T) votes). k values above the training-set size are skipped.
    """
    rows = []
    for name, (train_f, test_f) in feature_sets.items():
        usable = [k for k in ks if k <= len(train_f)]
        if not usable:
            continue
        for metric, weights in variants:
            preds = _knn_multi(train_f, train_y, test_f, usable, metric, weights, knn_temperature, device=device)
            for k in usable:
                rows.append(
                    dict(
                        split=split,
                        features=name,
                        metric=metric,
                        weights=weights,
                        k=k,
                        accuracy=accuracy(preds[k], test_y),
                    )
                )
    return rows


def table_rows(feature_sets: dict, dataset, device=None, **kw) -> list[dict]:
    """protocol_table on val (fitted on train) and, with an OOD set, on OOD probe-test (fitted on
    probe-train). feature_sets: {name: {"train", "val"[, "ood"]} features}."""
    rows = protocol_table(
        {n: (f["train"], f["val"]) for n, f in feature_sets.items()},
        dataset.train.labels,
        dataset.val.labels,
        split="val",
        device=device,
        **kw,
    )
    tr, te = ood_parts(len(dataset.ood) if dataset.ood is not None else 0)
    if len(te) and all("ood" in f for f in feature_sets.values()):
        rows += protocol_table(
            {n: (_take(f["ood"], tr), _take(f["ood"], te)) for n, f in feature_sets.items()},
            dataset.ood.labels[tr],
            dataset.ood.labels[te],
            split="ood",
            device=device,
            **kw,
        )
    return rows


def _gallery(train_f, test_f, n: int, k: int, seed: int) -> dict:
    """Nearest training neighbours of n seeded random test points, for neighbour_gallery()."""
    rng = np.random.RandomState(seed)
    q = np.sort(rng.choice(len(test_f), size=min(n, len(test_f)), replace=False))
    _, idx = knn_neighbors(train_f, _take(test_f, q), k=min(k, len(train_f)))
    return dict(query=q.tolist(), neighbours=to_numpy(idx).tolist())


def _probe_fits(train_y) -> bool:
    """The linear probe chooses its penalty on a held-out part of each class: it needs a class
    with two training images."""
    return len(train_y) > 0 and np.bincount(to_numpy(train_y)).max() >= 2


def _skipped(dataset, linear: bool) -> tuple[dict, list[str]]:
    """What the data lets evaluate_features run: ({"val_linear", "ood", "ood_linear"}: bool) and,
    for each protocol left out, a line saying which and why."""
    can = dict(val_linear=linear and _probe_fits(dataset.train.labels), ood=False, ood_linear=False)
    why = []
    if linear and not can["val_linear"]:
        why.append(
            f"{dataset.train.source}: val linear probe skipped: no class has two training images "
            "(the probe holds one out to choose its penalty)"
        )
    if dataset.ood is not None:
        n = len(dataset.ood)
        tr, te = ood_parts(n)
        can["ood"] = len(te) > 0
        can["ood_linear"] = can["ood"] and linear and _probe_fits(dataset.ood.labels[tr])
        if not can["ood"]:
            why.append(
                f"{dataset.ood.source}: OOD protocol skipped: {n} image(s); its 80/20 probe-train/"
                f"probe-test split needs at least {OOD_MIN_IMAGES}"
            )
        elif linear and not can["ood_linear"]:
            why.append(
                f"{dataset.ood.source}: OOD linear probe skipped: no class has two of the {len(tr)} "
                "probe-train images (the probe holds one out to choose its penalty)"
            )
    return can, why


def evaluate_features(
    features: dict,
    dataset,
    device=None,
    *,
    k: int = 5,
    weighted_k: int = 20,
    knn_temperature: float = 0.07,
    linear: bool = True,
    table: bool = True,
    table_ks=(1, 5, 20, 200),
    projected: dict | None = None,
    probe_kwargs: dict | None = None,
    gallery: int = 8,
) -> dict:
    """Every protocol for one feature set of a ``selfsup.data.Dataset``.

    features: {"train", "val"[, "ood"]} (N, D) backbone features (extract_features).
    val: fitted on train, scored on val -- k-NN course (k, euclidean, uniform), k-NN weighted
    (cosine, weighted_k, knn_temperature), linear probe. ood (when the dataset has one): ood_protocol.
    table: protocol_table rows on val and OOD, for the backbone and, when ``projected`` (the same
    splits through the projector) is given, projector features. gallery: neighbour positions of a
    few val / OOD queries (for figures). A protocol the data is too small for (an OOD set under
    OOD_MIN_IMAGES images, a probe without two images of a class) is left out and said in
    "skipped". Returns a JSON-serialisable dict.
    """
    device = torch.device(device) if device is not None else default_device()
    kw = dict(
        k=k,
        weighted_k=weighted_k,
        knn_temperature=knn_temperature,
        linear=linear,
        probe_kwargs=probe_kwargs,
        device=device,
    )
    out = dict(
        feature_dim=int(features["train"].shape[1]),
        settings=dict(k=k, weighted_k=weighted_k, knn_temperature=knn_temperature, linear=linear),
    )
    can, out["skipped"] = _skipped(dataset, linear)
    val_kw = {**kw, "linear": can["val_linear"]}
    out["val"] = knn_protocols(features["train"], dataset.train.labels, features["val"], dataset.val.labels, **val_kw)
    out["select"] = select_protocol(features["train"], dataset.train.labels, k=k, device=device)
    out["gallery"] = dict(val=_gallery(features["train"], features["val"], gallery, 5, seed=0))
    out["ood"] = None
    if can["ood"] and "ood" in features:
        out["ood"] = ood_protocol(features["ood"], dataset.ood.labels, **{**kw, "linear": can["ood_linear"]})
        tr, te = ood_parts(len(dataset.ood))
        g = _gallery(_take(features["ood"], tr), _take(features["ood"], te), gallery, 5, seed=0)
        # as positions in the OOD set (queries from probe-test, neighbours from probe-train)
        out["gallery"]["ood"] = dict(query=te[g["query"]].tolist(), neighbours=tr[np.asarray(g["neighbours"])].tolist())
    if table:
        sets = {"backbone": features, **({"projector": projected} if projected else {})}
        out["protocol_table"] = table_rows(sets, dataset, device, ks=table_ks, knn_temperature=knn_temperature)
    return out


def extract_all(encoder: torch.nn.Module, dataset, device, precision: str = "auto") -> dict:
    """{"train", "val"[, "ood"]} backbone features (N, D) float32 on device, each split once, in the
    run's precision (extract_features)."""
    return {
        s: extract_features(encoder, getattr(dataset, s).images, device=device, precision=precision)
        for s in ("train", "val", "ood")
        if getattr(dataset, s) is not None
    }


def _summary(trained: dict, floor: dict | None) -> dict:
    """Flat headline numbers: {val,ood}_{knn,knn_weighted,linear}, select_knn, random_init_* for the
    floor."""
    s = {}
    for prefix, res in (("", trained), ("random_init_", floor)):
        if res is None:
            continue
        for split in ("val", "ood", "select"):
            if res.get(split) is None:
                continue
            for key in ("knn", "knn_weighted", "linear"):
                if key in res[split]:
                    s[f"{prefix}{split}_{key}"] = res[split][key]
    return s


def evaluate_run(
    run_dir,
    data_dir,
    device=None,
    *,
    dataset=None,
    table: bool = True,
    linear: bool = True,
    save_features: bool = True,
    **kwargs,
) -> dict:
    """Evaluate a finished run folder: write ``eval.json`` and the features it used (features.npz,
    which figures and the explorer read, so they show exactly what eval.json scored).

    The trained encoder (and, for the protocol table, the trained projector) come from the run
    folder (selfsup.runs); the floor is the same architecture at its random initialisation (the
    run's own starting weights). Features are extracted once per encoder, on ``device`` (default:
    CUDA if available; in the run's precision, as in training). kwargs go to evaluate_features. Returns the
    eval.json content: trained, random_init, summary (flat headline accuracies), config, data,
    device, seconds. save_features=False skips features.npz (sweeps: 100k x 512 floats a point).
    dataset: data_dir's Dataset when the caller has loaded it already (selfsup.pipeline.run), so
    it is not loaded twice.
    """
    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    run = Run(run_dir)
    cfg, model = run.load_model(device)
    dataset = dataset if dataset is not None else load_dataset(data_dir)
    kw = dict(table=table, linear=linear, **kwargs)

    features = extract_all(model.encoder, dataset, device, cfg.precision)
    t_feat = time.perf_counter() - t0
    projected = (
        {s: project(model.projector, f) for s, f in features.items()} if table and model.projector_trained else None
    )
    trained = evaluate_features(features, dataset, device, projected=projected, **kw)
    trained["seconds"] = dict(features=t_feat, total=time.perf_counter() - t0)
    arrays = None
    if save_features:  # written with eval.json, at the end: the two always match
        arrays = {
            **{f"{s}_features": f.cpu().numpy() for s, f in features.items()},
            **{f"{s}_labels": getattr(dataset, s).labels for s in features},
        }
    del features, projected, model

    floor_encoder = run.random_init(cfg).encoder
    floor_features = extract_all(floor_encoder, dataset, device, cfg.precision)
    floor = evaluate_features(floor_features, dataset, device, **{**kw, "table": False})

    result = dict(
        run_dir=str(run.path),
        data=str(data_dir),
        device=str(device),
        config=cfg.to_dict(),
        summary=_summary(trained, floor),
        trained=trained,
        random_init=floor,
        class_names=dict(
            val=list(dataset.val.class_names), ood=list(dataset.ood.class_names) if dataset.ood is not None else None
        ),
        skipped=list(dict.fromkeys(trained["skipped"] + floor["skipped"])),
        seconds=time.perf_counter() - t0,
    )
    run.write_eval(result, features=arrays)
    events.write_eval(run, result["summary"], step=cfg.epochs)  # TensorBoard: the headline accuracies
    return result


def ensure_eval(run_dir, data_dir, force: bool = False, **kwargs) -> dict:
    """The run's eval.json, (re)computed with evaluate_run when it is not current (Run.eval_current:
    another config or data folder), its features are missing, or `force` is set."""
    run = Run(run_dir)
    run.require_finished()
    if force or not run.eval_current(data=data_dir) or run.load_features() is None:
        return evaluate_run(run_dir, data_dir, **kwargs)
    return run.eval()


def run_features(run_dir, data_dir) -> dict:
    """{"train", "val"[, "ood"]} (N, D) float32 numpy features of a run, as its evaluation
    extracted them (device and precision of the evaluation): evaluated first when needed."""
    run = Run(run_dir)
    saved = run.load_features()
    if saved is None or not run.eval_current(data=data_dir):
        ensure_eval(run_dir, data_dir, force=True)
        saved = run.load_features()
    return {k[: -len("_features")]: v for k, v in saved.items() if k.endswith("_features")}
