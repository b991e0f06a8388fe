"""One run: train, then evaluate, from a Config and a loaded Dataset.

The one definition of a run behind its three doors: `selfsup train [--eval]`, notebook 03 and so
every sweep point (a papermill execution of notebook 03). The dataset is loaded once, by the
caller, and both steps use it; what the run writes, selfsup.runs owns.

    run(cfg, dataset, "runs/final", data_dir="data/demo")  -> {"info": run.json, "eval": eval.json}
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Config
from .data import Dataset
from .evaluate import evaluate_run
from .train import train


def run(
    cfg: Config,
    dataset: Dataset,
    run_dir: str | Path,
    *,
    data_dir: str | Path,
    evaluate: bool = True,
    resume: bool = False,
    progress: bool = True,
    eval_options: dict | None = None,
) -> dict:
    """Train cfg.method on dataset.train into run_dir (selfsup.train.train: resume continues from
    the folder's checkpoint), then, with `evaluate`, evaluate the trained encoder and its
    random-init floor on the same dataset (selfsup.evaluate.evaluate_run with `eval_options`).

    data_dir: the folder the dataset was loaded from, recorded in eval.json (what "is this
    evaluation current" compares). Returns {"info": run.json's content, "eval": eval.json's
    content, or None without evaluation}. Under torchrun every process trains; process 0 alone
    evaluates (the others return eval None)."""
    info = train(cfg, dataset, run_dir, resume=resume, progress=progress)
    lead = os.environ.get("RANK", "0") == "0"  # torchrun's process 0 (train has left the group)
    ev = None
    if evaluate and info["status"] == "finished" and lead:
        ev = evaluate_run(run_dir, data_dir, dataset=dataset, **(eval_options or {}))
    return dict(info=info, eval=ev)
