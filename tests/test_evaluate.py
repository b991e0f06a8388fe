"""Evaluation: k-NN parity with scikit-learn (ties included), weighted k-NN against a slow
reference, the linear probe against scikit-learn, the OOD split, and a tiny run folder end to end."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from selfsup import data, demo_data, evaluate, knn, probe, runs
from selfsup.evaluate import knn_predict, linear_probe


@pytest.fixture(autouse=True)
def one_thread():
    """Small problems on a shared 2-core machine: one intra-op thread avoids spin-wait contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sk_predict(train, y, test, k=5, **kw):
    return KNeighborsClassifier(n_neighbors=k, **kw).fit(train, y).predict(test)


def ours(train, y, test, **kw):
    return knn_predict(train, y, test, **kw).numpy()


def gaussian(rng, n, d):
    return rng.normal(size=(n, d)).astype(np.float32)


def clustered(rng, n, d, n_classes=10, spread=1.0):
    """Post-ReLU-like features: class centres + noise, clipped at 0 (many exact zeros)."""
    centres = rng.normal(size=(n_classes, d)).astype(np.float32)
    y = rng.integers(0, n_classes, n)
    return np.maximum(centres[y] + spread * rng.normal(size=(n, d)), 0).astype(np.float32), y


# --------------------------------------------------------------------------- k-NN vs scikit-learn


@pytest.mark.parametrize("k,dim", [(1, 32), (5, 32), (8, 32), (5, 8)])  # dim 8: scikit-learn uses a KD-tree
def test_knn_matches_sklearn_gaussian(k, dim):
    rng = np.random.default_rng(k)
    train, test = gaussian(rng, 600, dim), gaussian(rng, 250, dim)
    y = rng.integers(0, 7, 600)
    np.testing.assert_array_equal(ours(train, y, test, k=k), sk_predict(train, y, test, k=k))


def test_knn_matches_sklearn_clustered_with_duplicates():
    """Clustered features, plus exact duplicates of training points with other labels."""
    rng = np.random.default_rng(1)
    train, y = clustered(rng, 800, 64, spread=2.0)
    dup = rng.choice(800, 200, replace=False)
    train = np.concatenate([train, train[dup]])  # duplicates come later in index order
    y = np.concatenate([y, (y[dup] + 1) % 10])
    test, _ = clustered(rng, 300, 64, spread=2.0)
    test[:100] = train[dup[:100]]  # queries sitting exactly on a duplicated pair
    np.testing.assert_array_equal(ours(train, y, test), sk_predict(train, y, test))


def naive_predict(train, y, test, k):
    """The documented rule on exact distance ties: a stable argsort of float64 distances (the
    smaller index first), then a vote with class ties to the smallest label."""
    d = ((test[:, None, :].astype(np.float64) - train[None].astype(np.float64)) ** 2).sum(-1)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    classes, yi = np.unique(y, return_inverse=True)
    return classes[np.array([np.bincount(yi[row], minlength=len(classes)).argmax() for row in nn])]


@pytest.mark.parametrize("k", [3, 5])
def test_knn_exact_distance_ties_keep_the_smaller_index(k):
    """Integer features in {0, 1, 2}: distances are small integers, so the k-th neighbour is
    almost always tied. scikit-learn's choice then follows its heap and OpenMP schedule, which we
    do not replay (real features practically never tie); ours is the stable rule, whatever the
    chunking."""
    rng = np.random.default_rng(k)
    train = rng.integers(0, 3, (400, 16)).astype(np.float32)
    test = rng.integers(0, 3, (150, 16)).astype(np.float32)
    y = rng.integers(0, 4, 400)
    expected = naive_predict(train, y, test, k)
    for chunk_size in (None, 1, 7):
        np.testing.assert_array_equal(ours(train, y, test, k=k, chunk_size=chunk_size), expected)


def test_knn_class_vote_ties_go_to_smallest_label():
    """Five neighbours voting 2-2-1 (labels 7, 7, 3, 3, 5): the tie goes to the smallest label, 3."""
    rng = np.random.default_rng(3)
    train = rng.normal(size=(5, 20)).astype(np.float32)
    far = train + 100  # farther points that must not vote
    train = np.concatenate([train, far])
    y = np.array([7, 7, 3, 3, 5, 9, 9, 9, 9, 9])
    query = np.zeros((1, 20), np.float32)
    assert ours(train, y, query)[0] == 3 == sk_predict(train, y, query)[0]


def test_knn_distance_weights_match_sklearn_including_exact_matches():
    rng = np.random.default_rng(4)
    train, y = clustered(rng, 500, 32, spread=3.0)
    test, _ = clustered(rng, 200, 32, spread=3.0)
    test[:20] = train[:20]  # zero distance: those neighbours take all the weight
    for k in (5, 10):
        np.testing.assert_array_equal(
            ours(train, y, test, k=k, weights="distance"), sk_predict(train, y, test, k=k, weights="distance")
        )


def test_knn_near_equidistant_points_force_candidate_fallback(monkeypatch):
    """Training points on a thin shell around the query: the fast pass cannot separate them, so a
    query takes every point within its rounding bound as a candidate; still exact."""
    ranked = []
    rank = knn._rank
    monkeypatch.setattr(knn, "_rank", lambda q, train, cand, k: ranked.append(cand.shape[1]) or rank(q, train, cand, k))
    rng = np.random.default_rng(5)
    d = 64
    centre = np.full(d, 3.0, np.float32)
    dirs = rng.normal(size=(3000, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    train = (centre + dirs * (10.0 + 1e-4 * rng.random((3000, 1)))).astype(np.float32)
    y = rng.integers(0, 5, 3000)
    test = np.stack([centre, centre + 1e-3]).astype(np.float32)
    np.testing.assert_array_equal(ours(train, y, test), sk_predict(train, y, test))
    assert max(ranked) > 5 + knn.SPARE  # the wide path was taken


def test_knn_features_far_from_the_origin_match_sklearn():
    """Non-negative features with a large common offset (big norms, small differences): the case
    where |x|^2 + |y|^2 - 2 x.y in float32 reorders neighbours; centring keeps the fast pass sharp."""
    rng = np.random.default_rng(11)
    train, y = clustered(rng, 1500, 256, spread=1.0)
    test, _ = clustered(rng, 300, 256, spread=1.0)
    train, test = train + 30, test + 30
    for k, weights in ((5, "uniform"), (20, "distance")):
        np.testing.assert_array_equal(
            ours(train, y, test, k=k, weights=weights), sk_predict(train, y, test, k=k, weights=weights)
        )


def test_knn_non_contiguous_labels_and_float64_and_torch_inputs():
    rng = np.random.default_rng(6)
    train, test = gaussian(rng, 300, 24).astype(np.float64), gaussian(rng, 100, 24).astype(np.float64)
    y = rng.choice([-3, 10, 42], 300)
    expected = sk_predict(train, y, test)
    np.testing.assert_array_equal(ours(train, y, test), expected)
    got = knn_predict(torch.from_numpy(train), torch.from_numpy(y), torch.from_numpy(test))
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_on_the_gpu_matches_sklearn_even_with_tf32_on():
    """The same predictions on CUDA; a caller's TF32 setting (common in training scripts) must not
    loosen the fast pass below its rounding bound."""
    rng = np.random.default_rng(12)
    train, y = clustered(rng, 5000, 512, n_classes=50, spread=1.0)
    test, _ = clustered(rng, 1000, 512, n_classes=50, spread=1.0)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        got = knn_predict(torch.from_numpy(train).cuda(), torch.from_numpy(y).cuda(), torch.from_numpy(test).cuda())
        weighted = ours(train, y, test, k=20, metric="cosine", weights="distance", device="cuda")
    finally:
        torch.set_float32_matmul_precision(previous)
    assert got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), sk_predict(train, y, test))
    np.testing.assert_array_equal(
        weighted, ours(train, y, test, k=20, metric="cosine", weights="distance", device="cpu")
    )


# --------------------------------------------------------------------------- weighted (SSL) k-NN


def weighted_cosine_reference(train, y, test, k, temperature):
    """Slow numpy reference of Wu et al. 2018 / DINO's weighted k-NN."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    classes = np.unique(y)
    out = []
    for q in b.astype(np.float64):
        sim = a.astype(np.float64) @ q
        nn = np.argsort(-sim, kind="stable")[:k]
        scores = np.zeros(len(classes))
        for j in nn:
            scores[np.searchsorted(classes, y[j])] += np.exp(sim[j] / temperature)
        out.append(classes[np.argmax(scores)])
    return np.array(out)


@pytest.mark.parametrize("k,temperature", [(20, 0.07), (50, 0.5)])
def test_weighted_cosine_knn_matches_reference(k, temperature):
    rng = np.random.default_rng(k)
    train, y = clustered(rng, 700, 48, spread=4.0)
    test, _ = clustered(rng, 200, 48, spread=4.0)
    got = ours(train, y, test, k=k, metric="cosine", weights="distance", temperature=temperature)
    np.testing.assert_array_equal(got, weighted_cosine_reference(train, y, test, k, temperature))


def test_cosine_uniform_is_euclidean_on_normalised_features():
    rng = np.random.default_rng(8)
    train, y = clustered(rng, 400, 32, spread=3.0)
    test, _ = clustered(rng, 150, 32, spread=3.0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_array_equal(ours(train, y, test, metric="cosine"), sk_predict(unit(train), y, unit(test)))


@pytest.mark.parametrize(
    "metric,weights",
    [("euclidean", "uniform"), ("euclidean", "distance"), ("cosine", "uniform"), ("cosine", "distance")],
)
def test_chunking_does_not_change_results(metric, weights):
    rng = np.random.default_rng(9)
    train = rng.integers(0, 3, (500, 16)).astype(np.float32)  # many ties: the hard case
    train[250:] += rng.normal(size=(250, 16)).astype(np.float32)
    test = rng.integers(0, 3, (130, 16)).astype(np.float32)
    y = rng.integers(0, 5, 500)
    kw = dict(k=7, metric=metric, weights=weights)
    base = ours(train, y, test, **kw)
    for chunk in (1, 17, 1000):
        np.testing.assert_array_equal(ours(train, y, test, chunk_size=chunk, **kw), base)


def test_knn_neighbors_match_sklearn_kneighbors():
    rng = np.random.default_rng(10)
    train, test = gaussian(rng, 400, 32), gaussian(rng, 50, 32)
    dist, idx = knn.knn_neighbors(train, test, k=5)
    sk_dist, sk_idx = KNeighborsClassifier(n_neighbors=5).fit(train, np.zeros(400)).kneighbors(test)
    np.testing.assert_array_equal(idx.numpy(), sk_idx)
    np.testing.assert_allclose(dist.numpy(), sk_dist, rtol=1e-6)


def test_knn_input_errors():
    x = np.zeros((10, 16), np.float32)
    y = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match="only 10 training points"):
        knn_predict(x, y, x, k=11)
    with pytest.raises(ValueError, match="metric"):
        knn_predict(x, y, x, metric="manhattan")
    with pytest.raises(ValueError, match="weights"):
        knn_predict(x, y, x, weights="exp")
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn_predict(bad, y, x)
    with pytest.raises(ValueError, match="dimensions"):
        knn_predict(x, y, np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="labels"):
        knn_predict(x, y[:5], x)


# --------------------------------------------------------------------------- features


def tiny_encoder():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )


def test_extract_features_batched_eval_mode_and_layouts():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 16, 16, 3), dtype=np.uint8)
    enc = tiny_encoder()
    enc.train()
    with torch.no_grad():
        enc(torch.randn(8, 3, 16, 16))  # move BN running stats away from their init
    f = evaluate.extract_features(enc, images, batch_size=10, precision="fp32")  # as the reference below
    assert f.shape == (37, 8) and f.dtype == torch.float32
    assert enc.training  # mode restored
    enc.eval()
    with torch.no_grad():
        from selfsup.pixels import normalize

        ref = enc(normalize(torch.from_numpy(images).permute(0, 3, 1, 2)))
    torch.testing.assert_close(f, ref)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    torch.testing.assert_close(evaluate.extract_features(enc, nchw, batch_size=64, precision="fp32"), f)
    assert not enc.training  # an eval-mode encoder stays in eval mode
    with pytest.raises(ValueError, match="uint8"):
        evaluate.extract_features(enc, images.astype(np.float32))


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_close_to_sklearn():
    rng = np.random.default_rng(0)
    d, n_classes = 24, 5
    centres = rng.normal(size=(n_classes, d)) * 0.5
    y = rng.integers(0, n_classes, 1500)
    x = (centres[y] + rng.normal(size=(1500, d))).astype(np.float32)
    yt = rng.integers(0, n_classes, 1000)
    xt = (centres[yt] + rng.normal(size=(1000, d))).astype(np.float32)
    sk = LogisticRegression(max_iter=1000).fit(x, y).score(xt, yt)
    res = linear_probe(x, y, xt, yt)
    assert res["accuracy"] >= sk - 0.01, (res["accuracy"], sk)
    assert abs(res["accuracy"] - sk) <= 0.03  # the same model family, not a different classifier
    assert res["weight_decay"] in probe.WEIGHT_DECAYS
    assert set(res["val_accuracies"]) == set(probe.WEIGHT_DECAYS)
    assert res["predictions"].shape == (1000,)


def test_linear_probe_never_looks_at_test_labels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    xt = rng.normal(size=(100, 8)).astype(np.float32)
    yt = (xt[:, 0] > 0).astype(np.int64) + 2 * (xt[:, 1] > 0)
    kw = dict(weight_decays=(1e-1, 1e-3), epochs=50)
    a = linear_probe(x, y, xt, yt, **kw)
    b = linear_probe(x, y, xt, rng.permutation(yt), **kw)
    c = linear_probe(x, y, xt, None, **kw)
    assert a["weight_decay"] == b["weight_decay"] == c["weight_decay"]
    np.testing.assert_array_equal(a["predictions"], b["predictions"])
    np.testing.assert_array_equal(a["predictions"], c["predictions"])
    assert c["accuracy"] is None and a["accuracy"] > 0.9


def test_stratified_split_is_seeded_and_per_class():
    y = np.repeat(np.arange(4), [10, 20, 5, 1])
    fit, held = probe.stratified_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([fit, held])) == list(range(len(y)))
    assert [int((y[held] == c).sum()) for c in range(4)] == [2, 4, 1, 0]
    np.testing.assert_array_equal(held, probe.stratified_split(y, 0.2, seed=0)[1])
    assert not np.array_equal(held, probe.stratified_split(y, 0.2, seed=1)[1])


# --------------------------------------------------------------------------- OOD protocol


def test_ood_protocol_uses_the_course_split_exactly():
    rng = np.random.default_rng(2)
    feats, labels = clustered(rng, 250, 32, n_classes=5, spread=2.0)
    res = evaluate.ood_protocol(
        feats, labels, weighted_k=10, linear=True, probe_kwargs=dict(weight_decays=(1e-2,), epochs=30)
    )
    mask = data.ood_split(250)
    assert mask.sum() == 200  # RandomState(42).permutation(n) >= int(0.2 n)
    np.testing.assert_array_equal(res["train_index"], np.flatnonzero(mask))
    np.testing.assert_array_equal(res["test_index"], np.flatnonzero(~mask))
    expected = sk_predict(feats[mask], labels[mask], feats[~mask])
    np.testing.assert_array_equal(res["predictions"]["knn"], expected)
    assert res["knn"] == pytest.approx((expected == labels[~mask]).mean())
    assert res["n_train"] == 200 and res["n_test"] == 50
    assert 0 <= res["linear"] <= 1 and 0 <= res["knn_weighted"] <= 1


def test_protocol_table_rows_and_course_row():
    rng = np.random.default_rng(3)
    train, y = clustered(rng, 150, 32, spread=3.0)
    test, yt = clustered(rng, 60, 32, spread=3.0)
    proj = train[:, :16], test[:, :16]
    rows = evaluate.protocol_table({"backbone": (train, test), "projector": proj}, y, yt, ks=(1, 5, 20, 200))
    assert len(rows) == 2 * 2 * 3  # k=200 > 150 training points is skipped
    course = next(r for r in rows if r["features"] == "backbone" and r["metric"] == "euclidean" and r["k"] == 5)
    assert course["accuracy"] == pytest.approx((sk_predict(train, y, test) == yt).mean())
    json.dumps(rows)


# --------------------------------------------------------------------------- a tiny run folder

TINY = dict(
    backbone="convnet",
    width=4,
    image_size=32,
    proj_hidden=16,
    proj_dim=8,
    pred_hidden=16,
    batch_size=32,
    epochs=1,
    warmup_epochs=0.5,
    lr=1e-3,
    device="cpu",
    knn_train_limit=50,
    seed=3,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from selfsup import config, train

    folder = tmp_path_factory.mktemp("data")
    demo_data.make_demo(
        folder, seed=2, n_id_classes=3, n_ood_classes=2, train_per_class=24, val_per_class=8, ood_per_class=15, size=32
    )
    run = tmp_path_factory.mktemp("run")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.train(config.load(None, TINY), data.load_dataset(folder), run, progress=False)
    finally:
        torch.set_num_threads(n)
    return folder, run


def test_evaluate_run_writes_eval_json(tiny_run):
    folder, run = tiny_run
    fast = dict(table_ks=(1, 5), probe_kwargs=dict(weight_decays=(1e-2, 1e-4), epochs=30))
    res = evaluate.evaluate_run(run, folder, device="cpu", save_features=True, **fast)
    on_disk = json.loads((run / "eval.json").read_text())
    assert on_disk["summary"] == res["summary"]
    assert not list(run.glob("*.tmp"))
    s = res["summary"]
    for prefix in ("", "random_init_"):
        for key in ("val_knn", "val_knn_weighted", "val_linear", "ood_knn", "ood_knn_weighted", "ood_linear"):
            assert 0 <= s[prefix + key] <= 1, prefix + key
    ds = data.load_dataset(folder)
    trained = res["trained"]
    assert len(trained["val"]["predictions"]["knn"]) == len(ds.val)
    assert len(trained["ood"]["predictions"]["knn"]) == len(trained["ood"]["test_index"]) == 6
    assert {r["features"] for r in trained["protocol_table"]} == {"backbone", "projector"}
    assert {r["split"] for r in trained["protocol_table"]} == {"val", "ood"}
    assert len(trained["gallery"]["val"]["neighbours"][0]) == 5
    assert res["random_init"].get("protocol_table") is None
    assert res["class_names"]["val"] == ds.val.class_names

    # the course k-NN in eval.json is scikit-learn's on the same features
    cfg, model = runs.Run(run).load_model()
    f_train = evaluate.extract_features(model.encoder, ds.train.images)
    f_val = evaluate.extract_features(model.encoder, ds.val.images)
    expected = sk_predict(f_train.numpy(), ds.train.labels, f_val.numpy())
    np.testing.assert_array_equal(trained["val"]["predictions"]["knn"], expected)
    feats = np.load(run / "features.npz")
    np.testing.assert_allclose(feats["val_features"], f_val.numpy())

    # selection: scikit-learn's course k-NN within the training images, 10% of each class held out
    ref, held = evaluate.select_parts(ds.train.labels)
    assert [int((ds.train.labels[held] == c).sum()) for c in range(3)] == [2, 2, 2]  # round(0.1 * 24)
    picked = sk_predict(f_train.numpy()[ref], ds.train.labels[ref], f_train.numpy()[held])
    assert s["select_knn"] == pytest.approx((picked == ds.train.labels[held]).mean())
    assert trained["select"]["n_test"] == 6 and 0 <= s["random_init_select_knn"] <= 1


def test_selection_never_looks_at_val_or_ood():
    rng = np.random.default_rng(4)
    train, y = clustered(rng, 200, 16, n_classes=4, spread=2.0)
    val, yv = clustered(rng, 40, 16, n_classes=4, spread=2.0)

    class Split:  # what evaluate_features reads of a dataset's split
        def __init__(self, labels):
            self.labels = labels

    class Dataset:
        def __init__(self, yv):
            self.train, self.val, self.ood = Split(y), Split(yv), None

    a = evaluate.evaluate_features({"train": train, "val": val}, Dataset(yv), "cpu", linear=False, table=False)
    b = evaluate.evaluate_features(
        {"train": train, "val": -val}, Dataset(rng.permutation(yv)), "cpu", linear=False, table=False
    )
    assert a["select"] == b["select"] and a["val"]["knn"] != b["val"]["knn"]
    ref, held = evaluate.select_parts(y)
    assert len(np.intersect1d(ref, held)) == 0 and len(ref) + len(held) == 200


def test_evaluate_run_errors_name_the_missing_file(tiny_run, tmp_path):
    from selfsup.runs import RunError

    folder, run = tiny_run
    with pytest.raises(RunError, match="config.json: missing"):
        evaluate.evaluate_run(tmp_path, folder)
    (tmp_path / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(RunError, match="encoder.safetensors: missing"):
        evaluate.evaluate_run(tmp_path, folder)
    with pytest.raises(RunError, match="run folder not found"):
        evaluate.evaluate_run(tmp_path / "nope", folder)
