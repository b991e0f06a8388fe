"""Hostile and clumsy use: no code from run folders, one writer per folder, no garbage kept as
"last good", a consistent folder after kill -9 at any instant, every bad value refused in one line.

The one-line messages of the faults tried here are collected into docs/faults.md by
test_faults_table_is_current (run with SELFSUP_UPDATE_FAULTS=1 to rewrite the table).
"""

import contextlib
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from helpers import TINY_PRESET, TINY_RUN, make_tiny
from selfsup import cli, config, data, train
from selfsup.runs import Run, RunError

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "faults.md"
PY = [sys.executable, "-m", "selfsup.cli"]
FAULTS: dict[str, tuple[int, str]] = {}  # fault -> (exit status, message), filled by the tests below


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


def record(fault: str, code: int, message: str, expect_code: int = 2) -> None:
    assert code == expect_code, message
    assert message.startswith("selfsup: error: ") and "\n" not in message and "Traceback" not in message, message
    FAULTS[fault] = (code, re.sub(r"pid \d+ on \S+?;", "pid <pid> on <host>;", message))


def copy_run(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
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
        env={**_env(), "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )  # this process's arithmetic
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
    ("proj_dim=-1", ">= 0"),
    ("proj_hidden=-8", ">= 0"),
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
# The table in docs/faults.md


def faults_table() -> str:
    lines = ["| input or fault | exit | message |", "|---|---|---|"]
    for fault, (code, message) in sorted(FAULTS.items()):
        lines.append(f"| {fault} | {code} | `{message.replace('|', '/')}` |")
    return "\n".join(lines) + "\n"


def test_faults_table_is_current():
    """Runs last in this file: docs/faults.md holds exactly the messages recorded above."""
    if len(FAULTS) < 20:
        pytest.skip("run the whole file: the table needs every fault's message")
    text = DOC.read_text()
    start = text.index("<!-- faults -->\n") + len("<!-- faults -->\n")
    end = text.index("<!-- /faults -->")
    table = faults_table()
    if os.environ.get("SELFSUP_UPDATE_FAULTS"):
        DOC.write_text(text[:start] + table + text[end:])
        text = DOC.read_text()
    assert text[start:end] == table, "docs/faults.md is stale: rerun with SELFSUP_UPDATE_FAULTS=1"
