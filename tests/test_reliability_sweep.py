"""Hostile and clumsy sweeps and reports: a sweep never leaves its runs root or deletes a folder
that is not its own run, hand-edited run files are tabled as what they are, and papermill
parameter names never run as code.

The one-line messages of the faults tried here are collected into docs/faults.md as those of
tests/test_reliability.py are (see its test_faults_table_is_current).
"""

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from faults_table import Faults
from helpers import TINY_PRESET, make_tiny
from selfsup import cli, results, sweep

REPO = Path(__file__).resolve().parents[1]
FAULTS = Faults(__file__, minimum=10)  # fault -> (exit status, message), filled by the tests below
record = FAULTS.record


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("relsweep")
    folder = make_tiny(root / "data")
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY_PRESET))
    return dict(root=root, data=folder, preset=preset)


def run_cli(args, tmp) -> tuple[int, str]:
    """selfsup in this process: (exit status, stderr with tmp paths as <tmp>)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(a) for a in args])
    return code, err.getvalue().strip().replace(str(tmp), "<tmp>").replace(str(REPO), "<repo>")


def write_spec(tmp_path, tiny, **spec) -> Path:
    """A sweep file over the tiny preset and data, executing the real notebook 03."""
    path = tmp_path / "s.yaml"
    base = dict(
        preset=str(tiny["preset"]),
        data=str(tiny["data"]),
        notebook=str(REPO / "notebooks" / "03_train.ipynb"),
        parameters={"progress": False, "eval_options": {"table": False, "linear": False}},
    )
    path.write_text(yaml.safe_dump({**base, **spec}))
    return path


def fake_finished(run_dir: Path, cfg, metrics=({"epoch": 1, "train_loss": 1.5},), trained=None) -> Path:
    """A point folder as a finished, evaluated run of cfg leaves it (no training needed)."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(dict(status="finished", config_hash=cfg.hash(), wall_clock_s=1.0)))
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run_dir / "checkpoint.pt").write_bytes(b"weights")
    (run_dir / "encoder.safetensors").write_bytes(b"weights")
    trained = {"val": {"n_test": 32}} if trained is None else trained
    ev = dict(summary={"val_knn": 0.5}, config=cfg.to_dict(), trained=trained)
    (run_dir / "eval.json").write_text(json.dumps(ev))
    return run_dir


# ---------------------------------------------------------------------------------------------
# A sweep stays inside its runs root and deletes only what it can tell is its own


@pytest.mark.parametrize("name", ["..", "."])
def test_sweep_named_dot_dot_never_leaves_the_runs_root(tiny, tmp_path, name):
    """Defect 1: name '..' made runs/.. the sweep folder; a user's folder there was removed."""
    work = tmp_path / "work"
    user = work / "base"  # where the point `base` of a sweep in runs/.. would go
    user.mkdir(parents=True)
    (user / "thesis.tex").write_text("years of work")
    spec = write_spec(tmp_path, tiny, name=name, points=[{}])
    code, msg = run_cli(["sweep", spec, "--runs", work / "runs", "--no-progress"], tmp_path)
    record(f"a sweep named {name!r}", code, msg)
    assert "'name'" in msg
    assert (user / "thesis.tex").read_text() == "years of work"
    assert not (work / "results.csv").exists() and not (work / "runs" / "results.csv").exists()


def test_a_point_folder_that_is_not_a_run_is_never_removed(tiny, tmp_path):
    """Defect 1: a folder in the point's place holding someone's files is refused, not cleared."""
    runs = tmp_path / "runs"
    user = runs / "s" / "base"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    spec = write_spec(tmp_path, tiny, name="s", points=[{}])
    code, msg = run_cli(["sweep", spec, "--runs", runs, "--no-progress"], tmp_path)
    record("a point folder holding files that are not a run", code, msg)
    assert "base" in msg and "notes.txt" in msg
    assert (user / "notes.txt").read_text() == "mine"


def test_a_finished_run_whose_run_json_is_unreadable_is_refused_not_deleted(tiny, tmp_path):
    """Defect 2: an unreadable run.json read as "no run": checkpoint, encoder and eval.json were
    deleted and the point retrained."""
    runs = tmp_path / "runs"
    spec = write_spec(tmp_path, tiny, name="s", points=[{}])
    (point,) = sweep.load_sweep(spec, runs_root=runs).points
    run = fake_finished(point.run_dir, point.cfg)
    (run / "run.json").write_text('{"status": "finished", "config_ha')  # torn by hand or by a disk
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    code, msg = run_cli(["sweep", spec, "--runs", runs, "--no-progress"], tmp_path)
    record("a finished point whose run.json is unreadable", code, msg)
    assert "run.json" in msg and "not valid JSON" in msg
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before


def test_a_symlinked_point_folder_is_refused_in_one_line(tiny, tmp_path):
    """The extra of issue 24: a point folder that is a link ended in rmtree's OSError traceback."""
    runs = tmp_path / "runs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "run.json").write_text(json.dumps({"status": "running", "config_hash": "0" * 12}))
    (runs / "s").mkdir(parents=True)
    (runs / "s" / "base").symlink_to(elsewhere, target_is_directory=True)
    spec = write_spec(tmp_path, tiny, name="s", points=[{}])
    code, msg = run_cli(["sweep", spec, "--runs", runs, "--no-progress"], tmp_path)
    record("a point folder that is a symbolic link", code, msg)
    assert "symbolic link" in msg
    assert (elsewhere / "run.json").is_file() and (runs / "s" / "base").is_symlink()


# ---------------------------------------------------------------------------------------------
# Hand-edited run files are tabled as what they are


def test_hand_edited_run_files_are_tabled_with_what_is_wrong(tiny, tmp_path):
    """Defect 8: a metrics.jsonl row without train_loss, or an eval.json whose `trained` is a string,
    crashed the sweep and results.csv was not written."""
    runs = tmp_path / "runs"
    spec = write_spec(tmp_path, tiny, name="s", axes={"temperature": [0.1, 0.2, 0.5]})
    points = {p.slug: p for p in sweep.load_sweep(spec, runs_root=runs).points}
    fake_finished(points["temperature-0.1"].run_dir, points["temperature-0.1"].cfg, metrics=[{"epoch": 1}])
    fake_finished(points["temperature-0.2"].run_dir, points["temperature-0.2"].cfg, trained="finished")
    fake_finished(points["temperature-0.5"].run_dir, points["temperature-0.5"].cfg)
    code, msg = run_cli(["sweep", spec, "--runs", runs, "--no-progress"], tmp_path)
    record("finished points whose metrics.jsonl or eval.json were edited by hand", code, msg, expect_code=1)
    table = {r["point"]: r for r in results.load_results(runs / "s" / "results.csv").to_dict("records")}
    assert table["temperature-0.5"]["status"] == "finished" and table["temperature-0.5"]["val_knn"] == 0.5
    bad_metrics, bad_eval = table["temperature-0.1"], table["temperature-0.2"]
    assert bad_metrics["status"] == "unreadable" and "metrics.jsonl" in bad_metrics["error"]
    assert "train_loss" in bad_metrics["error"]
    assert bad_eval["status"] == "unreadable" and "eval.json" in bad_eval["error"] and "trained" in bad_eval["error"]


# ---------------------------------------------------------------------------------------------
# Papermill parameter names never run as code


# A name that is also a statement: it writes the file named by $SELFSUP_MARKER (the kernel inherits it).
INJECTED = "progress\nopen(__import__('os').environ['SELFSUP_MARKER'], 'w').write('pwned')\nx"


def test_sweep_parameter_names_are_declared_identifiers(tiny, tmp_path, monkeypatch):
    """Defect 5: a sweep file's `parameters` keys were written into the injected cell as names."""
    marker = tmp_path / "marker"
    monkeypatch.setenv("SELFSUP_MARKER", str(marker))
    for name, fault in (
        (INJECTED, "a sweep parameter name that is a statement"),
        ("lerning_rate", "a sweep parameter the notebook does not declare"),
    ):
        spec = write_spec(tmp_path, tiny, name="s", points=[{}], parameters={name: True})
        code, msg = run_cli(["sweep", spec, "--runs", tmp_path / "runs", "--no-progress"], tmp_path)
        record(fault, code, msg)
        assert "'parameters'" in msg and "03_train.ipynb" in msg
    assert not marker.exists() and not (tmp_path / "runs" / "s").exists()


def test_report_parameter_names_are_declared_identifiers(tmp_path, monkeypatch):
    """Defect 5: `selfsup report -p NAME VALUE` wrote NAME into the injected cell."""
    marker = tmp_path / "marker"
    monkeypatch.setenv("SELFSUP_MARKER", str(marker))
    for name, fault in (
        (INJECTED.replace("progress", "root"), "a report parameter name that is a statement"),
        ("final", "a report parameter the notebook does not declare"),
    ):
        code, msg = run_cli(
            ["report", "--no-progress", "--notebook", REPO / "notebooks" / "05_report.ipynb", "--out", tmp_path / "rep"]
            + ["-p", name, "x"],
            tmp_path,
        )
        record(fault, code, msg)
        assert "05_report.ipynb" in msg and "final_run" in msg
    assert not marker.exists() and not (tmp_path / "rep").exists()


def test_faults_table_is_current():
    FAULTS.check()
