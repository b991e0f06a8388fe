"""Hostile and clumsy use: no code from run folders, one writer per folder, no garbage kept as
"last good", a consistent folder after kill -9 at any instant, every bad value refused in one line.

The one-line messages of the faults tried here are collected into docs/faults.md by
test_faults_table_is_current (run with SELFSUP_UPDATE_FAULTS=1 to rewrite the table; see
tests/faults_table.py).
"""

import contextlib
import errno
import hashlib
import http.server
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from faults_table import Faults
from helpers import TINY_PRESET, TINY_RUN, make_tiny
from selfsup import cli, config, data, threads, train
from selfsup.runs import Run, RunError

REPO = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "selfsup.cli"]
FAULTS = Faults(__file__, minimum=20)  # fault -> (exit status, message), filled by the tests below
record = FAULTS.record


class Marker:
    """A pickle that writes a file when unpickled: what a crafted checkpoint.pt can do with
    torch.load(weights_only=False)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    folder = make_tiny(root / "data")
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump({**TINY_RUN, "epochs": 2}))
    finished = root / "finished"
    train.train(config.load(preset), data.load_dataset(folder), finished, progress=False)
    return dict(root=root, data=folder, preset=preset, finished=finished)


def run_cli(args, tmp) -> tuple[int, str]:
    """selfsup in this process: (exit status, stderr with tmp paths as <tmp>)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(a) for a in args])
    return code, err.getvalue().strip().replace(str(tmp), "<tmp>").replace(str(REPO), "<repo>")


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)  # the event files' folder (events/) too
    return dest


# ---------------------------------------------------------------------------------------------
# No code from run folders


def test_malicious_checkpoint_never_runs_on_resume_eval_sweep_or_report(tiny, tmp_path):
    marker = tmp_path / "marker"
    run = copy_run(tiny["finished"], tmp_path / "run")
    torch.save({"model": Marker(marker), "epoch": 1, "config_hash": "x"}, run / "checkpoint.pt")

    code, msg = run_cli(
        ["train", "--config", tiny["preset"], "--data", tiny["data"], "--run-dir", run, "--resume"], tmp_path
    )
    record("crafted checkpoint.pt (a pickle that runs code) on `train --resume`", code, msg)
    assert "checkpoint.pt: not a readable selfsup checkpoint" in msg
    code, msg = run_cli(["eval", "--run-dir", run, "--data", tiny["data"]], tmp_path)
    record("crafted checkpoint.pt on `eval`", code, msg)

    # a sweep point resuming from it (its run.json: same config, unfinished)
    sweep_dir = tmp_path / "runs" / "evil"
    point = copy_run(run, sweep_dir / "base")
    info = json.loads((point / "run.json").read_text())
    (point / "run.json").write_text(json.dumps({**info, "status": "running"}))
    spec = tmp_path / "evil.yaml"
    spec.write_text(
        yaml.safe_dump(
            dict(
                name="evil",
                preset=str(tiny["preset"]),
                data=str(tiny["data"]),
                notebook=str(REPO / "notebooks" / "03_train.ipynb"),
                points=[{}],
                parameters={"progress": False},
            )
        )
    )
    code, msg = run_cli(["sweep", spec, "--runs", tmp_path / "runs", "--no-progress"], tmp_path)
    assert code == 1 and "did not finish" in msg
    assert "not a readable selfsup checkpoint" in (point / "error.txt").read_text()

    # the report on a run whose checkpoint is crafted
    code, msg = run_cli(
        [
            "report",
            "--no-progress",
            "--notebook",
            REPO / "notebooks" / "05_report.ipynb",
            "--out",
            tmp_path / "rep",
            "-p",
            "root",
            REPO,
            "-p",
            "data_dir",
            tiny["data"],
            "-p",
            "final_run",
            run,
            "-p",
            "runs",
            tmp_path / "none",
            "-p",
            "figures",
            tmp_path / "figs",
        ],
        tmp_path,
    )
    record("crafted checkpoint.pt on `report`", code, msg)
    assert not marker.exists()


def test_truncated_files_are_one_line(tiny, tmp_path):
    run = copy_run(tiny["finished"], tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, msg = run_cli(
        ["train", "--config", tiny["preset"], "--data", tiny["data"], "--run-dir", run, "--resume"], tmp_path
    )
    record("truncated checkpoint.pt on `train --resume`", code, msg)
    run2 = copy_run(tiny["finished"], tmp_path / "run2")
    enc = run2 / "encoder.safetensors"
    enc.write_bytes(enc.read_bytes()[:200])
    code, msg = run_cli(["eval", "--run-dir", run2, "--data", tiny["data"]], tmp_path)
    record("truncated encoder.safetensors on `eval`", code, msg)
    (tmp_path / "afile").write_text("x")
    code, msg = run_cli(
        ["train", "--config", tiny["preset"], "--data", tiny["data"], "--run-dir", tmp_path / "afile"], tmp_path
    )
    record("`--run-dir` naming a file", code, msg)
    assert (tmp_path / "afile").read_text() == "x"


# ---------------------------------------------------------------------------------------------
# One writer per folder: real processes


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO / "lib"), "OMP_NUM_THREADS": "1"}


WHEN_FILE_EXISTS = """
import sys, time
from selfsup import cli
deadline = time.monotonic() + 300
while not __import__("os").path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(cli.main(sys.argv[2:]))
"""  # argv: the file to wait for, then the command line of selfsup


def test_two_trainings_on_one_run_folder_one_is_refused(tiny, tmp_path):
    run = tmp_path / "shared"
    args = PY + [
        "train",
        "--config",
        str(tiny["preset"]),
        "--data",
        str(tiny["data"]),
        "--run-dir",
        str(run),
        "--set",
        "epochs=6",
        "--no-progress",
    ]
    # The second process imports everything first, then starts the moment the first one has
    # begun training (its run.json exists): the two overlap whatever the machine's load.
    second = [sys.executable, "-c", WHEN_FILE_EXISTS, str(run / "run.json"), *args[3:]]
    procs = [
        subprocess.Popen(second, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()),
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()),
    ]
    procs.reverse()  # [first, second]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 2], outs
    refused = outs[1][1].strip()
    assert refused.count("\n") == 0 and "is in use by pid" in refused, refused
    assert [m["epoch"] for m in Run(run).metrics()] == [1, 2, 3, 4, 5, 6]
    assert Run(run).info()["status"] == "finished" and Run(run).info()["epochs"] == 6


def test_second_writer_names_the_holder_and_a_killed_holder_frees_the_folder(tiny, tmp_path):
    run = tmp_path / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from selfsup.runs import Run
        with Run({str(run)!r}).lock():
            print("locked", flush=True)
            time.sleep(120)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, msg = run_cli(["train", "--config", tiny["preset"], "--data", tiny["data"], "--run-dir", run], tmp_path)
        record("a second `train` on a run folder in use", code, msg)
        assert f"pid {holder.pid} on " in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, _ = run_cli(
        ["train", "--config", tiny["preset"], "--data", tiny["data"], "--run-dir", run, "--no-progress"], tmp_path
    )
    assert code == 0  # the OS released the dead holder's lock


def test_two_sweeps_on_one_sweep_folder_one_is_refused(tiny, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump(TINY_PRESET))
    spec = tmp_path / "twice.yaml"
    spec.write_text(
        yaml.safe_dump(
            dict(
                name="twice",
                preset=str(preset),
                data=str(tiny["data"]),
                notebook=str(REPO / "notebooks" / "03_train.ipynb"),
                axes={"temperature": [0.1, 0.5]},
                parameters={"progress": False, "eval_options": {"table": False, "linear": False}},
            )
        )
    )
    args = PY + ["sweep", str(spec), "--runs", str(tmp_path / "runs"), "--no-progress"]
    second = [sys.executable, "-c", WHEN_FILE_EXISTS, str(tmp_path / "runs" / "twice" / "sweep.json"), *args[3:]]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
        for cmd in (second, args)
    ]
    procs.reverse()  # [first, second]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 2], outs
    refused = outs[1][1].strip()
    assert "sweep folder is in use by pid" in refused and refused.count("\n") == 0
    for point in ("temperature-0.1", "temperature-0.5"):
        assert [m["epoch"] for m in Run(tmp_path / "runs" / "twice" / point).metrics()] == [1]


# ---------------------------------------------------------------------------------------------
# No garbage kept as "last good"


def _poison_at(epoch_to_poison, what):
    """A step_target that makes a BatchNorm buffer (or a weight) infinite during that epoch."""
    from selfsup.methods import Method

    original = Method.step_target

    def step_target(self, progress):
        original(self, progress)
        if getattr(self, "_epoch_progress", None) is None and progress > (epoch_to_poison - 1) / 2:
            self._epoch_progress = progress
            bn = next(m for m in self.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
            with torch.no_grad():
                (bn.running_var if what == "buffer" else bn.weight).fill_(float("inf"))

    return step_target


@pytest.mark.parametrize("what", ["buffer", "weight"])
def test_non_finite_state_fails_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch, what):
    from selfsup.methods import Method

    cfg = config.load(tiny["preset"], {"epochs": 2, "eval_every": 0})
    ds = data.load_dataset(tiny["data"])
    run = tmp_path / "div"
    train.train(cfg, ds, run, progress=False, stop_after=1)
    good = (run / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(Method, "step_target", _poison_at(2, what))
    with pytest.raises(RunError) as e:
        train.train(cfg, ds, run, resume=True, progress=False)
    message = str(e.value)
    assert "in epoch 2" in message and "last good checkpoint is kept" in message and "\n" not in message
    if what == "buffer":  # the loss stays finite (BatchNorm trains on batch statistics): the state check sees it
        assert "buffer encoder." in message and "running_var became NaN or infinite" in message
    assert (run / "checkpoint.pt").read_bytes() == good  # the last good checkpoint is kept
    info = Run(run).info()
    assert info["status"] == "failed" and info["error"] == message
    assert [m["epoch"] for m in Run(run).metrics()] == [1]  # no row for the bad epoch
    if what == "buffer":
        FAULTS["a BatchNorm running_var that became infinite (eval_every=0)"] = (
            2,
            f"selfsup: error: {message}".replace(str(tmp_path), "<tmp>"),
        )


def test_divergence_seen_by_the_knn_monitor_is_one_line(tiny, tmp_path, monkeypatch):
    from selfsup.methods import Method

    monkeypatch.setattr(Method, "step_target", _poison_at(1, "weight"))
    cfg = config.load(tiny["preset"], {"epochs": 2, "checkpoint_every": 2})
    with pytest.raises(RunError, match="in epoch 1") as e:
        train.train(cfg, data.load_dataset(tiny["data"]), tmp_path / "r", progress=False)
    assert "\n" not in str(e.value) and Run(tmp_path / "r").status == "failed"


def test_disk_full_while_checkpointing_keeps_the_state(tiny, tmp_path, monkeypatch):
    cfg = config.load(tiny["preset"], {"epochs": 2})
    ds = data.load_dataset(tiny["data"])
    run = tmp_path / "full"
    train.train(cfg, ds, run, progress=False, stop_after=1)
    good = (run / "checkpoint.pt").read_bytes()

    def no_space(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    code, msg = run_cli(
        ["train", "--config", tiny["preset"], "--data", tiny["data"], "--run-dir", run, "--resume", "--no-progress"],
        tmp_path,
    )
    record("disk full while writing checkpoint.pt", code, msg)
    assert (run / "checkpoint.pt").read_bytes() == good and not (run / "checkpoint.pt.tmp").exists()
    assert Run(run).status == "failed"


def test_make_setup_on_a_short_disk_stops_in_one_line_before_creating_anything(tmp_path):
    """What CI met once: pip ran out of disk halfway through torch. make setup now checks first."""
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["make", "-s", "setup", f"VENV={venv}", "SETUP_FREE_GB=1e12"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    message = done.stderr.strip().splitlines()[0]
    assert done.returncode != 0 and not venv.exists()
    assert re.fullmatch(
        r"make setup: [\d.]+ GB free on the disk of \S+; the environment needs about 1e12 GB "
        r"\(free some space, or SETUP_FREE_GB=0 to try anyway\)",
        message,
    ), message


# ---------------------------------------------------------------------------------------------
# kill -9 at the instant after the checkpoint rename


KILL_AFTER_RENAME = """
import os, signal, sys
from selfsup import config, data, train
from selfsup.runs import Run

original = Run.save_checkpoint
def save_then_die(self, state):
    original(self, state)
    if state["epoch"] == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # right after the rename, before anything else
Run.save_checkpoint = save_then_die
cfg = config.load(sys.argv[1], {"epochs": 3})
train.train(cfg, data.load_dataset(sys.argv[2]), sys.argv[4], progress=False)
"""


@pytest.mark.parametrize("kill_epoch", [1, 2])
def test_kill_after_checkpoint_rename_resumes_to_a_consistent_folder(tiny, tmp_path, kill_epoch):
    cfg = config.load(tiny["preset"], {"epochs": 3})
    ds = data.load_dataset(tiny["data"])
    train.train(cfg, ds, tmp_path / "straight", progress=False)
    run = tmp_path / "killed"
    p = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_RENAME, str(tiny["preset"]), str(tiny["data"]), str(kill_epoch), str(run)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), "OMP_NUM_THREADS": str(threads.chosen(torch.device("cpu")))},
    )  # the arithmetic of this process's straight run: its thread count
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert [m["epoch"] for m in Run(run).metrics()] == list(range(1, kill_epoch + 1))
    train.train(cfg, ds, run, resume=True, progress=False)
    straight, resumed = Run(tmp_path / "straight").metrics(), Run(run).metrics()
    assert [m["epoch"] for m in resumed] == [1, 2, 3] and Run(run).info()["epochs"] == 3
    assert [m["train_loss"] for m in resumed] == [m["train_loss"] for m in straight]


def test_metrics_are_rebuilt_from_the_checkpoint_on_resume(tiny, tmp_path):
    """Whatever metrics.jsonl holds after a kill (a lost row, a torn line), the resume restores the
    rows the checkpoint committed with it."""
    cfg = config.load(tiny["preset"], {"epochs": 3})
    ds = data.load_dataset(tiny["data"])
    run = tmp_path / "r"
    train.train(cfg, ds, run, progress=False, stop_after=2)
    rows = Run(run).metrics()
    (run / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n" + '{"epoch": 2, "train_lo')
    train.train(cfg, ds, run, resume=True, progress=False)
    assert [m["epoch"] for m in Run(run).metrics()] == [1, 2, 3]
    assert Run(run).metrics()[1] == rows[1]


# ---------------------------------------------------------------------------------------------
# Every value checked, in one line, before anything trains


BAD_VALUES = [
    ("checkpoint_every=0", ">= 1"),
    ("knn_train_limit=-1", ">= 0"),
    ("proj_dim=-1", "in [0, 32768]"),
    ("proj_hidden=-8", "in [0, 32768]"),
    ("proj_dim=1000000000", "in [0, 32768]"),
    ("proj_hidden=1000000000", "in [0, 32768]"),
    ("pred_hidden=1000000000", "in [0, 32768]"),
    ("device=gpu", "auto, cpu, cuda or cuda:N"),
    ("lr=.nan", "in (0, 100]"),
    ("weight_decay=-0.1", "in [0, 10]"),
    ("momentum=-0.5", "in [0, 1)"),
    ("barlow_lambda=-1", "in [0, 10]"),
    ("warmup_epochs=-1", ">= 0"),
    ("byol_momentum=1.5", "in [0, 1]"),
    ("min_lr_ratio=5", "in [0, 1]"),
    ("batch_size=1", ">= 2"),
    ("temperature=1e-30", "in [0.001, 10]"),
    ("knn_k=1000", "the k-NN monitor has only"),
]


@pytest.mark.parametrize("setting,expected", BAD_VALUES)
def test_bad_values_are_refused_before_anything_is_written(tiny, tmp_path, setting, expected):
    run = tmp_path / "r"
    code, msg = run_cli(
        ["train", "--config", tiny["preset"], "--data", tiny["data"], "--run-dir", run, "--set", setting], tmp_path
    )
    record(f"`--set {setting}`", code, msg)
    assert setting.split("=")[0] in msg and expected in msg
    assert not run.exists()


def test_val_set_checks(tiny, tmp_path):
    one = tmp_path / "one"
    ds = data.load_dataset(tiny["data"])
    one.mkdir()
    data.save_npz(ds.train, one / "train.npz")
    data.save_npz(data.Split(ds.val.images[:1], ds.val.labels[:1], ds.val.class_names), one / "val.npz")
    code, msg = run_cli(["train", "--config", tiny["preset"], "--data", one, "--run-dir", tmp_path / "r"], tmp_path)
    record("a validation set of 1 image", code, msg)

    other = tmp_path / "other"
    other.mkdir()
    data.save_npz(ds.train, other / "train.npz")
    data.save_npz(
        data.Split(ds.val.images[::-1].copy(), ds.val.labels[::-1].copy(), ds.val.class_names), other / "val.npz"
    )
    run = tmp_path / "stopped"
    train.train(config.load(tiny["preset"]), ds, run, progress=False, stop_after=1)
    code, msg = run_cli(["train", "--config", tiny["preset"], "--data", other, "--run-dir", run, "--resume"], tmp_path)
    record("`--resume` with another validation set", code, msg)


def test_sweep_exit_status_says_when_points_failed(tiny, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            dict(
                name="s",
                preset=str(tiny["preset"]),
                data=str(tiny["data"]),
                notebook=str(REPO / "notebooks" / "03_train.ipynb"),
                points=[{"lr": -1.0}],
                parameters={"progress": False},
            )
        )
    )
    code, msg = run_cli(["sweep", spec, "--runs", tmp_path / "runs", "--no-progress"], tmp_path)
    record("a sweep with an invalid point", code, msg, expect_code=1)
    assert "1 of 1 sweep points did not finish (lr--1: invalid)" in msg


# ---------------------------------------------------------------------------------------------
# Write failures: one line naming the file and the cause, no temporary left, nothing lost


@pytest.fixture(scope="module")
def evaluated(tiny):
    """A finished run that has been evaluated once: its eval.json and features.npz must survive
    a later evaluation that cannot write."""
    run = copy_run(tiny["finished"], tiny["root"] / "evaluated")
    code, msg = run_cli(["eval", "--run-dir", run, "--data", tiny["data"]], tiny["root"])
    assert code == 0, msg
    return run


def files_of(folder: Path) -> dict:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def run_process(args, tmp, prefix=(), preexec_fn=None) -> tuple[int, str, str]:
    """selfsup in a new process (after `prefix`, e.g. unshare): (exit status, stderr with tmp
    paths as <tmp>, stdout)."""
    done = subprocess.run(
        [*prefix, *PY, *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        preexec_fn=preexec_fn,
    )
    return done.returncode, done.stderr.strip().replace(str(tmp), "<tmp>"), done.stdout


def file_size_limit(limit: int):
    """preexec_fn: files may not grow past `limit` bytes (RLIMIT_FSIZE). SIGXFSZ is ignored, so
    the write that crosses the limit fails with EFBIG, as it does on a quota or a FAT disk."""

    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_eval_over_a_file_size_limit_keeps_the_previous_evaluation(tiny, evaluated, tmp_path):
    run = copy_run(evaluated, tmp_path / "run")
    before = files_of(run)
    assert len(before["features.npz"]) > 20_000  # so the limit below stops its rewrite
    code, msg, _ = run_process(
        ["eval", "--run-dir", run, "--data", tiny["data"]], tmp_path, preexec_fn=file_size_limit(20_000)
    )
    record("`eval` over a file-size limit (RLIMIT_FSIZE, EFBIG)", code, msg)
    assert "<tmp>/run/features.npz" in msg and "File too large" in msg
    assert files_of(run) == before  # no features.npz.tmp, eval.json and features.npz unchanged


def test_train_below_a_file_is_one_line(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, msg = run_cli(
        ["train", "--config", tiny["preset"], "--data", tiny["data"], "--run-dir", tmp_path / "afile" / "run"],
        tmp_path,
    )
    record("`train --run-dir` below a file (ENOTDIR)", code, msg)
    assert "<tmp>/afile" in msg and (tmp_path / "afile").read_text() == "x"


def _can_mount() -> bool:
    """Whether this process may make a private mount namespace (unshare -rm: as root, or as a
    user where user namespaces are allowed); the read-only and full-disk tests need one."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _can_mount(), reason="no private mount namespace (unshare -rm)")

# A real read-only filesystem: the folder bind-mounted read-only in a private mount namespace
# (chmod would not do: root writes through it). argv: the folder, then the command.
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
# A real full disk: a tmpfs of `size` over the folder, holding a copy of `source`; the folder's
# listing and checksums afterwards go to stdout (the tmpfs vanishes with the namespace).
# argv: the folder, its size, source, then the command.
FULL_DISK = (
    'd=$1 && mount -t tmpfs -o size="$2" tmpfs "$d" && cp -a "$3"/. "$d"/ && shift 3 && '
    '"$@"; rc=$?; cd "$d" && echo "== files" && find . -type f -printf "%P\\n" && echo "== sums" && '
    'find . -type f -printf "%P\\0" | xargs -0 md5sum && exit $rc'
)


@needs_mounts
def test_eval_on_a_read_only_filesystem(tiny, evaluated, tmp_path):
    run = copy_run(evaluated, tmp_path / "run")
    before = files_of(run)
    code, msg, _ = run_process(
        ["eval", "--run-dir", run, "--data", tiny["data"]],
        tmp_path,
        prefix=["unshare", "-rm", "sh", "-c", READ_ONLY, "sh", run],
    )
    record("`eval` on a read-only filesystem (EROFS)", code, msg)
    assert "<tmp>/run/features.npz" in msg and "Read-only file system" in msg
    assert files_of(run) == before


@needs_mounts
def test_eval_on_a_full_disk(tiny, evaluated, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    used = sum(-(-len(b) // 4096) * 4096 for b in files_of(evaluated).values())
    code, msg, after = run_process(
        ["eval", "--run-dir", run, "--data", tiny["data"]],
        tmp_path,
        prefix=["unshare", "-rm", "sh", "-c", FULL_DISK, "sh", run, str(used + 16384), evaluated],
    )
    record("`eval` on a full disk (ENOSPC)", code, msg)
    assert "<tmp>/run/features.npz" in msg and "No space left on device" in msg
    listing, sums = after.split("== files")[1].split("== sums")
    assert sorted(listing.split()) == sorted(files_of(evaluated))  # no temporary left
    for name, content in files_of(evaluated).items():  # and every file as it was
        assert f"{hashlib.md5(content).hexdigest()}  {name}" in sums or name.startswith(".")


@needs_mounts
def test_train_into_a_read_only_filesystem(tiny, tmp_path):
    folder = tmp_path / "ro"
    stopped = folder / "stopped"
    train.train(config.load(tiny["preset"]), data.load_dataset(tiny["data"]), stopped, progress=False, stop_after=1)
    before = files_of(stopped)
    train_args = ["train", "--config", tiny["preset"], "--data", tiny["data"], "--no-progress", "--run-dir"]
    in_read_only = ["unshare", "-rm", "sh", "-c", READ_ONLY, "sh", folder]
    code, msg, _ = run_process([*train_args, folder / "new"], tmp_path, prefix=in_read_only)
    record("`train` into a new run folder on a read-only filesystem", code, msg)
    assert "<tmp>/ro/new" in msg and "Read-only file system" in msg
    code, msg, _ = run_process([*train_args, stopped, "--resume"], tmp_path, prefix=in_read_only)
    record("`train --resume` of a run on a read-only filesystem", code, msg)
    assert "<tmp>/ro/stopped" in msg and "Read-only file system" in msg
    assert files_of(stopped) == before and sorted(p.name for p in folder.iterdir()) == ["stopped"]


def test_encoder_file_follows_the_umask_as_the_other_run_files(tiny):
    """encoder.safetensors was written 0600 whatever the umask; config.json follows it."""
    modes = {f.name: f.stat().st_mode & 0o777 for f in tiny["finished"].iterdir()}
    assert modes["encoder.safetensors"] == modes["config.json"] == modes["checkpoint.pt"], modes


# ---------------------------------------------------------------------------------------------
# Data the protocols cannot use all of


def _with_ood(tiny, folder: Path, images, labels, names) -> Path:
    folder.mkdir()
    for name in ("train", "val"):
        (folder / f"{name}.npz").write_bytes((tiny["data"] / f"{name}.npz").read_bytes())
    data.save_npz(data.Split(images, np.asarray(labels), names), folder / "ood.npz")
    return folder


@pytest.mark.parametrize("n", [1, 2])
def test_an_ood_set_too_small_to_split_is_skipped_and_said(tiny, tmp_path, n):
    ood = data.load_dataset(tiny["data"]).ood
    folder = _with_ood(tiny, tmp_path / "d", ood.images[:n], ood.labels[:n], ood.class_names)
    code, msg = run_cli(["data", "info", folder], tmp_path)
    assert code == 0 and msg == ""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["data", "info", str(folder)])
    assert re.search(rf"ood +{n} images", out.getvalue()) and "needs at least 5 images; eval skips it" in out.getvalue()
    run = copy_run(tiny["finished"], tmp_path / "run")
    code, msg = run_cli(["eval", "--run-dir", run, "--data", folder], tmp_path)
    record(f"`eval` with an ood.npz of {n} image(s)", code, msg, expect_code=0)
    assert "OOD protocol skipped" in msg
    ev = json.loads((run / "eval.json").read_text())
    assert ev["trained"]["ood"] is None and ev["random_init"]["ood"] is None
    assert [s.replace(str(tmp_path), "<tmp>") for s in ev["skipped"]] == [msg.removeprefix("selfsup: note: ")]
    assert "val_linear" in ev["summary"] and not any(k.startswith("ood") for k in ev["summary"])


def test_an_ood_set_without_two_images_of_a_class_skips_only_the_probe(tiny, tmp_path):
    ood = data.load_dataset(tiny["data"]).ood
    folder = _with_ood(tiny, tmp_path / "d", ood.images[:6], np.arange(6), [f"c{i}" for i in range(6)])
    run = copy_run(tiny["finished"], tmp_path / "run")
    code, msg = run_cli(["eval", "--run-dir", run, "--data", folder], tmp_path)
    record("`eval` with an ood.npz of 6 images, each of its own class", code, msg, expect_code=0)
    assert "linear probe skipped" in msg
    summary = json.loads((run / "eval.json").read_text())["summary"]
    assert "ood_knn" in summary and "ood_linear" not in summary and "val_linear" in summary


# ---------------------------------------------------------------------------------------------
# Downloads: a killed download leaves nothing that a later one keeps


class StallingServer:
    """Serves `payload`; the first answer sends `stall_after` bytes, then stalls (until closed)."""

    def __init__(self, payload: bytes, stall_after: int):
        self.stalled, self.requests = threading.Event(), 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.requests == 1:
                    self.wfile.write(payload[:stall_after])
                    self.wfile.flush()
                    server.stalled.wait(120)
                    return
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tiny.zip"
        threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()

    def close(self):
        self.stalled.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_download_killed_midway_leaves_no_partial_after_the_next_run(tmp_path, monkeypatch):
    from image_trees import make_tiny_tree, zip_tree

    tree = make_tiny_tree(tmp_path / "src" / "tiny-imagenet-200")
    padding = ("tiny-imagenet-200/padding.bin", np.random.RandomState(0).bytes(3 << 20))
    payload = zip_tree(tree, tmp_path / "src" / "tiny.zip", extra=[padding]).read_bytes()
    md5 = "md5:" + hashlib.md5(payload).hexdigest()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = StallingServer(payload, stall_after=2 << 20)
    cache = tmp_path / "cache"
    options = ["--id-classes", "2", "--ood-classes", "1", "--no-progress", "--url", server.url, "--hash", md5]
    options += ["--cache", str(cache)]
    try:
        first = subprocess.Popen(
            [*PY, "data", "download", "tiny-imagenet", str(tmp_path / "first"), *options],
            env=_env(),
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not (cache.exists() and any(f.stat().st_size > 0 for f in cache.iterdir())):
            assert time.monotonic() < deadline and first.poll() is None, "the download never started"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # mid-download: 1 MiB or more written, 3 MiB to come
        first.wait()
        assert any(cache.iterdir())  # what the kill left (the next run must find it)
        old = os.umask(0o022)
        try:
            code, msg = run_cli(["data", "download", "tiny-imagenet", tmp_path / "second", *options], tmp_path)
        finally:
            os.umask(old)
    finally:
        server.close()
    assert code == 0, msg
    assert [p.name for p in cache.iterdir()] == ["tiny-imagenet-200.zip"]
    assert (cache / "tiny-imagenet-200.zip").stat().st_mode & 0o777 == 0o644  # as the umask says (was 0600)


# ---------------------------------------------------------------------------------------------
# Encodings, sizes, names


def test_config_and_sweep_files_that_are_not_utf8_are_one_line(tiny, tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("# réglages\nepochs: 1\n".encode("latin-1"))
    code, msg = run_cli(["train", "--config", latin1, "--data", tiny["data"], "--run-dir", tmp_path / "r"], tmp_path)
    record("a `--config` file that is not UTF-8", code, msg)
    assert "<tmp>/latin1.yaml" in msg and "UTF-8" in msg and not (tmp_path / "r").exists()
    code, msg = run_cli(["sweep", latin1, "--runs", tmp_path / "runs", "--no-progress"], tmp_path)
    record("a sweep file that is not UTF-8", code, msg)
    assert "<tmp>/latin1.yaml" in msg and "UTF-8" in msg and not (tmp_path / "runs").exists()


def npy_bytes(shape, dtype, data_bytes: bytes) -> bytes:
    """A .npy file whose header declares `shape` and `dtype`, followed by `data_bytes`."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + data_bytes


@pytest.mark.parametrize(
    "case,shape", [("a 600 GB array in 12 KB", (200_000, 1000, 1000, 3)), ("a truncated array", (40, 32, 32, 3))]
)
def test_an_npz_whose_header_declares_more_than_it_holds_is_one_line(tmp_path, case, shape):
    folder = tmp_path / "d"
    folder.mkdir()
    labels = io.BytesIO()
    np.save(labels, np.zeros(4, np.int64))
    for name in ("train", "val"):
        with zipfile.ZipFile(folder / f"{name}.npz", "w") as z:
            z.writestr("images.npy", npy_bytes(shape, np.uint8, bytes(4 * 32 * 32 * 3)))
            z.writestr("labels.npy", labels.getvalue())
    code, msg = run_cli(["data", "info", folder], tmp_path)
    record(f"an .npz whose header declares {case}", code, msg)
    assert "<tmp>/d/train.npz: key 'images'" in msg and "declares" in msg


def test_zip_entries_with_absolute_paths_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "abs.zip", "w") as z:
        for cls in ("cat", "dog"):
            for i in range(3):
                image = io.BytesIO()
                PIL.Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(image, "PNG")
                z.writestr(f"/{cls}/{i}.png", image.getvalue())
    code, msg = run_cli(
        ["data", "convert", tmp_path / "abs.zip", tmp_path / "out", "--id-classes", "2", "--ood-classes", "0"],
        tmp_path,
    )
    record("a .zip whose entries have absolute paths (/cat/0.png)", code, msg)
    assert "'/cat/0.png'" in msg and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", ""])
def test_class_names_must_be_one_line_of_text(tiny, tmp_path, name):
    ds = data.load_dataset(tiny["data"])
    names = [name, *ds.train.class_names[1:]]
    with pytest.raises(data.DataError, match="'class_names'"):
        data.save_npz(data.Split(ds.train.images, ds.train.labels, names), tmp_path / "train.npz")
    assert not (tmp_path / "train.npz").exists()
    folder = tmp_path / "d"
    folder.mkdir()
    for split in ("train", "val"):  # written past the check, as another tool could
        s = getattr(ds, split)
        np.savez(folder / f"{split}.npz", images=s.images, labels=s.labels, class_names=np.asarray(names))
    code, msg = run_cli(["data", "info", folder], tmp_path)
    record(f"class name {name!r} in an .npz", code, msg)


# ---------------------------------------------------------------------------------------------
# The table in docs/faults.md


def test_faults_table_is_current():
    """Runs last in this file: docs/faults.md holds exactly the messages recorded above (where
    the read-only and full-disk tests were skipped, the others' rows)."""
    FAULTS.check(complete=_can_mount())
