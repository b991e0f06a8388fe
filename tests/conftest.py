"""The whole suite trains with torch's default CPU thread count, whatever the machine's load: runs
compared bit for bit must use the same count (selfsup.threads would otherwise choose one from the
cores free when each run starts). Subprocesses (the CLI, papermill kernels) inherit it."""

import os

import torch

os.environ.setdefault("SELFSUP_CPU_THREADS", str(torch.get_num_threads()))
