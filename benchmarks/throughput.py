"""Throughput: selfsup's batched on-device augmentation vs the usual per-image DataLoader pipeline.

Two pipelines, the same ops and probabilities (selfsup.augment.RECIPES), the same batch size:

  ours   the uint8 dataset resident on the device; each step draws a batch by index and
         runs TwoViews on it (per-image random parameters, batched tensor ops).
  usual  a torch Dataset over the uint8 numpy images applying a per-image
         torchvision.transforms.v2 pipeline twice (two views), in a DataLoader with
         num_workers = all cores. Each worker makes whole batches, so an epoch must hold at
         least 2 x workers batches (the DataLoader's default prefetch) for every worker to be
         busy: checked, with an error naming the fix.

Measured, each in steady state after --warmup-steps:
  aug    augmentation alone (images/s; each image yields two views)
  train  full steps: augmentation + forward + backward + optimizer step, with the library's
         method (selfsup.methods.build_method) and optimizer (selfsup.optim.make_optimizer)

One process, one run: writes JSON (--out) after every measurement, so a run stopped part-way
keeps what it measured ("complete": false until the end), and prints a table. Memory: peak proportional set
size (PSS, main process + DataLoader workers, so shared pages count once) sampled every
100 ms per phase, the process's ru_maxrss, and on CUDA torch.cuda.max_memory_allocated.

  python benchmarks/throughput.py --backbone convnet --steps 20
  python benchmarks/throughput.py --data data/course/train.npz --backbone resnet18 --device cuda

For steady state on the usual pipeline use --warmup-steps >= workers (each worker's first batch
arrives at about the same time) and --steps a multiple of workers; benchmarks/gpu_check.sh does.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as v2
from torch.utils.data import DataLoader

from selfsup import augment, pixels, prefetch, train
from selfsup.config import BACKBONES, METHODS, RECIPES, STEMS, Config
from selfsup.runs import environment as run_environment
from selfsup.train import images_to_device

try:
    import psutil
except ImportError:  # memory then comes from getrusage only
    psutil = None


# ---------------------------------------------------------------------------------------------
# Data


def load_images(args) -> np.ndarray:
    """(N, H, W, 3) uint8: a course .npz (or a folder's train.npz), else random images."""
    if args.data:
        from selfsup.data import load_npz

        path = Path(args.data)
        return load_npz(path / "train.npz" if path.is_dir() else path).images
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (args.num_images, args.image_size, args.image_size, 3), dtype=np.uint8)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ---------------------------------------------------------------------------------------------
# The usual pipeline: per-image torchvision v2 transforms in DataLoader workers


def torchvision_view(view: augment.ViewRecipe, size: int) -> v2.Compose:
    """The per-image torchvision pipeline of one view, built from the same recipe data.

    uint8 through the ops (as the PIL pipelines of SimCLR/BYOL/Barlow Twins are), float at the end.
    """
    jitter = v2.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=view.crop_scale, ratio=view.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(view.flip_p),
            v2.RandomApply([jitter], p=view.jitter_p),
            v2.RandomGrayscale(view.gray_p),
            v2.RandomApply([v2.GaussianBlur(augment.blur_kernel_size(size), sigma=view.blur_sigma)], p=view.blur_p),
            v2.RandomSolarize(threshold=128, p=view.solarize_p),  # uint8: 128 = 0.5 of 255 (PIL's solarize)
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pixels.MEAN, pixels.STD),
        ]
    )


class TwoViewDataset(torch.utils.data.Dataset):
    """images (N, H, W, 3) uint8 numpy -> (view1, view2), each float (3, size, size)."""

    def __init__(self, images: np.ndarray, views: tuple, size: int):
        self.images = images
        self.transforms = [torchvision_view(v, size) for v in views]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1)  # (3, H, W) uint8, a view
        return tuple(t(x) for t in self.transforms)


def check_usual_epoch(n_images: int, batch: int, workers: int) -> None:
    """The usual pipeline keeps every DataLoader worker busy only if an epoch holds at least
    2 x workers batches (each worker prefetches 2 whole batches); with fewer, some workers idle
    and the pipeline is measured slower than it is. Raises ValueError saying what to change."""
    batches = n_images // batch  # drop_last
    need = max(2 * workers, 1)
    if batches < need:
        raise ValueError(
            f"the usual pipeline would leave DataLoader workers idle: {n_images} images make "
            f"{batches} batches of {batch} per epoch, fewer than 2 x {workers} workers = {need}. "
            f"Use at least {need * batch} images (--data, or --num-images for random ones), "
            f"or --batch <= {n_images // need}, or --workers <= {batches // 2}"
        )


def usual_batches(images, views, size, batch, workers, device):
    """Endless (v1, v2) batches on `device` from a shuffling DataLoader."""
    check_usual_epoch(len(images), batch, workers)
    loader = DataLoader(
        TwoViewDataset(images, views, size),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    while True:
        for v1, v2_ in loader:
            yield v1.to(device, non_blocking=True), v2_.to(device, non_blocking=True)


def ours_batches(data, aug, batch, device, seed=0):
    """Endless (v1, v2) batches: random indices into the resident uint8 tensor, augmented there."""
    gen = torch.Generator(device).manual_seed(seed)
    while True:
        perm = torch.randperm(len(data), device=device, generator=gen)
        for i in range(len(data) // batch):
            yield aug(data[perm[i * batch : (i + 1) * batch]], generator=gen)


# ---------------------------------------------------------------------------------------------
# Measuring


class MemorySampler:
    """Peak memory of this process plus its children (DataLoader workers) while active.

    PSS where the OS gives it (shared pages split between sharers, so the sum is the true
    total), else RSS (which counts pages shared by fork once per process).
    """

    def __init__(self, interval=0.1):
        self.interval, self.peak, self.kind = interval, 0, "rss"
        self._stop = threading.Event()
        self._thread = None

    def _total(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me] + me.children(recursive=True):
            try:
                info = p.memory_full_info() if self.kind == "pss" else p.memory_info()
                total += getattr(info, self.kind)
            except (psutil.Error, OSError):  # a worker that just exited, or no access
                pass
        return total

    def __enter__(self):
        if psutil is not None:
            try:  # PSS needs /proc/PID/smaps_rollup, which sandboxes (gVisor) may not offer
                self.kind = "pss" if hasattr(psutil.Process().memory_full_info(), "pss") else "rss"
            except (psutil.Error, OSError):
                self.kind = "rss"
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak = max(self.peak, self._total())


def cpu_seconds() -> float | None:
    """User + system CPU time of this process and its live children (the DataLoader workers).

    Less sensitive than wall-clock to other jobs sharing the cores: the work each pipeline does.
    """
    if psutil is None:
        return None
    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, steps, warmup, batch, device) -> dict:
    """Run `step()` warmup + steps times; images/s over the timed steps and per-step stats."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    cpu_start = cpu_seconds()
    with MemorySampler() as mem:
        start = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            step()
            sync(device)  # per-step times need it; on CPU a no-op
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - start
    cpu = cpu_seconds()
    out = dict(
        images_per_s=steps * batch / total,
        median_step_images_per_s=batch / statistics.median(times),
        step_s=dict(mean=total / steps, median=statistics.median(times), min=min(times), max=max(times)),
        cpu_ms_per_image=(cpu - cpu_start) * 1000 / (steps * batch) if cpu is not None else None,
        peak_host_mem_mb=mem.peak / 2**20 if mem.peak else None,
        host_mem_kind=mem.kind if mem.peak else None,
    )
    if device.type == "cuda":
        out["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def summarise(runs: dict) -> dict:
    """Per pipeline: the median repeat (by images/s) plus all repeats; the per-repeat ratios.

    Works on a phase still in progress: a pipeline without repeats is left out, and the ratio
    is None until both have one."""
    out = {}
    for name, rs in runs.items():
        if rs:
            median = sorted(rs, key=lambda r: r["images_per_s"])[len(rs) // 2]
            out[name] = dict(median, repeats=rs)
    ratios = [o["images_per_s"] / u["images_per_s"] for o, u in zip(runs["ours"], runs["usual"])]
    out["ratio"] = statistics.median(ratios) if ratios else None
    out["ratios"] = ratios
    return out


def train_step(cfg, batches, device, n_images):
    """A function doing one optimisation step per call with what the training loop builds
    (selfsup.train.build: method seeded with cfg.seed, optimizer, schedule, precision, memory
    format, compile with its fallback) and steps (Setup.step, then the schedule and BYOL's EMA
    target): the benchmark times the loop's own step."""
    s = train.build(cfg, n_images, device)
    s.model.train()
    done = 0

    def step():
        nonlocal done
        v1, v2 = next(batches)
        s.step(*(prefetch.as_channels_last(v1, v2) if s.channels_last else (v1, v2)))
        s.sched.step()
        done += 1
        s.model.step_target(min(done / max(s.total_steps, 1), 1.0))

    return step


# ---------------------------------------------------------------------------------------------
# Report


def environment(device) -> dict:
    """The run record's environment (selfsup.runs.environment: versions, device, threads) plus
    what a speed number needs beside it: date, processor, cores, load and peak memory."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    info = dict(
        run_environment(device), date=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu=cpu, cores=cores()
    )
    # ru_maxrss: kilobytes on Linux; the lifetime peak of this process (children separately).
    # Other jobs on the same cores move wall-clock numbers: record how busy the machine was.
    info["load_average_1_5_15min"] = os.getloadavg()
    info["ru_maxrss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info["ru_maxrss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return info


def print_table(results: dict, env: dict, setup: dict) -> None:
    gpu = f" ({env['gpu']})" if "gpu" in env else ""
    print(
        f"\n{env['date']}  torch {env['torch']}  torchvision {env['torchvision']}  device {env['device']}{gpu}"
        f"  CPU {env['cpu']} x{env['cores']}  torch threads {env['threads']}"
        f"  load avg {' '.join(f'{x:.1f}' for x in env['load_average_1_5_15min'])}"
    )
    print(", ".join(f"{k}={v}" for k, v in setup.items()))
    cuda = env["device"].startswith("cuda")
    print(
        f"{'phase':<6} {'pipeline':<8} {'images/s':>9} {'ratio':>7} {'median-step img/s':>18} "
        f"{'CPU ms/img':>10} {'peak host MB':>12}" + (f" {'GPU MB':>8}" if cuda else "")
    )
    for phase, r in results.items():
        for name in ("ours", "usual"):
            m = r[name]
            ratio = f"{r['ratio']:.2f}x" if name == "ours" else ""
            if name == "usual" and len(r["ratios"]) > 1:
                ratio = f"{min(r['ratios']):.1f}-{max(r['ratios']):.1f}"
            cpu = f"{m['cpu_ms_per_image']:.2f}" if m["cpu_ms_per_image"] is not None else "-"
            mem = f"{m['peak_host_mem_mb']:.0f}" if m["peak_host_mem_mb"] else "-"
            line = (
                f"{phase:<6} {name:<8} {m['images_per_s']:>9.0f} {ratio:>7} "
                f"{m['median_step_images_per_s']:>18.0f} {cpu:>10} {mem:>12}"
            )
            print(line + (f" {m['gpu_max_allocated_mb']:>8.0f}" if cuda else ""))
    kind = next(
        (m["host_mem_kind"] for r in results.values() for m in (r["ours"], r["usual"]) if m["host_mem_kind"]), "rss"
    )
    print(
        f"images/s counts source images (each yields two views); ratio = ours / usual (median repeat; "
        f"below it the range over repeats); CPU ms/img = user+sys "
        f"of this process and its DataLoader workers; peak host MB = {kind.upper()} of the same, sampled."
    )


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", help="course .npz file, or a folder with train.npz (default: random uint8 images)")
    p.add_argument("--num-images", type=int, default=4096, help="random images to generate without --data")
    p.add_argument("--image-size", type=int, default=64, help="side of generated images and of the views")
    p.add_argument("--method", choices=METHODS, default="simclr")
    p.add_argument("--recipe", choices=RECIPES, default=None, help="default: the method's (Config.aug_recipe)")
    p.add_argument("--backbone", choices=BACKBONES, default="convnet")
    p.add_argument("--stem", choices=STEMS, default="imagenet")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=5,
        help="untimed steps first (>= 2 x workers drains the DataLoader's prefetch)",
    )
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the method's loss")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: all cores)")
    p.add_argument("--only", choices=("aug", "train", "all"), default="all")
    p.add_argument("--repeats", type=int, default=1, help="alternating repeats of each measurement (noise)")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of our augmentation")
    p.add_argument("--out", default="benchmarks/out/throughput.json")
    return p.parse_args(argv)


def profile_ours(batches, steps=5):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            next(batches)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def write_json(path: Path, record: dict) -> None:
    """Write record to path atomically: a run killed mid-write leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads or cores())
    images = load_images(args)
    if args.batch > len(images):
        raise SystemExit(f"--batch {args.batch} is larger than the data ({len(images)} images)")
    workers = cores() if args.workers is None else args.workers
    try:
        check_usual_epoch(len(images), args.batch, workers)  # before anything slow
    except ValueError as e:
        raise SystemExit(f"throughput.py: {e}") from None
    cfg = Config(
        method=args.method,
        recipe=args.recipe or "",
        backbone=args.backbone,
        stem=args.stem,
        batch_size=args.batch,
        image_size=args.image_size,
        precision=args.precision,
        compile=args.compile,
        device=str(device),
        epochs=1,
        warmup_epochs=0,
    )
    aug = augment.TwoViews(cfg.aug_recipe, cfg.image_size, (cfg.crop_scale_min, 1.0))
    resident = images_to_device(images, device)  # (N, 3, H, W) uint8; never float as a whole
    setup = dict(
        method=cfg.method,
        recipe=cfg.aug_recipe,
        backbone=cfg.backbone,
        stem=cfg.stem,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup_steps,
        repeats=args.repeats,
        precision=args.precision,
        compile=args.compile,
        workers=workers,
        threads=torch.get_num_threads(),
        images="x".join(map(str, images.shape)),
        data=args.data or "random",
    )
    pipelines = dict(
        ours=lambda: ours_batches(resident, aug, args.batch, device),
        usual=lambda: usual_batches(images, aug.views, cfg.image_size, args.batch, workers, device),
    )

    out = Path(args.out)
    command = " ".join(["python"] + sys.argv)
    results = {}

    def save(complete: bool) -> None:
        write_json(
            out, dict(command=command, complete=complete, environment=environment(device), setup=setup, results=results)
        )

    for phase in ["aug", "train"] if args.only == "all" else [args.only]:
        runs = {name: [] for name in pipelines}
        # Repeats alternate ours / usual, so slow drifts in what else runs on the machine
        # hit both alike; the spread of the per-repeat ratios is the noise.
        for repeat in range(args.repeats):
            for name, make_batches in pipelines.items():
                print(f"{phase} / {name} ({repeat + 1}/{args.repeats}) ...", flush=True)
                batches = make_batches()
                if phase == "aug":
                    step = functools.partial(next, batches)
                else:
                    step = train_step(cfg, batches, device, len(images))
                runs[name].append(measure(step, args.steps, args.warmup_steps, args.batch, device))
                batches.close()  # ends the DataLoader iterator and its workers
                results[phase] = summarise(runs)
                save(complete=False)  # what is measured so far survives a timeout
    if args.profile:
        profile_ours(ours_batches(resident, aug, args.batch, device))

    save(complete=True)
    print_table(results, environment(device), setup)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
