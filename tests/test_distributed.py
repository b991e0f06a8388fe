"""Data-parallel training on CPU: two gloo processes, as DESIGN.md asks.

The claim to check: W processes with batch_size/W images each compute the loss and the gradients
of one process on the whole batch (SimCLR's negatives and Barlow Twins' statistics span all ranks),
a resumed two-process run repeats exactly, and torchrun runs the command line as users would.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from helpers import TINY_RUN, make_tiny
from selfsup import config, data, distributed, losses, train
from selfsup.config import ConfigError
from selfsup.runs import Run

WORLD = 2
LOSSES = {
    "nt_xent": lambda a, b: losses.nt_xent(a, b, 0.2),
    "barlow": losses.barlow_twins_loss,
    "vicreg": losses.vicreg_loss,
}


def _spawn(fn, *args):
    mp.spawn(fn, args=args, nprocs=WORLD, join=True)


def _join(rank, store):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


class _Pair(nn.Module):
    """A method in miniature without BatchNorm (whose statistics are per process by design):
    embed both views, gather across processes, one loss."""

    def __init__(self, loss):
        super().__init__()
        self.net, self.loss = nn.Linear(12, 10), loss

    def forward(self, x1, x2):
        return self.loss(distributed.gather(self.net(x1)), distributed.gather(self.net(x2)))


def _gradient_worker(rank, store, out):
    _join(rank, store)
    x1, x2 = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(1))  # the global batch
    mine = slice(rank * 8, (rank + 1) * 8)
    results = {}
    for name, loss in LOSSES.items():
        torch.manual_seed(0)
        model = _Pair(loss)
        ddp = DistributedDataParallel(model)  # held: its reducer averages the gradients in backward
        value = ddp(x1[mine], x2[mine])
        value.backward()
        results[name] = (value.detach(), model.net.weight.grad.clone(), model.net.bias.grad.clone())
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


def test_gathered_losses_and_gradients_equal_one_process_on_the_global_batch(tmp_path):
    out = tmp_path / "grads"
    _spawn(_gradient_worker, str(tmp_path / "store"), str(out))
    x1, x2 = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(1))
    for name, loss in LOSSES.items():
        torch.manual_seed(0)
        model = _Pair(loss)
        value = model(x1, x2)
        value.backward()
        for rank in range(WORLD):
            got_value, got_w, got_b = torch.load(f"{out}.{rank}")[name]
            torch.testing.assert_close(got_value, value.detach(), msg=f"{name} loss, rank {rank}")
            torch.testing.assert_close(got_w, model.net.weight.grad, msg=f"{name} weight grad, rank {rank}")
            torch.testing.assert_close(got_b, model.net.bias.grad, msg=f"{name} bias grad, rank {rank}")


def _train_worker(rank, store, folder, runs):
    _join(rank, store)
    ds = data.load_dataset(folder)
    cfg = config.load(None, TINY_RUN)
    train.train(cfg, ds, f"{runs}/straight", progress=False)
    info = train.train(cfg, ds, f"{runs}/resumed", progress=False, stop_after=1)
    assert info["status"] == "stopped"
    train.train(cfg, ds, f"{runs}/resumed", resume=True, progress=False)
    for bad, message in [
        (dict(batch_size=31), "does not split evenly over 2 processes"),
        (dict(sync_bn=True), "SyncBatchNorm needs CUDA"),
    ]:
        with pytest.raises(ConfigError, match=message):
            train.train(cfg.replace(**bad), ds, f"{runs}/bad", progress=False)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def test_two_process_run_resumes_exactly_and_process_0_writes_the_folder(tiny_folder, tmp_path):
    _spawn(_train_worker, str(tmp_path / "store"), str(tiny_folder), str(tmp_path))
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma, mb = Run(tmp_path / "straight").metrics(), Run(tmp_path / "resumed").metrics()
    assert [m["epoch"] for m in ma] == [1, 2]  # one line per epoch: only process 0 writes
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]
    run = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert run["status"] == "finished" and run["environment"]["processes"] == WORLD
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_processes_draw_their_own_augmentation_each_epoch():
    seeds = {train._process_seed(0, epoch, rank) for epoch in range(3) for rank in range(4)}
    assert len(seeds) == 12 and train._process_seed(0, 1, 1) == train._process_seed(0, 1, 1)


def test_torchrun_runs_the_command_line(tiny_folder, tmp_path):
    sets = [f"--set={k}={v}" for k, v in {**TINY_RUN, "method": "barlow", "epochs": 1}.items()]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        "-m",
        "selfsup.cli",
        "train",
        "--config",
        "configs/demo.yaml",
        "--data",
        str(tiny_folder),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1  # one summary, from process 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished" and run["environment"]["processes"] == WORLD
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"] == "barlow"
