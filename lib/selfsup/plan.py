"""What a run will cost, before it starts: `selfsup plan`, notebook 03's estimate, a sweep's total.

The run is built exactly as training builds it (selfsup.train.build, the dataset resident on the
configured device); a few real optimisation steps are timed after untimed warm-up steps (the
loop's own step: Setup.step, the schedule, BYOL's target), then one monitoring pass (val loss and
the k-NN monitor, as the loop runs them) and one checkpoint's serialisation, in memory. Nothing is
written. From these: images/s, the time of an epoch and of the whole run (monitoring and
checkpoints included, the evaluation after it not), peak memory (GPU: torch.cuda's
max_memory_allocated; CPU: the process's peak resident set, which counts everything this process
did before) and the parameter count.

A batch that does not fit in GPU memory (torch.cuda.OutOfMemoryError) is reported with the largest
batch that does, found by trying: halving from the configured batch until one fits, then bisecting
between that and the smallest that failed. The estimate is then measured at that batch.
"""

from __future__ import annotations

import gc
import io
import re
import resource
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import threads, train
from .config import Config, ConfigError
from .data import Dataset, load_dataset
from .prefetch import as_channels_last, epoch_views
from .runs import first_line, training_state

OutOfMemory = torch.cuda.OutOfMemoryError


@dataclass
class Estimate:
    """A run's cost, measured on `device`; times in seconds, memory in bytes."""

    method: str
    backbone: str
    device: str
    threads: int  # a CPU run's thread count (selfsup.threads' choice); 0 on a GPU
    precision: str
    train_images: int
    batch_size: int  # the configured batch
    measured_batch: int  # the batch the times were measured at: the configured one, or the largest that fits
    fits: bool  # the configured batch ran without a CUDA out-of-memory error
    steps_per_epoch: int
    epochs: int
    eval_every: int
    checkpoint_every: int
    step_s: float  # mean of the timed steps (warm-up excluded)
    timed_steps: int
    warmup_steps: int
    monitor_s: float  # one monitoring pass: val loss + the k-NN monitor
    checkpoint_s: float  # one checkpoint, serialised
    peak_memory: int
    memory_kind: str
    parameters: int  # trainable
    encoder_parameters: int
    out_of_memory: str = ""  # the first line of the error the configured batch raised

    @property
    def images_per_s(self) -> float:
        return self.measured_batch / self.step_s

    @property
    def epoch_s(self) -> float:
        return self.steps_per_epoch * self.step_s

    def run_s(self, epochs: int | None = None, eval_every: int | None = None, checkpoint_every: int | None = None):
        """The whole run's time: training, monitoring passes and checkpoints (of a run of this
        cost with other lengths, for a sweep's points)."""
        epochs = self.epochs if epochs is None else epochs
        monitors, checkpoints = passes(
            epochs,
            self.eval_every if eval_every is None else eval_every,
            self.checkpoint_every if checkpoint_every is None else checkpoint_every,
        )
        return epochs * self.epoch_s + monitors * self.monitor_s + checkpoints * self.checkpoint_s

    @property
    def total_s(self) -> float:
        return self.run_s()

    def rows(self) -> list[tuple[str, str]]:
        monitors, checkpoints = passes(self.epochs, self.eval_every, self.checkpoint_every)
        rows = []
        if not self.fits:
            rows.append(
                (
                    "batch",
                    f"batch_size {self.batch_size} does not fit ({self.out_of_memory}); the largest that does is "
                    f"{self.measured_batch}: --set batch_size={self.measured_batch}; the times below are for it",
                )
            )
        rows += [
            ("speed", f"{self.images_per_s:,.0f} images/s ({self.step_s:.3g} s a step, mean of {self.timed_steps})"),
            ("one epoch", f"{duration(self.epoch_s)} ({self.steps_per_epoch} steps of {self.measured_batch})"),
            ("monitoring", f"{duration(self.monitor_s)} a pass x {monitors}"),
            ("checkpoints", f"{duration(self.checkpoint_s)} each x {checkpoints}"),
            ("whole run", f"{duration(self.total_s)} for {self.epochs} epochs (the evaluation after it not included)"),
            ("peak memory", f"{self.peak_memory / 2**30:.2f} GiB ({self.memory_kind})"),
            ("parameters", f"{self.parameters / 1e6:.2f} M trainable (encoder {self.encoder_parameters / 1e6:.2f} M)"),
        ]
        return rows

    def title(self) -> str:
        return (
            f"{self.method} {self.backbone} on {self.device}{self._threads()} ({self.precision}), "
            f"{self.train_images} train images, "
            f"batch {self.batch_size}, {self.epochs} epochs"
        )

    def _threads(self) -> str:
        return f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else ""

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join([f"plan: {self.title()}"] + [f"  {k:<{width}}  {v}" for k, v in self.rows()])

    def markdown(self) -> str:
        lines = [f"**Plan**: {self.title()} (measured: {self.warmup_steps} warm-up + {self.timed_steps} timed steps)"]
        lines += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in self.rows()]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:  # a notebook cell ending in an Estimate shows the table
        return self.markdown()


def passes(epochs: int, eval_every: int, checkpoint_every: int) -> tuple[int, int]:
    """(monitoring passes, checkpoints) of a run, as the loop counts them: each at the last epoch
    and every eval_every / checkpoint_every epochs (eval_every 0: the last only)."""
    ends = range(1, epochs + 1)
    monitors = sum(e == epochs or (eval_every and e % eval_every == 0) for e in ends)
    return monitors, sum(e == epochs or e % checkpoint_every == 0 for e in ends)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


# ---------------------------------------------------------------------------------------------
# Measuring


def estimate(cfg: Config, dataset: Dataset, device=None, steps: int = 5, warmup: int = 2) -> Estimate:
    """The cost of training cfg on dataset (see the module docstring): `warmup` untimed and `steps`
    timed optimisation steps, one monitoring pass and one checkpoint, on `device` (default: the
    config's, as training resolves it). ConfigError for what training would refuse."""
    if steps < 1 or warmup < 0:
        raise ConfigError(f"plan: {steps} timed and {warmup} warm-up steps; expected at least 1 and 0")
    train._check_inputs(cfg, dataset)  # the same one-line errors as `selfsup train`, before any work
    device = torch.device(device) if device is not None else train.resolve_device(cfg)
    # as training sets them (backends, the CPU's thread count), and back as they were after
    with train.configured_backends(cfg, device), threads.for_run(device):
        return _estimate(cfg, dataset, device, steps, warmup)


def _estimate(cfg: Config, dataset: Dataset, device: torch.device, steps: int, warmup: int) -> Estimate:
    n = len(dataset.train.images)
    train_x = train.images_to_device(dataset.train.images, device)  # (N, 3, H, W) uint8, as the loop holds it
    val_x = train.images_to_device(dataset.val.images, device)
    val_y = torch.from_numpy(dataset.val.labels)
    knn_n = min(n, cfg.knn_train_limit or n)  # the monitor's reference set: its size is what costs
    knn_x, knn_y = train_x[:knn_n], torch.from_numpy(dataset.train.labels[:knn_n])

    oom, batch = "", cfg.batch_size
    try:
        s, step_s = _timed(cfg, n, device, train_x, steps, warmup)
    except OutOfMemory as e:
        oom = first_line(e)
        _free()
        batch = largest_batch(lambda b: _fits(cfg.replace(batch_size=b), n, device, train_x), cfg.batch_size)
        if batch == 0:
            raise ConfigError(f"config key 'batch_size': not even a batch of 1 fits on {device} ({oom})") from None
        s, step_s = _timed(cfg.replace(batch_size=batch), n, device, train_x, steps, warmup)

    start = time.perf_counter()
    train.val_loss(s.model, s.aug, val_x, cfg, s.amp, s.channels_last)
    train.knn_monitor(s.model, knn_x, knn_y, val_x, val_y, cfg.knn_k)
    _sync(device)
    monitor_s = time.perf_counter() - start

    parts = dict(model=s.model, optimizer=s.opt, scheduler=s.sched, scaler=s.scaler, generator=torch.Generator(device))
    start = time.perf_counter()
    torch.save(training_state(parts, {}, cfg, 1, 0.0, []), io.BytesIO())
    checkpoint_s = time.perf_counter() - start

    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "GPU, torch.cuda.max_memory_allocated"
    else:  # ru_maxrss: kilobytes on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        kind = "peak RSS of this process"
    trainable = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    return Estimate(
        method=cfg.method,
        backbone=cfg.backbone,
        device=str(device),
        threads=torch.get_num_threads() if device.type == "cpu" else 0,
        precision=str(s.amp).replace("torch.", "") if s.amp else "fp32",
        train_images=n,
        batch_size=cfg.batch_size,
        measured_batch=batch,
        fits=not oom,
        steps_per_epoch=s.steps_per_epoch,
        epochs=cfg.epochs,
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every,
        step_s=step_s,
        timed_steps=steps,
        warmup_steps=warmup,
        monitor_s=monitor_s,
        checkpoint_s=checkpoint_s,
        peak_memory=peak,
        memory_kind=kind,
        parameters=trainable,
        encoder_parameters=sum(p.numel() for p in s.model.encoder.parameters()),
        out_of_memory=oom,
    )


def _timed(cfg: Config, n: int, device, train_x, steps: int, warmup: int) -> tuple[train.Setup, float]:
    """The run's Setup and the mean time of `steps` optimisation steps after `warmup` untimed ones."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    s = train.build(cfg, n, device)
    s.model.train()
    step = stepper(s)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    epochs = -(-(warmup + steps) // max(s.steps_per_epoch, 1))  # the data order repeated when more steps are timed
    perm = torch.cat([torch.randperm(n, device=device, generator=gen)[: s.steps_per_epoch * cfg.batch_size]] * epochs)
    # the views as the loop makes them: the next step's ahead of time, beside this one (selfsup.prefetch)
    views = epoch_views(s.aug, train_x, perm, cfg.batch_size, warmup + steps, cfg.seed, s.channels_last)
    for i, (v1, v2) in enumerate(views):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        loss = step(v1, v2)
    loss.item()  # waits for the device, as the loop's end-of-epoch loss does
    return s, (time.perf_counter() - start) / steps


def stepper(s: train.Setup) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function doing the loop's optimisation step on two views per call (Setup.step in the run's
    memory format, then the schedule and BYOL's target), for timing it (here, benchmarks/throughput.py)."""
    done = 0

    def step(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        nonlocal done
        loss = s.step(*(as_channels_last(v1, v2) if s.channels_last else (v1, v2)))  # no-op on the loop's views
        s.sched.step()
        done += 1
        s.model.step_target(min(done / max(s.total_steps, 1), 1.0))
        return loss

    return step


def _fits(cfg: Config, n: int, device, train_x) -> bool:
    """Whether two optimisation steps at cfg.batch_size run without a CUDA out-of-memory error (the
    first step allocates the optimizer's state)."""
    try:
        _timed(cfg, n, device, train_x, steps=1, warmup=1)
        return True
    except OutOfMemory:
        return False
    finally:
        _free()


def largest_batch(fits: Callable[[int], bool], failed: int) -> int:
    """The largest batch in [1, failed) for which fits(batch) holds, assuming larger batches need
    more memory: halve from `failed` until one fits, then bisect between it and the smallest that
    failed. 0 when not even 1 fits."""
    low, high = failed // 2, failed
    while low >= 1 and not fits(low):
        low, high = low // 2, low
    if low < 1:
        return 0
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _free() -> None:
    gc.collect()  # a failed step's tensors stay referenced from the exception's frames until collected
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# A sweep's total and the one-line out-of-memory message of `selfsup train`

# Keys that change the values a run computes, not its work: runs differing only in these cost the same
# a step (their lengths are counted apart).
_VALUE_ONLY = (
    *("seed", "lr", "min_lr_ratio", "weight_decay", "momentum", "warmup_epochs"),
    *("temperature", "barlow_lambda", "byol_momentum", "vicreg_sim", "vicreg_var", "vicreg_cov"),
)
_LENGTH = ("epochs", "eval_every", "checkpoint_every")


def sweep_total(configs: list[Config], data, device=None) -> str:
    """One line: the estimated time of training `configs` one after another (each distinct cost
    measured once, with 1 warm-up and 3 timed steps), or why some could not be estimated. data: a
    Dataset or its folder."""
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    groups: dict[str, list[Config]] = {}
    for cfg in configs:
        neutral = {k: v for k, v in Config().to_dict().items() if k in _VALUE_ONLY + _LENGTH}
        groups.setdefault(cfg.replace(**neutral).hash(), []).append(cfg)
    total, problems = 0.0, []
    for group in groups.values():
        try:
            est = estimate(group[0], dataset, device=device, steps=3, warmup=1)
        except (ConfigError, RuntimeError) as e:  # RuntimeError: CUDA, including out of memory
            problems.append(f"{len(group)} not estimated: {first_line(e)}")
            continue
        total += sum(est.run_s(c.epochs, c.eval_every, c.checkpoint_every) for c in group)
        if not est.fits:
            problems.append(f"batch_size {est.batch_size} does not fit, largest {est.measured_batch}")
    _free()
    line = f"plan: about {duration(total)} for {len(configs)} runs one after another (training and monitoring)"
    return line + (f"; {'; '.join(problems)}" if problems else "")


def plan_command(config_path, data, overrides: list[str] | None = None) -> str:
    """The `selfsup plan` command line of a `selfsup train` command's config, data and --set items."""
    sets = [f"--set={item}" for item in overrides or []]
    return shlex.join(["selfsup", "plan", "--config", str(config_path), "--data", str(data), *sets])


def out_of_memory_message(e: BaseException, batch_size: int, command: str) -> str:
    """`selfsup train`'s one line for a CUDA out-of-memory error: the batch, the memory it needed
    (read from torch's message) and the plan command that finds the batch that fits."""
    text, size = str(e), r"([\d.]+ [KMGT]?i?B)"
    found = [
        what.format(m.group(1))
        for what, pattern in (
            ("tried to allocate {} more", rf"Tried to allocate {size}"),
            ("with {} already allocated by PyTorch", rf"{size} is allocated by PyTorch"),
            ("on a GPU of {}", rf"total capacity of {size}"),
        )
        if (m := re.search(pattern, text))
    ]
    needed = " ".join(found) or first_line(e)
    return (
        f"CUDA out of memory at batch_size {batch_size} ({needed}); the last checkpoint, if any, is kept. "
        f"`{command}` finds the largest batch that fits"
    )
