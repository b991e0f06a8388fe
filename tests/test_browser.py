"""The report and the notebook-04 explorer in a real browser: headless system Chromium (Debian's
`chromium`) driven by Playwright, through the functions of scripts/check_browser.py (what
`make check-browser` runs). Skipped, with the reason, where /usr/bin/chromium or playwright is
missing; CI installs both and sets SELFSUP_REQUIRE_BROWSER=1, under which they fail instead of skipping
(.ci/run). About a minute on two CPU cores.
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import check_browser  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    reason = check_browser.missing()
    if reason and os.environ.get("SELFSUP_REQUIRE_BROWSER"):
        pytest.fail(f"SELFSUP_REQUIRE_BROWSER is set: {reason}")
    if reason:
        pytest.skip(reason)
    with check_browser.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def ws(browser, tmp_path_factory):
    """A tiny finished run (a few dozen 32x32 images, 2 epochs) and its exported report."""
    ws = check_browser.tiny_workspace(tmp_path_factory.mktemp("browser"))
    ws["report"] = check_browser.export_report(ws, ws["root"] / "reports")
    return ws


def test_report_html_offline(browser, ws, tmp_path):
    seen = check_browser.check_report(browser, ws["report"], screenshot=tmp_path / "report.png")
    assert seen["blocked"] == [] and seen["errors"] == []
    assert len(seen["images"]) == 3  # Figures 1-3, embedded, decoded
    assert all(im["src"].startswith("data:image/png") and im["width"] > 100 for im in seen["images"])
    assert seen["tables"] and max(seen["tables"]) >= 3  # the results table: header + the protocols
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_check_catches_outside_requests_and_broken_images(browser, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><img src="https://example.org/figure.png"><img src="missing.png">'
        "<table><tr><th>a</th></tr><tr><td>1</td></tr></table></body></html>"
    )
    with pytest.raises(check_browser.CheckFailed) as e:
        check_browser.check_report(browser, page)
    msg = str(e.value)
    assert "1 request(s) outside the file: ['https://example.org/figure.png']" in msg
    assert "image 0" in msg and "image 1" in msg


def test_explorer_in_jupyterlab(browser, ws, tmp_path):
    screens = tmp_path / "screens"
    screens.mkdir()
    seen = check_browser.check_explorer(browser, ws, tmp_path / "lab", screens=screens)
    assert seen["after"]["readout"] == str(seen["other_image"])
    assert seen["after"]["images"] != seen["before"]["images"]  # the query (true / predicted label) and neighbours
    assert seen["blocked"] == []
    # the first class is named with markup (check_browser.INJECTED_CLASS): text in the caption, never run
    assert check_browser.INJECTED_CLASS in seen["before"]["text"]
    assert seen["dialogs"] == [] and seen["injected_tags"] == 0
    for name in ("lab_top.png", "lab_notebook.png", "explorer_before.png", "explorer_after.png"):
        assert (screens / name).stat().st_size > 5_000, name


def test_lab_command_is_root_safe_and_local():
    cmd = check_browser.lab_command(port=8899, token="t")
    assert cmd[cmd.index("--ip") + 1] == "127.0.0.1" and "--no-browser" in cmd
    assert ("--allow-root" in cmd) == (os.geteuid() == 0)
