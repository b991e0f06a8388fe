"""selfsup plan: the estimate of a run (nothing written), the largest batch that fits when a CUDA
out-of-memory error is injected for larger ones, a sweep's total, and `selfsup train`'s one line
for an out-of-memory error (the checkpoint kept)."""

import pytest
import torch

from helpers import TINY_RUN, make_tiny
from selfsup import cli, plan, runs, train
from selfsup.config import Config, ConfigError
from selfsup.data import load_dataset
from selfsup.methods import build_method

TORCH_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which "
    "1.20 GiB is free. Of the allocated memory 76.10 GiB is allocated by PyTorch, and 0.50 GiB is reserved"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("data"))  # 96 train images, 32 val


@pytest.fixture
def memory_for(monkeypatch):
    """Make every optimisation step of a batch larger than N raise CUDA's out-of-memory error, as a
    card with room for N images would; returns the batches tried."""
    tried = []

    def limit(n):
        step = train.Setup.step

        def step_within(self, v1, v2):
            tried.append(len(v1))
            if len(v1) > n:
                raise torch.cuda.OutOfMemoryError(TORCH_OOM)
            return step(self, v1, v2)

        monkeypatch.setattr(train.Setup, "step", step_within)
        return tried

    return limit


def test_largest_batch_halves_then_bisects():
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 37

    assert plan.largest_batch(fits, 128) == 37
    assert tried[:2] == [64, 32]  # halving until one fits, then bisecting 32..64
    assert len(tried) <= 2 + 5
    assert plan.largest_batch(lambda b: b <= 1, 8) == 1
    assert plan.largest_batch(lambda b: False, 8) == 0


def test_passes_count_monitoring_and_checkpoints_as_the_loop_does():
    assert plan.passes(10, 3, 1) == (4, 10)  # k-NN after epochs 3, 6, 9 and the last
    assert plan.passes(5, 0, 2) == (1, 3)  # eval_every 0: the last only; checkpoints 2, 4, 5


def test_estimate_measures_the_run_and_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(**{**TINY_RUN, "epochs": 4, "eval_every": 2})
    est = plan.estimate(cfg, load_dataset(data), steps=2, warmup=1)
    assert list(tmp_path.iterdir()) == []
    assert est.fits and est.measured_batch == cfg.batch_size == 32 and est.steps_per_epoch == 3
    torch.manual_seed(0)
    model = build_method(cfg)
    assert est.parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert est.encoder_parameters == sum(p.numel() for p in model.encoder.parameters())
    assert est.step_s > 0 and est.monitor_s > 0 and est.checkpoint_s > 0 and est.peak_memory > 0
    assert est.images_per_s == pytest.approx(32 / est.step_s)
    assert est.total_s == pytest.approx(4 * 3 * est.step_s + 2 * est.monitor_s + 4 * est.checkpoint_s)
    text = str(est)
    assert "images/s" in text and "whole run" in text and "peak RSS" in text and "does not fit" not in text
    assert "| whole run |" in est.markdown()


def test_estimate_refuses_what_training_refuses(data):
    with pytest.raises(ConfigError, match="batch_size.*larger than the training set"):
        plan.estimate(Config(**{**TINY_RUN, "batch_size": 200}), load_dataset(data))


def test_a_batch_that_does_not_fit_gets_the_largest_that_does(data, memory_for):
    tried = memory_for(20)
    est = plan.estimate(Config(**TINY_RUN), load_dataset(data), steps=2, warmup=1)
    assert not est.fits and est.batch_size == 32 and est.measured_batch == 20
    assert tried[0] == 32 and 16 in tried and 21 in tried  # halved to 16, then bisected 16..32 to 20
    assert est.steps_per_epoch == 96 // 20 and est.images_per_s == pytest.approx(20 / est.step_s)
    assert "batch_size 32 does not fit (CUDA out of memory." in str(est) and "--set batch_size=20" in str(est)


def test_plan_command_prints_and_exits_1_when_the_batch_does_not_fit(data, memory_for, capsys, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in TINY_RUN.items()))
    argv = ["plan", "--config", str(config), "--data", str(data), "--steps", "1", "--warmup", "0"]
    assert cli.main(argv) == 0
    assert "images/s" in capsys.readouterr().out
    memory_for(24)
    assert cli.main(argv + ["--run-dir", str(tmp_path / "never")]) == 1
    assert "the largest that does is 24" in capsys.readouterr().out
    assert not (tmp_path / "never").exists()


def test_train_turns_out_of_memory_into_one_line_and_keeps_the_checkpoint(data, memory_for, capsys, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in TINY_RUN.items()))
    run_dir = tmp_path / "run"
    cfg = Config(**TINY_RUN)
    train.train(cfg, load_dataset(data), run_dir, progress=False, stop_after=1)
    checkpoint = runs.Run(run_dir).file(runs.CHECKPOINT).read_bytes()

    memory_for(16)
    argv = ["train", "--config", str(config), "--data", str(data), "--run-dir", str(run_dir), "--resume"]
    assert cli.main(argv + ["--set", "lr=0.001", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{run_dir}: CUDA out of memory at batch_size 32 (tried to allocate 2.00 GiB more with 76.10 GiB" in err
    assert "on a GPU of 79.15 GiB" in err and "the last checkpoint, if any, is kept" in err
    assert f"`selfsup plan --config {config} --data {data} --set=lr=0.001` finds the largest batch" in err
    assert runs.Run(run_dir).file(runs.CHECKPOINT).read_bytes() == checkpoint
    assert runs.Run(run_dir).status == "failed"


def test_sweep_total_measures_each_distinct_cost_once(data, monkeypatch):
    measured = []
    estimate = plan.estimate

    def counting(cfg, *args, **kw):
        measured.append(cfg)
        return estimate(cfg, *args, **kw)

    monkeypatch.setattr(plan, "estimate", counting)
    base = Config(**TINY_RUN)
    configs = [base, base.replace(seed=1), base.replace(temperature=0.5, epochs=5), base.replace(width=4)]
    line = plan.sweep_total(configs, str(data))
    assert len(measured) == 2  # seed, temperature and length cost nothing a step; width does
    assert line.startswith("plan: about ") and "for 4 runs one after another" in line
