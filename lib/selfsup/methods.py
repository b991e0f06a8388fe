"""The methods and their registry: an encoder, heads, and `loss(view1, view2) -> scalar`.

Each method is one class, and the class is the one place that knows the method: its `name`
(config value), `title` (tables and plots), its head sizes (the paper's, used when the config
leaves proj_hidden / proj_dim at 0), its augmentation `recipe`, and `settings`: the config keys
only this method reads, with their defaults. selfsup.config builds its Config from these
settings and hashes only those the chosen method reads; notebooks and the report list the
methods from REGISTRY. Adding a method = a loss in selfsup.losses, a class here, a preset section.

BatchNorm choice (it changes what the statistics see, so it is stated, not implied):
- SimCLR: ONE forward over both views concatenated (2B images), as SimCLR's global BN does,
  so BN statistics mix the views and cannot leak which images pair up.
- BYOL, Barlow Twins and VICReg: ONE forward PER VIEW (B images each), as the authors' code does
  (facebookresearch/barlowtwins main.py, facebookresearch/vicreg; BYOL's per-view online/target passes).

Under data-parallel training (selfsup.distributed) SimCLR, Barlow Twins and VICReg gather the embeddings of
every process before the loss, so the loss is that of the global batch; in eval mode (the
validation loss) each process keeps to its own batch.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import losses
from .distributed import gather
from .models import backbone, mlp

# The widest head a config may ask for (proj_hidden, proj_dim, pred_hidden): Barlow Twins and
# VICReg use 8192 (Barlow Twins' Fig. 4 still gains at 16384); twice that bounds a typo (a
# 10^9-wide layer) in one line, before the allocator fails.
MAX_HEAD_WIDTH = 32768

if TYPE_CHECKING:  # config imports this module (the registry); methods only read a Config's fields
    from .config import Config


class Method(nn.Module):
    """What the training loop needs of a method: `loss(v1, v2)` (also its forward, which
    DistributedDataParallel calls) and `step_target(progress)` after each optimizer step.
    What the rest of the workbook needs: the class attributes below."""

    name: str = ""
    title: str = ""
    summary: str = ""  # what it does, in a few words (the report's comparison)
    heads: dict = {}  # proj_hidden, proj_dim (, pred_hidden): the paper's sizes
    recipe: str = "simclr"  # a key of selfsup.augment.RECIPES
    settings: dict = {}  # config keys only this method reads -> default
    limits: dict = {}  # their ranges, as selfsup.config.LIMITS writes them

    def __init__(self, cfg: Config):
        super().__init__()
        self.encoder, self.feature_dim = backbone(cfg.backbone, cfg.stem, cfg.width)  # built first: the RNG order

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.loss(v1, v2)

    def _global(self, z: torch.Tensor) -> torch.Tensor:
        return gather(z) if self.training else z

    def step_target(self, progress: float) -> None:
        pass


class SimCLR(Method):
    name, title, recipe = "simclr", "SimCLR", "simclr"
    summary = "contrastive: NT-Xent over the other images of the batch as negatives"
    heads = dict(proj_hidden=2048, proj_dim=128)  # a 2-layer MLP to 128-d
    settings = dict(temperature=0.5)  # NT-Xent tau; the paper's best at batch 4096 is 0.1-0.5
    limits = dict(temperature=(1e-3, 10.0))  # below ~1e-3 the logits overflow float32

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        dim, h = self.feature_dim, cfg.heads
        self.projector = mlp([dim, h["proj_hidden"], h["proj_dim"]])
        self.temperature = cfg.temperature

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z = self.projector(self.encoder(torch.cat([v1, v2])))  # (2B, D): one BN pass over both views
        z1, z2 = z.chunk(2)
        return losses.nt_xent(self._global(z1), self._global(z2), self.temperature)  # negatives: all ranks


class BYOL(Method):
    name, title, recipe = "byol", "BYOL", "asymmetric"
    summary = "a predictor regresses an EMA target network's embedding; no negatives"
    heads = dict(proj_hidden=4096, proj_dim=256, pred_hidden=4096)  # 4096 -> 256, predictor 4096
    # byol_momentum: EMA base rate, cosine-raised to 1 (paper: 0.996 at batch 4096);
    # pred_hidden: the predictor's hidden width (0 = heads above)
    settings = dict(byol_momentum=0.99, pred_hidden=0)
    limits = dict(byol_momentum=(0.0, 1.0), pred_hidden=(0, MAX_HEAD_WIDTH))

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        dim, h = self.feature_dim, cfg.heads
        self.projector = mlp([dim, h["proj_hidden"], h["proj_dim"]])
        self.predictor = mlp([h["proj_dim"], h["pred_hidden"], h["proj_dim"]])
        # The target network: an EMA of encoder + projector, never trained by gradients.
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.base_momentum = cfg.byol_momentum
        self.momentum = cfg.byol_momentum

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        p1 = self.predictor(self.projector(self.encoder(v1)))  # per-view forwards (per-view BN)
        p2 = self.predictor(self.projector(self.encoder(v2)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(v1))
            t2 = self.target_projector(self.target_encoder(v2))
        # Symmetrised: each view's prediction regresses the other view's target.
        return losses.byol_loss(p1, t2) + losses.byol_loss(p2, t1)

    @torch.no_grad()
    def step_target(self, progress: float) -> None:
        """EMA update after an optimizer step; momentum rises from base to 1 on a cosine (BYOL eq. 6)."""
        self.momentum = 1 - (1 - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2
        online = list(self.encoder.parameters()) + list(self.projector.parameters())
        target = list(self.target_encoder.parameters()) + list(self.target_projector.parameters())
        torch._foreach_lerp_(target, online, 1 - self.momentum)
        # BN running statistics are copied, not averaged (they are not trained weights).
        for t, o in zip(
            [*self.target_encoder.buffers(), *self.target_projector.buffers()],
            [*self.encoder.buffers(), *self.projector.buffers()],
        ):
            t.copy_(o)


class BarlowTwins(Method):
    name, title, recipe = "barlow", "Barlow Twins", "asymmetric"
    summary = "the cross-correlation of the two views' embeddings is pushed to the identity"
    heads = dict(proj_hidden=8192, proj_dim=8192)  # 3 x 8192
    settings = dict(barlow_lambda=5e-3)  # off-diagonal weight (paper: 5e-3)
    limits = dict(barlow_lambda=(0.0, 10.0))

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        dim, h = self.feature_dim, cfg.heads
        # Three layers as in the paper; the loss standardises z like the authors' BN(affine=False).
        self.projector = mlp([dim, h["proj_hidden"], h["proj_hidden"], h["proj_dim"]])
        self.lambd = cfg.barlow_lambda

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.encoder(v1))  # per-view forwards (per-view BN)
        z2 = self.projector(self.encoder(v2))
        return self._pair_loss(self._global(z1), self._global(z2))  # statistics over the global batch

    def _pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return losses.barlow_twins_loss(z1, z2, self.lambd)


class VICReg(BarlowTwins):
    """Barlow Twins' architecture (3-layer projector, per-view forwards, global-batch statistics)
    with VICReg's loss."""

    name, title, recipe = "vicreg", "VICReg", "asymmetric"
    summary = "the views' embeddings agree while each dimension keeps its variance and the dimensions decorrelate"
    heads = dict(proj_hidden=8192, proj_dim=8192)  # 3 x 8192, as Barlow Twins
    # The paper's weights of the invariance, variance and covariance terms.
    settings = dict(vicreg_sim=25.0, vicreg_var=25.0, vicreg_cov=1.0)
    limits = dict(vicreg_sim=(0.0, 1000.0), vicreg_var=(0.0, 1000.0), vicreg_cov=(0.0, 1000.0))

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.weights = (cfg.vicreg_sim, cfg.vicreg_var, cfg.vicreg_cov)

    def _pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return losses.vicreg_loss(z1, z2, *self.weights)


REGISTRY: dict[str, type[Method]] = {m.name: m for m in (SimCLR, BYOL, BarlowTwins, VICReg)}


def build_method(cfg: Config) -> Method:
    """The method named by cfg.method, randomly initialised from the current torch RNG."""
    return REGISTRY[cfg.method](cfg)


def title(name: str) -> str:
    """A method's title for tables and charts (barlow -> Barlow Twins); other names as they are."""
    return REGISTRY[name].title if name in REGISTRY else name


def titled(rows: list[dict], key: str = "method") -> list[dict]:
    """Copies of result rows whose `key` is the method's title (selfsup.methods.title)."""
    return [{**r, key: title(r.get(key))} for r in rows]
