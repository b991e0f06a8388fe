"""The course run as a user runs it, timed: real epochs at the course size, then the evaluation's
feature extraction, k-NN and linear probe at that size.

    python benchmarks/course_epoch.py --device cuda --out OUT        # 100,000 64x64 images, configs/course.yaml
    python benchmarks/course_epoch.py --device cpu --images 512 --val-images 128 --config configs/demo.yaml \\
        --set backbone=convnet --set width=8 --out OUT                 # the same at a tiny size

epochs    selfsup.train.train on --images random uint8 images (the per-image cost does not depend on
          the pixels) and --val-images more for monitoring, with the preset and its defaults as a
          user trains it -- val loss and k-NN on all training images after every epoch, a checkpoint
          every epoch -- for --epochs epochs of the preset's schedule (stop_after). Written: each
          epoch's training, monitoring and checkpoint seconds, the call's wall time, the peak GPU
          memory (the whole uint8 set resident), and the projected time of the preset's full run:
          the one-off setup plus its epochs x the last epoch (training + monitoring + checkpoint).
features  the trained encoder's features of the train and val images as evaluation extracts them
          (numpy in, the run's precision; timed), then the course k-NN (k=5, val against all of
          train) and the linear probe (its weight-decay grid and refit), each timed.

Writes OUT/epoch.json once the epochs are done and again after each feature measurement.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from selfsup import config, data, runs, train
from selfsup.evaluate import extract_features, knn_predict, linear_probe

sys.path.insert(0, str(Path(__file__).parent))
from throughput import environment, write_json  # noqa: E402  (the same machine record, the same atomic write)


def random_dataset(n: int, n_val: int, size: int, classes: int, seed: int = 0) -> data.Dataset:
    rng = np.random.default_rng(seed)
    names = [f"class{i}" for i in range(classes)]

    def split(k: int, name: str) -> data.Split:
        images = rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8)
        return data.Split(images, rng.integers(0, classes, k), names, source=f"random {name} ({k} images)")

    return data.Dataset(train=split(n, "train"), val=split(n_val, "val"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timings:
    """Seconds spent in each call of the loop's monitoring (train._monitor) and checkpoint writes
    (runs.Run.save_checkpoint), by wrapping them for the duration of the block."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {"monitor": [], "checkpoint": []}
        self._targets = [(train, "_monitor", "monitor"), (runs.Run, "save_checkpoint", "checkpoint")]
        self._saved = []

    def _wrap(self, fn, key):
        def timed(*a, **kw):
            sync(self.device)
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync(self.device)
                self.seconds[key].append(time.perf_counter() - t)

        return timed

    def __enter__(self):
        for owner, name, key in self._targets:
            if hasattr(owner, name):  # a loop without it: that part is counted as setup
                self._saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, self._wrap(getattr(owner, name), key))
        return self

    def __exit__(self, *exc):
        for owner, name, fn in self._saved:
            setattr(owner, name, fn)


def run_epochs(cfg, ds, run_dir: Path, epochs: int, device: torch.device) -> dict:
    """Train `epochs` epochs of cfg's schedule as train.train does them; what each part took."""
    shutil.rmtree(run_dir, ignore_errors=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Timings(device) as timings:
        t0 = time.perf_counter()
        train.train(cfg, ds, run_dir, progress=False, stop_after=epochs)
        wall = time.perf_counter() - t0
    metrics = runs.Run(run_dir).metrics()
    train_s = [m["epoch_time"] for m in metrics]
    monitor, checkpoint = timings.seconds["monitor"], timings.seconds["checkpoint"]
    setup_s = wall - sum(train_s) - sum(monitor) - sum(checkpoint)
    last = train_s[-1] + (monitor[-1] if monitor else 0) + (checkpoint[-1] if checkpoint else 0)
    resident = sum(s.images.nbytes for s in (ds.train, ds.val))
    out = dict(
        images=len(ds.train),
        val_images=len(ds.val),
        epochs_run=len(metrics),
        wall_s=wall,
        setup_s=setup_s,
        train_s=train_s,
        monitor_s=monitor,
        checkpoint_s=checkpoint,
        images_per_s=[m["images_per_sec"] for m in metrics],
        epoch_s=last,
        schedule_epochs=cfg.epochs,
        projected_run_s=setup_s + cfg.epochs * last,
        resident_uint8_mb=resident / 2**20,
        train_loss=[m["train_loss"] for m in metrics],
        knn_acc=[m.get("knn_acc") for m in metrics],
    )
    if device.type == "cuda":
        out["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        out["gpu_total_mb"] = torch.cuda.get_device_properties(device).total_memory / 2**20
    return out


def timed(where: torch.device, fn, /, *args, **kwargs):
    """(fn(*args, **kwargs), its seconds), the device's queued work included."""
    sync(where)
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    sync(where)
    return result, time.perf_counter() - t


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "course.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--images", type=int, default=100_000, help="training images (random uint8)")
    p.add_argument("--val-images", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=100, help="labels for the k-NN and the probe")
    p.add_argument("--epochs", type=int, default=2, help="epochs to run (the last one is the steady one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--runs", default=None, help="where the run folder goes (default: a folder in OUT, removed)")
    p.add_argument("--out", default=str(Path(__file__).parent / "out"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    overrides = {**config.parse_overrides(args.set), "device": str(device)}
    cfg = config.load(args.config, overrides)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "epoch.json"
    run_dir = Path(args.runs) if args.runs else out_dir / "course_epoch_run"

    t = time.perf_counter()
    ds = random_dataset(args.images, args.val_images, cfg.image_size, args.classes)
    record = dict(
        command=" ".join(["python"] + sys.argv),
        config=args.config,
        overrides=overrides,
        setup=dict(
            method=cfg.method,
            backbone=cfg.backbone,
            image_size=cfg.image_size,
            batch=cfg.batch_size,
            precision=str(train.amp_dtype(cfg, device) or "float32").replace("torch.", ""),
            channels_last=train.use_channels_last(cfg, device),
            optimizer=cfg.optimizer,
            fused=cfg.fused,
            compile=cfg.compile,
            eval_every=cfg.eval_every,
            checkpoint_every=cfg.checkpoint_every,
            data_s=time.perf_counter() - t,
        ),
        environment=environment(device),
    )
    print(f"{args.images} + {args.val_images} random {cfg.image_size}x{cfg.image_size} images; {cfg.method} "
          f"{cfg.backbone} batch {cfg.batch_size} {record['setup']['precision']}", flush=True)  # fmt: skip
    try:
        record["epochs"] = e = run_epochs(cfg, ds, run_dir, args.epochs, device)
        write_json(path, record)
        seconds = {k: ", ".join(f"{x:.2f}" for x in e[k]) for k in ("train_s", "monitor_s", "checkpoint_s")}
        print(
            f"epochs: training {seconds['train_s']}s, monitoring {seconds['monitor_s']}s, checkpoint "
            f"{seconds['checkpoint_s']}s; setup {e['setup_s']:.1f}s; projected {cfg.epochs} epochs: "
            f"{e['projected_run_s'] / 60:.1f} min",
            flush=True,
        )

        model = runs.Run(run_dir).random_init(cfg)
        model.load_state_dict(runs.Run(run_dir).load_checkpoint()["model"])
        encoder = model.encoder.to(device)
        feats = record["features"] = {}

        def extract(split):
            return extract_features(encoder, split.images, device=device, precision=cfg.precision)

        (f_train, f_val), feats["extract_s"] = timed(device, lambda: [extract(s) for s in (ds.train, ds.val)])
        feats.update(train_shape=list(f_train.shape), val_shape=list(f_val.shape))
        write_json(path, record)
        print(f"features {tuple(f_train.shape)} + {tuple(f_val.shape)}: {feats['extract_s']:.1f}s", flush=True)
        pred, feats["knn_s"] = timed(device, knn_predict, f_train, ds.train.labels, f_val, k=5)
        feats["knn_accuracy"] = float((pred.cpu().numpy() == ds.val.labels).mean())
        write_json(path, record)
        print(f"k-NN (k=5) {len(f_val)} x {len(f_train)}: {feats['knn_s']:.2f}s", flush=True)
        probe, feats["probe_s"] = timed(
            device, linear_probe, f_train, ds.train.labels, f_val, ds.val.labels, device=device
        )
        feats.update(probe_accuracy=probe["accuracy"], probe_weight_decay=probe["weight_decay"])
        print(f"linear probe on {len(f_train)}: {feats['probe_s']:.1f}s", flush=True)
    finally:
        record["environment"] = environment(device)
        write_json(path, record)
        if not args.runs:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
