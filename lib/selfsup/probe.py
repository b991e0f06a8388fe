"""The linear probe: multinomial logistic regression on frozen features, its L2 penalty chosen
on a held-out part of probe-train (never on the test set).

    linear_probe(train_f, train_y, test_f, test_y)  -> accuracy, predictions, chosen weight decay
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .features import accuracy, as_tensor, default_device, float_features, int_labels

# L2 penalty grid, strongest first (ties in validation accuracy go to the stronger one).
# In units of the mean cross-entropy: scikit-learn's default C=1 is 1/N.
WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


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


def _fit_logreg(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float, max_iter: int, init=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: mean cross-entropy + weight_decay / 2 * ||W||^2 (bias not
    penalised, as scikit-learn), full-batch L-BFGS with a strong-Wolfe line search."""
    d = x.shape[1]
    if init is None:
        w = torch.zeros(d, n_classes, device=x.device, requires_grad=True)
        b = torch.zeros(n_classes, device=x.device, requires_grad=True)
    else:
        w, b = (t.detach().clone().requires_grad_(True) for t in init)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

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


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y=None,
    *,
    val_fraction: float = 0.2,
    weight_decays=WEIGHT_DECAYS,
    epochs: int = 200,
    seed: int = 0,
    device=None,
) -> dict:
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
    x = float_features(as_tensor(train_x, device, "train_x"), "train_x").float()
    xt = float_features(as_tensor(test_x, device, "test_x"), "test_x").float()
    if x.shape[1] != xt.shape[1]:
        raise ValueError(f"test_x: {xt.shape[1]} dimensions, train_x has {x.shape[1]}")
    for name, t in (("train_x", x), ("test_x", xt)):
        if not torch.isfinite(torch.linalg.vector_norm(t, dim=1)).all():
            raise ValueError(f"{name}: features contain NaN or infinity")
    y = int_labels(train_y, device, len(x), "train_y")
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
        yt = int_labels(test_y, device, len(xt), "test_y")
        acc = accuracy(pred, yt)
    return dict(
        accuracy=acc,
        predictions=pred,
        weight_decay=chosen,
        val_accuracy=val_accs.get(chosen),
        val_accuracies=val_accs,
        train_accuracy=train_acc,
        seconds=time.perf_counter() - t0,
    )
