"""selfsup.report: export to HTML (offline, no code), Markdown (figures linked from figures/) and
PDF (XeLaTeX), on a small report-shaped notebook; and the display helpers the notebooks share.
(notebooks/05_report.ipynb itself is exported in test_notebooks.py.)"""

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from helpers import pdf_text
from selfsup import display, prose, report, workbook

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
            "from selfsup import display, prose, report, workbook\n"
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
    for cfg in (
        Config(method="simclr", proj_hidden=64, temperature=0.2),
        Config(method="barlow", proj_hidden=64, lr=5e-4, temperature=0.7),
    ):
        runs[cfg.method] = tmp_path / cfg.method
        runs[cfg.method].mkdir()
        (runs[cfg.method] / "config.json").write_text(json.dumps(cfg.to_dict()))
    differ = report.settings_that_differ(runs)
    # same proj_hidden, so not listed; head width and recipe are the methods' own defaults; each run
    # lists only the settings its method reads: Barlow Twins has no temperature, SimCLR no lambda
    assert differ == {
        "simclr": {"proj_dim": 128, "recipe": "simclr", "lr": 1e-3, "temperature": 0.2},
        "barlow": {"proj_dim": 8192, "recipe": "asymmetric", "lr": 5e-4, "barlow_lambda": 5e-3},
    }


def test_a_run_shows_only_the_settings_its_method_reads():
    from selfsup.config import Config

    byol = Config(method="byol", temperature=0.2, byol_momentum=0.996, epochs=3).to_dict()
    simclr = Config(method="simclr", temperature=0.2, epochs=3).to_dict()
    assert "temperature" not in prose.run(byol) and "byol\\_momentum 0.996" in prose.run(byol)
    assert "temperature 0.2" in prose.run(simclr) and "momentum" not in prose.run(simclr)
    assert "temperature" not in display.config_markdown(Config(method="byol", temperature=0.2))
    assert "| temperature | 0.2 |" in display.config_markdown(Config(method="simclr", temperature=0.2))


# --------------------------------------------------------------------------------------------
# Values from files are text: never markup in the HTML, Markdown or PDF report (issue 24, defect 3)

MARKUP = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    '<cite data-cite="x}\\input{/etc/passwd">c</cite>',  # nbconvert's citation2latex reads such tags
    "\\input{/etc/passwd} \\textbf{bold}",
    "$x^2$ and \\\\(y\\\\)",
    "[link](javascript:alert(1)) *em* _u_ `c` | ~s~ ^p^ &amp;",
    "two\n# lines\n<b>x</b>",
]


@pytest.mark.parametrize("value", MARKUP)
def test_values_render_as_text_in_html_and_latex(value):
    """display.text and display.code through the renderers the report goes through: nbconvert's
    Markdown to HTML (mistune) and its Markdown to LaTeX path (citation2latex, then pandoc)."""
    import html

    from nbconvert.filters import citation2latex, markdown2html_mistune
    from nbconvert.filters.pandoc import convert_pandoc

    flat = " ".join(value.split())
    md = f"Value {display.text(value)} and {display.code(value)}."
    rendered = markdown2html_mistune(md)
    assert re.findall(r"<(\w+)", rendered) in (["p"], ["p", "code"])  # no tag but the paragraph's own
    assert html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip() == f"Value {flat} and {flat}."
    latex = convert_pandoc(citation2latex(md), "markdown+tex_math_double_backslash", "latex")
    commands = r"\\(?:(?:input|cite|textbf|href|emph|textsubscript|textsuperscript)\b|\(|\[)"
    assert not re.search(commands, latex), latex


def test_tables_escape_their_cells():
    table = display.markdown_table([dict(a="<img src=x>", b="a_b")], [("a", "<b>A</b>"), ("b", "B")])
    assert "<" not in table and "&lt;img src=x&gt;" in table and "a\\_b" in table


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    """A tiny finished run whose files carry markup where files can: the first class's name, the
    run folder's name, run.json's environment; a comparison sweep whose method is markup, and an
    ablation sweep whose name, a point's axis value and its error text are markup. Each value says
    where it came from (id=...)."""
    import yaml

    from helpers import TINY_RUN, make_tiny
    from selfsup import config, data, evaluate, results, train

    tag = lambda where: f"<img src=x onerror=alert(1) id={where}>"  # noqa: E731
    root = tmp_path_factory.mktemp("marked")
    folder = make_tiny(root / "data")
    for split in ("train", "val"):
        named = data.load_npz(folder / f"{split}.npz")
        named.class_names = [tag("class"), *named.class_names[1:]]
        data.save_npz(named, folder / f"{split}.npz")
    (root / "tiny.yaml").write_text(yaml.safe_dump({**TINY_RUN, "epochs": 1}))
    run = root / "runs" / tag("folder")
    train.train(config.load(root / "tiny.yaml"), data.load_dataset(folder), run, progress=False)
    evaluate.evaluate_run(run, folder, table=False, linear=False)
    info = json.loads((run / "run.json").read_text())
    info["environment"]["device"] = tag("device")
    (run / "run.json").write_text(json.dumps(info))
    done = {**results.run_summary(run), "seed": 0, "run_dir": str(run), "error": ""}
    compare = root / "runs" / "compare_tiny"
    compare.mkdir()
    method = {**done, "point": "m", "axes": "method", "method": tag("method")}
    results.write_results([method], ["method"], compare / results.RESULTS)
    sweep = root / "runs" / f"sweep{tag('sweep')}"
    sweep.mkdir()
    points = [
        {**done, "point": "temperature-0.1", "axes": "temperature", "temperature": 0.1},
        dict(
            point=f"temperature-{tag('point')}",
            seed=0,
            axes="temperature",
            temperature=tag("axis"),
            status="failed",
            error=f"ValueError: {tag('error')} \\textbf{{bold}}",
        ),
    ]
    results.write_results(points, ["temperature"], sweep / results.RESULTS)
    return dict(root=root, data=folder, run=run, runs=root / "runs", tag=tag)


def test_report_shows_values_from_files_as_text(marked):
    """notebooks/05_report.ipynb exported on the marked workspace: every value shows as text in
    report.html, report.md and report.pdf; no tag or LaTeX command from the files gets through."""
    out = marked["root"] / "reports"
    ref = {"val_knn": 0.381, "ood_knn": 0.244, "source": marked["tag"]("reference")}
    params = dict(
        root=str(REPO),
        data_dir=str(marked["data"]),
        runs=str(marked["runs"]),
        final_run=str(marked["run"]),
        figures=str(marked["root"] / "figures"),
        reference=ref,
    )
    workbook.export(REPO / "notebooks" / "05_report.ipynb", out, params, progress=False)
    shown = ("folder", "device", "method", "sweep", "axis", "point", "error", "reference")
    html = (out / "report.html").read_text()
    assert not re.search(r"<img[^>]*onerror", html) and "\\textbf{bold}" in html.replace("&#92;", "\\")
    for where in shown:
        assert f"&lt;img src=x onerror=alert(1) id={where}&gt;" in html, where
    md = (out / "report.md").read_text()
    assert not re.search(r"<img[^>]*onerror", md)
    for where in shown:
        assert f"&lt;img src=x onerror=alert(1) id={where}&gt;" in md, where
    text = pdf_text(out / "report.pdf").replace(" ", "")
    for where in shown:
        assert f"<imgsrc=xonerror=alert(1)id={where}>" in text, where
    assert "\\textbf{bold}" in text  # the LaTeX in the error text is printed, not obeyed


def test_explorer_caption_shows_class_names_as_text(marked):
    """The explorer's caption is an ipywidgets HTML (innerHTML): a class name that is markup is
    escaped (issue 24, defect 4; the browser check shows it in JupyterLab)."""
    from selfsup import data, evaluate
    from selfsup.explorer import build_explorer

    dataset = data.load_dataset(marked["data"])
    features = evaluate.run_features(marked["run"], marked["data"])
    ev = evaluate.ensure_eval(marked["run"], marked["data"])
    tabs = build_explorer(dataset, features, ev, report.tsne_embeddings(marked["run"], features))
    caption = tabs.children[0].children[1].value  # val image 0: of class 0, the marked one
    assert "<img" not in caption and "true <b>&lt;img src=x onerror=alert(1) id=class&gt;</b>" in caption
