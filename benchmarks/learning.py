"""Does each method learn on real images? Train each method briefly, compare k-NN with the random init.

    python benchmarks/learning.py --data PATH/tinyimagenet-10 --epochs 8

Trains each method with a preset (default configs/cpu_real.yaml: the small convnet backbone, CPU-sized,
with its per-method sections),
evaluates it with `evaluate_run` (course 5-NN, weighted k-NN, linear probe; val and OOD), and prints
the trained numbers beside the random-init encoder of the same architecture. Writes JSON to --out.
A real-image learning check takes ~10-30 CPU-minutes per method, so it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from selfsup import config, data, evaluate, runs, train
from selfsup.methods import REGISTRY


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with train.npz, val.npz, ood.npz")
    p.add_argument("--config", default="configs/cpu_real.yaml")
    p.add_argument("--methods", default=",".join(REGISTRY))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--runs", default="benchmarks/out/learning")
    p.add_argument("--out", default="benchmarks/out/learning.json")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ds = data.load_dataset(args.data)
    rows = []
    for method in args.methods.split(","):
        overrides = {**config.parse_overrides(args.set), "method": method, "epochs": args.epochs}
        cfg = config.load(args.config, overrides)
        run_dir = Path(args.runs) / method
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        train.train(cfg, ds, run_dir)
        train_s = time.perf_counter() - t0
        s = evaluate.evaluate_run(run_dir, args.data, table=False)["summary"]
        metrics = runs.Run(run_dir).metrics()
        rows.append(
            dict(
                method=method,
                epochs=cfg.epochs,
                train_seconds=round(train_s, 1),
                images_per_sec=round(sum(m["images_per_sec"] for m in metrics) / len(metrics)),
                first_loss=metrics[0]["train_loss"],
                last_loss=metrics[-1]["train_loss"],
                **s,
            )
        )
        print(json.dumps(rows[-1]), flush=True)

    keys = ["val_knn", "ood_knn", "val_linear", "ood_linear"]
    print(f"\n{'method':8} {'epochs':>6} {'train s':>8} " + " ".join(f"{k:>18}" for k in keys))
    for r in rows:
        cells = [f"{r['random_init_' + k]:.3f}->{r[k]:.3f}" if k in r else "-" for k in keys]
        print(f"{r['method']:8} {r['epochs']:>6} {r['train_seconds']:>8} " + " ".join(f"{c:>18}" for c in cells))
    out = dict(
        rows=rows,
        config=args.config,
        data=args.data,
        torch=torch.__version__,
        cpu=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        date=time.strftime("%Y-%m-%d"),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
