"""Linear-probe benchmark: selfsup.evaluate.linear_probe vs scikit-learn LogisticRegression(max_iter=1000).

Same clustered, non-negative float32 features as benchmarks/knn.py; time and test accuracy of each.
Ours standardises, picks the L2 penalty on a held-out 20% of the probe-train set (a 6-value grid,
each fit warm-started), then refits on all of it; scikit-learn is run as the course ran it (raw
features, C=1). The default size is an OOD-probe-like problem; the full in-distribution probe
(100k x 512, 100 classes) is where scikit-learn takes many minutes on a CPU.

    python benchmarks/probe.py
    python benchmarks/probe.py --n-train 50000 --classes 100 --device cuda

Writes benchmarks/out/probe_<device>_<n-train>x<dim>_<classes>.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from knn import feature_benchmark_args, features, save, setup  # noqa: E402  (the same features and options)


def main(argv=None) -> dict:
    args = feature_benchmark_args(__doc__, n_train=10_000, n_test=2_000).parse_args(argv)
    device = setup(args)

    from sklearn.linear_model import LogisticRegression

    from selfsup.evaluate import linear_probe

    x, y, xt, yt = features(args.n_train, args.n_test, args.dim, args.classes, args.seed)
    print(f"features: train {x.shape}, test {xt.shape}, {args.classes} classes")
    linear_probe(x[:500], y[:500], xt[:50], weight_decays=(1e-2,), epochs=5, device=device)  # warm-up

    rows = []
    t = time.perf_counter()
    res = linear_probe(x, y, xt, yt, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rows.append(
        dict(
            name=f"selfsup linear_probe ({device.type}, grid of {len(res['val_accuracies'])} + refit)",
            seconds=time.perf_counter() - t,
            accuracy=res["accuracy"],
        )
    )
    print(
        f"{rows[-1]['name']}: {rows[-1]['seconds']:.1f}s, accuracy {res['accuracy']:.4f}, "
        f"weight_decay {res['weight_decay']:g} (val {res['val_accuracy']:.4f})",
        flush=True,
    )
    if not args.skip_sklearn:
        t = time.perf_counter()
        sk = LogisticRegression(max_iter=1000).fit(x, y)
        acc = float(sk.score(xt, yt))
        rows.append(
            dict(
                name="sklearn LogisticRegression(max_iter=1000)",
                seconds=time.perf_counter() - t,
                accuracy=acc,
                n_iter=int(np.max(sk.n_iter_)),
            )
        )

    print()
    print(f"{'implementation':<52} {'seconds':>9} {'accuracy':>9}")
    for r in rows:
        print(f"{r['name']:<52} {r['seconds']:>9.1f} {100 * r['accuracy']:>8.2f}%")
    if len(rows) == 2:
        diff = 100 * (rows[0]["accuracy"] - rows[1]["accuracy"])
        print(
            f"\naccuracy difference (ours - sklearn): {diff:+.2f} points; "
            f"speed-up {rows[1]['seconds'] / rows[0]['seconds']:.1f}x"
        )
    result = dict(args=vars(args), rows=rows, weight_decay=res["weight_decay"], val_accuracies=res["val_accuracies"])
    save(result, args, device, f"probe_{device.type}_{args.n_train}x{args.dim}_{args.classes}")
    return result


if __name__ == "__main__":
    main()
