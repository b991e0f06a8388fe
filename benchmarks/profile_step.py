"""Where a CPU training step spends its time: selfsup's SimCLR step against lightly's, part by part.

    python benchmarks/profile_step.py --backbone resnet18 --batch 128 --steps 3

Times, on random uint8 images at 64x64 (the shapes are what matter), each part of one step in
steady state (median of --steps, the parts taking turns, after one untimed round):

  augment          selfsup's TwoViews on the batch (both views; lightly does this in workers)
  fwd+bwd both     one forward over both views concatenated (2B: BatchNorm over both), backward
  fwd+bwd per view one forward per view (B each: BatchNorm per view, lightly's tutorial), backward
  ... channels_last the same with the model and views in channels_last
  optimizer        AdamW step

and prints torch.profiler's top operators of one selfsup step (without the augmentation, which
runs ahead in the prefetch thread).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from selfsup import config, losses, train
from selfsup.augment import TwoViews
from selfsup.prefetch import as_channels_last


def interleaved(parts: dict, rounds: int, before=None) -> dict:
    """Median seconds of each part, the parts taking turns round after round (each run once
    untimed first), so that a load that changes during the measurement weighs on all of them."""
    times = {name: [] for name in parts}
    for r in range(rounds + 1):
        for name, fn in parts.items() if r % 2 == 0 else reversed(parts.items()):
            if before is not None:
                before(name)
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config.load("configs/cpu_real.yaml", {"backbone": args.backbone, "batch_size": args.batch})
    s = train.build(cfg, 4 * args.batch, torch.device("cpu"))
    model, opt = s.model, s.opt
    x = torch.randint(0, 256, (args.batch, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = TwoViews(cfg.aug_recipe, 64)
    v1, v2 = aug(x)

    def both(a, b):
        model.loss(a, b).backward()

    def per_view(a, b):
        z1, z2 = (model.projector(model.encoder(v)) for v in (a, b))
        losses.nt_xent(z1, z2, cfg.temperature).backward()

    c1, c2 = as_channels_last(v1, v2)
    parts = {
        "augment": lambda: aug(x),
        "fwd+bwd both": lambda: both(v1, v2),
        "fwd+bwd per view": lambda: per_view(v1, v2),
        "fwd+bwd both, channels_last": lambda: both(c1, c2),
        "fwd+bwd per view, channels_last": lambda: per_view(c1, c2),
        "optimizer": opt.step,
    }

    def memory_format(name):  # the model's, for the part about to run
        model.to(memory_format=torch.channels_last if "channels_last" in name else torch.contiguous_format)

    times = interleaved(parts, args.steps, memory_format)
    load = open("/proc/loadavg").read().split()[0]
    threads = torch.get_num_threads()
    print(f"{args.backbone}, batch {args.batch}, {threads} threads, load {load}, seconds (median of {args.steps})")
    for name, t in times.items():
        print(f"  {name:34} {t:7.3f}  ({2 * args.batch / t if 'optimizer' not in name else 0:6.0f} views/s)")

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        s.step(v1, v2)  # the step alone: the augmentation runs in the prefetch thread
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
