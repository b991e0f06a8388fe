"""The table gpu_check.sh ends with: each step's outcome, then what the course run needs, from the
JSONs the steps wrote (whatever exists: a step cut short leaves its rows with what it measured).

    python benchmarks/gpu_check_summary.py OUT_DIR STEPS_TSV

STEPS_TSV has one line per step: name, status, seconds, the step's last line of output. Only the
standard library: it runs wherever the script does, whatever is installed.

  a row per method  our training step eager and compiled (images/s, TFLOP/s and its share of the
                    card's matmul rate), the usual pipeline, and our speed-up over it
  epoch             one epoch of the course run as a user runs it: training, monitoring, checkpoint
  projection        the preset's whole run (300 epochs for the course) from the last epoch
  memory            peak GPU memory with the uint8 set resident
  features          extraction, k-NN and linear probe at the epoch's size
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


def _rate(x) -> str:
    return f"{x:,.0f}" if isinstance(x, (int, float)) else "-"


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "-"


def _ratio(a, b) -> str:
    return f"{a / b:.1f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def _ours(entry: dict | None) -> float | None:
    return ((entry or {}).get("ours") or {}).get("images_per_s")


def step_results(name: str, out: Path) -> str:
    """A step's headline for the step table ("" when it wrote no JSON)."""
    if name in ("throughput", "compiled"):
        rec = _load(out / f"{name}.json")
        if rec is None:
            return ""
        done = ", ".join(rec.get("results", {}).get("train", {}))
        state = "" if rec.get("complete") else " INCOMPLETE"
        data = rec.get("setup", {}).get("data")
        data = f" [{Path(data).name if data != 'random' else 'random images'}]" if data else ""
        return f"methods timed: {done or 'none'}{state}{data}"
    if name == "epoch":
        rec = _load(out / "epoch.json")
        return "" if rec is None else f"epochs: {'done' if 'epochs' in rec else '-'}, features: {'features' in rec}"
    if name == "learning":
        rec = _load(out / "learning.json")
        if rec is None:
            return ""
        parts = []
        for r in rec.get("rows", []):
            knn = f" val 5-NN {r['random_init_val_knn']:.3f} -> {r['val_knn']:.3f}" if "val_knn" in r else ""
            parts.append(f"{r['method']} {r['epochs']} epochs {r['train_seconds']}s{knn}")
        return "; ".join(parts)
    return ""


def method_rows(out: Path) -> list[str]:
    """One row per method: eager, compiled and usual images/s, the ratios, the FLOP rates."""
    eager, compiled = _load(out / "throughput.json") or {}, _load(out / "compiled.json") or {}
    e_train, c_train = eager.get("results", {}).get("train", {}), compiled.get("results", {}).get("train", {})
    mm = eager.get("matmul") or {}
    lines = []
    if mm:
        lines.append(f"matmul rate ({mm['dtype']}, {mm['n']}x{mm['n']}): {mm['tflops']:.3g} TFLOP/s")
    aug = eager.get("results", {}).get("aug")
    if aug:
        usual = (aug.get("usual") or {}).get("images_per_s")
        lines.append(
            f"augmentation alone: ours {_rate(_ours(aug))} vs usual {_rate(usual)} img/s = {_ratio(_ours(aug), usual)}"
        )
    setup = eager.get("setup") or compiled.get("setup") or {}
    if setup:
        lines.append(
            f"training step: {setup.get('backbone')}, batch {setup.get('batch')}, {setup.get('precision')}, "
            f"usual pipeline with {setup.get('workers')} DataLoader workers"
        )
    head = f"{'method':<8} {'eager img/s':>12} {'compiled':>10} {'usual':>8} {'eager/usual':>11} {'comp/usual':>10}"
    lines.append(head + f" {'TFLOP/s eager':>13} {'of matmul':>9} {'compiled':>9}")
    for method in dict.fromkeys([*e_train, *c_train]):
        e, c = e_train.get(method, {}), c_train.get(method, {})
        usual = (e.get("usual") or {}).get("images_per_s")
        flops = e.get("flops_per_image") or c.get("flops_per_image")
        c_fraction = flops * _ours(c) / 1e12 / mm["tflops"] if flops and _ours(c) and mm.get("tflops") else None
        tflops = f"{e['tflops']:.3g}" if "tflops" in e else "-"
        fell_back = (c.get("ours") or {}).get("compiled") is False  # torch.compile failed: ran eagerly
        lines.append(
            f"{method:<8} {_rate(_ours(e)):>12} {_rate(_ours(c)):>10} {_rate(usual):>8} "
            f"{_ratio(_ours(e), usual):>11} {_ratio(_ours(c), usual):>10} {tflops:>13} "
            f"{_pct(e.get('fraction_of_matmul')):>9} {_pct(c_fraction):>9}"
            + ("  (compile failed: eager)" if fell_back else "")
        )
    return lines


def epoch_rows(out: Path) -> list[str]:
    """The epoch, projection, memory and features rows of epoch.json."""
    rec = _load(out / "epoch.json")
    if rec is None or "epochs" not in rec:
        return ["epoch       -  (no epoch.json with epochs)"]
    e, s = rec["epochs"], rec.get("setup", {})
    last = len(e["train_s"]) - 1
    mon = e["monitor_s"][last] if len(e["monitor_s"]) > last else 0.0
    ckpt = e["checkpoint_s"][last] if len(e["checkpoint_s"]) > last else 0.0
    lines = [
        f"epoch       {e['epoch_s']:.1f}s for {e['images']:,} images ({s.get('method')} {s.get('backbone')} "
        f"{s.get('image_size')}px batch {s.get('batch')} {s.get('precision')}): training {e['train_s'][last]:.1f}s "
        f"({_rate(e['images_per_s'][last])} img/s), monitoring {mon:.1f}s, checkpoint {ckpt:.2f}s; "
        f"{e['epochs_run']} epochs took {e['wall_s']:.1f}s (setup {e['setup_s']:.1f}s)",
        f"projection  {e['projected_run_s'] / 60:.1f} min for the {e['schedule_epochs']}-epoch run "
        f"(setup + {e['schedule_epochs']} x the last epoch)",
    ]
    if "gpu_peak_allocated_mb" in e:
        lines.append(
            f"memory      peak {e['gpu_peak_allocated_mb']:,.0f} MB allocated ({e['gpu_peak_reserved_mb']:,.0f} MB "
            f"reserved) of {e['gpu_total_mb']:,.0f} MB, the uint8 set ({e['resident_uint8_mb']:,.0f} MB) resident"
        )
    else:
        lines.append(f"memory      - (not on a GPU); the uint8 set is {e['resident_uint8_mb']:,.1f} MB")
    f = rec.get("features")
    if f:
        shape = "x".join(map(str, f.get("train_shape", [])))
        knn = f"k-NN {f['knn_s']:.2f}s" if "knn_s" in f else "k-NN -"
        probe = f"linear probe {f['probe_s']:.1f}s" if "probe_s" in f else "linear probe -"
        lines.append(f"features    extraction {f['extract_s']:.1f}s ({shape} + val), {knn}, {probe}")
    else:
        lines.append("features    -")
    return lines


def machine(out: Path) -> str:
    """One line on the machine and versions, from the first JSON that records them."""
    names = ("throughput.json", "epoch.json", "compiled.json")
    rec = next((r for r in (_load(out / n) for n in names) if r and r.get("environment")), None)
    if rec is None:
        return "machine: no JSON with the environment"
    env = rec["environment"]
    load = " ".join(f"{x:.1f}" for x in env.get("load_average_1_5_15min", []))
    return (
        f"{env.get('gpu') or env.get('device')} | CPU {env.get('cpu')} x{env.get('cores')} | "
        f"torch {env.get('torch')} torchvision {env.get('torchvision')} | {env.get('date')} | load {load}"
    )


def main(argv: list[str]) -> int:
    out, status = Path(argv[0]), Path(argv[1])
    steps = [line.split("\t") for line in status.read_text().splitlines() if line.strip()]
    print(f"\n{machine(out)}")
    print(f"{'step':<11} {'status':<16} {'s':>4}  result")
    for name, state, seconds, note, *_ in (s + [""] * 4 for s in steps):
        print(f"{name:<11} {state:<16} {seconds:>4}  {step_results(name, out) or note}")
    print()
    for line in method_rows(out) + epoch_rows(out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
