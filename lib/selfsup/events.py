"""A run's TensorBoard event files, so `tensorboard --logdir runs` shows every run side by side.

Written into the run folder's events/ (selfsup.runs.EVENTS) by process 0 only, with torch's own
writer (torch.utils.tensorboard): per epoch the values metrics.jsonl holds (train and val loss, lr,
the k-NN monitor, images/s), the config as hyperparameters (the HParams tab), and after the
evaluation its headline accuracies. The global step is the epoch (1-based), as in metrics.jsonl.

Only a SessionStartInfo is written for the hyperparameters, never an Experiment summary: with none,
TensorBoard builds the HParams table from every run's hyperparameters and scalars, where one
run's Experiment (what torch's add_hparams writes, into a subfolder of its own) would be taken
for all of them. A resumed run opens its writer with purge_step at the first epoch it redoes, so
TensorBoard drops the events a killed run wrote after its last checkpoint, as metrics.jsonl does.
The files are a view of the run, never read back by training: resume stays exact without them.
"""

from __future__ import annotations

import warnings

from .config import Config
from .runs import EVENTS, Run

# metrics.jsonl key -> TensorBoard tag (the same values, per epoch)
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "lr": "lr",
    "knn_acc": "knn/val",
    "images_per_sec": "speed/images_per_sec",
}
EVAL_PREFIX = "eval/"  # + eval.json's summary keys: eval/val_knn, eval/ood_linear, ...

_warned = False


def writer(run: Run, purge_step: int | None = None):
    """A SummaryWriter on the run's events folder, or None (with one warning a process) when the
    tensorboard package is missing: training goes on without event files."""
    global _warned
    try:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: an optional heavy part
    except ImportError as e:
        if not _warned:
            warnings.warn(
                f"selfsup: no TensorBoard event files ({e}); `pip install tensorboard` to get them", stacklevel=2
            )
            _warned = True
        return None
    return SummaryWriter(log_dir=str(run.file(EVENTS)), purge_step=purge_step)


class Events:
    """The event files of one training run: `hparams` once, `epoch` per metrics row, `close` at the
    end. enabled=False (processes other than 0) writes nothing."""

    def __init__(self, run: Run, cfg: Config, start_epoch: int, enabled: bool = True):
        self._w = writer(run, purge_step=start_epoch + 1) if enabled else None
        if self._w is not None:
            _hparams(self._w, cfg)

    def epoch(self, record: dict) -> None:
        if self._w is None:
            return
        for key, tag in TAGS.items():
            if key in record:
                self._w.add_scalar(tag, record[key], record["epoch"])
        self._w.flush()  # visible while the run goes on

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


def _hparams(w, cfg: Config) -> None:
    """The config as the HParams tab's hyperparameters (a SessionStartInfo; see the module docstring)."""
    from torch.utils.tensorboard.summary import hparams

    _, session_start, _ = hparams(cfg.to_dict(), {})
    w.file_writer.add_summary(session_start)


def write_eval(run: Run, summary: dict, step: int) -> None:
    """The evaluation's headline accuracies (eval.json's summary) as scalars at `step` (the epochs trained)."""
    w = writer(run)
    if w is None:
        return
    for key, value in summary.items():
        if isinstance(value, (int, float)):
            w.add_scalar(EVAL_PREFIX + key, value, step)
    w.close()
