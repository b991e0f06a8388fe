"""Every package the library imports is declared, and pyproject.toml and environment.yml declare the
same list (DESIGN.md: "environment.yml for conda users; pyproject.toml for pip users (same deps)")."""

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml", "IPython": "ipython"}


def name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower()


def pip_lists() -> tuple[set, set]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {name(r) for r in project["dependencies"]}, {name(r) for r in project["optional-dependencies"]["dev"]}


def conda_list() -> set:
    out = set()
    for entry in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]:
        for r in entry["pip"] if isinstance(entry, dict) else [entry]:
            out.add(name(r))
    return out - {"python", "pip", "-e"}


def test_pyproject_and_environment_yml_declare_the_same_packages():
    runtime, dev = pip_lists()
    assert conda_list() == runtime | dev


def test_every_third_party_import_of_the_library_is_declared():
    runtime, _ = pip_lists()
    imported = set()
    for path in (ROOT / "lib" / "selfsup").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"selfsup"}
    undeclared = sorted(m for m in third_party if DISTRIBUTION.get(m, m).lower() not in runtime)
    assert undeclared == []


def test_pre_commit_runs_the_ruff_the_dev_extra_pins():
    """`make lint` (the dev extra's ruff) and the pre-commit hook must format alike."""
    from packaging.requirements import Requirement

    repos = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
    rev = next(r["rev"] for r in repos if r["repo"].endswith("/ruff-pre-commit"))
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    ruff = next(Requirement(r) for r in dev if name(r) == "ruff")
    assert ruff.specifier.contains(rev.lstrip("v"))
    hooks = {h["id"] for r in repos for h in r["hooks"]}
    assert {"ruff-check", "ruff-format", "nbstripout"} <= hooks
