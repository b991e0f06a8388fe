"""The run folder: the one module that knows its files, their formats and what state they describe.

A run folder, written by `selfsup train` (selfsup.train) and read by everything after it:

    config.json           the Config the run trains (every key)
    run.json              status (running / stopped / finished / failed), config hash, data
                          fingerprint, environment (versions, device, the code's git commit and
                          whether its tree was dirty), wall clock, final metrics
    metrics.jsonl         one JSON line per epoch
    checkpoint.pt         full training state (model, optimizer, scheduler, EMA target, RNG, epoch)
    encoder.safetensors   the trained encoder, written when training finishes
    eval.json             the evaluation (selfsup.evaluate), with the config and data it evaluated
    features.npz          val / OOD backbone features of the evaluation (figures, explorer)
    tsne.npz              the t-SNE of those features, keyed by their bytes
    error.txt             why a sweep point failed
    job.json              the SLURM job that runs it (selfsup.cluster): job id, log files, result file
    events/               TensorBoard event files (selfsup.events): `tensorboard --logdir runs`

Every read of a file that came from somewhere else is safe: JSON, safetensors, NPZ without
pickles, and checkpoints through ``torch.load(weights_only=True)``, so a crafted run folder can
never run code. Sits low in the import graph: it imports only config and methods.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import re
import socket
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError, from_dict
from .methods import build_method

CONFIG = "config.json"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.safetensors"
EVAL = "eval.json"
FEATURES = "features.npz"
TSNE = "tsne.npz"
ERROR = "error.txt"
JOB = "job.json"
EVENTS = "events"  # a folder: TensorBoard's event files (selfsup.events)
LOCK = ".lock"  # held by the one process writing the folder (a sweep folder has one too)
# Every name a run writes into its folder (and their temporaries, NAME.tmp, features.tmp.npz and
# tsne.tmp.npz): a folder holding anything else is not a run, and nothing may clear it.
RUN_FILES = (CONFIG, RUN_INFO, METRICS, CHECKPOINT, ENCODER, EVAL, FEATURES, TSNE, ERROR, JOB, LOCK)
RUN_FOLDERS = (EVENTS,)  # and these folders (not links) of files it writes


class RunError(RuntimeError):
    """A run folder in a state the command cannot continue from. The message says why."""


def write_atomically(path, write, *more) -> None:
    """Write files atomically: each ``write(file)`` (binary) goes to ``<name>.tmp`` beside its
    path, made with the mode the umask gives, and only when every one is written are they renamed
    into place (``more``: further path, write pairs, committed together). Readers never see half
    a file; a failed write (full disk, read-only filesystem, file-size limit) removes the
    temporaries, keeps the previous files and raises an OSError whose filename is the file and
    whose strerror says so in one line."""
    pairs = [(Path(path), write), *((Path(p), w) for p, w in zip(more[::2], more[1::2]))]
    temps = [p.with_name(p.name + ".tmp") for p, _ in pairs]
    failing = pairs[0][0]  # the file being written or renamed, for the message
    try:
        for (target, write_one), tmp in zip(pairs, temps):
            failing = target
            with open(tmp, "wb") as f:
                write_one(f)
        for (target, _), tmp in zip(pairs, temps):
            failing = target
            os.replace(tmp, target)
    except BaseException as e:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if not isinstance(e, OSError):
            raise
        kept = "; the previous file is kept" if failing.exists() else ""
        raise OSError(e.errno, f"cannot write ({e.strerror or first_line(e)}){kept}", str(failing)) from None


def write_json(path, obj, indent: int | None = 2) -> None:
    """Write JSON atomically (write_atomically): readers never see half a file."""
    text = json.dumps(obj, indent=indent, default=str) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))


def read_json(path, strict: bool = False) -> dict:
    """A JSON file's object as a dict; {} when it is missing, unreadable or not an object. strict:
    {} only when missing; a file that is there but unreadable is a one-line RunError naming it."""
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        if strict:
            raise RunError(f"{path}: not valid JSON ({first_line(e)}); move or delete it (or its folder)") from None
        return {}
    if strict and not isinstance(d, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(d).__name__}; move or delete it (or its folder)")
    return d if isinstance(d, dict) else {}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def first_line(e: BaseException, named: bool = False) -> str:
    """The first line of an exception's message, for a one-line error (its type's name when it has
    no message; named: always led by the type's name, "OSError: ...")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # no terminal colour codes in a message
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text.splitlines()[0]}" if named else text.splitlines()[0]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- the checkpoint's schema: what a training state holds, written and read here alone -------


def training_state(parts: dict, identity: dict, cfg: Config, epoch: int, elapsed: float, metrics: list) -> dict:
    """Everything needed to continue exactly, as plain tensors and data (loadable with
    weights_only=True): the state of each of `parts` (model with BYOL's EMA target, optimizer,
    scheduler, gradient scaler or None, the data-order generator), torch's RNG, the progress, the
    `identity` a resume must match (config hash, data and val fingerprints, device type), the
    metrics rows so far (an epoch's row and its checkpoint are committed together) and torch's
    thread count, which a resume on the CPU takes again (selfsup.threads)."""
    state = {
        name: (None if obj is None else obj.get_state() if name == "generator" else obj.state_dict())
        for name, obj in parts.items()
    }
    return dict(
        state,
        torch_rng=torch.get_rng_state(),
        threads=torch.get_num_threads(),
        epoch=epoch,
        elapsed=elapsed,
        config=cfg.to_dict(),
        metrics=list(metrics),
        **identity,
    )


def restore(state: dict, **parts) -> tuple[int, float, list | None]:
    """Load a training_state into `parts` (model=..., optimizer=..., generator=...) and torch's RNG;
    returns (epoch, elapsed seconds, metrics rows; None for a checkpoint that predates them)."""
    for name, obj in parts.items():
        if obj is None or state.get(name) is None:
            continue
        obj.set_state(state[name]) if name == "generator" else obj.load_state_dict(state[name])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"], state["elapsed"], state.get("metrics")


_IDENTITY = {  # what a resume must match: key -> (what it is, how to fix a mismatch)
    "config_hash": ("was written with different settings (config hash {old} != {new})", "resume with the same config"),
    "data_fingerprint": (
        "was trained on different data (train set fingerprint {old} != {new})",
        "resume with the same --data",
    ),
    "val_fingerprint": (
        "was monitored on another validation set (fingerprint {old} != {new})",
        "resume with the same --data",
    ),
    "device_type": ("was written on {old}, this run is on {new}", "resume on {old} (set device={old})"),
}


class Run:
    """One run folder. Cheap to make; every method reads the files afresh."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # --- state -------------------------------------------------------------------------------

    def info(self, strict: bool = False) -> dict:
        """run.json ({} when missing; strict: a RunError naming it when it is there but unreadable)."""
        return read_json(self.file(RUN_INFO), strict)

    def write_info(self, info: dict) -> None:
        write_json(self.file(RUN_INFO), info)

    @property
    def status(self) -> str:
        return self.info().get("status", "missing")

    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).is_file()

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    def foreign(self, *also: str) -> list[str]:
        """The names in the folder that a run does not write (RUN_FILES, their temporaries, and
        `also`: the executed notebook of a sweep point), sorted: what makes it not (only) a run."""
        own = {*RUN_FILES, *also, "features.tmp.npz", "tsne.tmp.npz"}
        return sorted(
            f.name
            for f in self.path.iterdir()
            if not (f.is_file() and own & {f.name, f.name.removesuffix(".tmp")})
            and not (f.name in RUN_FOLDERS and f.is_dir() and not f.is_symlink())
        )

    def require_finished(self) -> dict:
        """run.json of a finished run; RunError naming the folder otherwise."""
        info = self.info()
        if info.get("status") != "finished":
            state = info.get("status", "no run.json")
            raise RunError(f"{self.path}: no finished run ({state}); train it first (notebooks/03_train.ipynb)")
        return info

    @contextlib.contextmanager
    def lock(self, what: str = "run folder"):
        """Hold this folder for one writer: an OS file lock (flock) on its .lock file, held while
        the block runs and freed by the OS if the process dies. A second writer gets a one-line
        RunError naming the holder's pid and host."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: is a file, expected a {what} (a folder)")
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(
                f"{self.path}: this {what} is in use by {holder}; wait for it to finish or choose another folder"
            ) from None
        except OSError as e:
            os.close(fd)
            raise RunError(
                f"{self.path}: cannot lock this {what} ({e.strerror}): the filesystem does not "
                "support file locks, so two writers could collide; use a local disk"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # --- config and metrics --------------------------------------------------------------------

    def config(self) -> Config:
        path = self.file(CONFIG)
        if not path.is_file():
            raise RunError(f"{path}: missing; expected a run folder written by selfsup train")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not valid JSON ({first_line(e)})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object of config keys")
        return from_dict(d, str(path))

    def write_config(self, cfg: Config) -> None:
        write_json(self.file(CONFIG), cfg.to_dict())

    def metrics(self) -> list[dict]:
        """metrics.jsonl as a list of per-epoch dicts ([] when missing); a torn last line is skipped."""
        path = self.file(METRICS)
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return [r for r in rows if isinstance(r, dict)]

    def write_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.jsonl (atomically) with `rows`."""
        text = "".join(json.dumps(r) + "\n" for r in rows)
        write_atomically(self.file(METRICS), lambda f: f.write(text.encode()))

    def append_metrics(self, row: dict) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(row) + "\n")

    # --- checkpoint and encoder --------------------------------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        """Written to a temp file, then renamed: a kill leaves the previous checkpoint intact."""
        path = self.file(CHECKPOINT)
        tmp = path.with_suffix(".pt.tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RunError(
                f"{path}: could not write the checkpoint ({first_line(e)}); the previous checkpoint is kept"
            ) from None

    def load_checkpoint(self) -> dict:
        """The checkpoint's state on the CPU, read with weights_only=True: tensors and plain data
        only, so a crafted file cannot run code. Any problem is a one-line RunError."""
        path = self.file(CHECKPOINT)
        if not path.is_file():
            raise RunError(f"{path}: no checkpoint to resume from")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # weights_only refused an object: never unpickled, never run
            raise RunError(
                f"{path}: not a readable selfsup checkpoint (it holds objects other than tensors and "
                "plain data, which selfsup never loads: a crafted or foreign file)"
            ) from None
        except Exception as e:  # noqa: BLE001 - truncated file, not a zip archive, ...
            raise RunError(f"{path}: not a readable selfsup checkpoint ({first_line(e)})") from None
        if not isinstance(state, dict) or not {"model", "epoch", "config_hash"} <= set(state):
            raise RunError(f"{path}: not a selfsup checkpoint (expected model, epoch and config_hash)")
        return state

    def check_resumable(self, state: dict, identity: dict) -> None:
        """RunError naming the checkpoint when its identity (training_state) differs from this
        run's; a key an older checkpoint lacks counts as matching (device type: cpu)."""
        for key, (what, fix) in _IDENTITY.items():
            old = state.get(key, "cpu" if key == "device_type" else identity[key])
            if old != identity[key]:
                message = f"{what}; {fix}".format(old=old, new=identity[key])
                raise RunError(f"{self.file(CHECKPOINT)}: {message}")

    def save_encoder(self, encoder: torch.nn.Module) -> None:
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
        blob = save(tensors)  # bytes, written by us: save_file made the file 0600 whatever the umask
        write_atomically(self.file(ENCODER), lambda f: f.write(blob))

    def load_model(self, device="cpu") -> tuple[Config, torch.nn.Module]:
        """(config, model) of a finished run: the method built from config.json with the trained
        encoder from encoder.safetensors and, when the checkpoint has it, the trained projector
        (model.projector_trained says whether it was loaded)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not self.path.is_dir():
            raise RunError(f"{self.path}: run folder not found")
        cfg = self.config()
        enc_path = self.file(ENCODER)
        if not enc_path.is_file():
            raise RunError(f"{enc_path}: missing; the run has not finished (training writes it at the end)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_method(cfg)
        try:
            tensors = load_file(str(enc_path))
        except (OSError, SafetensorError) as e:
            raise RunError(f"{enc_path}: not a readable safetensors file ({first_line(e)})") from None
        try:
            model.encoder.load_state_dict(tensors)
        except RuntimeError as e:
            raise RunError(
                f"{enc_path}: does not fit the {cfg.backbone} encoder of config.json ({first_line(e)})"
            ) from None
        model.projector_trained = False
        if self.has_checkpoint():
            state = self.load_checkpoint()["model"]  # an unreadable or unsafe file: a one-line RunError
            proj = {k[len("projector.") :]: v for k, v in state.items() if k.startswith("projector.")}
            try:
                model.projector.load_state_dict(proj)
                model.projector_trained = True
            except RuntimeError:
                pass  # a projector of another shape: the protocol table gets backbone rows only
        return cfg, model.to(device)

    def random_init(self, cfg: Config) -> torch.nn.Module:
        """The run's own starting network (the same seed): the floor every result is compared to."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return build_method(cfg)

    # --- evaluation --------------------------------------------------------------------------

    def eval(self) -> dict:
        return read_json(self.file(EVAL))

    def write_eval(self, result: dict, features: dict | None = None) -> None:
        """eval.json (compact: it holds per-image predictions) and, given ``features`` ({name:
        array}), the features.npz it scored, committed together: a failed write keeps both old files."""
        text = json.dumps(result, default=str) + "\n"
        pairs = [self.file(EVAL), lambda f: f.write(text.encode())]
        if features is not None:
            pairs = [self.file(FEATURES), lambda f: np.savez(f, **features), *pairs]
        write_atomically(*pairs)

    def eval_current(self, cfg_hash: str | None = None, data=None) -> bool:
        """The one rule for "is eval.json current": it holds results, computed for the config with
        hash `cfg_hash` (default: the run's, from run.json) and, when `data` is given, on that data
        folder."""
        ev = self.eval()
        if not ev.get("summary"):
            return False
        try:
            evaluated = from_dict(ev.get("config") or {}).hash()
        except ConfigError:
            return False
        if evaluated != (cfg_hash if cfg_hash is not None else self.info().get("config_hash")):
            return False
        return data is None or Path(ev.get("data", "")).resolve() == Path(data).resolve()

    def save_features(self, arrays: dict) -> None:
        write_atomically(self.file(FEATURES), lambda f: np.savez(f, **arrays))

    def load_features(self) -> dict | None:
        """features.npz as {name: array}, None when missing or unreadable."""
        try:
            with np.load(self.file(FEATURES), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return None

    def cached_tsne(self, key: str) -> dict | None:
        try:
            with np.load(self.file(TSNE), allow_pickle=False) as z:
                return {k: z[k] for k in z.files if k != "key"} if str(z["key"]) == key else None
        except (OSError, ValueError, KeyError):
            return None

    def save_tsne(self, key: str, embeddings: dict) -> None:
        write_atomically(self.file(TSNE), lambda f: np.savez(f, key=np.array(key), **embeddings))

    # --- records of sweeps --------------------------------------------------------------------

    def error(self) -> str:
        """The first line of error.txt ('' when there is none)."""
        try:
            lines = self.file(ERROR).read_text().splitlines()
        except OSError:
            return ""
        return lines[0] if lines else ""

    def has_error(self) -> bool:
        return self.file(ERROR).exists()

    def write_error(self, message: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(ERROR).write_text(message + "\n")

    def clear_error(self) -> None:
        self.file(ERROR).unlink(missing_ok=True)

    def job(self) -> dict | None:
        """The SLURM job record (job_id, stdout, stderr, result, submitted), None when never submitted."""
        return read_json(self.file(JOB)) or None

    def write_job(self, record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.file(JOB), record)

    def headline(self) -> dict:
        """status, epochs, train_loss, wall_clock_s, config_hash, eval.json's summary and the sizes
        of the sets it scored (n_val, n_ood, n_select: what a single run's binomial interval needs).
        A file holding what selfsup does not write there (hand-edited, foreign) is a one-line
        RunError naming it and what is wrong."""
        info, metrics, ev = self.info(), self.metrics(), self.eval()
        trained, summary = ev.get("trained", {}), ev.get("summary", {})
        splits = ("val", "ood", "select")
        if not isinstance(trained, dict) or not all(isinstance(trained.get(s), dict | None) for s in splits):
            raise RunError(f"{self.file(EVAL)}: 'trained' is not an object of splits, as selfsup.evaluate writes it")
        sizes = {f"n_{s}": (trained.get(s) or {}).get("n_test", float("nan")) for s in splits}
        if not isinstance(summary, dict) or not all(_number(v) for v in (*summary.values(), *sizes.values())):
            raise RunError(f"{self.file(EVAL)}: 'summary' or a split's 'n_test' is not a number")
        if metrics and not _number(metrics[-1].get("train_loss")):
            raise RunError(f"{self.file(METRICS)}: its last row has no number 'train_loss'")
        if not _number(info.get("wall_clock_s", 0.0)):
            raise RunError(f"{self.file(RUN_INFO)}: 'wall_clock_s' is not a number")
        return dict(
            status=info.get("status", "missing"),
            epochs=len(metrics),
            train_loss=metrics[-1]["train_loss"] if metrics else float("nan"),
            wall_clock_s=info.get("wall_clock_s", float("nan")),
            config_hash=info.get("config_hash", ""),
            **sizes,
            **summary,
        )
