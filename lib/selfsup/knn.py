"""k-nearest-neighbour classification of features, chunked, on any device (torch ops only).

    knn_predict(train_f, train_y, test_f, k=5)  -> (M,) labels: scikit-learn's
                                                   KNeighborsClassifier(n_neighbors=5), the course protocol
    knn_predict(..., metric="cosine", weights="distance", temperature=0.07)
                                                -> the weighted k-NN of SSL papers (Wu et al. 2018, DINO)
    knn_neighbors(train_f, test_f, k)           -> the k nearest training points, nearest first

Every variant, and the training monitor, is the same three steps: _nearest (distances and the k
smallest), then _vote.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .features import as_tensor, default_device, float_features, int_labels

METRICS = ("euclidean", "cosine")
WEIGHTS = ("uniform", "distance")
SPARE = 16  # candidates kept beyond k by the fast pass; only near-equidistant data need more


def _prepare(train_features, test_features, metric, device, ks):
    """-> train (N, D), test (M, D): float32 (float64 when both are), unit length for cosine."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    device = torch.device(device) if device is not None else default_device(test_features, train_features)
    train = float_features(as_tensor(train_features, device, "train_features"), "train_features")
    test = float_features(as_tensor(test_features, device, "test_features"), "test_features")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"test_features: {test.shape[1]} dimensions, train_features have {train.shape[1]}")
    for k in ks:
        if not 1 <= k <= len(train):
            raise ValueError(f"k={k}: expected 1 to {len(train)} neighbours (only {len(train)} training points)")
    if train.dtype != test.dtype:
        train, test = train.float(), test.float()
    for name, x in (("train_features", train), ("test_features", test)):  # one pass, no copy
        if not torch.isfinite(torch.linalg.vector_norm(x, dim=1)).all():
            raise ValueError(f"{name}: features contain NaN or infinity")
    if metric == "cosine":  # cosine ranking == euclidean ranking of unit vectors: |a-b|^2 = 2 - 2 cos
        train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    return train.contiguous(), test.contiguous()


@contextlib.contextmanager
def _full_fp32_matmul():
    """float32 products without the TF32 / bfloat16 shortcuts that _nearest's error bound excludes."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _rank(q64: torch.Tensor, train: torch.Tensor, cand: torch.Tensor, k: int):
    """The k nearest of each query's candidates: q64 (R, D) float64, cand (R, c) training indices
    -> (squared distances (R, k) float64, indices (R, k)), nearest first, equal distances by index.
    Distances as scikit-learn computes them, (|x|^2 - 2 x.y) + |y|^2 in float64, clipped at 0;
    the dot product is a fixed-order row reduction, so identical training rows tie exactly."""
    cand = cand.sort(dim=1).values  # index order, which the stable sort keeps among equal distances
    y = train[cand].double()  # (R, c, D)
    d2 = (q64.square().sum(1, keepdim=True) - 2 * (q64.unsqueeze(1) * y).sum(2)) + y.square().sum(2)
    d2, j = d2.clamp_min_(0).sort(dim=1, stable=True)
    return d2[:, :k], cand.gather(1, j[:, :k])


def _nearest(train: torch.Tensor, test: torch.Tensor, k: int, chunk_size: int | None = None):
    """The k nearest training points of each test point -> (squared distances (M, k) float64,
    indices (M, k)), nearest first, equal distances by index.

    A fast pass in the features' dtype (one GEMM a chunk) picks candidates, which _rank orders in
    float64. On features centred on the training mean (a shift keeps every distance), the fast
    |y|^2 - 2 q.y errs by at most about D u (|q| + |y|)^2 (u = 2^-24 in float32; `err` below,
    the centring's own rounding and a 2x margin included), enough to reorder near neighbours; so
    the candidates of a query are every point the fast pass puts within twice that of its k-th:
    all that can be among its k nearest. Usually a few beyond k; more than k + SPARE only on
    near-equidistant data, taken one query at a time.
    """
    n, d = train.shape
    u = torch.finfo(train.dtype).eps / 2
    err = 2 * (d * u / (1 - d * u) + 6 * u)
    mean = train.mean(0)
    centred = train - mean  # a copy of the training features: post-ReLU features sit far from 0
    yy = torch.linalg.vector_norm(centred, dim=1).square()
    max_norm = yy.double().max().sqrt()
    c = min(n, k + SPARE)
    # Queries per chunk: a (queries x n) block of fast distances of about 64 MB on the CPU, 1 GB on a GPU.
    chunk = chunk_size or max(1, (1 << (28 if train.is_cuda else 24)) // n)
    dist = torch.empty(len(test), k, dtype=torch.float64, device=test.device)
    index = torch.empty(len(test), k, dtype=torch.long, device=test.device)
    for s in range(0, len(test), chunk):
        q, q64 = test[s : s + chunk] - mean, test[s : s + chunk].double()
        with _full_fp32_matmul():
            fast = torch.addmm(yy, q, centred.T, alpha=-2)  # (Q, n); |q|^2 is the same along a row
        v, cand = fast.topk(c, dim=1, largest=False)  # ascending
        reach = v[:, k - 1].double() + 2 * err * (q.double().norm(dim=1) + max_norm) ** 2
        within = (v.double() <= reach[:, None]).sum(1)
        d2, idx = _rank(q64, train, cand[:, : int(within.max())], k)
        for r in (within == c).nonzero().flatten().tolist() if c < n else []:
            wide_d2, wide_idx = _rank(q64[r : r + 1], train, (fast[r].double() <= reach[r]).nonzero().T, k)
            d2[r], idx[r] = wide_d2[0], wide_idx[0]
        dist[s : s + len(q)], index[s : s + len(q)] = d2, idx
    return dist, index


def _vote(d2: torch.Tensor, labels: torch.Tensor, n_classes: int, metric: str, weights: str, temperature: float):
    """Class index per query from its neighbours' squared distances and class indices (M, k),
    nearest first: scikit-learn's rule, the first class with the largest score, so class ties
    (2-2-1) go to the smallest label."""
    if weights == "uniform":
        w = torch.ones_like(d2)
    elif metric == "cosine":  # Wu et al. 2018 / DINO: exp(cos / T), cos = 1 - |a-b|^2 / 2 for unit vectors
        w = torch.exp((1 - d2 / 2) / temperature)
    else:  # scikit-learn's weights="distance": 1 / distance, and exact matches take all the weight
        zero = d2 == 0
        w = torch.where(zero.any(1, keepdim=True), zero.double(), 1 / d2.sqrt())
    scores = torch.zeros(len(d2), n_classes, dtype=torch.float64, device=d2.device)
    for i in range(d2.shape[1]):  # one neighbour at a time, nearest first, as scikit-learn's weighted_mode sums
        scores.scatter_add_(1, labels[:, i : i + 1], w[:, i : i + 1])
    return scores.argmax(1)  # the first maximum, as scipy's mode and weighted_mode keep it


def _knn_multi(
    train_f, train_y, test_f, ks, metric="euclidean", weights="uniform", temperature=0.07, chunk_size=None, device=None
) -> dict[int, torch.Tensor]:
    """knn_predict for several k with one neighbour search -> {k: (M,) labels}."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights: expected one of {list(WEIGHTS)}, got {weights!r}")
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    ks = sorted({int(k) for k in ks})
    train, test = _prepare(train_f, test_f, metric, device, ks)
    classes, y = torch.unique(int_labels(train_y, train.device, len(train), "train_labels"), return_inverse=True)
    d2, idx = _nearest(train, test, ks[-1], chunk_size)  # the k nearest are the first k of the kmax nearest
    out = test_f.device if isinstance(test_f, torch.Tensor) else torch.device("cpu")
    return {k: classes[_vote(d2[:, :k], y[idx[:, :k]], len(classes), metric, weights, temperature)].to(out) for k in ks}


def knn_predict(
    train_features,
    train_labels,
    test_features,
    k: int = 5,
    metric: str = "euclidean",
    weights: str = "uniform",
    temperature: float = 0.07,
    chunk_size: int | None = None,
    device=None,
) -> torch.Tensor:
    """k-nearest-neighbour classification: train_features (N, D), train_labels (N,) integers and
    test_features (M, D), numpy or torch -> (M,) int64 labels on test_features' device (CPU for
    numpy). Computed on `device` (default: test_features' device, else CUDA when available).

    euclidean, uniform (the defaults, the course protocol): scikit-learn's
        KNeighborsClassifier(n_neighbors=k) predictions: distances ranked in float64 as it
        computes them, class-vote ties to the smallest label. By design one case may differ: an
        exact distance tie at the k-th neighbour (duplicated or integer-valued features) keeps the
        smaller index here, and in scikit-learn whatever its heap and thread schedule leave.
    euclidean, distance: scikit-learn's weights="distance" (1/distance; exact matches take all).
    cosine: L2-normalised features; with weights="distance" the weighted k-NN of SSL papers,
        votes exp(cos / temperature), usually k=20 or 200.
    chunk_size: queries per block (default: queries x N distances of about 64 MB on the CPU, 1 GB
        on CUDA); the results do not depend on it. Memory beyond that block: one copy of the
        training features.
    """
    return _knn_multi(
        train_features, train_labels, test_features, [k], metric, weights, temperature, chunk_size, device
    )[int(k)]


def knn_neighbors(train_features, test_features, k: int = 5, metric: str = "euclidean", device=None):
    """The k nearest training points of each test point, nearest first (equal distances by index)
    -> (scores (M, k) float64, indices (M, k) int64) on test_features' device (CPU for numpy):
    euclidean distances, or cosine similarities for metric="cosine"."""
    train, test = _prepare(train_features, test_features, metric, device, [k])
    d2, idx = _nearest(train, test, k)
    out = test_features.device if isinstance(test_features, torch.Tensor) else torch.device("cpu")
    return ((1 - d2 / 2) if metric == "cosine" else d2.sqrt()).to(out), idx.to(out)
