"""The GPU configuration, run on the CPU: bf16 autocast, channels_last, fused optimizers and
torch.compile for every method; the compile fallback; resuming on another device type; the figures
using the very features eval.json scored; and the CUDA-only code paths that a CPU can show (the
precision auto picks, determinism set up and undone, one host read for the non-finite check,
features in the run's precision, the dataset moved without a second copy)."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import TINY_RUN, make_tiny
from selfsup import config, data, evaluate, features, report, train
from selfsup.methods import REGISTRY
from selfsup.pixels import normalize
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
    files = lambda: {f.relative_to(run): f.read_bytes() for f in run.rglob("*") if f.is_file() and f.name != ".lock"}  # noqa: E731
    before = files()
    with pytest.raises(RunError, match="was written on cuda, this run is on cpu"):
        train.train(cfg, ds, run, resume=True, progress=False)
    assert files() == before  # the event files (events/) included


def test_deterministic_run_sets_cublas_first_and_restores_the_previous_state(tiny, tmp_path, monkeypatch):
    _, ds = tiny
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # (restored after the test)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    seen = {}
    init, build = train.dist.init_from_env, train.build

    def first_cuda_use():  # the first thing train() does that may initialise CUDA
        seen["cublas"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        return init()

    def build_and_look(*a):
        seen["during"] = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
        return build(*a)

    monkeypatch.setattr(train.dist, "init_from_env", first_cuda_use)
    monkeypatch.setattr(train, "build", build_and_look)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    cfg = config.load(None, {**TINY_RUN, "epochs": 1, "deterministic": True})
    train.train(cfg, ds, tmp_path / "r", progress=False)
    assert seen == {"cublas": ":4096:8", "during": (True, True)}
    assert (
        (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before == (False, False)
    )


def test_cublas_setting_after_cuda_started_says_how_to_fix_it(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # a notebook that trained on the GPU before
    cfg = config.load(None, {**TINY_RUN, "deterministic": True})
    with pytest.warns(UserWarning, match=r"set CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting Python"):
        train.cublas_determinism(cfg)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own: kept, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.cublas_determinism(cfg)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.parametrize(
    "card, expected",
    [
        (dict(native=True, emulated=True, capability=(9, 0)), torch.bfloat16),  # H100/H200, A100
        (dict(native=False, emulated=True, capability=(7, 5)), torch.float16),  # T4, V100: bf16 only emulated
        (dict(native=None, emulated=True, capability=(7, 0)), torch.float16),  # a torch without including_emulation
        (dict(native=None, emulated=True, capability=(8, 6)), torch.bfloat16),
    ],
)
def test_auto_precision_never_picks_emulated_bf16(card, expected, monkeypatch):
    def is_bf16_supported(**kw):
        if card["native"] is None and kw:
            raise TypeError("is_bf16_supported() got an unexpected keyword argument 'including_emulation'")
        return card["emulated"] if kw.get("including_emulation", True) else card["native"]

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: card["capability"])
    cfg = config.load(None, {**TINY_RUN, "precision": "auto"})
    assert train.amp_dtype(cfg, torch.device("cuda")) == expected


@pytest.mark.parametrize("units", [True, False])
def test_auto_precision_on_the_cpu_is_bf16_only_with_bf16_matrix_units(units, monkeypatch):
    """auto on the CPU: bf16 autocast and channels_last where the CPU has AMX, else fp32 and NCHW;
    an explicit setting wins either way."""
    monkeypatch.setattr(features, "cpu_bf16_units", lambda: units)
    cpu = torch.device("cpu")
    cfg = config.load(None, {**TINY_RUN, "precision": "auto"})
    assert train.amp_dtype(cfg, cpu) == (torch.bfloat16 if units else None)
    assert train.use_channels_last(cfg, cpu) is units
    fp32 = cfg.replace(precision="fp32")
    assert train.amp_dtype(fp32, cpu) is None and not train.use_channels_last(fp32, cpu)
    assert train.use_channels_last(fp32.replace(channels_last="on"), cpu)
    assert not train.use_channels_last(cfg.replace(channels_last="off"), cpu)


def test_features_are_extracted_in_the_run_precision(tiny, tmp_path, monkeypatch):
    folder, ds = tiny
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    images = ds.val.images[:16]
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        fp32 = enc(normalize(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = enc(normalize(x)).float()
    assert torch.equal(evaluate.extract_features(enc, images, precision="fp32"), fp32)
    assert torch.equal(evaluate.extract_features(enc, images, precision="bf16"), bf16)
    assert not torch.equal(bf16, fp32)

    # The training loop's k-NN monitor and the run's evaluation pass the run's precision on.
    asked = []
    for module in (train, evaluate):
        extract = module.extract_features
        monkeypatch.setattr(
            module,
            "extract_features",
            lambda *a, extract=extract, **kw: asked.append(kw["precision"]) or extract(*a, **kw),
        )
    cfg = config.load(None, {**TINY_RUN, **GPU_LIKE, "epochs": 1})
    train.train(cfg, ds, tmp_path / "r", progress=False)
    evaluate.evaluate_run(tmp_path / "r", folder, device="cpu", table=False, linear=False, save_features=False)
    assert len(asked) == 2 + 6 and set(asked) == {"bf16"}  # monitor: train, val; eval: 3 splits x trained, floor


class _HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (item(), bool()): on a GPU, each waits for it."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_non_finite_check_reads_the_state_once(tiny):
    _, ds = tiny
    cfg = config.load(None, {**TINY_RUN, "epochs": 1})
    s = train.build(cfg, len(ds.train), torch.device("cpu"))
    v1, v2 = s.aug(torch.from_numpy(ds.train.images[:32]).permute(0, 3, 1, 2))
    s.step(v1, v2)  # optimizer state exists
    tensors = len(list(s.model.parameters())) + sum(len(st) for st in s.opt.state.values())
    with _HostReads() as reads:
        assert train.non_finite(s.model, s.opt) is None
    assert tensors > 50 and reads.n == 1
    name, p = next(iter(s.model.named_parameters()))
    with torch.no_grad():
        p[0] = float("nan")
    assert train.non_finite(s.model, s.opt) == f"parameter {name}"


def test_images_move_to_the_device_without_a_second_full_copy():
    images = np.random.default_rng(0).integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)
    sizes = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes.extend(t.numel() for t in (out if isinstance(out, (tuple, list)) else [out]) if torch.is_tensor(t))
            return out

    x = train.images_to_device(images, torch.device("cpu"), chunk=16)
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()) and x.is_contiguous()
    # What the device holds, seen on the meta device (tensors without memory, as CUDA's would be):
    # the set once, else chunks -- moving the whole set and then transposing it made two full copies.
    with Sizes():
        train.images_to_device(images, torch.device("meta"), chunk=16)
    assert sorted(sizes)[-1] == images.size and sorted(sizes)[-2] <= 16 * 6 * 5 * 3


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


# ---------------------------------------------------------------------------------------------
# The same on a CUDA card (benchmarks/gpu_check.sh runs these: pytest -k cuda)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_auto_precision_is_what_the_card_computes_in():
    cfg = config.load(None, {**TINY_RUN, "precision": "auto", "device": "cuda"})
    native = torch.cuda.get_device_capability()[0] >= 8
    assert train.amp_dtype(cfg, torch.device("cuda")) == (torch.bfloat16 if native else torch.float16)


@cuda
def test_cuda_images_move_with_one_copy_on_the_card():
    images = np.random.default_rng(0).integers(0, 256, (20_000, 64, 64, 3), dtype=np.uint8)  # 246 MB
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    x = train.images_to_device(images, torch.device("cuda"))
    peak = torch.cuda.max_memory_allocated() - before
    assert peak <= images.nbytes + 8192 * 64 * 64 * 3 + 2**21, (peak, images.nbytes)  # the set + one chunk
    assert torch.equal(x[::997].cpu(), torch.from_numpy(images[::997]).permute(0, 3, 1, 2))


@cuda
def test_cuda_non_finite_check_waits_for_the_card_once(tiny):
    _, ds = tiny
    cfg = config.load(None, {**TINY_RUN, "device": "cuda", "epochs": 1})
    s = train.build(cfg, len(ds.train), torch.device("cuda"))
    x = torch.from_numpy(ds.train.images[:32]).permute(0, 3, 1, 2).cuda()
    s.step(*s.aug(x))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")  # a warning for every operation that waits for the card
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert train.non_finite(s.model, s.opt) is None
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len([w for w in caught if "synchroniz" in str(w.message)]) == 1
