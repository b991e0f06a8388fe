"""The GPU configuration, run on the CPU: bf16 autocast, channels_last, fused optimizers and
torch.compile for every method; the compile fallback; resuming on another device type; and the
figures using the very features eval.json scored."""

import json

import numpy as np
import pytest
import torch

from helpers import TINY_RUN, make_tiny
from selfsup import config, data, evaluate, report, train
from selfsup.methods import REGISTRY
from selfsup.runs import Run, RunError

GPU_LIKE = dict(precision="bf16", channels_last="on", fused="on")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny(tmp_path_factory.mktemp("gpu") / "data")
    return folder, data.load_dataset(folder)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_trains_in_the_gpu_configuration(method, tiny, tmp_path):
    _, ds = tiny
    cfg = config.load(None, {**TINY_RUN, **GPU_LIKE, "method": method, "epochs": 1})
    s = train.build(cfg, len(ds.train), torch.device("cpu"))
    assert s.amp == torch.bfloat16 and s.channels_last and s.scaler is None
    assert all(g.get("fused") for g in s.opt.param_groups) or cfg.optimizer == "lars"
    info = train.train(cfg, ds, tmp_path / method, progress=False)
    assert info["status"] == "finished" and info["precision"] == "bfloat16"
    m = Run(tmp_path / method).metrics()[0]
    assert np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"]) and 0 <= m["knn_acc"] <= 1


def test_fp16_uses_a_gradient_scaler(tiny, tmp_path):
    _, ds = tiny
    cfg = config.load(None, {**TINY_RUN, "precision": "fp16", "epochs": 1})
    s = train.build(cfg, len(ds.train), torch.device("cpu"))
    assert s.amp == torch.float16 and s.scaler is not None
    info = train.train(cfg, ds, tmp_path / "fp16", progress=False)
    assert info["precision"] == "float16" and np.isfinite(info["final"]["train_loss"])


def test_compiled_run_matches_eager_closely(tiny, tmp_path):
    _, ds = tiny
    cfg = config.load(None, {**TINY_RUN, "epochs": 1, "compile": True})
    compiled = train.train(cfg, ds, tmp_path / "compiled", progress=False)["final"]["train_loss"]
    eager = train.train(cfg.replace(compile=False), ds, tmp_path / "eager", progress=False)["final"]["train_loss"]
    assert compiled == pytest.approx(eager, rel=1e-3)


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise torch._dynamo.exc.InternalTorchDynamoError("injected: the backward graph did not compile")


def test_compile_fallback_covers_the_backward_and_shows_the_error(tiny, tmp_path, monkeypatch, capsys):
    _, ds = tiny
    # torch compiles the backward lazily, inside loss.backward(): a failure there must fall back too
    monkeypatch.setattr(torch, "compile", lambda fn: lambda *a: _FailsInBackward.apply(fn(*a)))
    cfg = config.load(None, {**TINY_RUN, "epochs": 1, "compile": True})
    info = train.train(cfg, ds, tmp_path / "r", progress=False)
    assert info["status"] == "finished"
    err = capsys.readouterr().err
    assert "torch.compile failed (InternalTorchDynamoError: injected: the backward graph did not compile)" in err
    assert err.count("running eagerly") == 1  # once, then eager for good


def test_errors_that_are_not_compile_errors_propagate(tiny, tmp_path, monkeypatch):
    _, ds = tiny

    def out_of_memory(fn):
        def call(*a):
            raise RuntimeError("CUDA out of memory (injected)")

        return call

    monkeypatch.setattr(torch, "compile", out_of_memory)
    cfg = config.load(None, {**TINY_RUN, "epochs": 1, "compile": True})
    with pytest.raises(RuntimeError, match="out of memory"):
        train.train(cfg, ds, tmp_path / "r", progress=False)
    assert Run(tmp_path / "r").info()["error"] == "CUDA out of memory (injected)"  # run.json: failed, and why


def test_resume_on_another_device_type_is_refused_before_anything_is_written(tiny, tmp_path):
    _, ds = tiny
    cfg = config.load(None, {**TINY_RUN, "epochs": 2})
    run = tmp_path / "r"
    train.train(cfg, ds, run, progress=False, stop_after=1)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["device_type"] == "cpu"
    state["device_type"] = "cuda"  # as if written on a GPU box
    torch.save(state, run / "checkpoint.pt")
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.name != ".lock"}
    with pytest.raises(RunError, match="was written on cuda, this run is on cpu"):
        train.train(cfg, ds, run, resume=True, progress=False)
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.name != ".lock"} == before


def test_deterministic_setting_turns_on_deterministic_algorithms(tiny, tmp_path):
    _, ds = tiny
    try:
        train.train(
            config.load(None, {**TINY_RUN, "epochs": 1, "deterministic": True}), ds, tmp_path / "r", progress=False
        )
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_figures_use_the_features_eval_json_scored(tiny, tmp_path):
    folder, ds = tiny
    run = tmp_path / "r"
    train.train(config.load(None, {**TINY_RUN, "epochs": 1}), ds, run, progress=False)
    ev = evaluate.evaluate_run(run, folder, device="cpu", table=False, linear=False)
    features = evaluate.run_features(run, folder)  # what Figures 2-3 and the explorer draw from
    pred = evaluate.knn_predict(features["train"], ds.train.labels, features["val"], k=ev["trained"]["val"]["k"])
    assert pred.tolist() == ev["trained"]["val"]["predictions"]["knn"]
    assert float((pred.numpy() == ds.val.labels).mean()) == ev["summary"]["val_knn"]
    made = report.make_figures(run, folder, tmp_path / "figs", dataset=ds, ev=ev, n_images=4)
    assert all(p.is_file() for p in made["paths"].values())
    assert json.loads((tmp_path / "figs" / "figures.json").read_text())["config_hash"] == Run(run).info()["config_hash"]
