"""The notebooks: stored clean, and every one runs top to bottom under papermill with smoke
parameters (a tiny generated dataset, a tiny config). One session fixture trains the tiny run
through notebooks/03_train.ipynb; the other notebooks use it. About two minutes on two CPU cores.
"""

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from helpers import TINY_PRESET, pdf_text
from selfsup import demo_data, display, report, results, workbook
from selfsup.methods import REGISTRY

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TINY = {**TINY_PRESET, "epochs": 2}
# The probes are what takes time on a tiny set; the final run keeps them (04 and 05 show them).
FAST_EVAL = {"table": False, "linear": False}


def execute(name, out_dir, cwd=REPO, **parameters):
    """Run notebooks/<name> with papermill; returns the executed notebook."""
    out = Path(out_dir) / name
    workbook.execute_notebook(REPO / "notebooks" / name, out, parameters, cwd=cwd)
    return nbformat.read(out, as_version=4)


def outputs(nb, mime):
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})]


def recorded(nb):
    """The JSON the notebook's last cell recorded."""
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    return [o["data"]["application/json"] for o in last.outputs if "application/json" in o.get("data", {})][0]


@pytest.fixture(scope="session")
def ws(tmp_path_factory):
    """A tiny workspace: data, preset, and a finished, evaluated run trained by notebook 03."""
    root = tmp_path_factory.mktemp("workbook")
    demo_data.make_demo(
        root / "data", n_id_classes=3, n_ood_classes=2, train_per_class=16, val_per_class=8, ood_per_class=10, size=32
    )
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    ws = dict(
        root=root,
        data=root / "data",
        preset=root / "tiny.yaml",
        runs=root / "runs",
        run=root / "runs" / "final",
        figures=root / "figures",
        out=root / "executed",
    )
    ws["nb03"] = execute(
        "03_train.ipynb",
        ws["out"],
        root=str(REPO),
        preset=str(ws["preset"]),
        data_dir=str(ws["data"]),
        run_dir=str(ws["run"]),
        overrides={"epochs": 2},
        progress=False,
    )
    return ws


def test_notebooks_are_stored_clean():
    assert [p.name for p in NOTEBOOKS] == [
        "01_compare_methods.ipynb",
        "02_ablations.ipynb",
        "03_train.ipynb",
        "04_evaluate.ipynb",
        "05_report.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path
        assert set(nb.metadata) <= {"kernelspec", "language_info"}, path
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path}: outputs stored"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and tagged[0] is code[0], f"{path}: one parameters cell, the first code cell"
        params = tagged[0].source
        assert re.search(r"^root = None", params, flags=re.M), path
        for c in code:  # no library logic pasted into notebooks: nothing defined in a cell
            assert not re.search(r"^\s*(def|class) ", c.source, flags=re.M), f"{path}: defines a function"


@pytest.mark.parametrize("name", ["01_compare_methods", "02_ablations", "04_evaluate", "05_report"])
def test_notebooks_read_as_chapters(name):
    """Prose in Markdown cells, numbers from results by short library calls: no sentence built by
    an f-string in a code cell, no module renamed to make room for a parameter; the report is
    mostly Markdown."""
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    code = "\n".join(
        c.source for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])
    )
    assert not re.search(r"^(from selfsup|import selfsup).* as ", code, flags=re.M), name
    assert [f for f in re.findall(r'\bf"([^"]*)"', code) if len(f.split()) > 2] == [], name
    if name == "05_report":
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert len(markdown.splitlines()) > len(code.splitlines())


def test_03_train_writes_an_evaluated_run(ws):
    run = ws["run"]
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "encoder.safetensors",
        "run.json",
        "eval.json",
    ):
        assert (run / name).is_file(), name
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    rec = recorded(ws["nb03"])
    assert rec["status"] == "finished" and rec["epochs"] == 2 and rec["config"]["width"] == 4
    assert 0 <= rec["val_knn"] <= 1 and 0 <= rec["val_linear"] <= 1
    assert any("k-NN, course protocol" in md for md in outputs(ws["nb03"], "text/markdown"))
    assert len(outputs(ws["nb03"], "image/png")) == 2  # the batch and its two views, the curves
    assert any(
        "loss on these 8 images at the run's starting weights" in md for md in outputs(ws["nb03"], "text/markdown")
    )
    assert not (run / "summary.json").exists()  # nothing is written that nothing reads


def test_03_resume_of_a_finished_run_returns_at_once(ws, tmp_path):
    metrics = (ws["run"] / "metrics.jsonl").read_text()
    nb = execute(
        "03_train.ipynb",
        tmp_path,
        root=str(REPO),
        preset=str(ws["preset"]),
        data_dir=str(ws["data"]),
        run_dir=str(ws["run"]),
        overrides={"epochs": 2},
        resume=True,
        evaluate=False,
        progress=False,
    )
    assert recorded(nb)["status"] == "finished"
    assert (ws["run"] / "metrics.jsonl").read_text() == metrics


def test_04_evaluate_figures_tables_explorer(ws):
    # cwd = notebooks/ and root detected: the layout JupyterLab users have
    nb = execute(
        "04_evaluate.ipynb",
        ws["out"],
        cwd=REPO / "notebooks",
        run_dir=str(ws["run"]),
        data_dir=str(ws["data"]),
        figures=str(ws["figures"]),
        n_images=4,
        tsne_classes=2,
    )
    for i in (1, 2, 3):
        assert (ws["figures"] / f"Figure{i}.png").stat().st_size > 1000
    md = "\n".join(outputs(nb, "text/markdown"))
    assert "| split | features | metric | k=1 | k=5 | k=20 |" in md  # the protocol table (k=200 > set size)
    assert "projector" in md and "cosine" in md
    assert outputs(nb, "application/vnd.jupyter.widget-view+json")  # the explorer was built and shown
    assert report.figures_current(ws["run"], ws["data"], ws["figures"])


def test_01_compare_methods_and_02_ablations(ws):
    nb = execute(
        "01_compare_methods.ipynb",
        ws["out"],
        root=str(REPO),
        config_path=str(ws["preset"]),
        data_dir=str(ws["data"]),
        runs=str(ws["runs"]),
        figures=str(ws["figures"]),
        overrides={"epochs": 1},
        method_overrides={"byol": {"lr": 0.001}},
        eval_options=FAST_EVAL,
        seeds=2,
    )
    rec = recorded(nb)
    assert rec["sweep"] == "compare_tiny" and set(rec["methods"]) == set(REGISTRY)
    assert all(
        m["n_seeds"] == 2 and m["val_knn_interval"] >= 0 for m in rec["methods"].values()
    )  # 2 seeds: a t-interval
    rows = results.load_results("compare_tiny", runs_root=ws["runs"]).to_dict("records")
    assert sorted((r["method"], r["seed"], r["status"]) for r in rows) == sorted(
        (m, s, "finished") for m in REGISTRY for s in (0, 1)
    )
    assert {r["point"] for r in rows} == {"method-simclr", "method-byol_lr-0.001", "method-barlow", "method-vicreg"}
    md = "\n".join(outputs(nb, "text/markdown"))
    assert "| method | seeds | k-NN val | floor |" in md and " ± " in md and "Best by k-NN on val" in md
    assert (ws["figures"] / "compare_tiny.png").is_file()

    # 02 over the comparison sweep: its axis (method) is shown, the course axes are "not run"
    nb = execute(
        "02_ablations.ipynb",
        ws["out"],
        cwd=REPO / "notebooks",
        runs=str(ws["runs"]),
        sweeps=["compare_tiny"],
        figures=str(ws["figures"]),
    )
    rec = recorded(nb)
    assert rec["temperature"] == "not run" and rec["backbone"] == "not run"
    assert set(rec["method"]["compare_tiny"]["values"]) == set(REGISTRY)
    md = "\n".join(outputs(nb, "text/markdown"))
    assert "Not run here" in md and "| method | seeds |" in md
    # and with nothing to read at all, every axis is "not run" without an error
    nb = execute("02_ablations.ipynb", ws["out"], root=str(REPO), runs=str(ws["root"] / "empty"))
    assert set(recorded(nb).values()) == {"not run"}


def test_05_report_exports_html_pdf_md(ws):
    out = ws["root"] / "reports"
    paths = workbook.export(
        REPO / "notebooks" / "05_report.ipynb",
        out,
        dict(
            root=str(REPO),
            data_dir=str(ws["data"]),
            runs=str(ws["runs"]),
            final_run=str(ws["run"]),
            figures=str(ws["figures"]),
        ),
        progress=False,
    )
    assert [p.name for p in paths] == ["report.html", "report.md", "report.pdf"]
    summary = json.loads((ws["run"] / "eval.json").read_text())["summary"]
    val_knn = display.pct(summary["val_knn"])

    html = (out / "report.html").read_text()
    assert val_knn in html and "synthetic demo data" in html
    assert "<script src=" not in html and "https://cdn" not in html  # renders offline
    assert "display.show_markdown" not in html and "tables.collect_results" not in html  # no code exported
    assert 'alt="Figure 1. Training curves' in html and "No description has been provided" not in html

    md = (out / "report.md").read_text()
    assert "## Results in- and out-of-distribution" in md and val_knn in md
    for i in (1, 2, 3):
        assert f"](figures/Figure{i}.png)" in md and (out / "figures" / f"Figure{i}.png").is_file()

    text = pdf_text(out / "report.pdf")
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert f"k-NN, course protocol (k=5, euclidean) {val_knn}" in text  # the results table, first cell
    assert "Figure 2. 4 random validation images" in text
    assert "Discussion and limitations" in text
    # every table's header words come out whole and in order (no "temperatustatus", no "ran- dom")
    for header in (
        "method seeds k-NN val floor k-NN OOD floor linear val floor",
        "protocol val, trained val, random init OOD, trained OOD, random init",
    ):
        assert header in text, header
