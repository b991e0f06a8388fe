"""selfsup.cluster against a real one-node SLURM (scripts/slurm_local.sh start, or make slurm).

Without a cluster that answers (no sinfo, or no controller) the cluster tests skip; with
SELFSUP_REQUIRE_SLURM=1 (.ci/run) they fail instead. What they check: a sweep through SLURM
(detached, listed by --status, collected by running it again) gives the local executor's numbers
exactly; a task interrupted as at a time limit (SIGUSR2) is requeued and ends with the metrics of an
uninterrupted run; a 2-task gloo job through SLURM trains exactly as `torchrun --nproc-per-node 2`;
and the failures users meet end in one line that says what to do.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit
import yaml

from helpers import TINY_PRESET, TINY_RUN, make_tiny
from selfsup import cli, cluster, config, data, demo_data, results, sweep, train
from selfsup.config import ConfigError
from selfsup.runs import CHECKPOINT, Run

REPO = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("SELFSUP_REQUIRE_SLURM") == "1"
ACCURACIES = ["train_loss", "val_knn", "ood_knn", "val_knn_weighted", "ood_knn_weighted", "select_knn"]


def _why_no_cluster() -> str:
    if shutil.which("sinfo") is None:
        return "no sinfo on the PATH"
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        return f"sinfo: {(done.stderr.strip().splitlines() or ['no nodes'])[-1]}"
    return ""


@pytest.fixture(scope="module")
def slurm():
    why = _why_no_cluster()
    if why:
        message = f"no SLURM cluster answers here ({why}); `make slurm` starts a one-node one"
        pytest.fail(message) if REQUIRED else pytest.skip(message)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny dataset, a tiny preset and a 2 points x 2 seeds sweep over it (2 epochs a run)."""
    root = tmp_path_factory.mktemp("slurm")
    demo_data.make_demo(
        root / "data", n_id_classes=3, n_ood_classes=2, train_per_class=16, val_per_class=6, ood_per_class=10, size=32
    )
    (root / "tiny.yaml").write_text(yaml.safe_dump({**TINY_PRESET, "epochs": 2}))
    spec = dict(
        name="tiny",
        preset=str(root / "tiny.yaml"),
        data=str(root / "data"),
        parameters={"eval_options": {"table": False, "linear": False}},
        axes={"temperature": [0.1, 0.5]},
        seeds=[0, 1],
        cluster={"cpus_per_task": 1, "time_min": 10},
    )
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec))
    return root


def _sweep_file(root: Path, **changes) -> Path:
    spec = {**yaml.safe_load((root / "sweep.yaml").read_text()), **changes}
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _table(path: Path) -> dict:
    rows = results.load_results(path).to_dict("records")
    return {(r["point"], r["seed"]): {k: r[k] for k in ACCURACIES + ["status"]} for r in rows}


# ---------------------------------------------------------------------------------------------
# Options and errors that need no cluster


@pytest.mark.parametrize(
    "block, words",
    [
        ({"partiton": "gpu"}, ["'cluster.partiton'", "unknown cluster option"]),
        ({"time_min": "long"}, ["'cluster.time_min'", "whole minutes"]),
        ({"gpus_per_task": -1}, ["'cluster.gpus_per_task'", "0 or more"]),
        ({"sbatch": ["--exclusive"]}, ["'cluster.sbatch'", "mapping"]),
        ("gpu", ["'cluster'", "mapping"]),
    ],
)
def test_bad_cluster_block_names_file_and_key(tiny, block, words):
    path = _sweep_file(tiny, name="bad", cluster=block)
    with pytest.raises(ConfigError) as err:
        sweep.load_sweep(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_command_line_cluster_options_override_the_file():
    opts = cluster.cluster_options({"partition": "a", "time_min": 5}, cluster.parse_cluster_args(["time_min=600"]))
    assert opts == {"partition": "a", "time_min": 600, "cpus_per_task": 1}
    with pytest.raises(ConfigError, match="--cluster mem_gb: expected memory in GB"):
        cluster.cluster_options(None, cluster.parse_cluster_args(["mem_gb=lots"]))


def test_no_sbatch_on_the_path_is_one_line(tiny, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # python, but no SLURM commands
    code = cli.main(["sweep", str(tiny / "sweep.yaml"), "--runs", str(tiny / "none"), "--executor", "slurm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no sbatch on the PATH" in err and "make slurm" in err and "\n" not in err
    assert not (tiny / "none" / "tiny" / "temperature-0.1").exists()  # nothing touched


def test_a_requeued_point_resumes():
    """What submitit calls at SIGUSR2: the same task, set to resume from the run's checkpoint."""
    task = dict(slug="p", run_dir="r", parameters={"resume": False, "lr": 1})
    again = cluster.PointTask(len, task).checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function.task["parameters"] == {"resume": True, "lr": 1} and task["parameters"]["resume"] is False


def test_a_requeued_training_job_resumes_once_it_has_a_checkpoint(tmp_path):
    job = cluster.TrainJob(cli.main, ["train", "--run-dir", str(tmp_path)], str(tmp_path))
    assert job.checkpoint().function.argv == job.argv  # nothing to resume from yet: start again
    (tmp_path / CHECKPOINT).write_bytes(b"")
    again = job.checkpoint().function
    assert again.argv == [*job.argv, "--resume"] and again.checkpoint().function.argv == again.argv


# ---------------------------------------------------------------------------------------------
# Against the cluster


@pytest.fixture(scope="module")
def local_table(tiny):
    """The sweep on the local executor: two workers of one thread each, as each SLURM task has one CPU."""
    sweep.run_sweep(tiny / "sweep.yaml", runs_root=tiny / "local", jobs=2, progress=False)
    return _table(tiny / "local" / "tiny" / "results.csv")


def test_sweep_on_slurm_detach_status_collect_equals_local(slurm, tiny, local_table, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    runs = tiny / "slurm-runs"
    sweep.run_sweep(tiny / "sweep.yaml", runs_root=runs, executor="slurm", detach=True, progress=False)
    jobs = {p.name + "/" + s.name: Run(s).job()["job_id"] for p in (runs / "tiny").glob("temp*") for s in p.iterdir()}
    assert len(jobs) == 4 and len({j.split("_")[0] for j in jobs.values()}) == 1  # one job array
    assert set(jobs.values()) <= set(cluster.queue_states())  # squeue lists its tasks

    assert cli.main(["sweep", str(tiny / "sweep.yaml"), "--runs", str(runs), "--status"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        slug, state, job, log = line.split()
        assert state in ("queued", "running", "finished") and job == jobs[slug] and log.endswith("_log.out")

    sweep.run_sweep(tiny / "sweep.yaml", runs_root=runs, executor="slurm", progress=False)  # collects
    assert _table(runs / "tiny" / "results.csv") == local_table
    assert {r["status"] for r in local_table.values()} == {"finished"}
    local, remote = (
        pd.read_csv(r / "tiny" / "summary.csv").drop(columns="wall_clock_s") for r in (tiny / "local", runs)
    )
    pd.testing.assert_frame_equal(local, remote)  # every mean, interval and count, exactly
    assert all(Path(Run(runs / "tiny" / s).job()["stdout"]).is_file() for s in jobs)  # logs findable

    sweep.run_sweep(tiny / "sweep.yaml", runs_root=runs, executor="slurm", progress=False)  # all done: no new job
    assert {s: Run(runs / "tiny" / s).job()["job_id"] for s in jobs} == jobs


def test_interrupted_task_is_requeued_and_ends_as_uninterrupted(slurm, tiny, monkeypatch):
    """SIGUSR2, as SLURM sends it before a time limit (submitit asks for --signal=USR2@90), or a preemption."""
    monkeypatch.chdir(REPO)
    overrides = {"epochs": 120, "eval_every": 0}
    path = _sweep_file(tiny, name="requeue", axes={"temperature": [0.1]}, seeds=[0], overrides=overrides)
    runs = tiny / "requeue-runs"
    sweep.run_sweep(path, runs_root=runs, executor="slurm", detach=True, progress=False)
    run = Run(runs / "requeue" / "temperature-0.1" / "seed-0")
    deadline = time.time() + 240
    while len(run.metrics()) < 3 and time.time() < deadline:  # a few epochs checkpointed, far from the end
        time.sleep(0.2)
    assert 3 <= len(run.metrics()) < overrides["epochs"], "the run was not caught mid-way"
    subprocess.run(["scancel", "--signal=USR2", run.job()["job_id"]], check=True)

    rows = sweep.run_sweep(path, runs_root=runs, executor="slurm", progress=False)
    assert [r["status"] for r in rows] == ["finished"]
    log = Path(run.job()["stdout"]).read_text()
    assert "Calling checkpoint method" in log and "Requeued job" in log  # submitit's own account

    monkeypatch.setenv("SELFSUP_CPU_THREADS", "1")  # as the task's kernel (cpus_per_task 1)
    cfg = config.load(tiny / "tiny.yaml", {**overrides, "temperature": 0.1, "seed": 0})
    train.train(cfg, data.load_dataset(tiny / "data"), tiny / "straight", progress=False)
    keys = ("epoch", "train_loss", "lr", "val_loss", "knn_acc")
    got = [{k: m.get(k) for k in keys} for m in run.metrics()]
    assert got == [{k: m.get(k) for k in keys} for m in Run(tiny / "straight").metrics()]


def test_two_task_gloo_job_trains_as_torchrun(slurm, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    folder = make_tiny(tmp_path / "tiny")
    sets = [f"--set={k}={v}" for k, v in {**TINY_RUN, "method": "simclr", "epochs": 1}.items()]
    args = ["train", "--config", "configs/demo.yaml", "--data", str(folder), "--no-progress", *sets]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*torchrun, "selfsup.cli", *args, "--run-dir", str(tmp_path / "torchrun")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    on_slurm = [*args, "--run-dir", str(tmp_path / "slurm"), "--executor", "slurm", "--cluster", "tasks_per_node=2"]
    assert cli.main(on_slurm) == 0
    a, b = (json.loads((tmp_path / r / "run.json").read_text()) for r in ("torchrun", "slurm"))
    assert a["environment"]["processes"] == b["environment"]["processes"] == 2
    strip = lambda ms: [{k: m[k] for k in ("epoch", "train_loss", "val_loss", "knn_acc")} for m in ms]  # noqa: E731
    assert strip(Run(tmp_path / "slurm").metrics()) == strip(Run(tmp_path / "torchrun").metrics())


def test_unknown_partition_is_one_line(slurm, tiny, capsys):
    args = ["sweep", str(tiny / "sweep.yaml"), "--runs", str(tiny / "none"), "--executor", "slurm"]
    assert cli.main([*args, "--cluster", "partition=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'nope' is not a partition of this cluster" in err and "debug" in err and "\n" not in err


def test_job_failing_before_the_notebook_shows_its_log(slurm, tiny, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _sweep_file(tiny, name="setup", axes={"temperature": [0.1]}, seeds=[0])
    setup = ["echo 'module: cuda/12.4 not found' >&2", "exit 3"]  # as a failing `module load` would
    (row,) = sweep.run_sweep(path, runs_root=tiny / "setup-runs", executor="slurm", cluster_args={"setup": setup})
    assert row["status"] == "failed" and "before the notebook finished" in row["error"]
    assert "module: cuda/12.4 not found" in (Path(row["run_dir"]) / "error.txt").read_text()


def test_runs_folder_the_nodes_cannot_see(slurm, tiny, monkeypatch):
    """The job's files vanish before it starts, as on a node that does not mount the runs folder."""
    monkeypatch.chdir(REPO)
    path = _sweep_file(tiny, name="hidden", axes={"temperature": [0.1]}, seeds=[0])
    runs = tiny / "hidden-runs"
    held = {"sbatch": {"hold": True}}
    sweep.run_sweep(path, runs_root=runs, executor="slurm", cluster_args=held, detach=True, progress=False)
    run_dir = runs / "hidden" / "temperature-0.1" / "seed-0"
    job = Run(run_dir).job()["job_id"]
    shutil.rmtree(runs / "hidden" / "slurm")
    subprocess.run(["scontrol", "release", job], check=True)
    (out,) = cluster.wait([("p", str(run_dir))], "hidden", progress=False).values()
    assert not out["ok"] and "the nodes cannot see the runs folder" in out["error"]
