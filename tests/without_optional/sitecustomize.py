"""Python as the GPU machine has it: the packages only some commands need are not installed.

With this folder on PYTHONPATH, every interpreter that starts (site.py imports sitecustomize),
a script's subprocesses included, behaves as if the packages below were not installed:
`import pooch` raises ModuleNotFoundError and importlib.util.find_spec("pooch") is None, which is
how libraries (torch among them) probe for optional packages. tests/test_without_optional.py runs
the CLI and benchmarks/gpu_check.sh this way; by hand:

    PYTHONPATH=tests/without_optional:lib python -m selfsup.cli train ...

The GPU machine has torch, torchvision, numpy, scikit-learn, scipy, pandas, matplotlib,
safetensors, pyyaml, tqdm, tensorboard and pytest; BLOCKED is what it lacks. $SELFSUP_BLOCKED
(comma-separated) replaces the list.
"""

import os
import sys

_DEFAULT = (
    "pooch requests papermill nbconvert nbformat nbclient jupyter_client jupyter_core ipykernel "
    "IPython ipywidgets jupyterlab notebook playwright pypdf psutil submitit seaborn"
)
BLOCKED = frozenset(filter(None, os.environ.get("SELFSUP_BLOCKED", "").split(","))) or frozenset(_DEFAULT.split())


class _Hidden:
    """A finder of sys.meta_path that no longer finds the blocked packages (and finds the rest)."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hidden(f) for f in sys.meta_path]
