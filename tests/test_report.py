"""selfsup.report: export to HTML (offline, no code), Markdown (figures linked from figures/) and
PDF (XeLaTeX), on a small report-shaped notebook; and the display helpers the notebooks share.
(notebooks/05_report.ipynb itself is exported in test_notebooks.py.)"""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from helpers import pdf_text
from selfsup import display, report, workbook

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mini_report(tmp_path):
    """A report-shaped notebook: a title, a parameters cell, numbers read from a results file into
    a Markdown table, a saved figure, and a warning on stderr."""
    (tmp_path / "results.json").write_text(json.dumps({"simclr": 0.381, "byol": 0.2936}))
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Mini report\n\nIntro text."),
        nbformat.v4.new_code_cell("results = None\nfigures = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("## Results"),
        nbformat.v4.new_code_cell(
            "import json, sys, warnings\nfrom pathlib import Path\nfrom matplotlib.figure import Figure\n"
            "from selfsup import display, report, workbook\n"
            "acc = json.loads(Path(results).read_text())\n"
            "warnings.warn('a warning that must not reach the report')\n"
            "display.show_markdown(display.markdown_table([dict(method=m, acc=a) for m, a in acc.items()],\n"
            "                     [('method', 'method'), ('acc', 'k-NN val', display.pct)]))\n"
            "fig = Figure(figsize=(3, 2)); fig.subplots().plot([1, 2, 3])\n"
            "Path(figures).mkdir(exist_ok=True); fig.savefig(Path(figures) / 'Figure1.png')\n"
            "display.show_figure(Path(figures) / 'Figure1.png', 'Figure 1. A line.')"
        ),
    ]
    path = tmp_path / "mini.ipynb"
    nbformat.write(nb, path)
    return path, dict(results=str(tmp_path / "results.json"), figures=str(tmp_path / "figs"))


def test_export_html_md_pdf(mini_report, tmp_path):
    notebook, params = mini_report
    out = tmp_path / "reports"
    paths = workbook.export(notebook, out, params, progress=False)
    assert paths == [out / "report.html", out / "report.md", out / "report.pdf"]

    html = (out / "report.html").read_text()
    assert "38.1%" in html and "29.4%" in html and "Figure 1. A line." in html
    assert "display.show_markdown" not in html and "must not reach" not in html  # no code, no stderr
    assert "<script src=" not in html and "cdnjs" not in html and "mathjax" not in html.lower()  # offline
    assert 'src="data:image/png;base64,' in html  # the figure is inside the file
    assert "<title>Mini report</title>" in html

    md = (out / "report.md").read_text()
    assert "| simclr | 38.1% |" in md and "![Figure1](figures/Figure1.png)" in md
    assert (out / "figures" / "Figure1.png").read_bytes()[:4] == b"\x89PNG"  # resolves from out/
    assert "display.show_markdown" not in md and "must not reach" not in md

    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    text = pdf_text(out / "report.pdf")
    assert "Mini report" in text and "38.1%" in text and "29.4%" in text and "k-NN val" in text
    assert "1 Results" in text  # headings raised a level under the LaTeX title: section 1, not 1.1
    assert (out / "report.ipynb").is_file()  # the executed notebook is kept


def test_missing_xelatex_is_one_clear_line_after_html_and_md(mini_report, tmp_path, monkeypatch):
    notebook, params = mini_report
    real_which = shutil.which
    monkeypatch.setattr(workbook.shutil, "which", lambda tool: None if tool == "xelatex" else real_which(tool))
    with pytest.raises(workbook.ToolMissing) as err:
        workbook.export(notebook, tmp_path / "out", params, progress=False)
    message = str(err.value)
    assert "xelatex" in message and "make tex" in message and "\n" not in message
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()
    assert not (tmp_path / "out" / "report.pdf").exists()
    assert isinstance(err.value, FileNotFoundError)  # the CLI reports it as one line, exit status 2


def test_missing_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ipynb"):
        workbook.export(tmp_path / "nope.ipynb", tmp_path, {})


def test_helpers(tmp_path, monkeypatch):
    assert display.pct(0.3814) == "38.1%" and display.pct(float("nan")) == "n/a" and display.pct(None) == "n/a"
    assert display.fmt(4096.0) == "4096" and display.fmt(0.00123) == "0.00123" and display.fmt("adam") == "adam"
    assert display.plural(1, "epoch") == "1 epoch" and display.plural(15, "epoch") == "15 epochs"
    assert display.duration(42) == "42 s" and display.duration(754) == "12.6 min"
    table = display.markdown_table([dict(a="x|y", b=0.5)], [("a", "A"), ("b", "B", display.pct)])
    assert table.splitlines() == ["| A | B |", "|----|-----|", "| x\\|y | 50.0% |"]  # dashes: column widths

    monkeypatch.chdir(REPO / "notebooks")
    assert workbook.find_root() == REPO
    assert workbook.find_root(str(tmp_path)) == tmp_path.resolve()
    assert workbook.resolve(REPO, "data/demo") == REPO / "data" / "demo"
    assert workbook.resolve(REPO, "/abs") == Path("/abs") and workbook.resolve(REPO, None) is None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="root"):
        workbook.find_root()


def test_protocol_and_headline_tables():
    rows = [
        dict(split=s, features="backbone", metric=m, weights=w, k=k, accuracy=0.1 * k / 20)
        for s in ("val", "ood")
        for m, w in (("euclidean", "uniform"), ("cosine", "distance"))
        for k in (1, 5, 20)
    ]
    md = report.protocol_markdown(rows).splitlines()
    assert md[0] == "| split | features | metric | k=1 | k=5 | k=20 |"
    assert md[2] == "| val | backbone | euclidean, uniform | 0.5% | 2.5% | 10.0% |"
    assert len(md) == 6
    ev = {
        "summary": {
            "val_knn": 0.4,
            "ood_knn": 0.2,
            "random_init_val_knn": 0.1,
            "random_init_ood_knn": 0.15,
            "val_linear": 0.5,
        },
        "trained": {"val": {"k": 5, "weighted_k": 20}},
    }
    rows = report.headline_rows(ev)
    assert [r["protocol"] for r in rows] == ["k-NN, course protocol (k=5, euclidean)", "linear probe"]
    assert rows[0]["floor_ood"] == 0.15 and rows[1]["ood"] is None


def test_settings_that_differ_are_resolved_as_trained(tmp_path):
    from selfsup.config import Config

    runs = {}
    for cfg in (Config(method="simclr", proj_hidden=64), Config(method="barlow", proj_hidden=64, lr=5e-4)):
        runs[cfg.method] = tmp_path / cfg.method
        runs[cfg.method].mkdir()
        (runs[cfg.method] / "config.json").write_text(json.dumps(cfg.to_dict()))
    differ = report.settings_that_differ(runs)
    # same proj_hidden, so not listed; head width and recipe are the methods' own defaults
    assert differ == {
        "simclr": {"proj_dim": 128, "recipe": "simclr", "lr": 1e-3},
        "barlow": {"proj_dim": 8192, "recipe": "asymmetric", "lr": 5e-4},
    }
