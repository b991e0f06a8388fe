"""selfsup.sweep: sweep files, point folders, resuming, failing points, the results table.

The end-to-end test executes the real training notebook (notebooks/03_train.ipynb) with papermill
on a tiny generated dataset and a tiny config, so it takes about a minute on two CPU cores.
"""

import json
import os
import queue
from pathlib import Path

import pytest
import yaml

from helpers import TINY_PRESET
from selfsup import config, demo_data, launch, results, sweep
from selfsup.config import ConfigError
from selfsup.runs import RunError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def preset(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PRESET))
    return path


def write_sweep(tmp_path, **spec):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ---------------------------------------------------------------------------------------------
# Reading sweep files


@pytest.mark.parametrize(
    "spec, words",
    [
        (dict(grdi={"lr": [0.1]}), ["unknown sweep key", "'grdi'"]),
        (dict(grid={"tempreture": [0.1]}), ["unknown config key", "'tempreture'", "'grid'"]),
        (dict(axes={"lr": 0.1}), ["'axes.lr'", "non-empty list"]),
        (dict(grid={"lr": [0.1]}, overrides={"epochs": "many"}), ["'epochs'"]),
        (dict(points=[{"lr": 0.1}, "byol"]), ["'points'"]),
        (dict(points=[{"methd": "byol"}]), ["'methd'", "points[0]"]),
        (dict(), ["no points"]),
        (dict(grid={"lr": [0.1]}, name="a/b"), ["'name'"]),
        (dict(grid={"lr": [0.1]}, parameters={"run_dir": "x"}), ["'parameters'", "run_dir"]),
        (dict(grid={"lr": [0.1]}, parameters={"config": "x"}), ["'parameters'", "'config'", "not a parameter"]),
        (dict(grid={"lr": [0.1]}, name=".."), ["'name'"]),
    ],
)
def test_bad_sweep_file_names_file_and_key(tmp_path, preset, spec, words):
    path = write_sweep(tmp_path, preset=str(preset), data=str(tmp_path), **spec)
    with pytest.raises(ConfigError) as err:
        sweep.load_sweep(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for w in words:
        assert w in message


def test_missing_files_are_config_errors(tmp_path, preset):
    with pytest.raises(ConfigError, match="sweep file not found"):
        sweep.load_sweep(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="'preset'"):
        sweep.load_sweep(write_sweep(tmp_path, preset=str(tmp_path / "nope.yaml"), data="d", grid={"lr": [1.0]}))
    with pytest.raises(ConfigError, match="'data' is required"):
        sweep.load_sweep(write_sweep(tmp_path, preset=str(preset), grid={"lr": [1.0]}))
    (tmp_path / "bad.yaml").write_text("grid: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        sweep.load_sweep(tmp_path / "bad.yaml")


def test_points_grid_axes_points_and_merging(tmp_path, preset):
    s = sweep.load_sweep(
        dict(
            name="t",
            preset=str(preset),
            data="d",
            grid={"lr": [0.001, 0.004], "batch_size": [8, 32]},
            axes={"temperature": [0.05, 0.1], "optimizer": ["adam", "adamw"]},
            points=[{"method": "byol"}, {"lr": -1.0}],
        ),
        runs_root=tmp_path / "runs",
    )
    slugs = [p.slug for p in s.points]
    # 4 grid points; temperature 0.1 and optimizer adamw are both the base config: one point, two axes
    assert slugs == [
        "lr-0.001_batch_size-8",
        "lr-0.001_batch_size-32",
        "lr-0.004_batch_size-8",
        "lr-0.004_batch_size-32",
        "temperature-0.05",
        "temperature-0.1",
        "optimizer-adam",
        "method-byol",
        "lr--1",
    ]
    by_slug = {p.slug: p for p in s.points}
    assert by_slug["temperature-0.1"].axes == ["temperature", "optimizer"]
    assert by_slug["lr-0.001_batch_size-8"].axes == ["lr", "batch_size"]
    # a point equal to an earlier one (here the base again) is not run twice
    s2 = sweep.load_sweep(dict(preset=str(preset), data="d", grid={"lr": [0.002]}, axes={"temperature": [0.1]}))
    assert [(p.slug, p.axes) for p in s2.points] == [("lr-0.002", ["lr", "temperature"])]
    assert by_slug["lr--1"].cfg is None and "'lr'" in by_slug["lr--1"].error  # invalid value: kept, not fatal
    assert by_slug["method-byol"].cfg.method == "byol" and by_slug["method-byol"].cfg.epochs == 1
    assert s.keys == ["lr", "batch_size", "temperature", "optimizer", "method"]
    assert all(p.run_dir == tmp_path / "runs" / "t" / p.slug for p in s.points)


def test_method_points_take_their_preset_section(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**TINY_PRESET, "barlow": {"proj_dim": 48}}))
    s = sweep.load_sweep(
        dict(preset=str(path), data="d", overrides={"lr": 0.002}, points=[{"method": "simclr"}, {"method": "barlow"}])
    )
    cfgs = {p.slug: p.cfg for p in s.points}
    assert cfgs["method-barlow"].proj_dim == 48 and cfgs["method-barlow"].lr == 0.002
    assert cfgs["method-simclr"].proj_dim == TINY_PRESET["proj_dim"]


# ---------------------------------------------------------------------------------------------
# Point folders


def fake_run(run_dir: Path, cfg_hash: str, status: str, checkpoint=True, eval_cfg=None):
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(dict(status=status, config_hash=cfg_hash)))
    if checkpoint:
        (run_dir / "checkpoint.pt").write_bytes(b"x")
    if eval_cfg is not None:
        (run_dir / "eval.json").write_text(json.dumps(dict(summary={"val_knn": 0.5}, config=eval_cfg.to_dict())))


def test_point_state(tmp_path):
    cfg = config.from_dict({**TINY_PRESET, "lr": 0.01})
    other = cfg.replace(lr=0.02)
    h = cfg.hash()
    assert sweep.point_state(tmp_path / "new", h) == "fresh"

    fake_run(tmp_path / "done", h, "finished", eval_cfg=cfg)
    assert sweep.point_state(tmp_path / "done", h) == "done"

    fake_run(tmp_path / "no_eval", h, "finished")
    assert sweep.point_state(tmp_path / "no_eval", h, evaluate=True) == "resume"
    assert sweep.point_state(tmp_path / "no_eval", h, evaluate=False) == "done"

    fake_run(tmp_path / "stale_eval", h, "finished", eval_cfg=other)
    assert sweep.point_state(tmp_path / "stale_eval", h) == "resume"

    fake_run(tmp_path / "half", h, "running")
    assert sweep.point_state(tmp_path / "half", h) == "resume"

    fake_run(tmp_path / "half_other", other.hash(), "running")
    (tmp_path / "half_other" / "03_train.ipynb").write_text("{}")
    assert sweep.point_state(tmp_path / "half_other", h) == "fresh"
    assert not (tmp_path / "half_other").exists()  # cleared, nothing else touched
    assert (tmp_path / "half").exists()

    fake_run(tmp_path / "failed_start", h, "running", checkpoint=False)
    assert sweep.point_state(tmp_path / "failed_start", h) == "fresh"

    fake_run(tmp_path / "finished_other", other.hash(), "finished")
    with pytest.raises(RunError, match="finished_other.*finished run of another config"):
        sweep.point_state(tmp_path / "finished_other", h)
    assert (tmp_path / "finished_other" / "checkpoint.pt").exists()  # never deleted

    # Runs record the fingerprint of their training data: other data is never taken as done.
    import json

    info = json.loads((tmp_path / "done" / "run.json").read_text())
    (tmp_path / "done" / "run.json").write_text(json.dumps({**info, "data_fingerprint": "aaaa"}))
    assert sweep.point_state(tmp_path / "done", h, data_id="aaaa") == "done"
    with pytest.raises(RunError, match="done.*other data"):
        sweep.point_state(tmp_path / "done", h, data_id="bbbb")
    assert (tmp_path / "done" / "run.json").exists()
    info = json.loads((tmp_path / "half" / "run.json").read_text())
    (tmp_path / "half" / "run.json").write_text(json.dumps({**info, "data_fingerprint": "aaaa"}))
    assert sweep.point_state(tmp_path / "half", h, data_id="bbbb") == "fresh"


def test_worker_pins_one_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    q = queue.Queue()
    q.put("3")
    launch._init_worker(q, None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    launch._init_worker(None, 2)
    assert os.environ["OMP_NUM_THREADS"] == "2"


def test_load_results_missing_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        results.load_results("nothing", runs_root=tmp_path)
    assert len(results.collect_results(tmp_path)) == 0


# ---------------------------------------------------------------------------------------------
# End to end: papermill over notebooks/03_train.ipynb


def test_run_sweep_resumes_and_records_failures(tmp_path, preset, monkeypatch):
    monkeypatch.chdir(REPO)  # the default notebook path is relative to the repository root
    demo_data.make_demo(
        tmp_path / "data",
        n_id_classes=3,
        n_ood_classes=2,
        train_per_class=16,
        val_per_class=6,
        ood_per_class=10,
        size=32,
    )
    spec = write_sweep(
        tmp_path,
        name="tiny",
        preset=str(preset),
        data=str(tmp_path / "data"),
        parameters={"eval_options": {"table": False, "linear": False}, "progress": False},
        axes={"temperature": [0.1, 0.5]},
        points=[
            {"batch_size": 4096},  # valid config, but larger than the data: fails inside the notebook
            {"lr": -1.0},
        ],
    )  # invalid value: recorded without running
    runs = tmp_path / "runs"

    returned = sweep.run_sweep(spec, runs_root=runs, jobs=2, progress=False)  # two workers: the pool path
    table = runs / "tiny" / "results.csv"
    rows = {r["point"]: r for r in results.load_results(table).to_dict("records")}
    assert [r["point"] for r in returned] == list(rows) and [r["status"] for r in returned] == [
        r["status"] for r in rows.values()
    ]  # the rows it returns are the rows it wrote
    assert set(rows) == {"temperature-0.1", "temperature-0.5", "batch_size-4096", "lr--1"}
    for slug in ("temperature-0.1", "temperature-0.5"):
        r = rows[slug]
        assert r["status"] == "finished" and r["epochs"] == 1 and 0 <= r["val_knn"] <= 1 and 0 <= r["ood_knn"] <= 1
        assert 0 <= r["random_init_val_knn"] <= 1 and r["wall_clock_s"] > 0
        assert (runs / "tiny" / slug / "03_train.ipynb").is_file()  # the executed notebook beside the run
    assert rows["temperature-0.5"]["temperature"] == 0.5
    assert rows["batch_size-4096"]["status"] == "failed"
    assert "larger than the training set" in rows["batch_size-4096"]["error"]
    assert "larger than the training set" in (runs / "tiny" / "batch_size-4096" / "error.txt").read_text()
    assert rows["lr--1"]["status"] == "invalid" and "'lr'" in rows["lr--1"]["error"]
    assert json.loads((runs / "tiny" / "sweep.json").read_text())["name"] == "tiny"

    # Again: finished points are skipped (their files untouched), the failing one is retried.
    watched = [
        runs / "tiny" / s / f
        for s in ("temperature-0.1", "temperature-0.5")
        for f in ("run.json", "checkpoint.pt", "eval.json", "03_train.ipynb")
    ]
    before = {p: p.stat().st_mtime_ns for p in watched}
    failed_nb = runs / "tiny" / "batch_size-4096" / "03_train.ipynb"
    failed_before = failed_nb.stat().st_mtime_ns
    sweep.run_sweep(spec, runs_root=runs, progress=False)
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert failed_nb.stat().st_mtime_ns != failed_before
    again = {r["point"]: r["status"] for r in results.load_results("tiny", runs_root=runs).to_dict("records")}
    assert again == {
        "temperature-0.1": "finished",
        "temperature-0.5": "finished",
        "batch_size-4096": "failed",
        "lr--1": "invalid",
    }

    # Axis view for notebook 02: the temperature rows, sorted by value.
    rows = results.axis_results(results.collect_results(runs), "temperature")
    assert list(rows["temperature"]) == [0.1, 0.5]


def test_shipped_sweep_files_load(monkeypatch):
    monkeypatch.chdir(REPO)
    axes = sweep.course_axes()  # the course grids notebooks 02 and 05 report, read from the files
    assert list(axes) == ["temperature", "optimizer", "lr", "batch_size", "backbone", "epochs"]
    assert axes["temperature"]["title"] == "NT-Xent temperature"
    for axis, meta in axes.items():
        s = sweep.load_sweep(meta["file"], data="data/course")
        assert [p.cfg.to_dict()[axis] for p in s.points] == meta["values"], meta["file"]
        assert all(p.axes == [axis] for p in s.points)
    demo = sweep.load_sweep("configs/sweeps/demo.yaml")  # each point with the demo preset's seeds 0, 1, 2
    assert [p.slug for p in demo.points] == (
        [f"temperature-{t}/seed-{s}" for t in (0.05, 0.1, 0.5) for s in range(3)]
        + [f"epochs-{e}/seed-{s}" for e in (1, 3, 10) for s in range(3)]
    )
    assert {p.cfg.epochs for p in demo.points if p.axes == ["temperature"]} == {5}
