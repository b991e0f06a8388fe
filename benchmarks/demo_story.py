"""Does `make demo` show learning? Every method and every ablation point, 3 seeds, vs its floor.

    OMP_NUM_THREADS=1 python benchmarks/demo_story.py --data data/demo --threads 1

Trains what the demo trains, with the demo's settings, in one process (no papermill start-up):

- the method comparison (notebook 01): configs/demo.yaml with each method's section, the
  Makefile's COMPARE_OVERRIDES (--compare-overrides), evaluated with its COMPARE_EVAL
  (--compare-eval: course k-NN, weighted k-NN and linear probe, val and OOD);
- the ablations (configs/sweeps/demo.yaml): its preset, fixed overrides, eval_options and every
  axis's values;
- optionally (--parts ...,final) the final run: the preset unchanged, evaluated in full, with
  Figure 3's t-SNE written to --runs/final_tsne.png.

Each point is trained with every seed in --seeds (default: the preset's `seeds`). Per point it
prints the course k-NN (k=5) on val and OOD as mean ± 95% t-interval over seeds, beside the
random-init floor of the same runs (the same architecture at each run's initial weights) likewise,
the gain over it paired by seed (each run minus its own floor: mean ± 95% t-interval), and whether
the point clears its floor on val and OOD (the gain's interval above zero:
selfsup.results.above_floor, the rule the report states). Wall time per run is training +
evaluation in this process; papermill adds its kernel start-up (~5-8 s) to each run in the demo.
JSON (every run, every summary number, load averages) goes to --out. --set KEY=VALUE changes
every run (to measure an alternative), --parts and --methods pick what to train.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from selfsup import config, data, evaluate, plots, results, runs, train
from selfsup.methods import REGISTRY


def run_one(name, cfg, ds, data_dir, run_root, eval_options) -> dict:
    run_dir = Path(run_root) / name
    shutil.rmtree(run_dir, ignore_errors=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    train.train(cfg, ds, run_dir, progress=False)
    t_train = time.perf_counter() - t0
    ev = evaluate.evaluate_run(run_dir, data_dir, **{"save_features": True, **eval_options})
    t_all = time.perf_counter() - t0
    m = runs.Run(run_dir).metrics()
    row = dict(
        run=name,
        method=cfg.method,
        seed=cfg.seed,
        epochs=cfg.epochs,
        temperature=cfg.temperature,
        train_s=round(t_train, 2),
        eval_s=round(t_all - t_train, 2),
        total_s=round(t_all, 2),
        load=round(load0, 2),
        last_loss=m[-1]["train_loss"],
        **ev["summary"],
    )
    print(json.dumps(row), flush=True)
    return row


def summarise(rows: list[dict], label: str) -> dict:
    """The point's summary row, as the workbook's tables compute it (selfsup.results.summarise),
    plus the seconds a run took and whether it clears its floor (selfsup.results.above_floor)."""
    (point,) = results.summarise([{**r, "point": label, "status": "finished"} for r in rows])
    point["s_per_run"] = float(np.mean([r["total_s"] for r in rows]))
    point["clears"] = {
        split: results.above_floor(point, f"{split}_knn") for split in ("val", "ood") if f"{split}_knn" in rows[0]
    }
    return point


def print_table(points: list[dict]) -> None:
    def pm(p, m, sign=""):
        return f"{100 * p[m]:{sign}.1f} ± {100 * p[m + ('_ci95' if m.endswith('_gain') else '_interval')]:.1f}"

    print("\n| point | val k-NN | floor | gain | OOD k-NN | floor | gain | clears | s/run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in points:
        cells = [
            f"{pm(p, f'{s}_knn')} | {pm(p, f'random_init_{s}_knn')} | {pm(p, f'{s}_knn_gain', '+')}"
            if s in p["clears"]
            else "- | - | -"
            for s in ("val", "ood")
        ]
        print(
            f"| {p['point']} | {' | '.join(cells)} | {'yes' if all(p['clears'].values()) else 'NO'} | "
            f"{p['s_per_run']:.1f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/demo", help="the demo data (selfsup data demo --out DIR ...)")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument(
        "--compare-overrides", default="{epochs: 6, eval_every: 0}", help="the Makefile's COMPARE_OVERRIDES (YAML)"
    )
    p.add_argument("--compare-eval", default="{table: false}", help="the Makefile's COMPARE_EVAL (YAML)")
    p.add_argument("--sweep", default="configs/sweeps/demo.yaml")
    p.add_argument("--methods", default=",".join(REGISTRY))
    p.add_argument("--seeds", default=None, help="comma-separated (default: the preset's `seeds`, else 0,1,2)")
    p.add_argument("--parts", default="compare,ablation", help="any of compare, ablation, final")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    p.add_argument("--runs", default="benchmarks/out/demo_story")
    p.add_argument("--out", default="benchmarks/out/demo_story.json")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else config.preset_seeds(args.config) or [0, 1, 2]
    extra = config.parse_overrides(args.set)
    ds = data.load_dataset(args.data)
    print(
        f"data {args.data}: {len(ds.train)} train, {len(ds.val)} val, "
        f"{len(ds.ood) if ds.ood is not None else 0} ood, {ds.train.images.shape[1]}px",
        flush=True,
    )

    rows, points = [], []
    t_start = time.perf_counter()
    if "compare" in parts:
        over = yaml.safe_load(args.compare_overrides) or {}
        ev = yaml.safe_load(args.compare_eval) or {}
        for method in args.methods.split(","):
            pr = [
                run_one(
                    f"compare/{method}_s{s}",
                    config.load(args.config, {**over, **extra, "method": method, "seed": s}),
                    ds,
                    args.data,
                    args.runs,
                    ev,
                )
                for s in seeds
            ]
            rows += pr
            points.append(summarise(pr, method))
    if "ablation" in parts:
        sw = yaml.safe_load(Path(args.sweep).read_text())
        ev = (sw.get("parameters") or {}).get("eval_options") or {}
        for axis, values in sw["axes"].items():
            for value in values:
                over = {**sw.get("overrides", {}), **extra, axis: value}
                pr = [
                    run_one(
                        f"ablation/{axis}{value}_s{s}",
                        config.load(sw["preset"], {**over, "seed": s}),
                        ds,
                        args.data,
                        args.runs,
                        ev,
                    )
                    for s in seeds
                ]
                rows += pr
                points.append(summarise(pr, f"{axis}={value}"))
    if "final" in parts:
        cfg = config.load(args.config, {**extra, "seed": seeds[0]})
        r = run_one("final", cfg, ds, args.data, args.runs, {})
        rows.append(r)
        t0 = time.perf_counter()
        feats = evaluate.run_features(Path(args.runs) / "final", args.data)
        plots.figure3_tsne(
            feats["val"],
            ds.val.labels,
            feats.get("ood"),
            ds.ood.labels if ds.ood is not None else None,
            class_names=ds.val.class_names,
            ood_class_names=ds.ood.class_names if ds.ood is not None else None,
            path=Path(args.runs) / "final_tsne.png",
        )
        print(
            f"final: val k-NN {r['val_knn']:.3f} (floor {r['random_init_val_knn']:.3f}), OOD k-NN {r['ood_knn']:.3f} "
            f"(floor {r['random_init_ood_knn']:.3f}); train {r['train_s']} s, eval {r['eval_s']} s, t-SNE "
            f"{time.perf_counter() - t0:.1f} s -> {Path(args.runs) / 'final_tsne.png'}"
        )
    if points:
        print_table(points)
    total = time.perf_counter() - t_start
    print(
        f"\n{len(rows)} runs in {total:.0f} s ({total / max(len(rows), 1):.1f} s a run); load average now "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    out = dict(
        points=points,
        rows=rows,
        args=vars(args),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        date=time.strftime("%Y-%m-%d %H:%M"),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
