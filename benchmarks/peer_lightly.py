"""End to end against lightly: SimCLR trained both ways on the same data, backbone and settings.

lightly (PyPI `lightly`, 1.6) is what users would pick instead of this workbook. Its SimCLR
tutorial, as the peer here: a Dataset of PIL images with `SimCLRTransform` per image in DataLoader
workers (num_workers = the cores), `SimCLRProjectionHead`, `NTXentLoss`, one forward per view.
The same on both sides: the images (a course folder, --data), the backbone module
(selfsup.models.backbone, built from the same seed: the same initial weights), the preset's
settings (SimCLR tau, AdamW + lr + weight decay on weights only, warmup + cosine, batch size, image
size, head widths), the augmentation parameters (SimCLRTransform with cj_strength 0.5 and
min_scale = crop_scale_min is selfsup's "simclr" recipe; the same normalisation) and the
evaluator: selfsup's course k-NN (5-NN, euclidean) on val and the course OOD protocol (80/20),
with the random-init encoder's numbers as the floor.

Install (lightly is a benchmark dependency, never one of the library): into a folder of its own,
without its dependencies, so that pip never touches torch, torchvision or numpy; of lightly's
declared requirements the modules used here import only lightning-utilities (hydra-core and
pytorch-lightning are not imported by lightly.loss / lightly.models / lightly.transforms):

    pip install --no-deps --target peer-pkgs lightly==1.6.0 lightning-utilities==0.15.3
    PYTHONPATH=lib:peer-pkgs python benchmarks/peer_lightly.py speed --data PATH/tinyimagenet-10
    PYTHONPATH=lib:peer-pkgs python benchmarks/peer_lightly.py accuracy --data PATH/tinyimagenet-10

speed     end-to-end training images/s (augmentation + forward + backward + step, in steady state
          after --warmup steps) and peak memory (PSS of the process tree, DataLoader workers
          included), for the demo convnet (configs/demo.yaml), the real-image convnet
          (configs/cpu_real.yaml) and ResNet18 (cpu_real with backbone resnet18), the --arms
          (default selfsup, fp32, lightly) in rotating order, --repeats rounds; the load average
          before each measurement. --busy N runs N other CPU-bound jobs (busy loops) throughout:
          the shared machine, reproducibly.
accuracy  --epochs of --preset (the real-image convnet by default) from the same initial weights, per seed, the arms
          alternating; val and OOD 5-NN, with the floor. Arms (--arms): selfsup, lightly, and
          selfsup with one of lightly's differences:
            perview   one forward per view (BatchNorm statistics per view) instead of one over both
            headbn    the projection head ending in BatchNorm1d, as SimCLRProjectionHead
            peeraug   lightly's model and loss fed selfsup's augmentation (what the augmentation
                      alone accounts for: blur truncation, crop antialiasing, jitter clamping)
          and selfsup's precision: fp32 (precision: fp32), projfp32 (autocast in the backbone only,
          the projector in fp32; the loss is fp32 in every arm)

Every measurement runs in a fresh process (its own peak memory, no warm caches from the other
side). Writes JSON (--out) after every measurement and prints a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfsup import config, data, evaluate, features, models, pixels, prefetch, threads, train
from selfsup.augment import TwoViews
from selfsup.optim import make_optimizer, warmup_cosine

PRESETS = {  # name -> (preset, overrides)
    "demo-convnet": ("configs/demo.yaml", {}),
    "real-convnet": ("configs/cpu_real.yaml", {}),
    "resnet18": ("configs/cpu_real.yaml", {"backbone": "resnet18"}),
}
ARMS = ("selfsup", "lightly", "fp32", "projfp32", "perview", "headbn", "peeraug")


# ---------------------------------------------------------------------------------------------
# The two sides: each an infinite stream of batches of two views, and a step


class PeerModel(nn.Module):
    """lightly's tutorial model: the backbone, then SimCLRProjectionHead (Linear-BN-ReLU-Linear-BN)."""

    def __init__(self, cfg):
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        torch.manual_seed(cfg.seed)  # the backbone first, as selfsup.methods does: the same weights
        self.encoder, dim = models.backbone(cfg.backbone, cfg.stem, cfg.width)
        self.projector = SimCLRProjectionHead(dim, cfg.heads["proj_hidden"], cfg.heads["proj_dim"])

    def forward(self, x):
        return self.projector(self.encoder(x))


class PeerImages(torch.utils.data.Dataset):
    """(N, H, W, 3) uint8 images as PIL images through a per-image transform (a torchvision dataset)."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]))


def lightly_side(cfg, images: np.ndarray, workers: int, arm: str):
    """(model, batches, step) of lightly's tutorial; arm "peeraug": selfsup's views instead."""
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    model = PeerModel(cfg)
    criterion = NTXentLoss(temperature=cfg.temperature)
    steps_per_epoch = len(images) // cfg.batch_size
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(steps_per_epoch * cfg.epochs, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    )

    def step(x0, x1):
        loss = criterion(model(x0), model(x1))  # the tutorial: one forward per view
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    if arm == "peeraug":
        return model, selfsup_batches(cfg, images, "auto"), step
    transform = SimCLRTransform(
        input_size=cfg.image_size,
        cj_strength=0.5,  # x (0.8, 0.8, 0.8, 0.2) = selfsup's (0.4, 0.4, 0.4, 0.1)
        min_scale=cfg.crop_scale_min,
        sigmas=(0.1, 2.0),
        normalize={"mean": list(pixels.MEAN), "std": list(pixels.STD)},
    )
    loader = torch.utils.data.DataLoader(
        PeerImages(images, transform),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    def batches():
        while True:
            yield from loader

    return model, batches(), step


def selfsup_batches(cfg, images: np.ndarray, mode: str):
    """The training loop's batches (selfsup.train): resident uint8 images, views made one step ahead."""
    x = train.images_to_device(images, torch.device("cpu"))
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = TwoViews(cfg.aug_recipe, cfg.image_size, (cfg.crop_scale_min, 1.0))
    epoch = 0
    while True:
        perm = torch.randperm(len(x), generator=gen)
        steps = len(x) // cfg.batch_size
        yield from prefetch.epoch_views(
            aug, x, perm, cfg.batch_size, steps, prefetch.step_seed(cfg.seed, epoch), mode=mode
        )
        epoch += 1


def selfsup_side(cfg, images: np.ndarray, arm: str, mode: str):
    """(encoder holder, batches, step) of selfsup.train's loop, with one of lightly's differences."""
    s = train.build(cfg, len(images), torch.device("cpu"))
    simclr = s.model
    if arm == "headbn":  # SimCLRProjectionHead's end: Linear without bias, then BatchNorm1d (affine)
        last = simclr.projector[-1]
        simclr.projector[-1] = nn.Linear(last.in_features, last.out_features, bias=False)
        simclr.projector.append(nn.BatchNorm1d(last.out_features))
        s.opt = make_optimizer(cfg, simclr)
        s.sched = torch.optim.lr_scheduler.LambdaLR(
            s.opt, warmup_cosine(s.total_steps, round(cfg.warmup_epochs * s.steps_per_epoch), cfg.min_lr_ratio)
        )
    if arm == "projfp32":  # autocast (bf16) in the backbone only; the projector in fp32
        projector_forward = simclr.projector.forward

        def projector_fp32(h):
            with torch.autocast("cpu", enabled=False):
                return projector_forward(h.float())

        simclr.projector.forward = projector_fp32
    if arm == "perview":
        from selfsup import losses

        def per_view(v1, v2):
            return losses.nt_xent(
                simclr.projector(simclr.encoder(v1)), simclr.projector(simclr.encoder(v2)), cfg.temperature
            )

        s.loss_fn = s.eager_fn = per_view

    def step(v1, v2):
        loss = s.step(v1, v2)
        s.sched.step()
        return loss

    return simclr, selfsup_batches(cfg, images, mode), step


# ---------------------------------------------------------------------------------------------
# One measurement (in its own process)


def measure(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.arm not in ("lightly", "peeraug"):
        torch.set_num_threads(threads.chosen(torch.device("cpu")))  # as selfsup.train chooses
    preset, overrides = PRESETS[args.preset]
    overrides = {**overrides, "seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
    cfg = config.load(preset, {**overrides, **({"precision": "fp32"} if args.arm == "fp32" else {})})
    ds = data.load_dataset(args.data)
    images = ds.train.images
    if args.arm in ("lightly", "peeraug"):
        model, batches, step = lightly_side(cfg, images, args.workers, args.arm)
    else:
        model, batches, step = selfsup_side(cfg, images, args.arm, args.prefetch)
    model.train()
    out = dict(
        arm=args.arm, preset=args.preset, seed=args.seed, threads=torch.get_num_threads(), loadavg_before=loadavg()
    )
    if args.kind == "speed":
        from throughput import MemorySampler

        with MemorySampler() as mem:
            for _ in range(args.warmup):
                step(*next(batches))
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = step(*next(batches))
            loss.item()
            seconds = time.perf_counter() - t0
        out.update(images_per_sec=args.steps * cfg.batch_size / seconds, peak_mb=mem.peak / 2**20, memory=mem.kind)
    else:
        floor = knn_scores(model.encoder, ds)
        t0 = time.perf_counter()
        for _ in range(len(images) // cfg.batch_size * cfg.epochs):
            loss = step(*next(batches))
        out.update(train_seconds=time.perf_counter() - t0, last_loss=loss.item(), epochs=cfg.epochs)
        out.update(floor=floor, trained=knn_scores(model.encoder, ds))
    out["loadavg_after"] = loadavg()
    return out


def knn_scores(encoder, ds) -> dict:
    """selfsup's course protocols: 5-NN on val (fitted on train), the course OOD 5-NN (80/20), on
    features extracted in float32 whatever the arm trained in: one evaluator for every arm."""
    sets = ("train", "val", "ood")
    f = {s: features.extract_features(encoder, getattr(ds, s).images, precision="fp32") for s in sets}
    val = evaluate.knn_protocols(f["train"], ds.train.labels, f["val"], ds.val.labels, linear=False)
    ood = evaluate.ood_protocol(f["ood"], ds.ood.labels, linear=False)
    encoder.train()
    return dict(val=val["knn"], ood=ood["knn"])


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return "n/a"


# ---------------------------------------------------------------------------------------------
# The comparison: measurements alternating, each in a fresh process


def run_one(args, **kw) -> dict:
    cmd = [sys.executable, __file__, "one", "--data", args.data, "--threads", str(args.threads)]
    cmd += ["--workers", str(args.workers), "--prefetch", args.prefetch]
    for key, value in kw.items():
        cmd += [f"--{key}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"peer_lightly: a measurement failed ({' '.join(cmd[2:])}):\n{done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)
    return result


def versions() -> dict:
    import lightly
    import torchvision

    return dict(
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        lightly=lightly.__version__,
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        cores=len(os.sched_getaffinity(0)),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def speed(args) -> list[dict]:
    rows, arms = [], args.arms.split(",")
    with busy_jobs(args.busy):
        for preset in args.presets.split(","):
            for r in range(args.repeats):
                for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:  # each arm first once
                    kw = dict(kind="speed", arm=arm, preset=preset, steps=args.steps, warmup=args.warmup)
                    rows.append(run_one(args, **kw))
                    save(args, rows)
    print(f"\n--busy {args.busy}, --threads {args.threads}: img/s, median of {args.repeats} (ratio to lightly)")
    print("threads: " + ", ".join(f"{a} {sorted({r['threads'] for r in rows if r['arm'] == a})}" for a in arms))
    print(f"{'backbone':14} " + " ".join(f"{a:>18}" for a in arms) + "   peak MB   load")
    for preset in args.presets.split(","):
        mine = {a: [r for r in rows if r["preset"] == preset and r["arm"] == a] for a in arms}
        ips = {a: statistics.median(r["images_per_sec"] for r in mine[a]) for a in arms}
        peer = ips.get("lightly")
        cells = [f"{ips[a]:.1f}" + (f" ({ips[a] / peer:.2f}x)" if peer and a != "lightly" else "") for a in arms]
        mem = "/".join(f"{max(r['peak_mb'] for r in mine[a]):.0f}" for a in arms)
        load = " ".join(r["loadavg_before"] for r in rows if r["preset"] == preset)
        print(f"{preset:14} " + " ".join(f"{c:>18}" for c in cells) + f"   {mem}   {load}")
    return rows


class busy_jobs:
    """n other CPU-bound processes (Python busy loops) while the block runs."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        spin = "import time\nwhile True: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(self.n)]
        if self.n:
            time.sleep(10)  # the load average starts to show them
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def accuracy(args) -> list[dict]:
    rows = []
    arms = args.arms.split(",")
    for seed in range(args.seed, args.seed + args.seeds):
        for arm in arms if seed % 2 == 0 else arms[::-1]:
            rows.append(run_one(args, kind="accuracy", arm=arm, preset=args.preset, seed=seed, epochs=args.epochs))
            save(args, rows)
    print(f"\n{'arm':10} {'val 5-NN':>18} {'OOD 5-NN':>18} {'floor val/OOD':>14} {'train s':>8}  (mean, 95% t)")
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        val, ood = ([100 * r["trained"][k] for r in mine] for k in ("val", "ood"))
        floor = "/".join(f"{100 * np.mean([r['floor'][k] for r in mine]):.1f}" for k in ("val", "ood"))
        secs = np.mean([r["train_seconds"] for r in mine])
        print(f"{arm:10} {interval(val):>18} {interval(ood):>18} {floor:>14} {secs:8.0f}  {[round(v, 1) for v in val]}")
    return rows


def interval(values) -> str:
    from scipy import stats

    m = float(np.mean(values))
    if len(values) < 2:
        return f"{m:.1f}"
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return f"{m:.1f} ± {half:.1f}"


def save(args, rows) -> None:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(versions=versions(), args=vars(args), rows=rows), indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("speed", "accuracy", "one"))
    p.add_argument("--data", required=True, help="a course folder with train.npz, val.npz, ood.npz")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads, main process (0: selfsup's choice, torch's for lightly)"
    )
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="lightly's DataLoader workers")
    p.add_argument("--prefetch", default="auto", choices=prefetch.MODES, help="selfsup's next-batch overlap")
    p.add_argument("--presets", default=",".join(PRESETS), help="speed: backbones (" + ",".join(PRESETS) + ")")
    p.add_argument("--repeats", type=int, default=2, help="speed: rounds per backbone (every arm once a round)")
    p.add_argument("--steps", type=int, default=12, help="speed: timed steps")
    p.add_argument("--warmup", type=int, default=3, help="speed: untimed steps first")
    arms_help = f"of {','.join(ARMS)} (default: speed selfsup,fp32,lightly; accuracy selfsup,lightly)"
    p.add_argument("--arms", default="", help=arms_help)
    p.add_argument("--busy", type=int, default=0, help="speed: other CPU-bound jobs running meanwhile")
    p.add_argument("--epochs", type=int, default=0, help="accuracy: epochs (0: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="accuracy: seeds from --seed")
    p.add_argument("--out", default="benchmarks/out/peer_lightly.json")
    # one measurement (used by the two above)
    p.add_argument("--kind", default="speed", choices=("speed", "accuracy"))
    p.add_argument("--arm", default="selfsup", choices=ARMS)
    p.add_argument("--preset", default="real-convnet", choices=tuple(PRESETS), help="accuracy: the backbone")
    args = p.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"peer_lightly: --data {args.data}: not a folder (expected train.npz, val.npz, ood.npz)")
    try:
        import lightly  # noqa: F401
    except ImportError as e:
        sys.exit(f"peer_lightly: lightly is not importable ({e}); install it as this file's docstring says")
    args.arms = args.arms or ("selfsup,fp32,lightly" if args.what == "speed" else "selfsup,lightly")
    if args.what == "one":
        print(json.dumps(measure(args)))
    else:
        (speed if args.what == "speed" else accuracy)(args)


if __name__ == "__main__":
    main()
