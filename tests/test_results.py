"""Results over seeds: the summary statistics against a hand computation, the report's wording
following the intervals, and per-seed resume of a real sweep."""

import math
import shutil

import pytest

from helpers import TINY_PRESET, make_tiny
from selfsup import report, results, sweep
from selfsup.methods import titled
from selfsup.runs import Run


def run_row(point, seed, val, floor=0.2, n_val=100, status="finished", error="", **kw):
    return dict(
        point=point,
        seed=seed,
        status=status,
        val_knn=val,
        random_init_val_knn=floor,
        n_val=n_val,
        n_ood=50,
        ood_knn=val / 2,
        random_init_ood_knn=floor / 2,
        epochs=3,
        train_loss=1.0,
        wall_clock_s=10.0,
        error=error,
        **kw,
    )


def test_summary_statistics_by_hand():
    rows = [run_row("a", s, v, method="simclr") for s, v in zip((0, 1, 2), (0.5, 0.6, 0.7))]
    (a,) = results.summarise(rows, keys=["method"])
    assert (a["point"], a["method"], a["n_seeds"], a["seeds"], a["status"]) == ("a", "simclr", 3, "0|1|2", "finished")
    assert a["val_knn"] == pytest.approx(0.6)
    assert a["val_knn_std"] == pytest.approx(0.1)  # sqrt(((-.1)^2 + 0 + .1^2) / 2)
    t = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)
    assert a["val_knn_ci95"] == pytest.approx(t * 0.1 / math.sqrt(3))
    assert a["val_knn_interval"] == a["val_knn_ci95"]
    # Wilson score interval of one run at p = 0.6 on 100 images, z = 1.96: half-width
    # z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z = 1.959963984540054
    wilson = z * math.sqrt(0.24 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert a["val_knn_binom95"] == pytest.approx(wilson) and wilson == pytest.approx(0.0943, abs=1e-4)
    assert a["ood_knn_binom95"] == pytest.approx(results.binomial_interval(0.3, 50))  # OOD: its own size
    # the gain over the floor, paired by seed: 0.3, 0.4, 0.5 (each run minus its floor of 0.2)
    assert a["val_knn_gain"] == pytest.approx(0.4) and a["val_knn_gain_ci95"] == pytest.approx(t * 0.1 / math.sqrt(3))


def test_one_seed_uses_the_binomial_interval_and_failures_are_counted():
    rows = [run_row("b", 0, 0.6), run_row("b", 1, math.nan, status="failed", error="boom")]
    (b,) = results.summarise(rows)
    assert b["n_seeds"] == 1 and b["status"] == "1/2 finished" and b["error"] == "boom"
    assert math.isnan(b["val_knn_ci95"]) and b["val_knn_interval"] == b["val_knn_binom95"] > 0


def summary(point, mean, interval, floor=0.1, floor_interval=0.01, **kw):
    return dict(
        point=point,
        method=point,
        status="finished",
        n_seeds=3,
        val_knn=mean,
        val_knn_interval=interval,
        random_init_val_knn=floor,
        random_init_val_knn_interval=floor_interval,
        **kw,
    )


def test_findings_follow_the_intervals():
    separate = [summary("simclr", 0.60, 0.02), summary("byol", 0.50, 0.02)]
    text = report.findings(separate, "method")
    assert "Best by k-NN on val: **simclr** (60.0 ± 2.0%)" in text
    assert "ahead of byol: the intervals separate" in text and "not distinguishable" not in text
    assert "Every point is above its random-init floor" in text

    overlap = [summary("simclr", 0.60, 0.06), summary("byol", 0.55, 0.06)]
    text = report.findings(overlap, "method")
    assert "not distinguishable from byol at 3 seeds" in text and "ahead of" not in text

    at_floor = [summary("simclr", 0.60, 0.02), summary("barlow", 0.12, 0.03)]
    assert "Not clearly above the random-init floor (k-NN on val): barlow." in report.findings(at_floor, "method")
    three = overlap + [summary("vicreg", 0.57, 0.06)]
    assert "not distinguishable from byol and vicreg at 3 seeds" in report.findings(three, "method")
    assert results.separated(separate[0], separate[1], "val_knn") == 1
    assert results.separated(separate[1], separate[0], "val_knn") == -1
    assert results.separated(overlap[0], overlap[1], "val_knn") == 0


def test_the_floor_is_compared_seed_by_seed():
    """A wide spread of random networks (floors 28, 50, 57%) hides nothing when each seed is compared
    with its own untrained network; gains that straddle zero are not above the floor."""
    learns = [run_row("learns", s, v, floor=f) for s, v, f in zip((0, 1, 2), (0.75, 0.85, 0.86), (0.28, 0.50, 0.57))]
    (p,) = results.summarise(learns)
    assert (
        results.separated(
            p,
            {
                "val_knn": p["random_init_val_knn"],  # the unpaired intervals overlap
                "val_knn_interval": p["random_init_val_knn_ci95"],
            },
            "val_knn",
        )
        == 0
    )
    gains = [0.47, 0.35, 0.29]
    mean, std = sum(gains) / 3, math.sqrt(sum((g - sum(gains) / 3) ** 2 for g in gains) / 2)
    assert p["val_knn_gain"] == pytest.approx(mean) and p["val_knn_gain_ci95"] == pytest.approx(
        4.302652729911275 * std / math.sqrt(3)
    )
    assert results.above_floor(p, "val_knn") and mean - p["val_knn_gain_ci95"] > 0
    text = report.findings([{**p, "method": "simclr"}], "method")
    assert (
        f"Every point is above its random-init floor (k-NN on val; each seed against its own untrained network, "
        f"the smallest gain is +{100 * mean:.1f} ± {100 * p['val_knn_gain_ci95']:.1f} points, simclr)."
    ) in text

    noise = [run_row("noise", s, v, floor=f) for s, v, f in zip((0, 1, 2), (0.40, 0.45, 0.52), (0.30, 0.50, 0.52))]
    (q,) = results.summarise(noise)
    assert q["val_knn_gain"] > 0 and not results.above_floor(q, "val_knn")
    assert "Not clearly above the random-init floor (k-NN on val): noise." in report.findings(
        [{**q, "method": "noise"}], "method"
    )


def test_summary_table_shows_plus_minus_and_floor():
    md = report.summary_table(
        [summary("simclr", 0.6, 0.02, ood_knn=0.4, ood_knn_interval=0.05)], "method", "method", linear=False
    )
    assert md.splitlines()[0] == "| method | seeds | k-NN val | floor | k-NN OOD | floor |"
    assert "| simclr | 3 | 60.0 ± 2.0 | 10.0 ± 1.0 | 40.0 ± 5.0 | n/a |" in md


def test_seeds_are_read_from_the_sweep_or_the_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: simclr\nseeds: 2\n")
    s = sweep.load_sweep(dict(name="x", preset=str(preset), data="d", axes={"temperature": [0.1, 0.5]}))
    assert [(p.point, p.seed, p.cfg.seed) for p in s.points] == [
        ("temperature-0.1", 0, 0),
        ("temperature-0.1", 1, 1),
        ("temperature-0.5", 0, 0),
        ("temperature-0.5", 1, 1),
    ]
    assert s.points[1].run_dir.parts[-2:] == ("temperature-0.1", "seed-1")
    s = sweep.load_sweep(dict(name="x", preset=str(preset), data="d", seeds=[3, 7], axes={"temperature": [0.1]}))
    assert [p.seed for p in s.points] == [3, 7]
    for bad in (0, [1, 1], "three", [-1]):
        with pytest.raises(sweep.ConfigError, match="key 'seeds'"):
            sweep.load_sweep(dict(name="x", preset=str(preset), data="d", seeds=bad, axes={"temperature": [0.1]}))


def test_each_seed_resumes_on_its_own(tmp_path, monkeypatch):
    """A finished seed is skipped (files untouched); a failed seed is retried."""
    import yaml

    from test_sweep import REPO

    monkeypatch.chdir(REPO)
    data = make_tiny(tmp_path / "data")
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY_PRESET))
    spec = dict(
        name="seeds",
        preset=str(preset),
        data=str(data),
        seeds=2,
        points=[{"lr": 0.002}],
        parameters={"eval_options": {"table": False, "linear": False}, "progress": False},
    )
    runs = tmp_path / "runs"
    sweep.run_sweep(spec, runs_root=runs, progress=False)
    seed0, seed1 = runs / "seeds" / "lr-0.002" / "seed-0", runs / "seeds" / "lr-0.002" / "seed-1"
    assert Run(seed0).status == Run(seed1).status == "finished"
    assert Run(seed0).config().seed == 0 and Run(seed1).config().seed == 1
    # seed 1 failed: its folder holds only the failure (as a failing notebook leaves it)
    shutil.rmtree(seed1)
    seed1.mkdir()
    Run(seed1).write_error("RuntimeError: simulated failure")
    watched = {f: f.stat().st_mtime_ns for f in seed0.iterdir() if f.is_file()}
    returned = sweep.run_sweep(spec, runs_root=runs, progress=False)
    assert {f: f.stat().st_mtime_ns for f in watched} == watched  # seed 0 untouched
    rows = results.load_results("seeds", runs_root=runs).to_dict("records")
    assert [(r["seed"], r["status"]) for r in returned] == [(0, "finished"), (1, "finished")]
    assert [(r["seed"], r["status"]) for r in rows] == [(0, "finished"), (1, "finished")]
    (point,) = results.summarise(rows)
    assert point["n_seeds"] == 2 and point["val_knn_ci95"] >= 0
    # summary.csv, written once by the sweep, reads back as summarise's rows (notebooks 01, 02, 05)
    (stored,) = results.read_summary("seeds", runs_root=runs).to_dict("records")
    assert (stored["point"], stored["axes"], stored["seeds"], stored["n_seeds"]) == ("lr-0.002", ["lr"], "0|1", 2)
    for key in ("val_knn", "val_knn_ci95", "val_knn_interval", "val_knn_gain", "val_knn_gain_ci95"):
        assert stored[key] == pytest.approx(point[key]), key
    assert results.collect_results(runs, summary=True)["point"].tolist() == ["lr-0.002"]


def test_tables_and_charts_name_methods_by_title():
    rows = [{"method": "barlow", "val_knn": 0.5}, {"method": "mine", "val_knn": 0.4}]
    shown = titled(rows)
    assert [r["method"] for r in shown] == ["Barlow Twins", "mine"]  # unknown names kept as they are
    assert rows[0]["method"] == "barlow" and shown[0]["val_knn"] == 0.5  # copies; the results are untouched


def test_chosen_by_held_out_training_images_not_by_val():
    a = summary("0.1", 0.60, 0.02, select_knn=0.70, select_knn_interval=0.01)
    b = summary("0.5", 0.62, 0.02, select_knn=0.75, select_knn_interval=0.01)
    text = report.chosen([a, b], "point")
    assert "**0.5** (75.0 ± 1.0% there, 62.0 ± 2.0% on val; also the best on val)" in text
    b["val_knn"] = 0.55
    assert report.chosen([a, b], "point").endswith("; the best on val is 0.1).")
    assert report.chosen([summary("0.1", 0.6, 0.02)], "point") == ""  # evaluated before selection existed
