"""Each loss pinned three ways: an independent slow reference, an analytic value, an invariance."""

import math

import numpy as np
import pytest
import torch

from selfsup.losses import barlow_twins_loss, byol_loss, fp32_loss, nt_xent, vicreg_loss

RTOL = 1e-5


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- NT-Xent ---------------------------------------------------------------------------------


def nt_xent_algorithm1(z1, z2, tau):
    """SimCLR paper, Algorithm 1, as plain loops in numpy: views 2k and 2k+1 are a positive pair."""
    z = np.empty((2 * len(z1), z1.shape[1]))
    z[0::2], z[1::2] = z1, z2
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)

    def s(i, j):
        return float(z[i] @ z[j])

    def ell(i, j):
        denom = sum(math.exp(s(i, k) / tau) for k in range(n) if k != i)
        return -math.log(math.exp(s(i, j) / tau) / denom)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n // 2)) / n


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 1.0])
def test_nt_xent_matches_algorithm1(tau):
    z1, z2 = randn(7, 5, seed=1), randn(7, 5, seed=2)
    ref = nt_xent_algorithm1(z1.numpy(), z2.numpy(), tau)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(ref, rel=RTOL)
    # float32 inputs too (the training dtype)
    assert nt_xent(z1.float(), z2.float(), tau).item() == pytest.approx(ref, rel=RTOL)


def test_nt_xent_analytic_orthonormal_pairs():
    # Both views equal to distinct orthonormal vectors: positive similarity 1, all 2B-2 negatives 0,
    # so loss = -log(e^{1/t} / (e^{1/t} + 2B - 2)) = log(1 + (2B - 2) e^{-1/t}).
    b, tau = 6, 0.5
    z = torch.eye(8, dtype=torch.float64)[:b]
    expected = math.log(1 + (2 * b - 2) * math.exp(-1 / tau))
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, rel=RTOL)


def test_nt_xent_invariances():
    z1, z2 = randn(9, 4, seed=3), randn(9, 4, seed=4)
    base = nt_xent(z1, z2, 0.2)
    q, _ = torch.linalg.qr(randn(4, 4, seed=5))  # a rotation of embedding space
    scale = torch.rand(9, 1, dtype=torch.float64) + 0.5  # per-embedding positive scale
    perm = torch.randperm(9)  # the order of images in the batch
    assert nt_xent(z1 @ q, z2 @ q, 0.2).item() == pytest.approx(base.item(), rel=RTOL)
    assert nt_xent(z1 * scale, z2 * 3, 0.2).item() == pytest.approx(base.item(), rel=RTOL)
    assert nt_xent(z1[perm], z2[perm], 0.2).item() == pytest.approx(base.item(), rel=RTOL)
    assert nt_xent(z2, z1, 0.2).item() == pytest.approx(base.item(), rel=RTOL)  # symmetric in views


def test_nt_xent_accepts_bf16_and_returns_fp32():
    z1, z2 = randn(8, 16, seed=6), randn(8, 16, seed=7)
    out = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert out.dtype == torch.float32 and out.ndim == 0
    assert out.item() == pytest.approx(nt_xent(z1, z2, 0.1).item(), rel=0.05)


# --- BYOL ------------------------------------------------------------------------------------


def test_byol_matches_reference():
    p, z = randn(10, 6, seed=8), randn(10, 6, seed=9)
    pn, zn = p.numpy(), z.numpy()
    ref = np.mean([2 - 2 * (a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(pn, zn)])
    assert byol_loss(p, z).item() == pytest.approx(ref, rel=RTOL)


def test_byol_analytic_values():
    p = randn(5, 3, seed=10)
    assert byol_loss(p, 2 * p).item() == pytest.approx(0.0, abs=1e-12)  # aligned
    assert byol_loss(p, -p).item() == pytest.approx(4.0, rel=RTOL)  # opposite
    e = torch.eye(2, dtype=torch.float64)
    assert byol_loss(e[:1], e[1:]).item() == pytest.approx(2.0, rel=RTOL)  # orthogonal


def test_byol_scale_invariant():
    p, z = randn(10, 6, seed=11), randn(10, 6, seed=12)
    s = torch.rand(10, 1, dtype=torch.float64) + 0.1
    assert byol_loss(p * s, z * 7).item() == pytest.approx(byol_loss(p, z).item(), rel=RTOL)


# --- Barlow Twins ----------------------------------------------------------------------------


def barlow_twins_authors(z1, z2, lambd):
    """facebookresearch/barlowtwins main.py: BatchNorm1d(affine=False) in train mode, then c."""
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).double().train()
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    on_diag = torch.diagonal(c).add(-1).pow(2).sum()
    n = c.shape[0]
    off_diag = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten().pow(2).sum()
    return (on_diag + lambd * off_diag).item()


def barlow_twins_loops(z1, z2, lambd, eps=1e-5):
    """The same loss as explicit sums over features i, j and samples b, in numpy."""
    b, d = z1.shape
    a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + eps)
    c = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + eps)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[k, i] * c[k, j] for k in range(b)) / b
            loss += (1 - cij) ** 2 if i == j else lambd * cij**2
    return loss


@pytest.mark.parametrize("lambd", [5e-3, 0.1])
def test_barlow_twins_matches_authors_and_loops(lambd):
    z1, z2 = randn(16, 6, seed=13), randn(16, 6, seed=14)
    ours = barlow_twins_loss(z1, z2, lambd).item()
    assert ours == pytest.approx(barlow_twins_authors(z1, z2, lambd), rel=RTOL)
    assert ours == pytest.approx(barlow_twins_loops(z1.numpy(), z2.numpy(), lambd), rel=RTOL)


def test_barlow_twins_analytic_identity():
    # Walsh columns: zero mean, unit (biased) variance, mutually orthogonal. With identical views
    # c = I / (1 + eps) exactly, so the loss is D * (1 - 1/(1 + eps))^2 and off-diagonals vanish.
    z = torch.tensor(
        [
            [1, 1, 1, 1, -1, -1, -1, -1],
            [1, 1, -1, -1, 1, 1, -1, -1],
            [1, -1, 1, -1, 1, -1, 1, -1],
            [1, -1, -1, 1, 1, -1, -1, 1],
        ],
        dtype=torch.float64,
    ).T  # (B=8, D=4)
    expected = 4 * (1 - 1 / (1 + 1e-5)) ** 2
    assert barlow_twins_loss(z, z.clone(), 5e-3).item() == pytest.approx(expected, rel=1e-6)
    # Anti-correlated views: c = -I / (1 + eps), so each diagonal term is (1 + 1/(1 + eps))^2.
    expected_anti = 4 * (1 + 1 / (1 + 1e-5)) ** 2
    assert barlow_twins_loss(z, -z, 5e-3).item() == pytest.approx(expected_anti, rel=RTOL)


def test_barlow_twins_invariant_to_feature_affine():
    z1, z2 = randn(32, 5, seed=15), randn(32, 5, seed=16)
    base = barlow_twins_loss(z1, z2).item()
    shift, scale = randn(5, seed=17), torch.rand(5, dtype=torch.float64) + 1.0
    # Standardisation removes per-feature shift and scale (up to the BN epsilon).
    assert barlow_twins_loss(z1 * scale + shift, z2 - 3).item() == pytest.approx(base, rel=1e-4)
    perm = torch.randperm(32)
    assert barlow_twins_loss(z1[perm], z2[perm]).item() == pytest.approx(base, rel=RTOL)


def test_losses_return_scalars_with_gradients():
    z1 = randn(8, 4, seed=18).requires_grad_()
    z2 = randn(8, 4, seed=19)
    for loss in (nt_xent(z1, z2), byol_loss(z1, z2), barlow_twins_loss(z1, z2)):
        assert loss.ndim == 0
        (g,) = torch.autograd.grad(loss, z1)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


# --- fp32 whatever the autocast --------------------------------------------------------------


def near_converged(b=256, d=128, noise=0.05, seed=20):
    """Realistic projector outputs late in training: the two views' embeddings nearly agree."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g)
    return z1, z1 + noise * torch.randn(b, d, generator=g)


LOSSES_UNDER_TEST = {
    "nt_xent_tau0.1": lambda a, b: nt_xent(a, b, 0.1),
    "nt_xent_tau0.5": lambda a, b: nt_xent(a, b, 0.5),
    "byol": byol_loss,
    "barlow_twins": barlow_twins_loss,
}


@pytest.mark.parametrize("inputs", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(LOSSES_UNDER_TEST))
def test_losses_are_fp32_under_bf16_autocast(name, inputs):
    # Under autocast the matmuls inside a loss would run in bf16 (NT-Xent at tau 0.1 was off by
    # 1%, Barlow Twins by 0.09% and returned bf16; BYOL's cosine was already fp32); each loss must
    # equal its fp32 value instead.
    # bf16 inputs are what an autocast forward hands the loss; their fp32 reference is the same values.
    loss = LOSSES_UNDER_TEST[name]
    z1, z2 = near_converged()
    if inputs == "bf16":
        z1, z2 = z1.bfloat16(), z2.bfloat16()
    expected = loss(z1.float(), z2.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(z1, z2)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(expected.item(), rel=RTOL)


def test_fp32_loss_keeps_fp64_and_serves_new_losses():
    # A new loss (VICReg's, say) only applies the decorator: its matmul is fp32 under autocast,
    # and fp64 inputs stay fp64 (the reference tests above run in fp64).
    @fp32_loss
    def gram_trace(a, b, scale=1.0):
        return (a.T @ b).trace() * scale

    a, b = near_converged(b=64, d=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gram_trace(a.bfloat16(), b.bfloat16(), scale=2.0).dtype == torch.float32
        assert gram_trace(a.double(), b.double()).dtype == torch.float64
        assert nt_xent(a.double(), b.double()).dtype == torch.float64
        assert (a.T @ b).dtype == torch.bfloat16  # autocast is back on outside the loss
    assert gram_trace.__name__ == "gram_trace"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_losses_fp32_under_autocast_without_sync():
    # On the device: no host tensor copied in per call (NT-Xent's positives), fp32 under bf16 autocast.
    z1, z2 = (t.cuda() for t in near_converged())
    expected = {name: loss(z1, z2).item() for name, loss in LOSSES_UNDER_TEST.items()}  # also warms up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = {name: loss(z1, z2) for name, loss in LOSSES_UNDER_TEST.items()}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        assert value.item() == pytest.approx(expected[name], rel=RTOL), name


# --- VICReg ----------------------------------------------------------------------------------


def vicreg_authors(x, y, sim=25.0, std=25.0, cov=1.0):
    """facebookresearch/vicreg main_vicreg.py VICReg.forward, one process (no FullGatherLayer)."""
    import torch.nn.functional as F

    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    off = lambda m: m.flatten()[:-1].view(num_features - 1, num_features + 1)[:, 1:].flatten()  # noqa: E731
    cov_loss = off(cov_x).pow_(2).sum().div(num_features) + off(cov_y).pow_(2).sum().div(num_features)
    return sim * repr_loss + std * std_loss + cov * cov_loss


def vicreg_loops(z1, z2, sim=25.0, var=25.0, cov=1.0, eps=1e-4):
    """The paper's definitions (Bardes et al. 2022, eqs. 1-6) as numpy loops."""
    n, d = z1.shape
    s = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def v(z):
        return sum(max(0.0, 1 - math.sqrt(np.var(z[:, j], ddof=1) + eps)) for j in range(d)) / d

    def c(z):
        m = z.mean(0)
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    total += (sum((z[i, a] - m[a]) * (z[i, b] - m[b]) for i in range(n)) / (n - 1)) ** 2
        return total / d

    return sim * s + var * (v(z1) + v(z2)) / 2 + cov * (c(z1) + c(z2))


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 5.0, 0.5)])
def test_vicreg_matches_authors_and_loops(weights):
    z1, z2 = randn(16, 6, seed=3) * 0.7, randn(16, 6, seed=4) * 0.7  # std < 1: the variance hinge is active
    ours = vicreg_loss(z1, z2, *weights).item()
    assert ours == pytest.approx(vicreg_authors(z1, z2, *weights).item(), rel=RTOL)
    assert ours == pytest.approx(vicreg_loops(z1.numpy(), z2.numpy(), *weights), rel=RTOL)


def test_vicreg_analytic_values():
    # Identical views with std well above 1 and uncorrelated dimensions: every term is 0.
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64) * 3
    assert vicreg_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # A collapsed embedding (every image the same point): invariance 0, covariance 0, variance
    # hinge 1 - sqrt(eps) per dimension: the loss is 25 * (1 - 0.01).
    c = torch.ones(8, 4, dtype=torch.float64)
    assert vicreg_loss(c, c.clone()).item() == pytest.approx(25 * (1 - 1e-2), rel=1e-12)
    # Only invariance: views that differ by a constant shift d in every entry give 25 * d^2.
    assert vicreg_loss(z, z + 0.5).item() == pytest.approx(25 * 0.25, rel=1e-12)


def test_vicreg_invariant_to_batch_order_and_shift():
    z1, z2 = randn(32, 8, seed=5), randn(32, 8, seed=6)
    base = vicreg_loss(z1, z2).item()
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    assert vicreg_loss(z1[perm], z2[perm]).item() == pytest.approx(base, rel=RTOL)
    assert vicreg_loss(z1 + 2.0, z2 + 2.0).item() == pytest.approx(base, rel=RTOL)  # a common shift


def test_vicreg_fp32_under_bf16_autocast():
    z1, z2 = near_converged()
    expected = vicreg_loss(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vicreg_loss(z1, z2)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=RTOL)
