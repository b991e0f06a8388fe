"""Plan accuracy: `selfsup plan`'s estimate of a run against the same run's measured times.

Estimates the run (selfsup.plan.estimate: a few timed steps, one monitoring pass, one checkpoint),
then trains the same config on the same data into a temporary run folder (selfsup.train.train) and
compares the estimated time of one epoch with metrics.jsonl's epoch_time (mean and median over the
epochs), and the estimated whole run with train()'s wall-clock (monitoring and checkpoints
included). The acceptance bound is 30% on the epoch time. Other jobs on the same cores move both
numbers: the run is estimated again after it trains, so a load that changed during the run shows as
a difference between the two estimates (the ratio to their mean is reported too), and the load
average before and after is recorded beside them.

  python benchmarks/plan_accuracy.py --config configs/cpu_real.yaml --data DIR --set epochs=3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from selfsup import config, plan, provenance, runs, train
from selfsup.data import load_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--steps", type=int, default=5, help="the plan's timed steps (default 5, as selfsup plan)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default="benchmarks/out/plan_accuracy.json")
    args = p.parse_args(argv)

    cfg = config.load(args.config, config.parse_overrides(args.set))
    dataset = load_dataset(args.data)
    load_before = os.getloadavg()
    start = time.perf_counter()
    est = plan.estimate(cfg, dataset, steps=args.steps, warmup=args.warmup)
    plan_s = time.perf_counter() - start
    print(est, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train.train(cfg, dataset, Path(tmp) / "run", progress=False)
        run_s = time.perf_counter() - start
        epochs = [row["epoch_time"] for row in runs.Run(Path(tmp) / "run").metrics()]
    load_after = os.getloadavg()
    after = plan.estimate(cfg, dataset, steps=args.steps, warmup=args.warmup)
    load_end = os.getloadavg()
    both = (est.epoch_s + after.epoch_s) / 2

    mean, median = statistics.mean(epochs), statistics.median(epochs)
    record = dict(
        command=" ".join(["python"] + sys.argv),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        environment=provenance.environment(torch.device(est.device)),
        cores=len(os.sched_getaffinity(0)),
        load_average_before=load_before,
        load_average_after=load_after,
        load_average_after_second_plan=load_end,
        config=cfg.to_dict(),
        plan_seconds=plan_s,
        estimate=dict(
            images_per_s=est.images_per_s,
            step_s=est.step_s,
            epoch_s=est.epoch_s,
            monitor_s=est.monitor_s,
            checkpoint_s=est.checkpoint_s,
            total_s=est.total_s,
            peak_memory_bytes=est.peak_memory,
            parameters=est.parameters,
        ),
        estimate_after=dict(step_s=after.step_s, epoch_s=after.epoch_s, total_s=after.total_s),
        measured=dict(epoch_times=epochs, epoch_mean_s=mean, epoch_median_s=median, run_wall_s=run_s),
        ratio_epoch_mean=est.epoch_s / mean,
        ratio_epoch_mean_after=after.epoch_s / mean,
        ratio_epoch_mean_both=both / mean,
        ratio_epoch_median=est.epoch_s / median,
        ratio_run=est.total_s / run_s,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    within = abs(record["ratio_epoch_mean"] - 1) <= 0.3
    print(
        f"\nepoch: estimated {est.epoch_s:.1f} s, measured {mean:.1f} s mean / {median:.1f} s median over "
        f"{len(epochs)} epochs (estimate / mean {record['ratio_epoch_mean']:.2f}: "
        f"{'within' if within else 'OUTSIDE'} 30%); estimated again after the run {after.epoch_s:.1f} s "
        f"(ratio {after.epoch_s / mean:.2f}; the mean of both {both / mean:.2f})\n"
        f"run:   estimated {est.total_s:.1f} s, measured {run_s:.1f} s (ratio {record['ratio_run']:.2f}); "
        f"the plan itself took {plan_s:.1f} s\n"
        f"load average before {' '.join(f'{x:.1f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.1f}' for x in load_after)}, after the second plan "
        f"{' '.join(f'{x:.1f}' for x in load_end)} ({record['cores']} cores)\nwrote {out}"
    )
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
