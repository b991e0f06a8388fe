"""The three self-supervised losses as small pure functions.

In every function z1[i] and z2[i] are the two views of image i, shape (B, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _f32(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 activations (autocast) are upcast: the losses need the range; fp64 stays fp64.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy (Chen et al. 2020, Algorithm 1).

    Each of the 2B embeddings has one positive (its other view) and 2B - 2 negatives;
    the loss is the mean over all 2B anchors.
    """
    b = z1.shape[0]
    z = F.normalize(_f32(torch.cat([z1, z2])), dim=1)  # (2B, D)
    sim = z @ z.T / temperature  # (2B, 2B) cosine similarities / tau
    sim.fill_diagonal_(float("-inf"))  # an anchor is not its own negative
    positive = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, positive)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss: mean over the batch of 2 - 2 cos(p, z); z is the (detached) target."""
    return (2 - 2 * F.cosine_similarity(_f32(p), _f32(z), dim=-1)).mean()


def _off_diagonal(c: torch.Tensor) -> torch.Tensor:
    # Flattened off-diagonal entries of a square matrix (the Barlow Twins authors' trick).
    n = c.shape[0]
    return c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    z = _f32(z)
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)  # (B, D)


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
