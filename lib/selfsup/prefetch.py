"""The training loop's batches: two augmented views a step, the next step's made while this one trains.

`epoch_views(...)` yields the (v1, v2) of every step of one epoch. Step i's images are
`images[perm[i * batch : (i + 1) * batch]]` (this process's share of them under torchrun) and its
augmentation draws every random parameter from its own generator, seeded by (epoch seed, i). So a
step's views are a function of the data order and of (seed, epoch, rank, step) alone: whatever
ran before, in whichever thread or stream, they come out the same -- with prefetching on or off,
and after a resume (the data order's generator is in the checkpoint; the step seeds need no
state). Every image still draws its own parameters (selfsup.augment.TwoViews).

How the next batch overlaps the current step (`mode`):

- "thread" (CPU): one worker thread augments step i + 1 while the main thread trains step i.
  Torch ops release the GIL, so the two run on separate cores. The worker runs its ops on
  `aug_threads` intra-op threads and, for the epoch, the step on the caller's thread count less
  those (at least 1; restored when the epoch ends): together they ask for the cores torch was
  given and no more.
- "stream" (CUDA): step i + 1's augmentation is queued on a side stream, which the GPU runs
  alongside the step's kernels; the main stream waits for it (an event, no host sync) before
  using the views, and the views' memory is marked as used there (record_stream).
- "off": one after the other, on the caller's thread and stream.
- "auto": "stream" on CUDA, "off" on the CPU. Measured on 2 cores (benchmarks/RESULTS.md, "End
  to end against lightly", where the speed comes from): the views are a few percent of a CPU step, so
  what decides the speed is the step's thread count, not the overlap. At equal step threads
  "off" was as fast as "thread" or faster (quiet: ResNet18 bf16 159 vs 153 img/s, the demo
  convnet 3034 vs 2412), and "thread" costs the step a core. The step's thread count is
  selfsup.threads' choice: the cores other jobs leave free when the run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import distributed as dist

MODES = ("auto", "thread", "stream", "off")


def as_channels_last(*views: torch.Tensor) -> tuple:
    return tuple(v.contiguous(memory_format=torch.channels_last) for v in views)


def views(aug, x: torch.Tensor, gen: torch.Generator | None, channels_last: bool) -> tuple:
    """aug's two views of the uint8 batch x, drawn from gen, in the step's memory format."""
    v1, v2 = aug(x, generator=gen)
    return as_channels_last(v1, v2) if channels_last else (v1, v2)


def step_seed(epoch_seed: int, step: int) -> int:
    """The augmentation seed of one step: independent streams per (epoch seed, step)."""
    return int(np.random.SeedSequence([epoch_seed, step]).generate_state(1, np.uint64)[0] >> 1)


def resolve_mode(mode: str, device: torch.device) -> str:
    if mode not in MODES:
        raise ValueError(f"prefetch mode: expected one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "stream" if device.type == "cuda" else "off"
    if mode == "stream" and device.type != "cuda":
        raise ValueError(f"prefetch mode 'stream' needs a CUDA device, got {device}")
    return mode


def epoch_views(
    aug,
    images: torch.Tensor,
    perm: torch.Tensor,
    batch_size: int,
    steps: int,
    epoch_seed: int,
    channels_last: bool = False,
    mode: str = "auto",
    aug_threads: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (v1, v2) of steps 0..steps-1 of one epoch, the next one made ahead (see the module doc).

    images: uint8 (N, 3, H, W) on the training device; perm: the epoch's data order (N,) there.
    """

    def make(i: int) -> tuple:
        gen = torch.Generator(images.device).manual_seed(step_seed(epoch_seed, i))
        batch = dist.shard(perm[i * batch_size : (i + 1) * batch_size])
        return views(aug, images[batch], gen, channels_last)

    mode = resolve_mode(mode, images.device)
    if mode == "off":
        return (make(i) for i in range(steps))
    if mode == "stream":
        return _on_side_stream(make, steps, images.device)
    return _in_worker_thread(make, steps, aug_threads)


def _in_worker_thread(make: Callable[[int], tuple], steps: int, aug_threads: int) -> Iterator[tuple]:
    # torch.set_num_threads sets the OpenMP thread count of the calling thread's parallel regions:
    # in the worker its own, here (this generator runs in the training thread) the step's.
    given = torch.get_num_threads()
    torch.set_num_threads(max(1, given - aug_threads))
    try:
        with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(aug_threads,)) as pool:
            ahead = pool.submit(make, 0) if steps else None
            for i in range(steps):
                current = ahead.result()
                ahead = pool.submit(make, i + 1) if i + 1 < steps else None
                yield current
    finally:
        torch.set_num_threads(given)


def _on_side_stream(make: Callable[[int], tuple], steps: int, device: torch.device) -> Iterator[tuple]:
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def launch(i: int) -> tuple:
        side.wait_stream(main)  # the images and the permutation written on the main stream
        with torch.cuda.stream(side):
            return make(i)

    ahead = launch(0) if steps else None
    for i in range(steps):
        current = ahead
        main.wait_stream(side)
        for v in current:
            v.record_stream(main)  # freed only once the main stream is done with them
        ahead = launch(i + 1) if i + 1 < steps else None
        yield current
