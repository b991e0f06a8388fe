"""Evaluation as pure functions over cached features: extract once, then k-NN, linear probe, OOD.

    extract_features(encoder, images)            -> (N, D) float32 features
    knn_predict(train_f, train_y, test_f, ...)   -> (M,) predicted labels
    linear_probe(train_f, train_y, test_f, ...)  -> dict (accuracy, predictions, chosen weight decay)
    ood_protocol(features, labels)               -> the course's OOD 80/20 protocol
    evaluate_encoder(encoder, dataset)           -> every protocol on val and OOD
    evaluate_run(run_dir, data_dir)              -> the above for a trained run and its random-init
                                                    floor, written to run_dir/eval.json

The course protocol is scikit-learn's ``KNeighborsClassifier(n_neighbors=5)``; ``knn_predict``
with its defaults returns the same predictions, ties included (see ``knn_predict``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import normalize

METRICS = ("euclidean", "cosine")
WEIGHTS = ("uniform", "distance")
# L2 penalty grid for the linear probe, strongest first (ties in validation accuracy go to the
# stronger one). In units of the mean cross-entropy: scikit-learn's default C=1 is 1/N.
WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


# ---------------------------------------------------------------------------------------------
# Small helpers


def default_device(*tensors) -> torch.device:
    """The device of the first tensor among ``tensors``, else CUDA when available, else CPU."""
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tensor(x, device, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device)


def _float_features(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array of features, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name}: expected numeric features, got {x.dtype}")
    if x.dtype != torch.float64:
        x = x.float()  # half / bfloat16 / integer features are compared in float32
    return x


def _labels(y, device, n: int, name: str) -> torch.Tensor:
    y = _tensor(y, device, name)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name}: expected {n} labels in a 1-D array, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name}: expected integer class labels, got {y.dtype}")
    return y.long()


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


def accuracy(pred, labels) -> float:
    """Fraction of ``pred`` equal to ``labels`` (both (N,), numpy or torch)."""
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return float((pred == labels).mean()) if len(labels) else float("nan")


# ---------------------------------------------------------------------------------------------
# Feature extraction


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images, batch_size: int = 512, device=None) -> torch.Tensor:
    """Encoder features of a whole image set, in batches.

    images: uint8 numpy (N, H, W, 3) or uint8 tensor (N, 3, H, W) on any device; only one batch at
        a time is converted to float (the whole set as float32 would be 4x the uint8 size).
    device: where to run; default: the encoder's device. The encoder is moved there (in place).
    Returns (N, D) float32 on ``device``. The encoder runs in eval mode (BatchNorm running
    statistics) and is put back in its previous mode afterwards. On CUDA: bf16 autocast and
    channels_last inputs; on CPU: float32.
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected a (N, H, W, 3) uint8 array, got shape {images.shape}")
        channels_first = False
    elif isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a (N, 3, H, W) uint8 tensor, got shape {tuple(images.shape)}")
        channels_first = True
    else:
        raise TypeError(f"images: expected a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"images: expected uint8 pixels, got {images.dtype}")
    if device is None:
        param = next(iter(encoder.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    encoder.to(device)
    cuda = device.type == "cuda"

    was_training = encoder.training
    encoder.eval()
    out = None
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            if not channels_first:
                batch = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
            x = normalize(batch.to(device, non_blocking=True))  # (B, 3, H, W) float32
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                f = encoder(x)
            f = f.float().flatten(1)
            if out is None:
                out = torch.empty(len(images), f.shape[1], dtype=torch.float32, device=device)
            out[start : start + len(f)] = f
    finally:
        encoder.train(was_training)
    if out is None:  # no images: run one dummy image through to learn D
        raise ValueError("images: empty image set")
    return out


@torch.no_grad()
def project(head: torch.nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Apply a head (e.g. the projector) to cached (N, D) features in eval mode -> (N, D') float32."""
    was_training = head.training
    head.eval()
    try:
        param = next(iter(head.parameters()), None)
        device = param.device if param is not None else features.device
        return torch.cat([head(features[i : i + batch_size].to(device)).float()
                          for i in range(0, len(features), batch_size)])
    finally:
        head.train(was_training)


# ---------------------------------------------------------------------------------------------
# k-NN
#
# The course protocol is scikit-learn's KNeighborsClassifier(n_neighbors=5) on >15-D features,
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

    def __init__(self, train: torch.Tensor, yy: torch.Tensor, chunk_size: int | None,
                 train_chunk_size: int | None, n_queries: int, sklearn_threads: int | None):
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
        out = {k: (torch.empty(m, k, dtype=torch.float64, device=test.device),
                   torch.empty(m, k, dtype=torch.long, device=test.device)) for k in ks}
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
    train = _float_features(_tensor(train_features, device, "train_features"), "train_features")
    test = _float_features(_tensor(test_features, device, "test_features"), "test_features")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"test_features: {test.shape[1]} dimensions, train_features have {train.shape[1]}")
    if train.dtype != test.dtype:  # float64 only when both are
        train, test = train.float(), test.float()
    labels = _labels(train_labels, device, len(train), "train_labels")
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


def _vote(d2: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, n_classes: int, metric: str,
          weights: str, temperature: float) -> torch.Tensor:
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


def _knn_multi(train_features, train_labels, test_features, ks, metric="euclidean", weights="uniform",
               temperature=0.07, chunk_size=None, train_chunk_size=None, device=None,
               sklearn_threads=None) -> dict[int, torch.Tensor]:
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
            test, qq, ks, exact=weights != "uniform")
    return {k: classes[_vote(d2, idx, y_idx, len(classes), metric, weights, temperature)].to(out_device)
            for k, (d2, idx) in nb.items()}


def knn_predict(train_features, train_labels, test_features, k: int = 5, metric: str = "euclidean",
                weights: str = "uniform", temperature: float = 0.07, chunk_size: int | None = None,
                train_chunk_size: int | None = None, device=None,
                sklearn_threads: int | None = None) -> torch.Tensor:
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
    return _knn_multi(train_features, train_labels, test_features, [k], metric, weights, temperature,
                      chunk_size, train_chunk_size, device, sklearn_threads)[int(k)]


def knn_neighbors(train_features, test_features, k: int = 5, metric: str = "euclidean", device=None,
                  chunk_size: int | None = None, sklearn_threads: int | None = None):
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


# ---------------------------------------------------------------------------------------------
# Linear probe


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices), sorted: per class a seeded shuffle, round(fraction * n_c)
    held out (at least one when the class has two or more points, never the class's last one)."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = min(len(idx) - 1, max(1 if len(idx) > 1 else 0, int(round(val_fraction * len(idx)))))
        held.append(rng.permutation(idx)[:n_val])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    fit = np.setdiff1d(np.arange(len(labels)), held)
    return fit, held


def _standardiser(x: torch.Tensor):
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)  # dead (constant) features stay 0, not NaN
    return lambda z: (z - mean) / std


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float, max_iter: int,
                init=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: mean cross-entropy + weight_decay / 2 * ||W||^2 (bias not
    penalised, as scikit-learn), full-batch L-BFGS with a strong-Wolfe line search."""
    d = x.shape[1]
    if init is None:
        w = torch.zeros(d, n_classes, device=x.device, requires_grad=True)
        b = torch.zeros(n_classes, device=x.device, requires_grad=True)
    else:
        w, b = (t.detach().clone().requires_grad_(True) for t in init)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(torch.addmm(b, x, w), y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def _logits(x, wb):
    return torch.addmm(wb[1], x, wb[0])


def linear_probe(train_x, train_y, test_x, test_y=None, *, val_fraction: float = 0.2,
                 weight_decays=WEIGHT_DECAYS, epochs: int = 200, seed: int = 0, device=None) -> dict:
    """Multinomial logistic regression on frozen features.

    train_x (N, D), train_y (N,) integers, test_x (M, D), test_y (M,) or None; numpy or torch.
    Features are standardised with the training statistics. The L2 penalty is chosen from
    ``weight_decays`` (mean cross-entropy + wd/2 ||W||^2) by accuracy on a stratified, seeded
    ``val_fraction`` of the PROBE-TRAIN set (fit on the rest, standardised with the rest's
    statistics), then the probe is refit on all of probe-train. The test set is never used for a
    choice. Solver: full-batch L-BFGS, ``epochs`` iterations at most, on ``device`` (default:
    train_x's device, else CUDA if available).

    Returns dict(accuracy (None without test_y), predictions (M,) int64 numpy, weight_decay,
    val_accuracy (of the chosen wd), val_accuracies {wd: acc}, train_accuracy, seconds).
    """
    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else default_device(train_x, test_x)
    x = _float_features(_tensor(train_x, device, "train_x"), "train_x").float()
    xt = _float_features(_tensor(test_x, device, "test_x"), "test_x").float()
    if x.shape[1] != xt.shape[1]:
        raise ValueError(f"test_x: {xt.shape[1]} dimensions, train_x has {x.shape[1]}")
    for name, t in (("train_x", x), ("test_x", xt)):
        if not torch.isfinite(_sq_norms(t)).all():
            raise ValueError(f"{name}: features contain NaN or infinity")
    y = _labels(train_y, device, len(x), "train_y")
    classes, yi = torch.unique(y, sorted=True, return_inverse=True)
    n_classes = len(classes)
    grid = sorted({float(w) for w in weight_decays}, reverse=True)
    if not grid:
        raise ValueError("weight_decays: expected at least one value")

    val_accs: dict[float, float] = {}
    fits: dict[float, tuple] = {}
    chosen = grid[0]
    if len(grid) > 1 and val_fraction > 0:
        fit_idx, val_idx = stratified_split(yi.cpu().numpy(), val_fraction, seed)
        if len(val_idx) == 0 or len(fit_idx) == 0:
            raise ValueError(f"train_x: {len(x)} points are too few to hold out {val_fraction:.0%} for validation")
        fit_idx, val_idx = torch.from_numpy(fit_idx).to(device), torch.from_numpy(val_idx).to(device)
        scale = _standardiser(x[fit_idx])
        xf, xv = scale(x[fit_idx]), scale(x[val_idx])
        wb = None
        for wd in grid:  # strongest first, each warm-started from the previous: a regularisation path
            wb = fits[wd] = _fit_logreg(xf, yi[fit_idx], n_classes, wd, epochs, init=wb)
            val_accs[wd] = (_logits(xv, wb).argmax(1) == yi[val_idx]).float().mean().item()
        chosen = max(grid, key=lambda wd: val_accs[wd])  # first maximum: the strongest penalty
    scale = _standardiser(x)
    xs = scale(x)
    # refit on all of probe-train, warm-started from the chosen fit (same penalty, 80% of the data)
    wb = _fit_logreg(xs, yi, n_classes, chosen, epochs, init=fits.get(chosen))
    pred = classes[_logits(scale(xt), wb).argmax(1)].cpu().numpy()
    train_acc = (_logits(xs, wb).argmax(1) == yi).float().mean().item()
    acc = None
    if test_y is not None:
        yt = _labels(test_y, device, len(xt), "test_y")
        acc = accuracy(pred, yt)
    return dict(accuracy=acc, predictions=pred, weight_decay=chosen, val_accuracy=val_accs.get(chosen),
                val_accuracies=val_accs, train_accuracy=train_acc, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Protocols


def _np(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def knn_protocols(train_f, train_y, test_f, test_y, *, k: int = 5, weighted_k: int = 20,
                  temperature: float = 0.07, linear: bool = True, probe_kwargs: dict | None = None,
                  device=None) -> dict:
    """The course k-NN (euclidean, uniform, k), the weighted cosine k-NN (weighted_k, temperature)
    and the linear probe, fitted on (train_f, train_y), scored on (test_f, test_y).
    k values larger than the training set are clipped to it (tiny demo sets)."""
    n = len(train_f)
    k_c, k_w = min(k, n), min(weighted_k, n)
    course = knn_predict(train_f, train_y, test_f, k=k_c, device=device)
    weighted = knn_predict(train_f, train_y, test_f, k=k_w, metric="cosine", weights="distance",
                           temperature=temperature, device=device)
    out = dict(knn=accuracy(course, test_y), knn_weighted=accuracy(weighted, test_y), k=k_c, weighted_k=k_w,
               n_train=int(n), n_test=int(len(test_f)),
               predictions=dict(knn=_np(course).tolist(), knn_weighted=_np(weighted).tolist()))
    if linear:
        probe = linear_probe(train_f, train_y, test_f, test_y, device=device, **(probe_kwargs or {}))
        out.update(linear=probe["accuracy"], linear_weight_decay=probe["weight_decay"],
                   linear_val_accuracy=probe["val_accuracy"])
        out["predictions"]["linear"] = probe["predictions"].tolist()
    return out


def ood_protocol(features, labels, *, k: int = 5, weighted_k: int = 20, temperature: float = 0.07,
                 linear: bool = True, probe_kwargs: dict | None = None, device=None) -> dict:
    """The course's OOD protocol on OOD features (N, D) and labels (N,): k-NN and linear probe fitted
    on the probe-train part of ``selfsup.data.ood_split(N)`` (~80%), scored on the rest.

    Returns knn_protocols' dict plus ``test_index`` (probe-test positions in the OOD split, the
    order of the predictions) and ``train_index``.
    """
    from .data import ood_split

    labels = _np(labels)
    mask = ood_split(len(labels))
    tr, te = np.flatnonzero(mask), np.flatnonzero(~mask)
    feats = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    tr_t, te_t = torch.from_numpy(tr).to(feats.device), torch.from_numpy(te).to(feats.device)
    out = knn_protocols(feats[tr_t], labels[tr], feats[te_t], labels[te], k=k, weighted_k=weighted_k,
                        temperature=temperature, linear=linear, probe_kwargs=probe_kwargs, device=device)
    out.update(train_index=tr.tolist(), test_index=te.tolist())
    return out


def protocol_table(feature_sets: dict, train_y, test_y, *, ks=(1, 5, 20, 200),
                   variants=(("euclidean", "uniform"), ("cosine", "distance")), temperature: float = 0.07,
                   split: str = "val", device=None) -> list[dict]:
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
            preds = _knn_multi(train_f, train_y, test_f, usable, metric, weights, temperature, device=device)
            for k in usable:
                rows.append(dict(split=split, features=name, metric=metric, weights=weights, k=k,
                                 accuracy=accuracy(preds[k], test_y)))
    return rows


def _gallery(train_f, test_f, n: int, k: int, seed: int) -> dict:
    """Nearest training neighbours of n seeded random test points, for neighbour_gallery()."""
    rng = np.random.RandomState(seed)
    q = np.sort(rng.choice(len(test_f), size=min(n, len(test_f)), replace=False))
    q_t = torch.from_numpy(q).to(test_f.device)
    _, idx = knn_neighbors(train_f, test_f[q_t], k=min(k, len(train_f)))
    return dict(query=q.tolist(), neighbours=_np(idx).tolist())


def evaluate_encoder(encoder: torch.nn.Module, dataset, device=None, *, projector: torch.nn.Module | None = None,
                     k: int = 5, weighted_k: int = 20, temperature: float = 0.07, linear: bool = True,
                     table: bool = True, table_ks=(1, 5, 20, 200), probe_kwargs: dict | None = None,
                     batch_size: int = 512, gallery: int = 8, features: dict | None = None) -> dict:
    """Every protocol for one encoder on a ``selfsup.data.Dataset``.

    val: fitted on train, scored on val -- k-NN course (k, euclidean, uniform), k-NN weighted (cosine,
    weighted_k, temperature), linear probe. ood (when the dataset has one): ``ood_protocol``.
    table: ``protocol_table`` rows on val and OOD, for backbone features and, when ``projector`` is
    given, projector features. gallery: neighbour indices of a few val / OOD queries (for figures).
    features: precomputed {"train", "val", "ood"} backbone features (skips extraction).
    device: default CUDA if available; the encoder (and projector) are moved there.
    Returns a JSON-serialisable dict (accuracies, settings, predictions, table rows, gallery).
    """
    device = torch.device(device) if device is not None else default_device()
    t0 = time.perf_counter()
    if features is None:
        features = dict(train=extract_features(encoder, dataset.train.images, batch_size, device),
                        val=extract_features(encoder, dataset.val.images, batch_size, device))
        if dataset.ood is not None:
            features["ood"] = extract_features(encoder, dataset.ood.images, batch_size, device)
    t_feat = time.perf_counter() - t0
    kw = dict(k=k, weighted_k=weighted_k, temperature=temperature, linear=linear, probe_kwargs=probe_kwargs,
              device=device)
    ytr, yval = dataset.train.labels, dataset.val.labels
    out = dict(feature_dim=int(features["train"].shape[1]),
               settings=dict(k=k, weighted_k=weighted_k, temperature=temperature, linear=linear))
    out["val"] = knn_protocols(features["train"], ytr, features["val"], yval, **kw)
    out["gallery"] = dict(val=_gallery(features["train"], features["val"], gallery, 5, seed=0))
    out["ood"] = None
    if dataset.ood is not None and "ood" in features:
        out["ood"] = ood_protocol(features["ood"], dataset.ood.labels, **kw)
        tr = torch.tensor(out["ood"]["train_index"], device=features["ood"].device)
        te = torch.tensor(out["ood"]["test_index"], device=features["ood"].device)
        g = _gallery(features["ood"][tr], features["ood"][te], gallery, 5, seed=0)
        # as positions in the OOD split (queries from probe-test, neighbours from probe-train)
        trn, ten = np.asarray(out["ood"]["train_index"]), np.asarray(out["ood"]["test_index"])
        out["gallery"]["ood"] = dict(query=ten[g["query"]].tolist(),
                                     neighbours=trn[np.asarray(g["neighbours"])].tolist())
    if table:
        sets = {"backbone": features}
        if projector is not None:
            projector.to(device)
            sets["projector"] = {name: project(projector, f) for name, f in features.items()}
        rows = protocol_table({n: (f["train"], f["val"]) for n, f in sets.items()}, ytr, yval, ks=table_ks,
                              temperature=temperature, split="val", device=device)
        if out["ood"] is not None:
            tr = torch.tensor(out["ood"]["train_index"], device=device)
            te = torch.tensor(out["ood"]["test_index"], device=device)
            yo = np.asarray(dataset.ood.labels)
            rows += protocol_table({n: (f["ood"].to(device)[tr], f["ood"].to(device)[te]) for n, f in sets.items()},
                                   yo[out["ood"]["train_index"]], yo[out["ood"]["test_index"]], ks=table_ks,
                                   temperature=temperature, split="ood", device=device)
        out["protocol_table"] = rows
    out["seconds"] = dict(features=t_feat, total=time.perf_counter() - t0)
    return out


def _summary(trained: dict, floor: dict | None) -> dict:
    """Flat headline numbers: {val,ood}_{knn,knn_weighted,linear}, random_init_* for the floor."""
    s = {}
    for prefix, res in (("", trained), ("random_init_", floor)):
        if res is None:
            continue
        for split in ("val", "ood"):
            if res.get(split) is None:
                continue
            for key in ("knn", "knn_weighted", "linear"):
                if key in res[split]:
                    s[f"{prefix}{split}_{key}"] = res[split][key]
    return s


def eval_matches(ev: dict, cfg_hash: str | None) -> bool:
    """True when `ev` (an eval.json's content) holds results computed for the config with hash
    cfg_hash: eval.json records the config it evaluated."""
    from .config import ConfigError, from_dict

    if not ev.get("summary"):
        return False
    try:
        return from_dict(ev.get("config") or {}).hash() == cfg_hash
    except ConfigError:
        return False


def load_run_model(run_dir, device="cpu") -> tuple:
    """(config, model) of a finished run: the method built from config.json with the trained encoder
    from encoder.safetensors and, when checkpoint.pt is there, the trained projector."""
    from safetensors.torch import load_file

    from .config import ConfigError, from_dict
    from .methods import build_method
    from .train import RunError

    run_dir = Path(run_dir)
    cfg_path, enc_path = run_dir / "config.json", run_dir / "encoder.safetensors"
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run folder not found")
    if not cfg_path.is_file():
        raise RunError(f"{cfg_path}: missing; expected a run folder written by selfsup train")
    if not enc_path.is_file():
        raise RunError(f"{enc_path}: missing; the run has not finished (training writes it at the end)")
    try:
        cfg = from_dict(json.loads(cfg_path.read_text()), str(cfg_path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid JSON ({e})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_method(cfg)
    try:
        model.encoder.load_state_dict(load_file(str(enc_path)))
    except (RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{enc_path}: does not fit the {cfg.backbone} encoder of config.json ({first})") from None
    ckpt = run_dir / "checkpoint.pt"
    model.projector_trained = False
    if ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
            proj = {k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")}
            model.projector.load_state_dict(proj)
            model.projector_trained = True
        except Exception as e:  # an old or partial checkpoint: evaluate the backbone only
            warnings.warn(f"{ckpt}: projector not loaded ({type(e).__name__}); protocol table has backbone rows only")
    return cfg, model.to(device)


def evaluate_run(run_dir, data_dir, device=None, *, table: bool = True, linear: bool = True,
                 save_features: bool = False, **kwargs) -> dict:
    """Evaluate a finished run folder and write ``run_dir/eval.json`` (atomically).

    Loads config.json -> Config -> build_method, the trained encoder (encoder.safetensors) and, if
    checkpoint.pt exists, the trained projector (for projector rows of the protocol table). The
    floor is the same architecture at its random initialisation (seeded with the run's seed, i.e.
    the run's own starting weights). Data: ``selfsup.data.load_dataset(data_dir)``.
    save_features: also write val / OOD backbone features to run_dir/features.npz (for t-SNE).
    kwargs go to ``evaluate_encoder``. Returns the eval.json content: trained, random_init (the
    evaluate_encoder dicts), summary (flat headline accuracies), config, data, device, seconds.
    """
    from .data import load_dataset
    from .train import write_json
    from .methods import build_method

    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    run_dir = Path(run_dir)
    cfg, model = load_run_model(run_dir, device)
    dataset = load_dataset(data_dir)
    enc_kw = dict(table=table, linear=linear, **kwargs)

    features = dict(train=extract_features(model.encoder, dataset.train.images, device=device),
                    val=extract_features(model.encoder, dataset.val.images, device=device))
    if dataset.ood is not None:
        features["ood"] = extract_features(model.encoder, dataset.ood.images, device=device)
    trained = evaluate_encoder(model.encoder, dataset, device,
                               projector=model.projector if model.projector_trained else None,
                               features=features, **enc_kw)
    if save_features:
        arrays = {f"{k}_features": v.cpu().numpy() for k, v in features.items() if k != "train"}
        arrays.update(val_labels=dataset.val.labels)
        if dataset.ood is not None:
            arrays.update(ood_labels=dataset.ood.labels)
        tmp = run_dir / "features.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, run_dir / "features.npz")
    del features, model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        floor_encoder = build_method(cfg).encoder
    floor = evaluate_encoder(floor_encoder, dataset, device, **{**enc_kw, "table": False})

    result = dict(run_dir=str(run_dir), data=str(data_dir), device=str(device), config=cfg.to_dict(),
                  summary=_summary(trained, floor), trained=trained, random_init=floor,
                  class_names=dict(val=list(dataset.val.class_names),
                                   ood=list(dataset.ood.class_names) if dataset.ood is not None else None),
                  seconds=time.perf_counter() - t0)
    write_json(run_dir / "eval.json", result, indent=None)  # compact: it holds per-image predictions
    return result
