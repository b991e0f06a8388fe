"""The self-supervised losses as small pure functions.

In every function z1[i] and z2[i] are the two views of image i, shape (B, D).
Each is computed in fp32 (fp64 inputs: fp64) whatever the autocast state: see `fp32_loss`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _f32(x):
    # bf16/fp16 activations are upcast: the losses need the range and precision; fp64 stays fp64.
    if torch.is_tensor(x) and x.is_floating_point():
        return x.to(torch.promote_types(x.dtype, torch.float32))
    return x


def fp32_loss(fn):
    """Decorate a loss so that it runs in fp32 whatever the caller's autocast state.

    Upcasting the inputs is not enough: under autocast, matmuls inside the loss (NT-Xent's
    similarities, Barlow Twins' cross-correlation) would be cast back down to bf16, which costs
    about 1% of NT-Xent at tau = 0.1 near convergence. So autocast is switched off for the
    inputs' device inside the loss, and floating tensor arguments are upcast (fp64 stays fp64).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device for a in (*args, *kwargs.values()) if torch.is_tensor(a)), None)
        args = tuple(_f32(a) for a in args)
        kwargs = {k: _f32(v) for k, v in kwargs.items()}
        if device is None:
            return fn(*args, **kwargs)
        with torch.autocast(device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


@fp32_loss
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy (Chen et al. 2020, Algorithm 1).

    Each of the 2B embeddings has one positive (its other view) and 2B - 2 negatives;
    the loss is the mean over all 2B anchors.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, D)
    sim = z @ z.T / temperature  # (2B, 2B) cosine similarities / tau
    sim.fill_diagonal_(float("-inf"))  # an anchor is not its own negative
    # Anchor i's positive is i + B for the first view, i - B for the second; made on the device.
    positive = torch.arange(2 * b, device=z.device).add_(b).remainder_(2 * b)
    return F.cross_entropy(sim, positive)


@fp32_loss
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss: mean over the batch of 2 - 2 cos(p, z); z is the (detached) target."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


def _off_diagonal(c: torch.Tensor) -> torch.Tensor:
    # Flattened off-diagonal entries of a square matrix (the Barlow Twins authors' trick).
    n = c.shape[0]
    return c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)  # (B, D)


@fp32_loss
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins: push the cross-correlation of batch-standardised embeddings to identity.

    c = z1n.T @ z2n / B, each feature standardised over the batch exactly as the authors'
    BatchNorm1d(affine=False) in training mode does: (z - mean) / sqrt(biased var + 1e-5).
    loss = sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2.
    """
    b = z1.shape[0]
    c = _standardise(z1).T @ _standardise(z2) / b  # (D, D)
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def _covariance_penalty(z: torch.Tensor) -> torch.Tensor:
    # sum of squared off-diagonal covariances / D: decorrelates the embedding's dimensions.
    b, d = z.shape
    zc = z - z.mean(0)
    cov = zc.T @ zc / (b - 1)  # (D, D)
    return _off_diagonal(cov).pow(2).sum() / d


@fp32_loss
def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg (Bardes, Ponce & LeCun, ICLR 2022): invariance, variance and covariance terms.

    invariance  mean squared error between the views' embeddings, mean over batch and dimensions
    variance    hinge max(0, 1 - std) of each dimension over the batch (std = sqrt(unbiased var
                + eps)), averaged over dimensions, the mean of the two views
    covariance  squared off-diagonal entries of each view's covariance matrix, summed, / D; the
                two views' terms added
    loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance, with the
    paper's weights 25 / 25 / 1, as in the authors' main_vicreg.py (whose variance term is the
    mean over the two views: its "/ 2").
    """
    invariance = F.mse_loss(z1, z2)
    std1 = torch.sqrt(z1.var(0) + eps)
    std2 = torch.sqrt(z2.var(0) + eps)
    variance = (F.relu(1 - std1).mean() + F.relu(1 - std2).mean()) / 2
    covariance = _covariance_penalty(z1) + _covariance_penalty(z2)
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance
