"""run.json records the git commit of the code that trained it, and whether its tree was dirty."""

import shutil
import subprocess

import pytest
import torch

from selfsup import provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(where, *args):
    cmd = ["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A repository with one committed source file, code/__init__.py."""
    git(tmp_path, "init", "-q")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "__init__.py").write_text("x = 1\n")
    git(tmp_path, "add", "code/__init__.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def test_commit_and_clean_tree(checkout):
    assert provenance.git_state(checkout / "code" / "__init__.py") == (git(checkout, "rev-parse", "HEAD"), False)


def test_an_edit_or_a_new_file_makes_the_tree_dirty(checkout):
    (checkout / "code" / "__init__.py").write_text("x = 2\n")
    assert provenance.git_state(checkout / "code" / "__init__.py")[1] is True
    git(checkout, "checkout", "--", "code/__init__.py")
    (checkout / "new.py").write_text("")
    assert provenance.git_state(checkout / "code" / "__init__.py")[1] is True


def test_code_not_tracked_by_git_records_null(checkout, tmp_path_factory):
    # an installed copy inside some repository (e.g. a virtualenv in the checkout) is not that commit
    (checkout / "venv").mkdir()
    (checkout / "venv" / "__init__.py").write_text("")
    assert provenance.git_state(checkout / "venv" / "__init__.py") == (None, None)
    outside = tmp_path_factory.mktemp("plain")
    (outside / "__init__.py").write_text("")
    assert provenance.git_state(outside / "__init__.py") == (None, None)


def test_no_git_program_records_null(checkout, monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert provenance.git_state(checkout / "code" / "__init__.py") == (None, None)


def test_environment_records_the_state_of_selfsups_own_code():
    env = provenance.environment(torch.device("cpu"))
    assert (env["git_commit"], env["git_dirty"]) == provenance.git_state()
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
