"""Where a result came from: versions, platform, device and the code's git commit (run.json, benchmarks)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from . import __version__


def environment(device: torch.device, processes: int = 1) -> dict:
    """What a result was measured with: versions, platform, device, threads (run.json, benchmarks)."""
    import torchvision

    info = dict(
        selfsup=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        numpy=np.__version__,
        platform=platform.platform(),
        device=str(device),
        threads=torch.get_num_threads(),
        processes=processes,
    )
    info["git_commit"], info["git_dirty"] = git_state()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_state(source=__file__) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout that holds `source` (by default selfsup's own code):
    the HEAD commit and whether the tree differs from it (tracked changes or untracked files).
    (None, None) when the file is not tracked by git (an installed package, even one inside some
    repository), git is missing, or it takes longer than 5 s."""
    where, name = Path(source).resolve().parent, Path(source).name

    def git(*args) -> str:
        return subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=5, check=True
        ).stdout

    try:
        git("ls-files", "--error-unmatch", "--", name)
        return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, untracked, too slow
        return None, None
