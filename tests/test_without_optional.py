"""The library on a machine that has only what training and evaluation need (a bare GPU box: torch,
torchvision, numpy, scikit-learn, pyyaml, safetensors, tqdm): `selfsup data demo`, `train` and
`eval` work there, and a command that needs a missing package says which, in one line.

Each command runs in a subprocess whose Python cannot import the optional packages
(tests/without_optional/sitecustomize.py); pandas and matplotlib are blocked too here, to show
that training and evaluation do not need them either."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = ROOT / "tests" / "without_optional"
OPTIONAL = (
    "pooch requests papermill nbconvert nbformat nbclient jupyter_client jupyter_core ipykernel IPython "
    "ipywidgets jupyterlab notebook playwright pypdf psutil submitit seaborn pandas matplotlib"
).split()


def blocked_env(blocked=OPTIONAL) -> dict:
    """The environment of a Python that cannot import `blocked` (and runs this checkout's library)."""
    path = os.pathsep.join([str(BLOCKER), str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, SELFSUP_BLOCKED=",".join(blocked), MPLBACKEND="Agg")


def selfsup(*argv, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfsup.cli", *map(str, argv)],
        cwd=cwd,
        env=blocked_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_blocker_hides_the_packages_as_if_not_installed(tmp_path):
    code = (
        "import importlib.util, json\n"
        "out = {}\n"
        "for name in ('pooch', 'papermill', 'pandas'):\n"
        "    try:\n"
        "        __import__(name); out[name] = 'imported'\n"
        "    except ModuleNotFoundError as e:\n"
        "        out[name] = [e.name, importlib.util.find_spec(name)]\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=blocked_env(), capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert json.loads(proc.stdout) == {n: [n, None] for n in ("pooch", "papermill", "pandas")}, proc.stderr


@pytest.mark.parametrize(
    "modules, blocked",
    [
        (["cli", "train", "evaluate", "sweep", "workbook", "download"], OPTIONAL),
        (["report", "explorer"], OPTIONAL[:-2]),  # the report's figures: matplotlib, as the GPU box has it
    ],
)
def test_the_library_imports_none_of_them(modules, blocked, tmp_path):
    modules = [f"selfsup.{m}" for m in modules]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(set(sys.modules) & set({OPTIONAL!r})))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=blocked_env(blocked),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in ("[]", "['matplotlib']" if "matplotlib" not in blocked else "[]")


def test_demo_train_and_eval_run_without_the_optional_packages(tmp_path):
    sizes = ["--train-per-class", 8, "--val-per-class", 4, "--ood-per-class", 4, "--size", 32]
    proc = selfsup("data", "demo", "--out", "d", *sizes, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("wrote d: train"), proc.stderr[-2000:]

    tiny = dict(backbone="convnet", width=4, proj_hidden=16, proj_dim=8, pred_hidden=16, batch_size=16, epochs=1)
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    proc = selfsup("train", "--config", ROOT / "configs" / "demo.yaml", "--data", "d", "--run-dir", "r", *sets,
                   "--no-progress", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["epoch"] == 1

    proc = selfsup("eval", "--run-dir", "r", "--data", "d", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert 0 <= summary["val_knn"] <= 1 and 0 <= summary["ood_linear"] <= 1


@pytest.mark.parametrize(
    "argv, needs",
    [
        (["sweep", "configs/sweeps/demo.yaml"], "papermill"),
        (["report"], "papermill"),
        (["data", "download", "tiny-imagenet", "x", "--id-classes", "2", "--ood-classes", "1"], "pooch"),
    ],
)
def test_a_command_that_needs_a_missing_package_says_which_in_one_line(argv, needs, tmp_path):
    proc = selfsup(*argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"selfsup: error: `selfsup {' '.join(argv[:2] if argv[0] == 'data' else argv[:1])}`")
    assert needs in proc.stderr and "not installed" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
