#!/usr/bin/env python3
"""Browser checks: the exported report and the notebook-04 explorer, in headless Chromium.

    python scripts/check_browser.py [--report reports/report.html] [--run DIR --data DIR] [--screens reports/screens]

(`make check-browser`). Chromium is the system one (Debian's `chromium` package, /usr/bin/chromium;
SELFSUP_CHROMIUM overrides the path), driven by Playwright's Python API; no browser is downloaded.

(a) report: report.html opened from disk with networking off (every request that is not file:
    is aborted and counted; there must be none); every <img> decoded (naturalWidth > 0), tables present.
(b) explorer: JupyterLab started here on 127.0.0.1 (free port, random token, --allow-root under
    root, throwaway config/settings/runtime folders) opens a papermill-parameterised copy of
    notebooks/04_evaluate.ipynb, runs all its cells from the Run menu, then types another image
    number into the explorer's "image #" slider: the panel's image (query with its true/predicted
    labels, and its nearest neighbours) must change. The tiny workspace names its first class
    INJECTED_CLASS, markup that would run script if the explorer put it in as HTML: it must show as
    text in the explorer's caption, with no dialog opened and no such <img> in the page.

Without --run, a tiny workspace is made first (a few dozen synthetic 32x32 images, a width-4 convnet
trained 2 epochs, evaluated without the probes); without an existing --report, its report is exported
(`selfsup report`) and checked instead. tests/test_browser.py runs the same functions.
Screenshots: report.png, lab_top.png (the notebook's start), lab_notebook.png, explorer_before.png,
explorer_after.png.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SELFSUP_CHROMIUM", "/usr/bin/chromium")
# Headless without a sandbox (root, containers) and quiet on a closed network: without the
# background-networking flags Chromium keeps trying Google services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A width-4 convnet on 32x32 views, 2 epochs: seconds on one CPU core.
TINY = dict(
    method="simclr",
    temperature=0.1,
    backbone="convnet",
    width=4,
    proj_hidden=16,
    proj_dim=8,
    pred_hidden=16,
    image_size=32,
    optimizer="adamw",
    lr=2e-3,
    batch_size=16,
    epochs=2,
    warmup_epochs=0,
    device="cpu",
)
# A class name that is markup: as HTML it would be an image whose failed load opens a dialog.
INJECTED_CLASS = "<img src=x onerror=alert(1)>"
# JupyterLab settings for the check: every cell rendered (no windowing), no news or update prompts.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


class CheckFailed(AssertionError):
    pass


def missing() -> str | None:
    """Why the browser checks cannot run here (no Chromium, no Playwright), or None."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not found (Debian/Ubuntu: apt-get install chromium, or `make chromium`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; it drives the system Chromium)"
    return None


def log(msg: str) -> None:
    print(f"[check-browser {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def chromium():
    """A headless system Chromium (Playwright Browser); a fresh profile each time."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# --------------------------------------------------------------------------------------------
# the tiny workspace


def tiny_workspace(root) -> dict:
    """Data (its first class named INJECTED_CLASS), a finished run evaluated without the probes, in root:
    {"root", "data", "run", "figures", "injected_class"}."""
    import yaml

    from selfsup import config, data, demo_data, evaluate, train

    root = Path(root)
    ws = dict(
        root=root,
        data=root / "data",
        run=root / "runs" / "final",
        figures=root / "figures",
        injected_class=INJECTED_CLASS,
    )
    demo_data.make_demo(
        ws["data"],
        seed=1,
        n_id_classes=3,
        n_ood_classes=2,
        train_per_class=16,
        val_per_class=6,
        ood_per_class=8,
        size=32,
    )
    for split in ("train", "val"):
        named = data.load_npz(ws["data"] / f"{split}.npz")
        named.class_names = [INJECTED_CLASS, *named.class_names[1:]]
        data.save_npz(named, ws["data"] / f"{split}.npz")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    train.train(config.load(root / "tiny.yaml"), data.load_dataset(ws["data"]), ws["run"], progress=False)
    evaluate.evaluate_run(ws["run"], ws["data"], table=False, linear=False)
    return ws


def export_report(ws: dict, out) -> Path:
    """`selfsup report` for the workspace's run into out/; the HTML (a missing TeX only costs the PDF)."""
    out = Path(out)
    cmd = [
        sys.executable,
        "-m",
        "selfsup.cli",
        "report",
        "--notebook",
        str(REPO / "notebooks" / "05_report.ipynb"),
        "--out",
        str(out),
        "-p",
        "root",
        str(REPO),
        "-p",
        "data_dir",
        str(ws["data"]),
        "-p",
        "runs",
        str(ws["run"].parent),
        "-p",
        "final_run",
        str(ws["run"]),
        "-p",
        "figures",
        str(ws["figures"]),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    html = out / "report.html"
    if r.returncode and not (html.is_file() and ("xelatex" in r.stderr or "pandoc" in r.stderr)):
        raise CheckFailed(f"selfsup report failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return html


# --------------------------------------------------------------------------------------------
# (a) the exported report, from disk, offline


def check_report(browser, html, screenshot=None) -> dict:
    """Open report.html from disk with every non-file request aborted; returns what was seen:
    images (src start, naturalWidth x naturalHeight), tables (rows), blocked requests, page errors.
    Raises CheckFailed unless nothing was requested outside the file, every image decoded and
    there is at least one image and one table."""
    html = Path(html).resolve()
    blocked, errors = [], []
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = context.new_page()

        def route(r):
            if r.request.url.startswith("file:"):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("pageerror", lambda e: errors.append(str(e)))
        context.set_offline(True)  # and no network at all, whatever the route lets through
        page.goto(html.as_uri(), wait_until="load", timeout=60_000)
        page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=30_000)
        images = page.eval_on_selector_all(
            "img",
            "els => els.map(e => ({src: e.getAttribute('src').slice(0, 40), width: e.naturalWidth,"
            " height: e.naturalHeight, shown: e.getBoundingClientRect().width}))",
        )
        tables = page.eval_on_selector_all("table", "els => els.map(t => t.rows.length)")
        seen = dict(report=str(html), images=images, tables=tables, blocked=blocked, errors=errors, title=page.title())
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=True)
    finally:
        context.close()
    problems = []
    if blocked:
        problems.append(f"{len(blocked)} request(s) outside the file: {blocked[:5]}")
    if not images:
        problems.append("no <img> in the report")
    problems += [
        f"image {i} ({im['src']}...) not shown: {im['width']}x{im['height']}, {im['shown']} px wide"
        for i, im in enumerate(images)
        if not (im["width"] > 0 and im["height"] > 0 and im["shown"] > 0)
    ]
    if not any(rows >= 2 for rows in tables):
        problems.append(f"no table with a header and a row (tables: {tables})")
    if errors:
        problems.append(f"JavaScript errors: {errors[:3]}")
    if problems:
        raise CheckFailed(f"{html}: " + "; ".join(problems))
    return seen


# --------------------------------------------------------------------------------------------
# (b) JupyterLab and the explorer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_command(port: int | None = None, token: str | None = None) -> list[str]:
    """`jupyter lab` bound to 127.0.0.1, no browser, --allow-root when run as root."""
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1"]
    if port:
        cmd += ["--port", str(port), "--ServerApp.port_retries=0"]
    if token is not None:
        cmd += [f"--IdentityProvider.token={token}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd


@contextlib.contextmanager
def jupyter_lab(workdir, timeout: float = 60):
    """JupyterLab serving workdir on 127.0.0.1 with throwaway config, settings and workspaces;
    yields (base_url, token). Stopped (kernels too) on exit; its log is workdir/../lab.log."""
    workdir = Path(workdir)
    home = Path(tempfile.mkdtemp(prefix="lab-", dir=workdir.parent))
    for name, value in LAB_SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        MPLBACKEND="Agg",
    )
    cmd = lab_command(port, token) + [
        "--ServerApp.root_dir",
        str(workdir),
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log_path = workdir.parent / "lab.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise CheckFailed(f"jupyter lab exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CheckFailed(f"jupyter lab not up after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        with contextlib.suppress(OSError):  # stops the kernels too
            req = urllib.request.Request(
                f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
            )
            urllib.request.urlopen(req, timeout=5).close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()


def prepare_notebook(ws: dict, workdir) -> Path:
    """notebooks/04_evaluate.ipynb parameterised (papermill, not executed) for the workspace's run."""
    import papermill

    out = Path(workdir) / "04_evaluate.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "04_evaluate.ipynb"),
        str(out),
        prepare_only=True,
        parameters=dict(
            root=str(REPO),
            run_dir=str(ws["run"]),
            data_dir=str(ws["data"]),
            figures=str(ws["figures"]),
            n_images=4,
            tsne_classes=2,
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    return out


def pick_other_image(ws: dict) -> tuple[int, dict]:
    """A val image whose course k-NN prediction (eval.json) differs from image 0's, and the two
    predictions; the last image when every prediction is the same."""
    from selfsup import data

    ev = json.loads((Path(ws["run"]) / "eval.json").read_text())
    pred = ev["trained"]["val"]["predictions"]["knn"]
    names = list(data.load_dataset(ws["data"]).val.class_names)
    other = next((i for i, p in enumerate(pred) if p != pred[0]), len(pred) - 1)
    return other, {"0": names[pred[0]], str(other): names[pred[other]]}


def _image_digest(panel) -> list[str]:
    """sha1 of every image src in the panel (the PNGs are data: URLs)."""
    srcs = panel.locator("img").evaluate_all("els => els.map(e => e.getAttribute('src') || '')")
    return [hashlib.sha1(s.encode()).hexdigest()[:12] for s in srcs]


def wait_kernel_idle(base: str, token: str, name: str, page, timeout: float = 60) -> None:
    """Until the notebook's kernel has started (the server says idle) and the page shows it idle."""
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(f"{base}/api/sessions", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            sessions = json.load(r)
        if any(s["path"].endswith(name) and (s.get("kernel") or {}).get("execution_state") == "idle" for s in sessions):
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"no idle kernel for {name} after {timeout:.0f} s: {sessions}")
        page.wait_for_timeout(500)  # not time.sleep: Playwright serves the route handlers meanwhile
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=timeout * 1000)


def run_all(page, tries: int = 3) -> None:
    """Run > Run All Cells, from the menu bar; again when no cell has started 15 s later."""
    import re

    started = page.locator(".jp-InputPrompt").filter(has_text=re.compile(r"\[(\*|\d+)\]"))
    for _ in range(tries):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem").filter(has_text=re.compile(r"^Run All Cells")).first.click()
        try:
            started.first.wait_for(timeout=15_000)
            return
        except Exception:  # playwright's TimeoutError
            log("no cell started after Run All Cells; again")
    raise CheckFailed(f"Run All Cells started no cell ({tries} tries)")


def check_explorer(browser, ws: dict, workdir, screens=None, timeout: float = 90) -> dict:
    """(b): JupyterLab runs notebook 04 for ws's run; changing the explorer's image changes its panel.
    Returns what was seen; raises CheckFailed otherwise. Time-boxed: `timeout` seconds for the
    notebook to run, 30 s for the explorer to redraw."""
    import re

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    nb = prepare_notebook(ws, workdir)
    other, predicted = pick_other_image(ws)
    screens = Path(screens) if screens else None
    seen = dict(notebook=str(nb), other_image=other, predicted=predicted)
    blocked, dialogs, t0 = [], [], time.monotonic()
    with jupyter_lab(workdir) as (base, token):
        seen["lab_up_s"] = round(time.monotonic() - t0, 1)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()

            def route(r):
                if r.request.url.startswith(base):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{base}/lab/tree/{nb.name}?token={token}", timeout=60_000)
            page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
            try:
                wait_kernel_idle(base, token, nb.name, page)
            except CheckFailed:
                if screens:
                    page.screenshot(path=str(screens / "lab_timeout.png"))
                raise
            seen["lab_open_s"] = round(time.monotonic() - t0, 1)
            run_all(page)
            # the explorer's image view: found by the slider's label ("image #"), not by position; the
            # panel is the innermost widget holding that slider and an Output widget's image
            sliders = page.locator(".widget-slider").filter(
                has=page.locator(".widget-label", has_text=re.compile(r"^\s*image\b", re.I))
            )
            slider = sliders.first
            panel = page.locator(".lm-Widget").filter(has=sliders).filter(has=page.locator(".widget-output img")).last
            errors = page.locator(
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                ":has(.ansi-red-fg, .ansi-red-intense-fg)"
            )
            deadline = time.monotonic() + timeout
            while not (panel.count() and panel.locator(".widget-output img").count()):
                if errors.count():
                    raise CheckFailed(f"notebook 04 failed in JupyterLab:\n{errors.first.inner_text()[-3000:]}")
                if time.monotonic() > deadline:
                    if screens:
                        page.screenshot(path=str(screens / "lab_timeout.png"))
                    raise CheckFailed(f"no explorer after {timeout:.0f} s (see lab.log, lab_timeout.png)")
                page.wait_for_timeout(500)
            seen["explorer_s"] = round(time.monotonic() - t0, 1)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=60_000)
            panel.scroll_into_view_if_needed()
            before = dict(images=_image_digest(panel), text=panel.inner_text())
            # markup in the data shown as markup would be an <img src="x"> in the page
            injected_tags = page.locator('img[src="x"]').count()
            if screens:
                page.screenshot(path=str(screens / "lab_notebook.png"))
                panel.screenshot(path=str(screens / "explorer_before.png"))
                # the chapter as a reader opens it: its title, prose and first results
                page.locator(".jp-Cell").first.scroll_into_view_if_needed()
                page.screenshot(path=str(screens / "lab_top.png"))
                panel.scroll_into_view_if_needed()
            # type the other image's number into the slider's readout (continuous_update=False: Enter commits)
            readout = slider.locator(".widget-readout")
            readout.click()
            page.keyboard.press("ControlOrMeta+A")
            page.keyboard.type(str(other))
            page.keyboard.press("Enter")
            deadline = time.monotonic() + 30
            while _image_digest(panel) == before["images"]:
                if time.monotonic() > deadline:
                    raise CheckFailed(
                        f"explorer unchanged 30 s after choosing image {other} (readout: {readout.inner_text()!r})"
                    )
                page.wait_for_timeout(250)
            page.wait_for_timeout(300)  # the Output widget clears and redraws (clear_output(wait=True))
            after = dict(images=_image_digest(panel), text=panel.inner_text(), readout=readout.inner_text().strip())
            if screens:
                panel.screenshot(path=str(screens / "explorer_after.png"))
        finally:
            context.close()
    seen.update(
        before=before,
        after=after,
        blocked=blocked,
        dialogs=dialogs,
        injected_tags=injected_tags,
        total_s=round(time.monotonic() - t0, 1),
    )
    problems = []
    if after["readout"] != str(other):
        problems.append(f"slider shows {after['readout']!r}, not {other}")
    if not after["images"] or after["images"] == before["images"]:
        problems.append(f"the panel's images did not change: {before['images']} -> {after['images']}")
    if "pred" in before["text"] and after["text"] == before["text"]:
        problems.append("the prediction text did not change")
    if blocked:
        problems.append(f"{len(blocked)} request(s) outside JupyterLab: {blocked[:5]}")
    injected = ws.get("injected_class")
    if injected and injected not in before["text"]:
        problems.append(f"the class named {injected!r} is not shown as text in the caption: {before['text'][:300]!r}")
    if dialogs or injected_tags:
        problems.append(f"markup from class names ran: {injected_tags} <img src=x> in the page, dialogs {dialogs}")
    if problems:
        raise CheckFailed("explorer: " + "; ".join(problems))
    return seen


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# (c) TensorBoard over run folders (what `make tensorboard` serves)


@contextlib.contextmanager
def tensorboard(logdir, timeout: float = 60):
    """TensorBoard on 127.0.0.1 (a free port) over logdir, as `make tensorboard` starts it; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as r:
                    if json.loads(r.read()):  # the runs are loaded
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(f"tensorboard did not serve {logdir}: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def check_tensorboard(browser, logdir, run: str, tag: str = "loss/train", screenshot=None, timeout: float = 90) -> dict:
    """Open TensorBoard's scalars in the browser and wait until the run's name and a card for `tag`
    are shown; returns what was seen. Raises CheckFailed otherwise."""
    with tensorboard(logdir) as url:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(f"{url}/#timeseries", wait_until="load", timeout=timeout * 1000)
            for text in (run, tag):
                try:
                    page.get_by_text(text, exact=True).first.wait_for(timeout=timeout * 1000)
                except Exception:  # playwright's TimeoutError
                    raise CheckFailed(f"TensorBoard at {url} does not show {text!r} for {logdir}") from None
            if screenshot:
                page.screenshot(path=str(screenshot))
            return dict(url=url, run=run, tag=tag, errors=errors)
        finally:
            page.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--report",
        default=str(REPO / "reports" / "report.html"),
        help="the exported report to check (default reports/report.html; when missing, a tiny one)",
    )
    p.add_argument("--run", help="a finished run for notebook 04 (default: a tiny one made here)")
    p.add_argument("--data", help="its dataset (with --run)")
    p.add_argument("--screens", default=str(REPO / "reports" / "screens"), help="where the PNG screenshots go")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds for notebook 04 to run in JupyterLab (default 90 on the "
        "tiny run, 300 with --run: on the demo data it took 80 s on a busy 2-core CPU)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary workspace (printed)")
    args = p.parse_args(argv)
    if bool(args.run) != bool(args.data):
        p.error("--run and --data go together")
    reason = missing()
    if reason:
        print(f"check-browser: {reason}", file=sys.stderr)
        return 2
    screens = Path(args.screens)
    screens.mkdir(parents=True, exist_ok=True)
    (screens / "lab_timeout.png").unlink(missing_ok=True)  # from an earlier failed check
    tmp = Path(tempfile.mkdtemp(prefix="selfsup-browser-"))
    t0 = time.monotonic()
    try:
        if args.run:
            ws = dict(root=tmp, run=Path(args.run).resolve(), data=Path(args.data).resolve(), figures=tmp / "figures")
        else:
            log(f"tiny workspace in {tmp} (data, 2-epoch run, evaluation)")
            ws = tiny_workspace(tmp)
        report = Path(args.report)
        if not report.is_file():
            log(f"{report} not found (make report or make demo writes it): exporting the tiny run's report")
            report = export_report(ws, tmp / "reports")
        with chromium() as browser:
            log(f"Chromium {browser.version}: (a) {report} from disk, offline")
            seen = check_report(browser, report, screenshot=screens / "report.png")
            sizes = ", ".join(f"{i['width']}x{i['height']}" for i in seen["images"])
            log(
                f"(a) ok: {len(seen['images'])} images ({sizes}), "
                f"{len(seen['tables'])} tables, 0 requests outside the file -> {screens / 'report.png'}"
            )
            log(f"(b) JupyterLab on 127.0.0.1, notebook 04 on {ws['run']}")
            seen = check_explorer(
                browser, ws, tmp / "lab", screens=screens, timeout=args.timeout or (300 if args.run else 90)
            )
            log(
                f"(b) ok: lab up {seen['lab_up_s']} s, explorer shown at {seen['explorer_s']} s; image 0 -> "
                f"{seen['other_image']} (k-NN prediction {seen['predicted']['0']} -> "
                f"{seen['predicted'][str(seen['other_image'])]}): panel image {seen['before']['images']} -> "
                f"{seen['after']['images']} -> {screens}/explorer_before.png, explorer_after.png"
            )
    except CheckFailed as e:
        print(f"check-browser: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"all browser checks passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
