"""The one training loop, shared by every method, preset, notebook and sweep.

The uint8 dataset sits on the device; each step draws a batch by index, augments it there
(two views, per-image random parameters) and calls `method.loss(v1, v2)`. One torch.Generator
drives data order and augmentation, so a run is reproducible and resumes exactly.

Launched by torchrun with several processes (see selfsup.distributed), the same loop trains with
DistributedDataParallel: every process draws the same global batch, trains on its share of it with
its own augmentation generator (re-seeded each epoch from seed, epoch and rank, so a resumed run
on the same number of processes repeats exactly), and process 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from . import __version__
from . import distributed as dist
from .augment import TwoViews
from .config import Config, ConfigError
from .data import Dataset, fingerprint
from .methods import build_method


class RunError(RuntimeError):
    """A run folder in a state the command cannot continue from. The message says why."""


# ---------------------------------------------------------------------------------------------
# Device and precision


def resolve_device(cfg: Config) -> torch.device:
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {cfg.device!r} requested but CUDA is not available")
    if cfg.device == "auto" or (cfg.device == "cuda" and dist.active()):
        # The current CUDA device: the one torchrun's LOCAL_RANK selected for this process.
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(cfg.device)


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 on CPU (CPU bf16 is slower on most CPUs)."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


def images_to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 numpy -> (N, 3, H, W) uint8 tensor on device. Stays uint8: 4x smaller."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Optimizers and schedule


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as SimCLR uses it.

    Groups with `lars=False` (biases and norm parameters) get plain SGD and no weight decay,
    following the SimCLR and Barlow Twins implementations.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=g["weight_decay"])
                if g["lars"]:
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm, 1.0)
                    d = d.mul(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and conv kernels only; biases and norm parameters are exempt
    (nanoGPT, SimCLR, Barlow Twins all do this). Target networks (requires_grad=False) are skipped."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    fused = dict(fused=True) if params and params[0].is_cuda else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    if cfg.optimizer == "lars":
        groups[1]["lars"] = False
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        # torch's Adam adds weight decay to the gradient (L2); AdamW decouples it (Loshchilov & Hutter).
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """lr multiplier: linear warmup from ~0 to 1, then cosine down to min_ratio."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


# ---------------------------------------------------------------------------------------------
# Run folder bookkeeping


def environment(device: torch.device) -> dict:
    import torchvision

    info = dict(
        selfsup=__version__, python=platform.python_version(), torch=torch.__version__,
        torchvision=torchvision.__version__, numpy=np.__version__, platform=platform.platform(),
        device=str(device), threads=torch.get_num_threads(), processes=dist.world_size(),
    )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    """Write JSON atomically (a temp file, then rename): readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path) -> dict:
    """A run folder's JSON file as a dict; {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Monitoring: SSL loss on augmented val and the course k-NN on val


@torch.no_grad()
def val_loss(model, aug, val_x, cfg, amp, channels_last) -> float:
    """The SSL loss on augmented val images, in eval mode (BN running statistics; no state changes),
    with a fixed generator so epochs are compared on the same views."""
    model.eval()
    gen = torch.Generator(val_x.device).manual_seed(cfg.seed + 1)
    total, n = 0.0, 0
    bs = min(cfg.batch_size, len(val_x))
    for i in range(0, len(val_x) - bs + 1, bs):  # full batches only: the losses depend on B
        v1, v2 = _views(aug, val_x[i : i + bs], gen, channels_last)
        with torch.autocast(val_x.device.type, dtype=amp, enabled=amp is not None):
            total += model.loss(v1, v2).item()
        n += 1
    model.train()
    return total / max(n, 1)


def knn_monitor(model, train_x, train_y, val_x, val_y, k) -> float:
    from .evaluate import extract_features, knn_predict

    f_train = extract_features(model.encoder, train_x)
    f_val = extract_features(model.encoder, val_x)
    pred = knn_predict(f_train, train_y, f_val, k=k)
    model.train()
    return (pred.cpu() == val_y.cpu()).float().mean().item()


def _views(aug, x, gen, channels_last):
    v1, v2 = aug(x, generator=gen)
    return as_channels_last(v1, v2) if channels_last else (v1, v2)


def as_channels_last(*views: torch.Tensor) -> tuple:
    return tuple(v.contiguous(memory_format=torch.channels_last) for v in views)


def optimisation_step(loss_fn, opt, v1: torch.Tensor, v2: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """loss_fn(v1, v2) under autocast (amp: its dtype, None: off), backward, one optimizer step.
    Returns the loss, not synchronised. The loop and benchmarks/throughput.py both step with it."""
    with torch.autocast(v1.device.type, dtype=amp, enabled=amp is not None):
        loss = loss_fn(v1, v2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: Config, data: Dataset, run_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train cfg.method on data.train, writing the run folder; returns run.json's content.

    stop_after: end this call after that many epochs (checkpointed; the schedule still spans
    cfg.epochs), to be continued with resume=True -- for interactive use and the resume test.
    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains data-parallel.
    """
    joined = dist.init_from_env()
    try:
        return _train(cfg, data, Path(run_dir), resume, progress, stop_after)
    finally:
        if joined:
            dist.shutdown()


def _train(cfg, data, run_dir, resume, progress, stop_after) -> dict:
    lead = dist.rank() == 0  # process 0 writes the run folder and evaluates
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise RunError(f"{run_dir}: already holds a run (checkpoint.pt); pass --resume or choose a new --run-dir")
    if resume and not ckpt_path.exists():
        raise RunError(f"{ckpt_path}: no checkpoint to resume from")
    n, world = len(data.train.images), dist.world_size()
    if cfg.batch_size > n:
        raise ConfigError(f"config key 'batch_size': {cfg.batch_size} is larger than the training set ({n} images)")
    if cfg.batch_size % world:
        raise ConfigError(f"config key 'batch_size': {cfg.batch_size} does not split evenly over {world} processes")
    device = resolve_device(cfg)
    if cfg.sync_bn and world > 1 and device.type != "cuda":
        raise ConfigError("config key 'sync_bn': torch's SyncBatchNorm needs CUDA; set sync_bn=false on CPU")
    dist.barrier()  # every process has checked the folder before process 0 writes to it
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)

    amp = amp_dtype(cfg, device)
    channels_last = use_channels_last(cfg, device)
    torch.manual_seed(cfg.seed)
    model = build_method(cfg).to(device)
    if cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    train_x = images_to_device(data.train.images, device)  # (N, 3, H, W) uint8
    val_x = images_to_device(data.val.images, device)
    val_y = torch.from_numpy(data.val.labels)
    knn_idx = np.arange(n)
    if cfg.knn_train_limit and cfg.knn_train_limit < n:
        knn_idx = np.sort(np.random.RandomState(cfg.seed).choice(n, cfg.knn_train_limit, replace=False))
    knn_x, knn_y = train_x[torch.from_numpy(knn_idx).to(device)], torch.from_numpy(data.train.labels[knn_idx])

    steps_per_epoch = n // cfg.batch_size  # drop the last partial batch: the losses depend on B
    total_steps = steps_per_epoch * cfg.epochs
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(total_steps, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    )
    aug = TwoViews(cfg.aug_recipe, cfg.image_size, (cfg.crop_scale_min, 1.0))
    gen = torch.Generator(device).manual_seed(cfg.seed)  # data order (the same in every process)
    aug_gen = gen if world == 1 else torch.Generator(device)  # augmentation: one per process
    step = model.loss
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = _compiled(step) if cfg.compile else step

    data_id = fingerprint(data.train)
    start_epoch, elapsed = 0, 0.0
    if resume:
        # On CPU first: generator states must be CPU tensors; load_state_dict moves the rest.
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["config_hash"] != cfg.hash():
            raise RunError(f"{ckpt_path}: was written with different settings (config hash "
                           f"{state['config_hash']} != {cfg.hash()}); resume with the same config")
        if state.get("data_fingerprint", data_id) != data_id:
            raise RunError(f"{ckpt_path}: was trained on different data (train set fingerprint "
                           f"{state['data_fingerprint']} != {data_id}); resume with the same --data")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, elapsed = state["epoch"], state["elapsed"]
        if lead:  # metrics written after the last checkpoint belong to epochs that will be redone
            kept = [m for m in read_metrics(run_dir) if m["epoch"] <= start_epoch]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in kept))
    elif lead:
        (run_dir / "metrics.jsonl").write_text("")

    run_info = dict(status="running", config_hash=cfg.hash(), data_fingerprint=data_id, data=data.train.source,
                    started=_now(), environment=environment(device), train_images=n, steps_per_epoch=steps_per_epoch)
    if lead:
        write_json(run_dir / "config.json", cfg.to_dict())
        write_json(run_dir / "run.json", run_info)

    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, disable=not (progress and lead),
               desc=f"{cfg.method} {cfg.backbone}", unit="step", mininterval=1.0, file=sys.stderr)
    model.train()
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device, generator=gen)
        if world > 1:
            aug_gen.manual_seed(_process_seed(cfg.seed, epoch, dist.rank()))
        loss_sum = torch.zeros((), device=device)  # summed on device: no host sync per step
        for i in range(steps_per_epoch):
            batch = dist.shard(perm[i * cfg.batch_size : (i + 1) * cfg.batch_size])
            v1, v2 = _views(aug, train_x[batch], aug_gen, channels_last)
            loss = optimisation_step(loss_fn, opt, v1, v2, amp)
            sched.step()
            model.step_target((epoch * steps_per_epoch + i + 1) / total_steps)
            loss_sum += loss.detach()
            bar.update()
            if lead and progress and i % 10 == 0:  # one sync every 10 steps for the progress bar
                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}", refresh=False)
        train_loss = dist.mean(loss_sum).item() / steps_per_epoch
        if not math.isfinite(train_loss):
            raise RunError(f"{run_dir}: training loss became {train_loss} in epoch {epoch + 1}; lower 'lr'")
        epoch_time = time.perf_counter() - t0
        elapsed += epoch_time
        if not lead:
            continue
        record = dict(epoch=epoch + 1, train_loss=train_loss, lr=sched.get_last_lr()[0],
                      images_per_sec=steps_per_epoch * cfg.batch_size / epoch_time, epoch_time=epoch_time)
        last = epoch + 1 == cfg.epochs
        if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            record["val_loss"] = val_loss(model, aug, val_x, cfg, amp, channels_last)
            record["knn_acc"] = knn_monitor(model, knn_x, knn_y, val_x, val_y, cfg.knn_k)
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{train_loss:.3f}",
                            knn=f"{record['knn_acc']:.3f}", refresh=False)
        record["elapsed"] = elapsed

        if last or epoch + 1 == end_epoch or (epoch + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt_path, model, opt, sched, gen, cfg, epoch + 1, elapsed, data_id)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    bar.close()
    finished = end_epoch == cfg.epochs
    if finished and lead:
        encoder = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
        save_file(encoder, str(run_dir / "encoder.safetensors"))
    dist.barrier()  # the other processes read what process 0 wrote
    if finished:
        metrics = read_metrics(run_dir)
        run_info.update(status="finished", finished=_now(), wall_clock_s=elapsed, epochs=len(metrics),
                        final=metrics[-1] if metrics else {})
    else:
        run_info.update(status="stopped", epochs=end_epoch)
    if lead:
        write_json(run_dir / "run.json", run_info)
    return run_info


def _process_seed(seed: int, epoch: int, rank: int) -> int:
    """The augmentation seed of one process in one epoch: independent streams per (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def save_checkpoint(path: Path, model, opt, sched, gen, cfg, epoch, elapsed, data_id) -> None:
    """Everything needed to continue exactly: weights (with BYOL's EMA target), optimizer,
    scheduler, RNG states and progress. Written to a temp file, then renamed (atomic)."""
    state = dict(model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                 generator=gen.get_state(), torch_rng=torch.get_rng_state(), epoch=epoch, elapsed=elapsed,
                 config=cfg.to_dict(), config_hash=cfg.hash(), data_fingerprint=data_id)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _compiled(fn):
    """torch.compile(fn), falling back to eager (with a warning) where compilation fails."""
    compiled = torch.compile(fn)

    def call(*args):
        nonlocal compiled
        try:
            return compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure: run eagerly instead
            print(f"selfsup: torch.compile failed ({type(e).__name__}); running eagerly", file=sys.stderr)
            compiled = fn
            return fn(*args)

    return call
