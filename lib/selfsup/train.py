"""The one training loop, shared by every method, preset, notebook and sweep.

The uint8 dataset sits on the device; each step draws a batch by index, augments it there
(two views, per-image random parameters) and calls `method.loss(v1, v2)`. On CUDA the next
step's views are made on a side stream while this step trains (selfsup.prefetch; on the CPU, in
turn, which measured as fast). One torch.Generator, saved in the checkpoint, draws the data order; each step's
augmentation draws from a generator seeded by (seed, epoch, rank, step), so a run is reproducible
and resumes exactly whatever was made ahead.

Launched by torchrun with several processes (see selfsup.distributed), the same loop trains with
DistributedDataParallel: every process draws the same global batch, trains on its share of it with
its own augmentation streams (the rank is in their seeds, so a resumed run on the same number of
processes repeats exactly), and process 0 alone writes the run folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed as dist
from . import threads
from .augment import TwoViews
from .config import Config, ConfigError
from .data import Dataset, fingerprint
from .events import Events
from .features import autocast_dtype, extract_features
from .knn import knn_predict
from .methods import Method, build_method
from .optim import make_optimizer, warmup_cosine
from .prefetch import epoch_views, views
from .provenance import environment
from .runs import CHECKPOINT, Run, RunError, first_line, now, restore, training_state

# In fp16 the GradScaler skips the optimizer step when gradients overflow (its first steps, while it
# finds the scale); the lr schedule still advances once per step, as in PyTorch's AMP recipe, so
# torch's warning about the schedule stepping first is expected there, not a bug.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")


# ---------------------------------------------------------------------------------------------
# Device and precision


def resolve_device(cfg: Config) -> torch.device:
    """cfg.device made concrete. Under torchrun every process takes the GPU of its LOCAL_RANK
    (selected by selfsup.distributed), whatever cuda:N the config names."""
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {cfg.device!r} requested but CUDA is not available")
    if cfg.device == "auto" or (cfg.device.startswith("cuda") and dist.active()):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(cfg.device)


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). auto: bf16 on CUDA cards that compute in bf16 (Ampere and
    newer), fp16 (with a gradient scaler) on older ones; on the CPU bf16 where it has bf16 matrix
    units (AMX), else fp32 (selfsup.features.autocast_dtype, which feature extraction shares)."""
    return autocast_dtype(cfg.precision, device)


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """auto: on CUDA, and on the CPU when it trains in bf16 (oneDNN's AMX kernels want NHWC: the
    bf16 step measured 1.13-1.16x faster with it; in fp32 on the CPU it was slower)."""
    if cfg.channels_last != "auto":
        return cfg.channels_last == "on"
    return device.type == "cuda" or amp_dtype(cfg, device) == torch.bfloat16


def images_to_device(images: np.ndarray, device: torch.device, chunk: int = 8192) -> torch.Tensor:
    """(N, H, W, 3) uint8 numpy -> (N, 3, H, W) uint8 tensor on device. Stays uint8: 4x smaller.
    Filled `chunk` images at a time, so the device holds the set once plus one chunk, never two
    full copies (the whole set moved, then transposed) -- 1.2 GB each at the course's 100k x 64x64."""
    n, h, w, c = images.shape
    out = torch.empty((n, c, h, w), dtype=torch.uint8, device=device)
    for i in range(0, n, chunk):
        out[i : i + chunk].copy_(torch.from_numpy(np.ascontiguousarray(images[i : i + chunk])).permute(0, 3, 1, 2))
    return out


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
        v1, v2 = views(aug, val_x[i : i + bs], gen, channels_last)
        with torch.autocast(val_x.device.type, dtype=amp, enabled=amp is not None):
            total += model.loss(v1, v2).item()
        n += 1
    model.train()
    return total / max(n, 1)


def knn_monitor(model, train_x, train_y, val_x, val_y, k, precision: str = "auto") -> float:
    f_train = extract_features(model.encoder, train_x, precision=precision)
    f_val = extract_features(model.encoder, val_x, precision=precision)
    pred = knn_predict(f_train, train_y, f_val, k=k)
    model.train()
    return (pred.cpu() == val_y.cpu()).float().mean().item()


def optimisation_step(
    loss_fn,
    opt,
    v1: torch.Tensor,
    v2: torch.Tensor,
    amp: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """loss_fn(v1, v2) under autocast (amp: its dtype, None: off), backward, one optimizer step
    (through `scaler` for fp16). Returns the loss, not synchronised."""
    with torch.autocast(v1.device.type, dtype=amp, enabled=amp is not None):
        loss = loss_fn(v1, v2)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loss


# ---------------------------------------------------------------------------------------------
# What a run trains with, built once for the loop and for benchmarks/throughput.py


@dataclass
class Setup:
    model: Method  # the method on its device (its loss, its encoder, its target network)
    loss_fn: object  # what the step calls: model.loss, through DDP and torch.compile when used
    eager_fn: object  # the same without torch.compile (the fallback)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    aug: TwoViews
    device: torch.device
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    channels_last: bool
    steps_per_epoch: int
    total_steps: int

    def step(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """One optimisation step. A torch.compile failure -- in the forward or in the backward,
        which torch compiles lazily inside loss.backward() -- switches to eager mode (with the
        error's text) and redoes the step; any other error propagates."""
        try:
            return optimisation_step(self.loss_fn, self.opt, v1, v2, self.amp, self.scaler)
        except Exception as e:
            if self.loss_fn is self.eager_fn or not _is_compile_error(e):
                raise
            print(f"selfsup: torch.compile failed ({first_line(e, named=True)}); running eagerly", file=sys.stderr)
            self.loss_fn = self.eager_fn
            return optimisation_step(self.loss_fn, self.opt, v1, v2, self.amp, self.scaler)


def build(cfg: Config, n_train: int, device: torch.device) -> Setup:
    """The model (initialised from torch's RNG seeded with cfg.seed), optimizer, schedule,
    augmentation and precision for training cfg on n_train images on `device`."""
    torch.manual_seed(cfg.seed)
    model = build_method(cfg).to(device)
    world = dist.world_size()
    if cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = use_channels_last(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = n_train // cfg.batch_size  # drop the last partial batch: the losses depend on B
    total_steps = steps_per_epoch * cfg.epochs
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(total_steps, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    )
    eager = model.loss
    if world > 1:
        eager = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    return Setup(
        model=model,
        loss_fn=torch.compile(eager) if cfg.compile else eager,
        eager_fn=eager,
        opt=opt,
        sched=sched,
        aug=TwoViews(cfg.aug_recipe, cfg.image_size, (cfg.crop_scale_min, 1.0)),
        device=device,
        amp=amp,
        scaler=scaler,
        channels_last=channels_last,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )


def _is_compile_error(e: BaseException) -> bool:
    """An exception raised by torch.compile's machinery (dynamo, AOT autograd, inductor), here or
    in its chain of causes."""
    while e is not None:
        if type(e).__module__.startswith(("torch._dynamo", "torch._inductor", "torch._functorch")):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def configured_backends(cfg: Config, device: torch.device):
    """cuDNN: autotuned kernels for the fixed shapes of training (fastest), or deterministic
    algorithms everywhere (cfg.deterministic: bit-exact resumes on a GPU, slower) -- for the
    duration of the block: the previous settings come back after it, so a deterministic run does
    not leave a notebook's kernel deterministic (and slow) for what follows."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def cublas_determinism(cfg: Config) -> None:
    """cuBLAS is deterministic only with a fixed workspace (CUDA docs), read from
    CUBLAS_WORKSPACE_CONFIG when CUDA sets cuBLAS up: set it before this run touches CUDA, and say
    so when something in this process already has (a notebook that trained before)."""
    if not cfg.deterministic or os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        return
    if torch.cuda.is_initialized():
        warnings.warn(
            "deterministic=true: CUDA was already in use in this process, so cuBLAS may keep a "
            "workspace that is not deterministic; set CUBLAS_WORKSPACE_CONFIG=:4096:8 before "
            "starting Python (or the notebook's kernel)",
            stacklevel=3,
        )
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


def non_finite(model: torch.nn.Module, opt: torch.optim.Optimizer) -> str | None:
    """The first parameter, buffer or optimizer state that holds NaN or infinity; None if none.
    One host read per device for the whole state (a per-tensor check would wait on the GPU a few
    hundred times); the culprit is looked for only when there is one."""
    named = [(f"parameter {n}", t) for n, t in model.named_parameters()]
    named += [(f"buffer {n}", t) for n, t in model.named_buffers()]
    named += [(f"optimizer state '{k}'", t) for state in opt.state.values() for k, t in state.items()]
    named = [(n, t) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point()]
    flags: dict[torch.device, list] = {}
    for _, t in named:
        flags.setdefault(t.device, []).append(torch.isfinite(t).all())
    if all(torch.stack(f).all().item() for f in flags.values()):
        return None
    return next(n for n, t in named if not torch.isfinite(t).all())


# ---------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: Config,
    data: Dataset,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train cfg.method on data.train, writing the run folder; returns run.json's content.

    stop_after: end this call after that many epochs (checkpointed; the schedule still spans
    cfg.epochs), to be continued with resume=True -- for interactive use and the resume test.
    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains data-parallel.
    """
    cublas_determinism(cfg)  # before anything here touches CUDA
    joined = dist.init_from_env()
    try:
        return _train(cfg, data, Run(run_dir), resume, progress, stop_after)
    finally:
        if joined:
            dist.shutdown()


def _check_inputs(cfg: Config, data: Dataset) -> None:
    """The limits that depend on the data, before anything is written."""
    n, world = len(data.train.images), dist.world_size()
    if cfg.batch_size > n:
        raise ConfigError(f"config key 'batch_size': {cfg.batch_size} is larger than the training set ({n} images)")
    if cfg.batch_size % world:
        raise ConfigError(f"config key 'batch_size': {cfg.batch_size} does not split evenly over {world} processes")
    knn_n = min(n, cfg.knn_train_limit or n)
    if cfg.knn_k > knn_n:
        raise ConfigError(
            f"config key 'knn_k': {cfg.knn_k} neighbours, but the k-NN monitor has only "
            f"{knn_n} training images; expected a value in [1, {knn_n}]"
        )
    if len(data.val) < 2:
        raise ConfigError(f"{data.val.source}: {len(data.val)} validation image(s); the monitor needs at least 2")


def _train(cfg: Config, data: Dataset, run: Run, resume: bool, progress: bool, stop_after: int | None) -> dict:
    lead = dist.rank() == 0  # process 0 writes the run folder and evaluates
    _check_inputs(cfg, data)
    device = resolve_device(cfg)
    if cfg.sync_bn and dist.world_size() > 1 and device.type != "cuda":
        raise ConfigError("config key 'sync_bn': torch's SyncBatchNorm needs CUDA; set sync_bn=false on CPU")
    with run.lock() if lead else _nothing():  # one writer per run folder
        if run.has_checkpoint() and not resume:
            raise RunError(f"{run.path}: already holds a run ({CHECKPOINT}); pass --resume or choose a new --run-dir")
        state = run.load_checkpoint() if resume else None
        dist.barrier()  # every process has checked the folder before process 0 writes to it
        with configured_backends(cfg, device), threads.for_run(device, state and state.get("threads")):
            return _loop(cfg, data, run, state, device, lead, progress, stop_after)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _loop(cfg, data, run, state, device, lead, progress, stop_after) -> dict:
    n, world = len(data.train.images), dist.world_size()
    s = build(cfg, n, device)
    train_x = images_to_device(data.train.images, device)  # (N, 3, H, W) uint8
    val_x = images_to_device(data.val.images, device)
    val_y = torch.from_numpy(data.val.labels)
    knn_idx = np.arange(n)
    if cfg.knn_train_limit and cfg.knn_train_limit < n:
        knn_idx = np.sort(np.random.RandomState(cfg.seed).choice(n, cfg.knn_train_limit, replace=False))
    knn_x = train_x if len(knn_idx) == n else train_x[torch.from_numpy(knn_idx).to(device)]  # no second copy of all
    knn_y = torch.from_numpy(data.train.labels[knn_idx])
    gen = torch.Generator(device).manual_seed(cfg.seed)  # data order (the same in every process)

    data_id, val_id = fingerprint(data.train), fingerprint(data.val)
    start_epoch, elapsed = 0, 0.0
    parts = dict(model=s.model, optimizer=s.opt, scheduler=s.sched, scaler=s.scaler, generator=gen)
    identity = dict(config_hash=cfg.hash(), data_fingerprint=data_id, val_fingerprint=val_id, device_type=device.type)
    history = []
    if state is not None:
        run.check_resumable(state, identity)
        start_epoch, elapsed, history = restore(state, **parts)
    # The epochs the checkpoint holds are the run's history: metrics written after it belong to
    # epochs that will be redone (or a kill came between the two writes).
    if history is None:  # a checkpoint from before metrics were kept in it
        history = [m for m in run.metrics() if m.get("epoch", 0) <= start_epoch]
    run_info = dict(
        status="running",
        config_hash=cfg.hash(),
        data_fingerprint=data_id,
        val_fingerprint=val_id,
        data=data.train.source,
        started=now(),
        environment=environment(device, world),
        precision=str(s.amp).replace("torch.", "") if s.amp else "fp32",
        train_images=n,
        steps_per_epoch=s.steps_per_epoch,
    )
    if lead:
        run.write_metrics(history)
        run.write_config(cfg)
        run.write_info(run_info)

    bar = tqdm(
        total=s.total_steps,
        initial=start_epoch * s.steps_per_epoch,
        disable=not (progress and lead),
        desc=f"{cfg.method} {cfg.backbone}",
        unit="step",
        mininterval=1.0,
        file=sys.stderr,
    )
    s.model.train()
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    events = Events(run, cfg, start_epoch, enabled=lead)  # TensorBoard: the metrics rows, as they are written
    try:
        for epoch in range(start_epoch, end_epoch):
            t0 = time.perf_counter()
            perm = torch.randperm(n, device=device, generator=gen)
            batches = epoch_views(
                s.aug,
                train_x,
                perm,
                cfg.batch_size,
                s.steps_per_epoch,
                _process_seed(cfg.seed, epoch, dist.rank()),
                s.channels_last,
            )
            loss_sum = torch.zeros((), device=device)  # summed on device: no host sync per step
            for i, (v1, v2) in enumerate(batches):
                loss = s.step(v1, v2)
                s.sched.step()
                s.model.step_target((epoch * s.steps_per_epoch + i + 1) / s.total_steps)
                loss_sum += loss.detach()
                bar.update()
                if lead and progress and i % 10 == 0:  # one sync every 10 steps for the progress bar
                    bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}", refresh=False)
            train_loss = dist.mean(loss_sum).item() / s.steps_per_epoch
            if not math.isfinite(train_loss):
                raise RunError(
                    f"{run.path}: training diverged in epoch {epoch + 1} (loss {train_loss}); the last "
                    "good checkpoint is kept; lower 'lr' (or raise 'warmup_epochs') and start a new run"
                )
            epoch_time = time.perf_counter() - t0
            elapsed += epoch_time
            if not lead:
                continue
            record = dict(
                epoch=epoch + 1,
                train_loss=train_loss,
                lr=s.sched.get_last_lr()[0],
                images_per_sec=s.steps_per_epoch * cfg.batch_size / epoch_time,
                epoch_time=epoch_time,
            )
            last = epoch + 1 == cfg.epochs
            if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                record.update(_monitor(s, cfg, val_x, val_y, knn_x, knn_y, run, epoch))
                bar.set_postfix(
                    epoch=f"{epoch + 1}/{cfg.epochs}",
                    loss=f"{train_loss:.3f}",
                    knn=f"{record['knn_acc']:.3f}",
                    refresh=False,
                )
            record["elapsed"] = elapsed
            checkpoint = last or epoch + 1 == end_epoch or (epoch + 1) % cfg.checkpoint_every == 0
            bad = checkpoint and non_finite(s.model, s.opt)
            if bad:
                raise RunError(
                    f"{run.path}: {bad} became NaN or infinite in epoch {epoch + 1}; the last good "
                    "checkpoint is kept; lower 'lr' (or raise 'warmup_epochs') and start a new run"
                )
            history.append(record)
            run.append_metrics(record)
            events.epoch(record)
            if checkpoint:  # a kill between these two writes: the resume rebuilds metrics from the checkpoint
                run.save_checkpoint(training_state(parts, identity, cfg, epoch + 1, elapsed, history))
        bar.close()
        events.close()
        finished = end_epoch == cfg.epochs
        if finished and lead:
            run.save_encoder(s.model.encoder)
    except Exception as e:  # any failure: run.json says so (then the error goes on up)
        bar.close()
        events.close()
        if lead:
            _mark_failed(run, run_info, e)
        raise
    dist.barrier()  # the other processes read what process 0 wrote
    if finished:
        run_info.update(
            status="finished",
            finished=now(),
            wall_clock_s=elapsed,
            epochs=len(history),
            final=history[-1] if history else {},
        )
    else:
        run_info.update(status="stopped", epochs=end_epoch)
    if lead:
        run.write_info(run_info)
    return run_info


def _monitor(s: Setup, cfg, val_x, val_y, knn_x, knn_y, run, epoch) -> dict:
    """Validation SSL loss and the course k-NN on val. Non-finite features are a divergence (one
    line), never a traceback."""
    try:
        loss = val_loss(s.model, s.aug, val_x, cfg, s.amp, s.channels_last)
        acc = knn_monitor(s.model, knn_x, knn_y, val_x, val_y, cfg.knn_k, cfg.precision)
    except ValueError as e:
        if "NaN or infinity" not in str(e):
            raise
        raise RunError(
            f"{run.path}: the encoder's features became NaN or infinite in epoch {epoch + 1}; the last "
            "good checkpoint is kept; lower 'lr' (or raise 'warmup_epochs') and start a new run"
        ) from None
    return dict(val_loss=loss, knn_acc=acc)


def _mark_failed(run: Run, run_info: dict, e: BaseException) -> None:
    """run.json says "failed" and why; best effort (the disk may be what failed)."""
    try:
        run.write_info({**run_info, "status": "failed", "failed": now(), "error": first_line(e)})
    except OSError:
        pass


def _process_seed(seed: int, epoch: int, rank: int) -> int:
    """The augmentation seed of one process in one epoch: independent streams per (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)
