"""TensorBoard event files: the values of metrics.jsonl and eval.json, read back with TensorBoard's
own reader; the config in the HParams tab; runs side by side; resumes; no tensorboard package."""

import os
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata as hparams_metadata

from helpers import TINY_RUN, make_tiny
from selfsup import evaluate, events, runs, train
from selfsup.config import Config
from selfsup.data import load_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("data"))


def read_events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(runs.Run(run_dir).file(runs.EVENTS)))
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def expected(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows if key in r]


def test_events_hold_the_metrics_the_config_and_the_evaluation(data, tmp_path):
    cfg = Config(**{**TINY_RUN, "epochs": 3, "eval_every": 2})
    run_dir = tmp_path / "run"
    train.train(cfg, load_dataset(data), run_dir, progress=False)
    result = evaluate.evaluate_run(run_dir, data, table=False, linear=False, save_features=False)

    acc = read_events(run_dir)
    rows = runs.Run(run_dir).metrics()
    for key, tag in events.TAGS.items():
        assert scalars(acc, tag) == expected(rows, key), tag
    assert [s for s, _ in scalars(acc, "knn/val")] == [2, 3]  # monitored epochs only, as in metrics.jsonl
    for key, value in result["summary"].items():
        assert scalars(acc, events.EVAL_PREFIX + key) == [(3, pytest.approx(value, rel=1e-6))]

    # The config as hyperparameters: a SessionStartInfo, and no Experiment summary (which TensorBoard
    # would take for every run's).
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert hparams_metadata.EXPERIMENT_TAG not in content
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["batch_size"].number_value == cfg.batch_size
    assert start.hparams["method"].string_value == cfg.method
    assert start.hparams["compile"].bool_value is cfg.compile


def test_runs_side_by_side_and_a_resume_keeps_one_value_an_epoch(data, tmp_path):
    ds = load_dataset(data)
    cfg = Config(**TINY_RUN)  # 2 epochs
    train.train(cfg, ds, tmp_path / "a", progress=False)
    train.train(cfg, ds, tmp_path / "b", progress=False, stop_after=1)
    train.train(cfg, ds, tmp_path / "b", progress=False, resume=True)

    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    assert sorted(mux.Runs()) == [f"a/{runs.EVENTS}", f"b/{runs.EVENTS}"]  # `tensorboard --logdir` shows both
    for name in ("a", "b"):
        rows = runs.Run(tmp_path / name).metrics()
        assert scalars(read_events(tmp_path / name), "loss/train") == expected(rows, "train_loss")
    # the resumed run trained exactly as the uninterrupted one: the events say so too
    a, b = (scalars(read_events(tmp_path / n), "loss/train") for n in ("a", "b"))
    assert a == b


def test_a_fresh_run_in_a_folder_with_old_events_hides_them(data, tmp_path):
    """A run that failed before its first checkpoint leaves events behind; the next run in that
    folder starts afresh (purge_step), so TensorBoard shows only the new run's epochs."""
    ds = load_dataset(data)
    run_dir = tmp_path / "run"
    old = events.writer(runs.Run(run_dir))
    for epoch in (1, 2, 3):
        old.add_scalar("loss/train", 99.0, epoch)
    old.close()
    train.train(Config(**TINY_RUN), ds, run_dir, progress=False)
    rows = runs.Run(run_dir).metrics()
    assert scalars(read_events(run_dir), "loss/train") == expected(rows, "train_loss")


def test_training_without_tensorboard_warns_and_trains(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it raises ImportError
    monkeypatch.setattr(events, "_warned", False)
    with pytest.warns(UserWarning, match="no TensorBoard event files"):
        info = train.train(Config(**TINY_RUN), load_dataset(data), tmp_path / "run", progress=False)
    assert info["status"] == "finished"
    assert not runs.Run(tmp_path / "run").file(runs.EVENTS).exists()


def test_tensorboard_shows_a_runs_scalars_in_a_browser(data, tmp_path):
    """What `make tensorboard` serves, opened in headless Chromium (scripts/check_browser.py); skipped
    where Chromium or playwright is missing, failed instead under SELFSUP_REQUIRE_BROWSER=1 (CI)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import check_browser

    reason = check_browser.missing()
    if reason and os.environ.get("SELFSUP_REQUIRE_BROWSER"):
        pytest.fail(f"SELFSUP_REQUIRE_BROWSER is set: {reason}")
    if reason:
        pytest.skip(reason)
    train.train(Config(**TINY_RUN), load_dataset(data), tmp_path / "runs" / "final", progress=False)
    with check_browser.chromium() as browser:
        seen = check_browser.check_tensorboard(
            browser, tmp_path / "runs", run=f"final/{runs.EVENTS}", screenshot=tmp_path / "tensorboard.png"
        )
    assert seen["tag"] == "loss/train" and (tmp_path / "tensorboard.png").stat().st_size > 10_000
