"""k-NN benchmark: selfsup.evaluate.knn_predict vs scikit-learn KNeighborsClassifier(n_neighbors=5).

Same features, same predictions (checked), wall-clock of each. Features look like an encoder's:
class clusters with within-class sub-clusters, non-negative (post-ReLU, many exact zeros), float32.

    python benchmarks/knn.py                               # 100k x 512 train, 10k queries (a minute+ on CPU)
    python benchmarks/knn.py --n-train 20000 --n-test 2000 # quick
    python benchmarks/knn.py --device cuda                 # our side on the GPU

Writes benchmarks/out/knn_<device>_<n-train>x<dim>_<n-test>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def features(n_train: int, n_test: int, dim: int, n_classes: int, seed: int = 0):
    """(train, train_labels, test, test_labels): clustered, non-negative float32 features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    sub = rng.normal(size=(n_classes, 4, dim)).astype(np.float32)  # 4 modes per class

    def draw(n):
        y = rng.integers(0, n_classes, n)
        mode = rng.integers(0, 4, n)
        # weak class signal: accuracies like real SSL features (~50-70%), many near neighbours
        x = 0.22 * centres[y] + 0.32 * sub[y, mode] + rng.normal(size=(n, dim)).astype(np.float32)
        return np.maximum(x, 0, out=x), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test


def feature_benchmark_args(doc: str, n_train: int, n_test: int) -> argparse.ArgumentParser:
    """The options knn.py and probe.py share: feature sizes, device, threads, seed, output folder."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--n-train", type=int, default=n_train)
    p.add_argument("--n-test", type=int, default=n_test)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (our side; scikit-learn is always CPU)")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for our side (0 = torch's default); on a CPU shared with "
        "other jobs, 1 avoids OpenMP spin-wait contention",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "out"))
    return p


def setup(args) -> torch.device:
    """Apply --threads; the device --device names (auto: cuda when there is one)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def main(argv=None) -> dict:
    p = feature_benchmark_args(__doc__, n_train=100_000, n_test=10_000)
    p.add_argument("--k", type=int, default=5)
    args = p.parse_args(argv)
    device = setup(args)

    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    from selfsup.evaluate import knn_predict

    t = time.perf_counter()
    x_train, y_train, x_test, y_test = features(args.n_train, args.n_test, args.dim, args.classes, args.seed)
    print(
        f"features: train {x_train.shape}, test {x_test.shape}, float32, {(x_train == 0).mean():.0%} zeros "
        f"({time.perf_counter() - t:.1f}s to make)"
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up on a slice (CUDA context, kernels, lazy imports), not timed.
    knn_predict(x_train[:2000], y_train[:2000], x_test[:100], k=args.k, device=device)
    rows = []
    # "ours (end to end)": numpy in, numpy out, transfers included. On CUDA also "ours (resident)":
    # features already on the device (as after extract_features), the usual case in the pipeline.
    sync()
    t = time.perf_counter()
    ours = knn_predict(x_train, y_train, x_test, k=args.k, device=device).cpu().numpy()
    sync()
    rows.append(dict(name=f"selfsup knn_predict ({device.type}, end to end)", seconds=time.perf_counter() - t))
    if device.type == "cuda":
        tr, ytr, te = (torch.from_numpy(a).to(device) for a in (x_train, y_train, x_test))
        sync()
        t = time.perf_counter()
        resident = knn_predict(tr, ytr, te, k=args.k)
        sync()
        rows.append(dict(name="selfsup knn_predict (cuda, features on device)", seconds=time.perf_counter() - t))
        assert np.array_equal(resident.cpu().numpy(), ours)
    print(f"{rows[-1]['name']}: {rows[-1]['seconds']:.2f}s", flush=True)

    same = None
    if not args.skip_sklearn:
        t = time.perf_counter()
        sk = KNeighborsClassifier(n_neighbors=args.k, n_jobs=-1).fit(x_train, y_train).predict(x_test)
        rows.append(
            dict(name=f"sklearn KNeighborsClassifier(n_neighbors={args.k}, n_jobs=-1)", seconds=time.perf_counter() - t)
        )
        same = bool(np.array_equal(sk, ours))
        n_diff = int((sk != ours).sum())

    print()
    print(f"{'implementation':<58} {'seconds':>9} {'queries/s':>11}")
    for r in rows:
        print(f"{r['name']:<58} {r['seconds']:>9.2f} {args.n_test / r['seconds']:>11.0f}")
    acc = float((ours == y_test).mean())
    print(f"\naccuracy {acc:.4f}", end="")
    if same is not None:
        print(f"; predictions identical to scikit-learn: {same}" + ("" if same else f" ({n_diff} differ)"))
        print(f"speed-up vs scikit-learn: {rows[-1]['seconds'] / rows[0]['seconds']:.1f}x (end to end)")
    else:
        print()

    print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    result = dict(args=vars(args), rows=rows, accuracy=acc, identical_to_sklearn=same)
    save(
        result,
        args,
        device,
        f"knn_{device.type}_{args.n_train}x{args.dim}_{args.n_test}",
        sklearn_openmp_threads=_openmp_effective_n_threads(),
    )
    return result


def save(result: dict, args, device: torch.device, stem: str, **environment) -> Path:
    """Add the machine and versions to result and write it to --out/STEM[_tTHREADS].json."""
    result["environment"] = dict(
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        **environment,
        cpu_count=os.cpu_count(),
        processor=platform.processor() or platform.machine(),
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        load_average=os.getloadavg(),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}{f'_t{args.threads}' if args.threads else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
