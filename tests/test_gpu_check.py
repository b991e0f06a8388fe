"""benchmarks/gpu_check.sh: its CPU smoke mode end to end on a bare checkout (no data/ folder); its GPU
path on the CPU at tiny sizes in a Python without the packages the GPU machine lacks; its deadline;
the usual pipeline's check that every DataLoader worker has work; and the throughput benchmark
timing the training loop's own backend setup."""

import contextlib
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
STEPS = ["env", "data", "cuda_tests", "throughput", "epoch", "compiled", "learning"]
METHODS = ["simclr", "byol", "barlow", "vicreg"]
BLOCKER = ROOT / "tests" / "without_optional"  # a Python as the GPU machine has it (see its docstring)

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


def summary_rows(out: Path, names=STEPS, part: int = 0) -> dict:
    """first word -> its line in summary.txt, for the words in `names`: in the step table (part 0) or
    in what follows it (part 1: the method, epoch, projection, memory and features rows)."""
    text = (out / "summary.txt").read_text().strip().split("\n\n")[part]
    return {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in names}


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
    for step in ("env", "data", "throughput", "epoch", "learning"):
        assert rows[step].split()[1] == "ok", rows[step]
    assert "skipped" in rows["cuda_tests"] and "skipped" in rows["compiled"]  # no CUDA; no compile on a CPU

    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["complete"] is True and throughput["matmul"]["tflops"] > 0
    assert throughput["setup"]["data"].endswith("demo/train.npz")  # no workers: the 200 demo images suffice
    aug = throughput["results"]["aug"]
    assert aug["ours"]["images_per_s"] > 0 and aug["usual"]["images_per_s"] > 0 and aug["ratio"] > 0
    assert list(throughput["results"]["train"]) == METHODS
    for r in throughput["results"]["train"].values():
        assert r["ours"]["images_per_s"] > 0 and r["usual"]["images_per_s"] > 0 and r["ratio"] > 0
        assert r["flops_per_image"] > 0 and 0 < r["fraction_of_matmul"] and r["tflops"] > 0
    epoch = json.loads((out / "epoch.json").read_text())
    assert epoch["epochs"]["epochs_run"] == 2 and len(epoch["epochs"]["monitor_s"]) == 2  # monitored every epoch
    assert len(epoch["epochs"]["checkpoint_s"]) == 2 and epoch["epochs"]["projected_run_s"] > 0
    assert {"extract_s", "knn_s", "probe_s"} <= set(epoch["features"])
    learning = json.loads((out / "learning.json").read_text())["rows"]
    assert [r["method"] for r in learning] == ["simclr"] and "val_knn" in learning[0]

    # The table: a row per method, then the epoch, projection, memory and features rows.
    table = summary_rows(out, [*METHODS, "epoch", "projection", "memory", "features", "matmul"], part=1)
    assert list(table) == ["matmul", *METHODS, "epoch", "projection", "memory", "features"]
    for method in METHODS:
        assert re.fullmatch(rf"{method} +[\d,]+ +- +[\d,]+ +[\d.]+x +- +[\d.e-]+ +[\d.]+% +-", table[method])
    assert re.search(r"projection +[\d.]+ min for the 30-epoch run", table["projection"])
    assert re.search(r"epoch +[\d.]+s for 256 images .* monitoring [\d.]+s, checkpoint [\d.]+s", table["epoch"])


def test_the_gpu_path_runs_where_only_the_gpu_packages_are(tmp_path):
    """The real mode's steps (no SMOKE) at tiny sizes on the CPU, in a Python that cannot import
    pooch, papermill, nbconvert, ipywidgets, pypdf, ... (the GPU machine has none of them)."""
    sizes = dict(
        DEVICE="cpu",
        BACKBONE="convnet",
        IMAGE_SIZE="32",
        BATCH="32",
        PRECISION="bf16",
        WORKERS="2",
        THREADS="1",
        MATMUL="128",
        METHODS="simclr",
        COMPILE_METHODS="",
        THROUGHPUT_SET="width=4 proj_hidden=32 proj_dim=16 pred_hidden=32",
        EPOCH_IMAGES="128",
        VAL_IMAGES="32",
        CLASSES="4",
        EPOCH_SET="backbone=convnet width=4 batch_size=32 image_size=32 epochs=3 warmup_epochs=1 precision=bf16",
        DEMO_ARGS="--train-per-class 8 --val-per-class 4 --ood-per-class 4 --size 32",
        LEARN_SET="backbone=convnet width=4 batch_size=32 image_size=32 warmup_epochs=0",
        LEARN_EPOCHS="1",
    )
    path = os.pathsep.join(filter(None, [str(BLOCKER), os.environ.get("PYTHONPATH", "")]))
    proc, _ = run_script(tmp_path, PYTHONPATH=path, **sizes)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "ModuleNotFoundError" not in log and "DEVICE=cpu" in log
    rows = summary_rows(tmp_path / "out")
    for step in ("env", "data", "throughput", "epoch", "learning"):
        assert rows[step].split()[1] == "ok", rows[step]
    throughput = json.loads((tmp_path / "out" / "throughput.json").read_text())
    assert throughput["setup"]["data"] == "random"  # 80 demo images < 2 x 2 workers x batch 32: random ones
    assert throughput["results"]["train"]["simclr"]["usual"]["images_per_s"] > 0
    epoch = json.loads((tmp_path / "out" / "epoch.json").read_text())
    assert epoch["setup"]["precision"] == "bfloat16" and epoch["epochs"]["schedule_epochs"] == 3
    assert epoch["config"].endswith("course.yaml")  # the course preset, as on the GPU


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


def test_throughput_times_the_training_loops_own_setup(tmp_path, monkeypatch):
    """The benchmark's steps run inside train.configured_backends (cuDNN autotuning on CUDA), as
    the loop's do: "ours" is the loop, not a faster or slower cousin of it."""
    throughput = load_throughput()
    inside = []
    configured = throughput.train.configured_backends

    @contextlib.contextmanager
    def recording(cfg, device):
        with configured(cfg, device):
            inside.append(True)
            yield
            inside.append(False)

    monkeypatch.setattr(throughput.train, "configured_backends", recording)
    measure = throughput.measure
    monkeypatch.setattr(throughput, "measure", lambda *a: (inside.append("measure"), measure(*a))[1])
    out = tmp_path / "t.json"
    argv = ["--device", "cpu", "--backbone", "convnet", "--image-size", "16", "--batch", "8", "--num-images", "16"]
    argv += ["--steps", "1", "--warmup-steps", "0", "--workers", "0", "--threads", "1", "--only", "train"]
    throughput.main([*argv, "--pipelines", "ours", "--out", str(out)])
    assert inside == [True, "measure", False]
    assert json.loads(out.read_text())["results"]["train"]["simclr"]["ours"]["images_per_s"] > 0
