"""Optimizers and the learning-rate schedule of the training loop (selfsup.train).

make_optimizer(cfg, model)   SGD / LARS / Adam / AdamW, weight decay on weights only
warmup_cosine(total, warmup) the lr multiplier: linear warmup, then cosine decay
"""

from __future__ import annotations

import math

import torch

from .config import Config


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as SimCLR uses it.

    Groups with `lars=False` (biases and norm parameters) get plain SGD and no weight decay,
    following the SimCLR and Barlow Twins implementations.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=g["weight_decay"])
                if g["lars"]:
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm, 1.0)
                    d = d.mul(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and conv kernels only; biases and norm parameters are exempt
    (nanoGPT, SimCLR, Barlow Twins all do this). Target networks (requires_grad=False) are skipped."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    on_cuda = bool(params) and params[0].is_cuda
    fused = dict(fused=True) if cfg.fused == "on" or (cfg.fused == "auto" and on_cuda) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    if cfg.optimizer == "lars":
        groups[1]["lars"] = False
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        # torch's Adam adds weight decay to the gradient (L2); AdamW decouples it (Loshchilov & Hutter).
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """lr multiplier: linear warmup from ~0 to 1, then cosine down to min_ratio."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor
