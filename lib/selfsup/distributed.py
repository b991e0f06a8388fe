"""Data-parallel training over several processes, one GPU each (or CPU processes with gloo).

    torchrun --nproc-per-node 4 -m selfsup.cli train --config configs/course.yaml --data data/tin --run-dir runs/course

`batch_size` stays the global batch: each of the W processes trains on batch_size / W of its
images. The losses see the whole global batch: SimCLR and Barlow Twins gather every rank's
embeddings (with their gradients), so W processes compute the loss one process would compute on
the global batch -- SimCLR's negatives come from all ranks, Barlow Twins standardises and
cross-correlates over all of them. BYOL's loss is a per-image mean, which DDP's gradient average
already makes global. Only BatchNorm inside the networks sees the local batch, unless `sync_bn`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def init_from_env() -> bool:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1):
    NCCL with one GPU per process (LOCAL_RANK), gloo on CPU. True when this call joined it; a
    plain process, or one whose group is already set up, is left as it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the gradient of its own rows,
    summed over the ranks (each rank's loss used every row)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) on each of W ranks -> (W*b, ...) in rank order, differentiable; x itself when not
    distributed. Every rank then computes the same global loss L; the backward's all-reduce gives
    rank r the gradient W * dL/dx_r, and DDP's average over the W ranks makes it exactly dL/dtheta."""
    return _GatherWithGrad.apply(x) if active() else x


def mean(x: torch.Tensor) -> torch.Tensor:
    """The average of a tensor over the ranks (for logging); x when not distributed."""
    if not active():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch of indices (W equal parts, rank order), so
    the gathered embeddings line up with the global batch."""
    return indices.chunk(world_size())[rank()] if active() else indices


def barrier() -> None:
    if active():
        dist.barrier()
