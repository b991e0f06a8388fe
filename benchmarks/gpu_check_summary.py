"""The table gpu_check.sh ends with: each step's outcome and its headline numbers, from the JSONs.

    python benchmarks/gpu_check_summary.py OUT_DIR STEPS_TSV

STEPS_TSV has one line per step: name, status, seconds, the step's last line of output. Only the
standard library: it runs wherever the script does, whatever is installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _first(out: Path, pattern: str) -> dict | None:
    paths = sorted(out.glob(pattern))
    return _load(paths[0]) if paths else None


def _rate(x) -> str:
    return f"{x:,.0f}" if isinstance(x, (int, float)) else "-"


def throughput(record: dict | None) -> str:
    if record is None:
        return ""
    parts = []
    for phase, r in record.get("results", {}).items():
        ours, usual = r.get("ours", {}), r.get("usual", {})
        ratio = f"{r['ratio']:.1f}x" if r.get("ratio") is not None else "-"
        gpu = f", GPU {ours['gpu_max_allocated_mb']:,.0f} MB" if "gpu_max_allocated_mb" in ours else ""
        parts.append(
            f"{phase}: ours {_rate(ours.get('images_per_s'))} vs usual "
            f"{_rate(usual.get('images_per_s'))} img/s = {ratio}{gpu}"
        )
    if not record.get("complete", True):
        parts.append("INCOMPLETE")
    data = record.get("setup", {}).get("data")
    return "; ".join(parts) + (f" [{Path(data).name if data != 'random' else 'random images'}]" if data else "")


def timed_rows(record: dict | None, extra) -> str:
    if record is None:
        return ""
    rows = [
        f"{r['name'].split(' (')[0].replace('selfsup ', 'ours ')} {r['seconds']:.2f}s{extra(r)}"
        for r in record.get("rows", [])
    ]
    return "; ".join(rows)


def learning(record: dict | None) -> str:
    if record is None:
        return ""
    out = []
    for r in record.get("rows", []):
        knn = (
            f"val 5-NN {r['random_init_val_knn']:.3f} -> {r['val_knn']:.3f}"
            if "val_knn" in r and "random_init_val_knn" in r
            else ""
        )
        out.append(
            f"{r['method']} {r['epochs']} epochs {r['train_seconds']}s "
            f"{_rate(r.get('images_per_sec'))} img/s {knn}".strip()
        )
    return "; ".join(out)


def results(name: str, out: Path) -> str:
    """The headline numbers of step `name` from its JSON in out ("" if it wrote none)."""
    if name in ("throughput", "cifar", "compile"):
        return throughput(_load(out / f"throughput_{'imagenet' if name == 'throughput' else name}.json"))
    if name == "knn":
        rec = _first(out, "knn_*.json")
        same = "" if rec is None else f"; identical to sklearn: {rec.get('identical_to_sklearn')}"
        return timed_rows(rec, lambda r: "") + same
    if name == "probe":
        return timed_rows(_first(out, "probe_*.json"), lambda r: f" acc {100 * r['accuracy']:.2f}%")
    if name == "learning":
        return learning(_load(out / "learning.json"))
    return ""


def machine(out: Path) -> str:
    """One line on the machine and versions, from the first throughput JSON."""
    rec = next((r for r in map(_load, sorted(out.glob("throughput_*.json"))) if r and "environment" in r), None)
    if rec is None:
        return "machine: no throughput JSON"
    env = rec["environment"]
    load = " ".join(f"{x:.1f}" for x in env.get("load_average_1_5_15min", []))
    return (
        f"{env.get('gpu') or env.get('device')} | CPU {env.get('cpu')} x{env.get('cores')} | "
        f"torch {env.get('torch')} torchvision {env.get('torchvision')} | load {load}"
    )


def main(argv: list[str]) -> int:
    out, status = Path(argv[0]), Path(argv[1])
    steps = [line.split("\t") for line in status.read_text().splitlines() if line.strip()]
    print(f"\n{machine(out)}")
    print(f"{'step':<11} {'status':<16} {'s':>4}  result")
    for name, state, seconds, note, *_ in (s + [""] * 4 for s in steps):
        result = results(name, out) or note
        print(f"{name:<11} {state:<16} {seconds:>4}  {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
