"""benchmarks/gpu_check.sh: its CPU smoke mode end to end on a bare checkout (no data/ folder), its
deadline, and the usual pipeline's check that every DataLoader worker has work."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "data", "cuda_tests", "throughput", "cifar", "knn", "probe", "compile", "learning"]

pytestmark = pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("timeout")), reason="needs bash and coreutils timeout"
)


def run_script(tmp_path, **env):
    """Run gpu_check.sh from an empty folder (no data/ there) with OUT = tmp_path/out."""
    cwd = tmp_path / "cwd"
    (tmp_path / "tmp").mkdir()
    cwd.mkdir()
    environ = dict(os.environ, PY=sys.executable, TMPDIR=str(tmp_path / "tmp"), **env)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "", str(tmp_path / "out")],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, cwd


def summary_rows(out: Path) -> dict:
    """step -> its line of summary.txt."""
    lines = (out / "summary.txt").read_text().splitlines()
    return {line.split()[0]: line for line in lines if line.split() and line.split()[0] in STEPS}


def test_smoke_mode_runs_every_step_on_a_bare_checkout(tmp_path):
    proc, cwd = run_script(tmp_path, SMOKE="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and not any(f.endswith(".tmp") for f in files), files  # the device tool brings back 8
    assert not (cwd / "data").exists() and list(cwd.iterdir()) == []  # made its data in its own work folder
    assert list((tmp_path / "tmp").glob("gpu_check.*")) == []  # and removed it

    rows = summary_rows(out)
    assert list(rows) == STEPS
    for step in ("env", "data", "throughput", "knn", "probe", "learning"):
        assert rows[step].split()[1] == "ok", rows[step]
    for step in ("cuda_tests", "cifar", "compile"):  # CUDA-only (or pointless on the convnet): skipped
        assert rows[step].split()[1] == "skipped", rows[step]

    throughput = json.loads((out / "throughput_imagenet.json").read_text())
    assert throughput["complete"] is True
    assert throughput["setup"]["data"] == "random"  # 200 demo images < 2 x 2 workers x 64: random ones
    for phase in ("aug", "train"):
        r = throughput["results"][phase]
        assert r["ours"]["images_per_s"] > 0 and r["usual"]["images_per_s"] > 0 and r["ratio"] > 0
    assert json.loads(next(out.glob("knn_cpu_*.json")).read_text())["identical_to_sklearn"] is True
    assert json.loads(next(out.glob("probe_cpu_*.json")).read_text())["rows"]
    learning = json.loads((out / "learning.json").read_text())["rows"]
    assert [r["method"] for r in learning] == ["simclr"] and "val_knn" in learning[0]
    assert re.search(r"aug: ours [\d,]+ vs usual [\d,]+ img/s = [\d.]+x", rows["throughput"])  # the table's numbers


def test_deadline_skips_steps_and_fails(tmp_path):
    # 12 s of budget, 10 kept for the summary: no step has time; the table still comes, exit 1.
    proc, _ = run_script(tmp_path, SMOKE="1", BUDGET_S="12")
    assert proc.returncode == 1
    rows = summary_rows(tmp_path / "out")
    assert "no time" in rows["env"] and "no time" in rows["learning"]
    assert "not ok:" in proc.stdout


def load_throughput():
    spec = importlib.util.spec_from_file_location("throughput_bench", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_usual_pipeline_must_keep_every_worker_busy():
    check = load_throughput().check_usual_epoch
    # The demo set at the course batch on 16 cores: 1 batch an epoch, so 1 of 16 workers worked.
    with pytest.raises(ValueError, match=r"2000 images make 1 batches of 1024 .* 2 x 16 workers = 32.*32768"):
        check(2000, 1024, 16)
    check(32 * 1024, 1024, 16)  # two batches per worker: fine
    check(1024, 1024, 0)  # no workers: one batch is enough
    with pytest.raises(ValueError):
        check(1023, 1024, 0)
