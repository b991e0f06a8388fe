"""The training loop: exact resume, safe run folders, and that it learns on the demo data."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY_RUN, make_tiny
from selfsup import cli, config, data, demo_data, evaluate, optim, train
from selfsup.config import ConfigError
from selfsup.methods import REGISTRY
from selfsup.runs import Run, RunError


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = make_tiny(tmp_path_factory.mktemp("tiny"))
    return folder, data.load_dataset(folder)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_resume_is_exact(method, tiny_data, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume 1 more: identical weights, EMA target and metrics."""
    _, ds = tiny_data
    cfg = config.load(None, {**TINY_RUN, "method": method})
    train.train(cfg, ds, tmp_path / "straight", progress=False)
    info = train.train(cfg, ds, tmp_path / "resumed", progress=False, stop_after=1)
    assert info["status"] == "stopped"
    assert not (tmp_path / "resumed" / "encoder.safetensors").exists()
    train.train(cfg, ds, tmp_path / "resumed", resume=True, progress=False)

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:  # includes BYOL's target network
        assert torch.equal(a["model"][k], b["model"][k]), k
    ea = load_file(tmp_path / "straight" / "encoder.safetensors")
    eb = load_file(tmp_path / "resumed" / "encoder.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    ma, mb = Run(tmp_path / "straight").metrics(), Run(tmp_path / "resumed").metrics()
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]
    assert [m["knn_acc"] for m in ma] == [m["knn_acc"] for m in mb]


def test_run_folder_describes_itself(tiny_data, tmp_path):
    _, ds = tiny_data
    cfg = config.load(None, TINY_RUN)
    train.train(cfg, ds, tmp_path, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "encoder.safetensors", "run.json"} <= names
    assert config.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "finished" and run["config_hash"] == cfg.hash()
    assert run["data_fingerprint"] == data.fingerprint(ds.train)
    assert run["environment"]["torch"] == torch.__version__ and run["wall_clock_s"] > 0
    metrics = Run(tmp_path).metrics()
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all({"train_loss", "val_loss", "knn_acc", "lr", "images_per_sec"} <= m.keys() for m in metrics)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "generator", "torch_rng", "epoch"} <= ckpt.keys()


def test_train_eval_is_one_run_on_one_loaded_dataset(tiny_data, tmp_path, monkeypatch, capsys):
    """`selfsup train --eval` trains, then evaluates on the dataset it loaded (selfsup.pipeline.run):
    the data folder is read once, and eval.json is current for that folder."""
    folder, _ = tiny_data
    loads = []
    load_dataset = data.load_dataset
    for module in (data, evaluate):  # the command line's load, and evaluate_run's own (for a folder alone)
        monkeypatch.setattr(module, "load_dataset", lambda d: loads.append(d) or load_dataset(d))
    preset = tmp_path / "tiny.yaml"
    preset.write_text(json.dumps(TINY_RUN))  # YAML is a superset of JSON
    args = ["train", "--config", preset, "--data", folder, "--run-dir", tmp_path / "r", "--no-progress", "--eval"]
    assert cli.main([str(a) for a in args]) == 0
    assert len(loads) == 1
    run = Run(tmp_path / "r")
    assert run.status == "finished" and run.eval_current(data=folder)
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # the final epoch's line, then eval's summary
    assert summary == run.eval()["summary"] and 0 <= summary["val_knn"] <= 1


def test_run_folder_is_never_overwritten(tiny_data, tmp_path):
    _, ds = tiny_data
    cfg = config.load(None, {**TINY_RUN, "epochs": 1})
    train.train(cfg, ds, tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(RunError, match="already holds a run"):
        train.train(cfg, ds, tmp_path, progress=False)
    with pytest.raises(RunError, match="different settings"):
        train.train(cfg.replace(lr=0.5), ds, tmp_path, resume=True, progress=False)
    other = data.Dataset(
        data.Split(ds.train.images[::-1].copy(), ds.train.labels[::-1].copy(), ds.train.class_names), ds.val, ds.ood
    )
    with pytest.raises(RunError, match="different data"):
        train.train(cfg, other, tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    with pytest.raises(ConfigError, match="batch_size"):
        train.train(cfg.replace(batch_size=10_000), ds, tmp_path / "new", progress=False)


def test_cli_bad_input_is_one_line_and_exit_2(tiny_data, tmp_path, capsys):
    folder, _ = tiny_data
    assert (
        cli.main(
            ["train", "--config", str(tmp_path / "nope.yaml"), "--data", str(folder), "--run-dir", str(tmp_path / "r")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.yaml" in err
    assert (
        cli.main(
            [
                "train",
                "--config",
                "configs/demo.yaml",
                "--data",
                str(tmp_path / "missing"),
                "--run-dir",
                str(tmp_path / "r"),
                "--set",
                "epochs=1",
            ]
        )
        == 2
    )
    assert "missing" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "train",
                "--config",
                "configs/demo.yaml",
                "--data",
                str(folder),
                "--run-dir",
                str(tmp_path / "r"),
                "--set",
                "optimizer=adagrad",
            ]
        )
        == 2
    )
    assert "optimizer" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written


def test_lars_and_sgd_and_adam_step(tiny_data, tmp_path):
    _, ds = tiny_data
    for opt in ("lars", "sgd", "adam"):
        cfg = config.load(None, {**TINY_RUN, "epochs": 1, "optimizer": opt, "lr": 0.05 if opt != "adam" else 1e-3})
        info = train.train(cfg, ds, tmp_path / opt, progress=False)
        assert info["status"] == "finished"


def test_warmup_cosine_schedule():
    f = optim.warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)


def test_short_run_loss_falls(tmp_path):
    """The SSL loss falls within a few epochs for every method, on the demo data with the demo
    preset's crops (crop_scale_min 0.9: its objects fill most of the frame). (Whether the features
    beat the random-init floor takes CPU-minutes: benchmarks/demo_story.py, benchmarks/learning.py
    and the demo's report check that, not the test suite.)"""
    demo_data.make_demo(
        tmp_path / "d",
        seed=0,
        n_id_classes=4,
        n_ood_classes=2,
        train_per_class=32,
        val_per_class=8,
        ood_per_class=8,
        size=32,
    )
    ds = data.load_dataset(tmp_path / "d")
    for method in REGISTRY:
        cfg = config.load(
            None, {**TINY_RUN, "method": method, "epochs": 6, "lr": 4e-3, "eval_every": 0, "crop_scale_min": 0.9}
        )
        train.train(cfg, ds, tmp_path / method, progress=False)
        losses = [m["train_loss"] for m in Run(tmp_path / method).metrics()]
        assert losses[-1] < 0.9 * losses[0], (method, losses)
