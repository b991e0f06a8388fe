"""k-nearest-neighbour classification that reproduces scikit-learn, ties included, at GPU speed.

knn_predict(train_f, train_y, test_f, k=5)   -> (M,) predicted labels (the course protocol:
                                                KNeighborsClassifier(n_neighbors=5))
knn_predict(..., metric="cosine", weights="distance", temperature=0.07)
                                             -> the weighted k-NN of SSL papers
knn_neighbors(train_f, test_f, k)            -> the k nearest training points
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from .features import as_tensor, default_device, float_features, int_labels

METRICS = ("euclidean", "cosine")
WEIGHTS = ("uniform", "distance")


@contextlib.contextmanager
def _ieee_fp32_matmul():
    """float32 matmuls at full precision (no TF32 / bf16 shortcuts) inside the block: the k-NN
    candidate search relies on the float32 rounding-error bound."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


# # The course protocol is scikit-learn's KNeighborsClassifier(n_neighbors=5) on >15-D features,
# which scikit-learn serves like this (read from 1.9's source: sklearn/neighbors/_classification.py,
# _base.py, metrics/_pairwise_distances_reduction/_argkmin.pyx.tp, _base.pyx.tp, utils/_heap.pyx):
#
# * algorithm="auto" picks brute force for more than 15 features (a KD-tree below that; see the
#   knn_predict docstring). predict() -> predict_proba() (ArgKminClassMode excludes "euclidean")
#   -> kneighbors() -> EuclideanArgKmin: the squared distance of float32 features is computed in
#   float64 as
#       (||x||^2 + (-2 x.y)) + ||y||^2,  clipped at 0
#   (float64 norms and a float64 GEMM on upcast chunks).
# * The k nearest are kept in a fixed-size max-heap per query (utils/_heap.pyx heap_push): a
#   training point enters only if its distance is STRICTLY smaller than the heap's current
#   largest, which it then replaces and sifts down (towards the left child when the children are
#   equal). Points arrive in index order, so on an exact tie at the k-th distance the heap keeps
#   *earlier* points -- but not simply "the smallest indices": which of several equal entries
#   sits at the root, and is evicted next, depends on the heap's shape.
# * When the queries are few (n_train >= n_queries and n_queries <= 4 * 256 * n_threads),
#   scikit-learn parallelises over training points instead ("parallel_on_Y"): the training set is
#   cut in 256-row chunks, each OpenMP thread fills its own heap from a contiguous block of chunks
#   (static schedule), and the per-thread heaps are then pushed, thread after thread, into the
#   final heap. The tie-breaking then depends on the thread count.
# * Votes: every neighbour adds 1 (uniform) or 1/distance (weights="distance"; a zero distance
#   makes those neighbours weigh 1 and the others 0) to its class, classes being the sorted unique
#   labels; the prediction is the first class with the largest score: class ties go to the
#   smallest label.
#
# We match it without scikit-learn's O(n_train x n_queries) heap work:
# 1. candidates: a float32 GEMM gives approximate distances; keep the top-c per query (c = k plus a
#    margin) and prove they contain every point that can matter: the (c)-th approximate distance
#    exceeds the k-th by more than twice a rigorous bound on the rounding error (queries that fail
#    are redone with 4x more candidates, up to all points);
# 2. uniform votes need only the SET of k nearest: when the (k+1)-th approximate distance exceeds
#    the k-th by more than twice the bound, the approximate top-k is that set (most queries);
# 3. otherwise exact distances for the candidates in float64, with scikit-learn's formula;
# 4. if the k-th and (k+1)-th exact distances differ, the k nearest are unambiguous; otherwise
#    (an exact tie at the boundary) we replay scikit-learn's heap over that query's full distance
#    row in its visiting order (_SklearnHeapOrder).


_DBL_MAX = float(np.finfo(np.float64).max)


def _heap_push(values: list, indices: list, val: float, idx: int) -> None:
    """scikit-learn's utils/_heap.pyx heap_push, line for line: a fixed-size max-heap."""
    size = len(values)
    if val >= values[0]:
        return
    cur = 0
    while True:
        left = 2 * cur + 1
        right = left + 1
        if left >= size:
            break
        elif right >= size:
            if values[left] > val:
                swap = left
            else:
                break
        elif values[left] >= values[right]:
            if val < values[left]:
                swap = left
            else:
                break
        else:
            if val < values[right]:
                swap = right
            else:
                break
        values[cur] = values[swap]
        indices[cur] = indices[swap]
        cur = swap
    values[cur] = val
    indices[cur] = idx


def _heap_scan(d: np.ndarray, lo: int, hi: int, values: list, indices: list) -> None:
    """Push d[lo:hi] in index order. Only points below the current root can enter, so we jump to
    them with vectorised searches instead of a Python loop over every point."""
    j = lo
    block = 256
    while j < hi:
        chunk = d[j : min(hi, j + block)]
        hits = np.flatnonzero(chunk < values[0])
        if hits.size == 0:
            j += len(chunk)
            block = min(block * 2, 1 << 16)
            continue
        j += int(hits[0])
        _heap_push(values, indices, float(d[j]), j)
        j += 1
        block = 256


def _sklearn_n_threads() -> int:
    try:  # scikit-learn's own count (OMP_NUM_THREADS, CPU affinity, physical cores)
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        return int(_openmp_effective_n_threads())
    except ImportError:  # private helper moved: the usual OpenMP default
        return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


class _SklearnHeapOrder:
    """The order in which scikit-learn's brute-force ArgKmin pushes training points into each
    query's heap, for a predict() call with n_queries queries (see the notes above)."""

    def __init__(self, n_queries: int, n_train: int, n_threads: int | None = None):
        if n_threads is None:
            n_threads = _sklearn_n_threads()
        try:
            import sklearn

            chunk = int(sklearn.get_config().get("pairwise_dist_chunk_size", 256))
        except ImportError:
            chunk = 256
        self.n_threads = n_threads
        # BaseDistancesReduction.__init__, strategy="auto"
        self.parallel_on_y = not (n_train < n_queries or 4 * chunk * n_threads < n_queries)
        y_chunk = min(n_train, chunk)
        n_chunks = -(-n_train // y_chunk)
        threads = min(n_chunks, n_threads)
        q, r = divmod(n_chunks, threads)  # OpenMP static schedule: the first r threads get q + 1
        self.blocks = []
        for t in range(threads):
            c0 = t * q + min(t, r)
            c1 = c0 + q + (t < r)
            self.blocks.append((c0 * y_chunk, min(c1 * y_chunk, n_train)))

    def topk(self, d: np.ndarray, k: int) -> np.ndarray:
        """The k indices scikit-learn keeps for one query with squared distances d (n_train,)."""
        values, indices = [_DBL_MAX] * k, [0] * k
        if not self.parallel_on_y:
            _heap_scan(d, 0, len(d), values, indices)
        else:
            heaps = []
            for lo, hi in self.blocks:
                hv, hi_ = [_DBL_MAX] * k, [-1] * k
                _heap_scan(d, lo, hi, hv, hi_)
                heaps.append((hv, hi_))
            for hv, hi_ in heaps:  # _parallel_on_Y_synchronize: thread after thread, heap order
                for v, i in zip(hv, hi_):
                    _heap_push(values, indices, v, i)
        return np.asarray(indices, dtype=np.int64)


def _exact_d2(q64: torch.Tensor, qq: torch.Tensor, y64: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """scikit-learn's squared distance: (||x||^2 + (-2 x.y)) + ||y||^2 in float64, clipped at 0.
    q64 (R, D) or (R, 1, D), y64 broadcastable (.., D). The dot product is a fixed-order row
    reduction, so identical training rows get bit-identical distances (duplicates tie exactly,
    as they do in scikit-learn)."""
    mid = -2.0 * (q64 * y64).sum(-1)
    return ((qq + mid) + yy).clamp_min_(0.0)


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N,) squared norms in x's dtype: one fast pass, no temporaries. Approximate (the
    candidate search's error bound covers their rounding: at most (gamma_D + 3u) relative)."""
    return torch.linalg.vector_norm(x, dim=1).square()


def _sq_norms64(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (...) float64 squared norms: float32 squares are exact in float64, summed in a
    fixed order per row (identical rows -> identical norms)."""
    return x.double().square().sum(-1)


class _Neighbours:
    """Exact k nearest neighbours (scikit-learn's euclidean semantics) for several k at once.

    train (N, D) float32/64, yy (N,) its squared norms in the same dtype (from _sq_norms).
    """

    def __init__(
        self,
        train: torch.Tensor,
        yy: torch.Tensor,
        chunk_size: int | None,
        train_chunk_size: int | None,
        n_queries: int,
        sklearn_threads: int | None,
    ):
        self.train, self.yy = train, yy
        self.n, self.dim = train.shape
        cuda = train.device.type == "cuda"
        self.chunk_size = chunk_size or (4096 if cuda else 1024)
        # One (queries x train) block of approximate distances: ~64 MB on CPU, ~1 GB on GPU.
        self.block = 1 << 28 if cuda else 1 << 24
        self.train_chunk_size = train_chunk_size
        self.n_queries = n_queries
        self.sklearn_threads = sklearn_threads
        self._order = None
        # Rounding of the approximate ||y||^2 - 2 q.y: a D-long float32 dot product (or squared
        # norm) errs by at most gamma_D |q||y| (gamma_D = D u / (1 - D u), any summation order), the
        # final sum by u |...|; the float64 distances scikit-learn compares are far closer than
        # that to the exact ones. So per query
        #     |approx - exact| <= (gamma_D + 3u) (||q|| + max ||y||)^2,
        # and we use about twice that (a 2x safety factor).
        u = 2.0**-24 if train.dtype == torch.float32 else 2.0**-53
        gamma = self.dim * u / (1 - self.dim * u)
        self.err = 2.0 * (gamma + 4 * u)
        self.max_norm = float(yy.max().double().sqrt()) * (1 + gamma) if self.n else 0.0

    def order(self) -> _SklearnHeapOrder:
        if self._order is None:
            self._order = _SklearnHeapOrder(self.n_queries, self.n, self.sklearn_threads)
        return self._order

    def _approx_topc(self, q: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, c) smallest ||y||^2 - 2 q.y, ascending, and their indices (the query's own norm is a
        constant per row, added later)."""
        tc = self.train_chunk_size or max(c, self.block // max(len(q), 1))
        best_v = best_i = None
        for t0 in range(0, self.n, tc):
            y = self.train[t0 : t0 + tc]
            a = torch.addmm(self.yy[t0 : t0 + tc].unsqueeze(0), q, y.T, beta=1, alpha=-2)  # (Q, Tc)
            v, i = a.topk(min(c, a.shape[1]), dim=1, largest=False, sorted=False)
            i += t0
            if best_v is not None:
                v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                if v.shape[1] > c:
                    v, j = v.topk(c, dim=1, largest=False, sorted=False)
                    i = i.gather(1, j)
            best_v, best_i = v, i
        v, j = best_v.sort(dim=1)
        return v, best_i.gather(1, j)

    def _candidates(self, q, delta, kmax: int, c: int, rows):
        """Yields (rows, approx values (R, c) ascending, candidate indices (R, c)) such that every
        training point outside a row's candidates is strictly farther than its kmax-th nearest:
        the c-th approximate value exceeds the kmax-th by more than twice the error bound. Rows
        that fail are redone with 4x more candidates (at most all points: then trivially true)."""
        c = min(c, self.n)
        v, i = self._approx_topc(q, c)
        if c == self.n:
            yield rows, v, i
            return
        ok = (v[:, c - 1].double() - v[:, kmax - 1].double()) > 2 * delta
        if ok.all():
            yield rows, v, i
            return
        yield rows[ok], v[ok], i[ok]
        bad = ~ok
        yield from self._candidates(q[bad], delta[bad], kmax, 4 * c, rows[bad])

    def _exact(self, q64, cand):
        """Exact squared distances of R queries (R, D) float64 to their candidates (R, c), sorted
        by (distance, index) -> (d2, idx)."""
        y = self.train[cand]  # (R, c, D)
        d = _exact_d2(q64[:, None, :], _sq_norms64(q64)[:, None], y.double(), _sq_norms64(y))
        cand, j = cand.sort(dim=1)  # index order first, then a stable sort on distance
        d, j2 = d.gather(1, j).sort(dim=1, stable=True)
        return d, cand.gather(1, j2)

    def _full_rows(self, q64: torch.Tensor) -> np.ndarray:
        """Exact squared distances of a few queries (R, D) float64 to every training point -> (R, N)."""
        out = torch.empty(len(q64), self.n, dtype=torch.float64, device=q64.device)
        qq = _sq_norms64(q64)[:, None]
        step = max(1, (1 << 22) // max(1, len(q64) * self.dim))
        for t0 in range(0, self.n, step):
            y = self.train[t0 : t0 + step]
            out[:, t0 : t0 + step] = _exact_d2(q64[:, None, :], qq, y.double()[None], _sq_norms64(y)[None])
        return out.cpu().numpy()

    def search(self, test: torch.Tensor, qq_all: torch.Tensor, ks: list[int], exact: bool = True):
        """-> {k: (squared distances (M, k) float64 ascending, indices (M, k) int64)}.

        exact=False (enough for uniform votes): rows whose k-th and (k+1)-th approximate distances
        are further apart than the error bound keep the approximate top-k -- provably the same SET
        -- with approximate distances; only the others get exact float64 distances.
        """
        m = len(test)
        kmax = max(ks)
        out = {
            k: (
                torch.empty(m, k, dtype=torch.float64, device=test.device),
                torch.empty(m, k, dtype=torch.long, device=test.device),
            )
            for k in ks
        }
        c0 = min(self.n, kmax + max(16, kmax // 2))
        for s in range(0, m, self.chunk_size):
            q = test[s : s + self.chunk_size]
            qq = qq_all[s : s + self.chunk_size].double()
            delta = self.err * (qq.sqrt() * (1 + self.err) + self.max_norm) ** 2  # (Q,) float64
            ties: dict[int, set[int]] = {}
            for r, v, cand in self._candidates(q, delta, kmax, c0, torch.arange(len(q), device=q.device)):
                if len(r) == 0:
                    continue
                c = cand.shape[1]
                todo = {}
                for k in ks:
                    if exact:
                        todo[k] = torch.ones(len(r), dtype=torch.bool, device=q.device)
                    elif c == k:  # all training points
                        todo[k] = torch.zeros(len(r), dtype=torch.bool, device=q.device)
                    else:
                        todo[k] = (v[:, k].double() - v[:, k - 1].double()) <= 2 * delta[r]
                    clear = ~todo[k]
                    if clear.any():
                        out[k][0][s + r[clear]] = v[clear, :k].double() + qq[r[clear], None]
                        out[k][1][s + r[clear]] = cand[clear, :k]
                need = torch.stack(list(todo.values())).any(0)
                if not need.any():
                    continue
                r, cand = r[need], cand[need]
                step = max(1, (1 << 22) // (c * self.dim))  # rows per exact block, ~32 MB float64
                for b in range(0, len(r), step):
                    rb, cb = r[b : b + step], cand[b : b + step]
                    d, cb = self._exact(q[rb].double(), cb)
                    for k in ks:
                        sel = todo[k][need][b : b + step]
                        if not sel.any():
                            continue
                        out[k][0][s + rb[sel]] = d[sel, :k]
                        out[k][1][s + rb[sel]] = cb[sel, :k]
                        if c > k:
                            tied = sel & (d[:, k - 1] == d[:, k])
                            if tied.any():
                                ties.setdefault(k, set()).update((s + rb[tied]).tolist())
            if ties:
                self._break_ties(test, ties, out)
        return out

    def _break_ties(self, test, ties: dict[int, set[int]], out) -> None:
        """Exact ties at the k-th distance: replay scikit-learn's heap over the full rows."""
        order = self.order()
        all_rows = sorted(set().union(*ties.values()))
        for b in range(0, len(all_rows), 64):
            rows = all_rows[b : b + 64]
            full = self._full_rows(test[rows].double())
            for pos, row in enumerate(rows):
                for k, tied_rows in ties.items():
                    if row not in tied_rows:
                        continue
                    idx = order.topk(full[pos], k)
                    d = full[pos][idx]
                    o = np.lexsort((idx, d))
                    out[k][0][row] = torch.from_numpy(d[o]).to(test.device)
                    out[k][1][row] = torch.from_numpy(idx[o]).to(test.device)


def _prepare(train_features, train_labels, test_features, metric, device):
    """-> train, labels, test (float32, or float64 when both are), and their squared norms (same dtype)."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    device = torch.device(device) if device is not None else default_device(test_features, train_features)
    train = float_features(as_tensor(train_features, device, "train_features"), "train_features")
    test = float_features(as_tensor(test_features, device, "test_features"), "test_features")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"test_features: {test.shape[1]} dimensions, train_features have {train.shape[1]}")
    if train.dtype != test.dtype:  # float64 only when both are
        train, test = train.float(), test.float()
    labels = int_labels(train_labels, device, len(train), "train_labels")
    if metric == "cosine":
        # Cosine ranking == euclidean ranking of L2-normalised vectors (||a-b||^2 = 2 - 2 cos).
        train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    train, test = train.contiguous(), test.contiguous()
    yy, qq = _sq_norms(train), _sq_norms(test)
    # NaN/inf make a row's sum of squares non-finite: the check costs nothing extra.
    for name, norms in (("train_features", yy), ("test_features", qq)):
        if not torch.isfinite(norms).all():
            raise ValueError(f"{name}: features contain NaN or infinity (or values too large to square)")
    return train, labels, test, yy, qq


def _vote(
    d2: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, n_classes: int, metric: str, weights: str, temperature: float
) -> torch.Tensor:
    """Class index per query from its k neighbours, sorted nearest first; class ties -> smallest."""
    labels = y[idx]  # (M, k) class indices
    if weights == "uniform":
        scores = torch.zeros(len(idx), n_classes, dtype=torch.float64, device=idx.device)
        scores.scatter_add_(1, labels, torch.ones_like(d2))
        return scores.argmax(1)  # first maximum: the smallest label wins a tie
    if metric == "cosine":
        # Wu et al. 2018 / DINO: weight exp(cos / T), cos = 1 - ||a-b||^2 / 2 for unit vectors.
        w = torch.exp((1.0 - d2 / 2.0) / temperature)
    else:
        # scikit-learn weights="distance": 1/d, and exact matches take all the weight.
        dist = d2.sqrt()
        zero = dist == 0
        w = torch.where(zero.any(1, keepdim=True), zero.double(), 1.0 / dist)
    scores = torch.zeros(len(idx), n_classes, dtype=torch.float64, device=idx.device)
    for i in range(idx.shape[1]):  # nearest first, one neighbour at a time: scikit-learn's sum order
        scores.scatter_add_(1, labels[:, i : i + 1], w[:, i : i + 1])
    if metric == "euclidean":
        scores = scores / scores.sum(1, keepdim=True)  # scikit-learn compares normalised probabilities
    return scores.argmax(1)


def _knn_multi(
    train_features,
    train_labels,
    test_features,
    ks,
    metric="euclidean",
    weights="uniform",
    temperature=0.07,
    chunk_size=None,
    train_chunk_size=None,
    device=None,
    sklearn_threads=None,
) -> dict[int, torch.Tensor]:
    """knn_predict for several k at once (one distance pass) -> {k: (M,) labels}."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights: expected one of {list(WEIGHTS)}, got {weights!r}")
    train, y, test, yy, qq = _prepare(train_features, train_labels, test_features, metric, device)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"k: expected positive numbers of neighbours, got {ks}")
    if ks[-1] > len(train):
        raise ValueError(f"k={ks[-1]} neighbours requested but there are only {len(train)} training points")
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    classes, y_idx = torch.unique(y, sorted=True, return_inverse=True)
    out_device = test_features.device if isinstance(test_features, torch.Tensor) else torch.device("cpu")
    if len(test) == 0:
        return {k: torch.empty(0, dtype=torch.long, device=out_device) for k in ks}
    with _ieee_fp32_matmul():
        nb = _Neighbours(train, yy, chunk_size, train_chunk_size, len(test), sklearn_threads).search(
            test, qq, ks, exact=weights != "uniform"
        )
    return {
        k: classes[_vote(d2, idx, y_idx, len(classes), metric, weights, temperature)].to(out_device)
        for k, (d2, idx) in nb.items()
    }


def knn_predict(
    train_features,
    train_labels,
    test_features,
    k: int = 5,
    metric: str = "euclidean",
    weights: str = "uniform",
    temperature: float = 0.07,
    chunk_size: int | None = None,
    train_chunk_size: int | None = None,
    device=None,
    sklearn_threads: int | None = None,
) -> torch.Tensor:
    """k-nearest-neighbour classification of test features by training features.

    train_features (N, D), train_labels (N,) integers, test_features (M, D): numpy or torch.
    Returns (M,) int64 predicted labels, on test_features' device (CPU for numpy input).

    metric="euclidean", weights="uniform" (the defaults, the course protocol): the predictions of
        scikit-learn's KNeighborsClassifier(n_neighbors=k).fit(train, labels).predict(test) on
        float32 features with more than 15 dimensions, ties included: exact distance ties at the
        k-th neighbour are broken by replaying scikit-learn's heap (in its visiting order, which for
        few queries depends on its OpenMP thread count: ``sklearn_threads``, default scikit-learn's
        own count); class-vote ties go to the smallest label. Distances are compared in float64
        with scikit-learn's formula; only distinct points whose float64 distances differ in the
        last bit or two (BLAS summation order) could rank differently -- vanishingly rare for real
        features, impossible for duplicates or integer-valued features. With <= 15 dimensions
        scikit-learn uses a KD-tree, whose exact-tie order is not reproduced (results agree
        whenever the k-th distance is not tied).
    metric="euclidean", weights="distance": scikit-learn's weights="distance" (votes 1/distance;
        zero-distance neighbours take all the weight), same neighbours and summation order.
    metric="cosine": features L2-normalised; weights="distance" is the weighted k-NN of SSL papers
        (Wu et al. 2018, DINO): votes exp(cos / temperature), usually k=20 or 200;
        weights="uniform" counts votes.
    chunk_size: queries per block (default 1024 on CPU, 4096 on CUDA); train_chunk_size: training
        points per block (default: a block of about 64 MB on CPU, 1 GB on CUDA). The full
        (M, N) distance matrix is never built; results do not depend on the chunking.
    device: where to compute; default: test_features' device, else CUDA if available.
    """
    return _knn_multi(
        train_features,
        train_labels,
        test_features,
        [k],
        metric,
        weights,
        temperature,
        chunk_size,
        train_chunk_size,
        device,
        sklearn_threads,
    )[int(k)]


def knn_neighbors(
    train_features,
    test_features,
    k: int = 5,
    metric: str = "euclidean",
    device=None,
    chunk_size: int | None = None,
    sklearn_threads: int | None = None,
):
    """The k nearest training points of each test point, nearest first.

    Returns (scores (M, k) float64, indices (M, k) int64) on test_features' device (CPU for numpy):
    scores are euclidean distances (metric="euclidean": the same neighbours as scikit-learn's
    ``kneighbors``, exact ties at the k-th included) or cosine similarities (metric="cosine").
    Within a row, equal distances are listed by index.
    """
    dummy = torch.zeros(len(train_features), dtype=torch.long)
    train, _, test, yy, qq = _prepare(train_features, dummy, test_features, metric, device)
    if k > len(train):
        raise ValueError(f"k={k} neighbours requested but there are only {len(train)} training points")
    out_device = test_features.device if isinstance(test_features, torch.Tensor) else torch.device("cpu")
    with _ieee_fp32_matmul():
        d2, idx = _Neighbours(train, yy, chunk_size, None, len(test), sklearn_threads).search(test, qq, [k])[k]
    scores = (1.0 - d2 / 2.0) if metric == "cosine" else d2.sqrt()
    return scores.to(out_device), idx.to(out_device)
