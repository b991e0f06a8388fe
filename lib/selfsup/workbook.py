"""Running the workbook's notebooks: papermill execution (sweep points, the report) and the
nbconvert export of the report as HTML, PDF and Markdown; and where the notebooks find the
repository's files.

    execute_notebook(nb, out, parameters)                 -> the executed copy at `out`
    check_parameters(nb, names, where)                    -> names the notebook declares, or ConfigError
    export("notebooks/05_report.ipynb", "reports", {})    -> [report.html, report.md, report.pdf]

Offline viewing: the HTML is nbconvert's "lab" template minus every script it would load from a
CDN (require.js, MathJax, mermaid, the widget manager). The report uses no LaTeX math, so nothing
is lost; its CSS and its images are inlined, so report.html is one self-contained file.
"""

from __future__ import annotations

import ast
import copy
import html
import json
import keyword
import re
import shutil
import traceback
from pathlib import Path

from .config import ConfigError

# nbconvert's lab template, minus the scripts it fetches from CDNs (see the module docstring).
_OFFLINE_HTML = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


# nbconvert's LaTeX template, set for a report: a heading is never left at the foot of a page away
# from the table or figure under it (needspace), tables in a smaller font, and figures at text width.
_REPORT_TEX = r"""((*- extends 'index.tex.j2' -*))
((* block packages *))
((( super() )))
\usepackage{needspace}
\usepackage{etoolbox}
\pretocmd{\section}{\Needspace{14\baselineskip}}{}{}
\pretocmd{\subsection}{\Needspace{14\baselineskip}}{}{}
\pretocmd{\subsubsection}{\Needspace{12\baselineskip}}{}{}
\AtBeginEnvironment{longtable}{\small}
((* endblock packages *))
"""


class ToolMissing(FileNotFoundError):
    """An external program the export needs (xelatex, pandoc) is not installed."""


class NotebookFailed(RuntimeError):
    """A cell of an executed notebook raised; the message is its error in one line."""


def find_root(root=None) -> Path:
    """The repository root: `root` when given (relative to the current directory), else the
    current directory or the nearest parent holding configs/ and notebooks/ -- so a notebook runs
    the same with the kernel started in the repository root or in notebooks/."""
    if root:
        return Path(root).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "configs").is_dir() and (d / "notebooks").is_dir():
            return d
    raise FileNotFoundError(
        f"{here}: no repository root (a folder with configs/ and notebooks/) here or above; pass the `root` parameter"
    )


def resolve(root: Path, path) -> Path | None:
    """`path` relative to the repository root (absolute paths are kept; None stays None)."""
    if path is None or path == "":
        return None
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def declared_parameters(notebook) -> list[str]:
    """The names the notebook's `parameters` cell assigns, in order (papermill's parameters)."""
    try:
        nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        tree = ast.parse("".join(cell["source"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration, SyntaxError) as e:
        raise ConfigError(f"{notebook}: no readable `parameters` cell ({type(e).__name__})") from None
    targets = [t for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) for t in getattr(n, "targets", [])]
    targets += [n.target for n in tree.body if isinstance(n, ast.AnnAssign)]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def check_parameters(notebook, names, where: str) -> None:
    """A one-line ConfigError, led by `where`, unless every name is a Python identifier that the
    notebook's parameters cell declares: papermill writes the names into the code it injects, so
    anything else would run (or silently set nothing)."""
    declared = declared_parameters(notebook)
    bad = [n for n in names if not (isinstance(n, str) and n.isidentifier() and not keyword.iskeyword(n))]
    bad = bad or [n for n in names if n not in declared]
    if bad:
        shown = ", ".join(repr(n) if len(repr(n)) < 60 else repr(n)[:56] + "...'" for n in bad)
        raise ConfigError(f"{where}: {shown}: not a parameter of {notebook} (its parameters: {', '.join(declared)})")


def error_text(e: BaseException) -> str:
    """A failed cell's error name, value and traceback (papermill), else the Python traceback;
    its first line is the one-line error."""
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
    if ename:
        tb = "\n".join(getattr(e, "traceback", []) or [])
        return re.sub(r"\x1b\[[0-9;]*m", "", f"{ename}: {evalue}\n\n{tb}").strip()
    return "".join(traceback.format_exception(e)).strip()


def execute_notebook(notebook, output, parameters: dict, cwd=None, progress: bool = False) -> None:
    """Run `notebook` top to bottom with papermill (kernel python3), writing the executed copy to
    `output`. Raises papermill's PapermillExecutionError when a cell fails."""
    import papermill  # imported here: a heavy import (nbclient, jupyter_client) only runs need

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    # log_level=ERROR: ipykernel 7 warns at every start that the local kernel talks plain TCP,
    # which is how every Jupyter kernel has run; one such line per sweep point buries the progress.
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        progress_bar=progress,
        cwd=None if cwd is None else str(cwd),
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )


def export(notebook, out_dir, parameters: dict | None = None, progress: bool = True) -> list[Path]:
    """Execute `notebook` with papermill into out_dir/report.ipynb (kernel python3), then write
    out_dir/report.html (no code, no prompts; offline), report.md (figures in out_dir/figures/,
    linked relatively) and report.pdf (XeLaTeX). Returns the paths written.

    parameters: papermill parameters for the notebook (paths relative to the repository root).
    Raises ToolMissing (after writing HTML and Markdown) when xelatex or pandoc is missing.
    """
    notebook, out_dir = Path(notebook), Path(out_dir)
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: report notebook not found")
    check_parameters(notebook, list(parameters or {}), "selfsup report -p")
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "report.ipynb"
    # cwd = the notebook's folder: the notebook finds the repository root from there.
    try:
        execute_notebook(notebook, executed, dict(parameters or {}), cwd=notebook.resolve().parent, progress=progress)
    except Exception as e:
        if not getattr(e, "ename", None):  # not a cell's error (papermill's PapermillExecutionError)
            raise
        first = error_text(e).splitlines()[0]
        raise NotebookFailed(f"{notebook}: a cell failed: {first} (executed copy: {executed})") from None
    nb = prepare_for_export(executed)
    paths = [write_html(nb, out_dir / "report.html"), write_markdown(nb, out_dir / "report.md")]
    missing = [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]
    if missing:
        raise ToolMissing(
            f"{' and '.join(missing)} not found: the PDF report needs TeX; run `make tex` "
            f"(wrote {paths[0]} and {paths[1]})"
        )
    paths.append(write_pdf(nb, out_dir / "report.pdf"))
    return paths


def prepare_for_export(executed):
    """The executed notebook, ready for a reader: titled (from its first '# ' heading), without
    stderr streams (warnings, progress bars) and without cells tagged 'remove-cell'."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    nb.cells = [c for c in nb.cells if "remove-cell" not in c.get("metadata", {}).get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        elif cell.cell_type == "markdown" and "title" not in nb.metadata:
            m = re.search(r"^# (.+)$", cell.source, flags=re.M)
            if m:
                nb.metadata["title"] = m.group(1).strip()
    return nb


def for_latex(nb):
    """A copy for the PDF: the first '# ' heading dropped (the LaTeX title page carries it) and the
    other headings raised one level, so sections number 1, 2, ... instead of 1.1, 1.2, ..."""
    nb = copy.deepcopy(nb)
    dropped = False

    def promote(text: str) -> str:
        nonlocal dropped
        if not dropped and re.search(r"^# .+$", text, flags=re.M):
            text, dropped = re.sub(r"^# .+\n?", "", text, count=1, flags=re.M), True
        return re.sub(r"^#(#+) ", r"\1 ", text, flags=re.M)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = promote(cell.source)
        elif cell.cell_type == "code":
            for o in cell.outputs:
                if "text/markdown" in o.get("data", {}):
                    o.data["text/markdown"] = promote(o.data["text/markdown"])
    return nb


def _exporter_options() -> dict:
    return dict(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)


def write_html(nb, path: Path) -> Path:
    """One self-contained HTML file: inlined CSS and images, no scripts from the network."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        embed_images=True,
        **_exporter_options(),
        extra_loaders=[DictLoader({"selfsup_offline.html.j2": _OFFLINE_HTML})],
        template_file="selfsup_offline.html.j2",
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    # nbconvert gives every image the same placeholder alt text; ours carry their captions (in order)
    alts = iter(
        [
            o.get("metadata", {}).get("alt") or "figure"
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
    )
    body = re.sub(
        r'alt="No description has been provided for this image"',
        lambda _: f'alt="{html.escape(next(alts, "figure"), quote=True)}"',
        body,
    )
    path.write_text(body, encoding="utf-8")
    return path


def write_markdown(nb, path: Path) -> Path:
    """Markdown with the figures extracted beside it into figures/ (relative links). Outputs that
    carry a file name (see show_figure) keep it: figures/Figure1.png, not report_12_0.png."""
    from nbconvert import MarkdownExporter  # nbconvert: imported by the export only

    exporter = MarkdownExporter(**_exporter_options())
    body, resources = exporter.from_notebook_node(
        nb, resources={"output_files_dir": "figures", "unique_key": path.stem, "metadata": {"name": path.stem}}
    )
    for name, data in (resources.get("outputs") or {}).items():
        target = path.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    # ![png](figures/Figure1.png) -> ![Figure1](figures/Figure1.png): a readable alt text
    body = re.sub(r"!\[(?:png|jpeg|svg)\]\((figures/[^)\s]+)\)", lambda m: f"![{Path(m[1]).stem}]({m[1]})", body)
    body = re.sub(r"[ \t]+$", "", body, flags=re.M)  # the exporter indents blank lines around images
    path.write_text(re.sub(r"\n{3,}", "\n\n", body).strip() + "\n", encoding="utf-8")
    return path


def write_pdf(nb, path: Path) -> Path:
    """The PDF through nbconvert's LaTeX template and XeLaTeX (no network needed)."""
    from jinja2 import DictLoader
    from nbconvert import PDFExporter  # nbconvert: imported by the export only

    exporter = PDFExporter(
        **_exporter_options(),
        extra_loaders=[DictLoader({"selfsup_report.tex.j2": _REPORT_TEX})],
        template_file="selfsup_report.tex.j2",
    )
    body, _ = exporter.from_notebook_node(for_latex(nb), resources={"metadata": {"name": path.stem}})
    path.write_bytes(body)
    return path
