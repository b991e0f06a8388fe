"""What the notebooks show: numbers as text (percentages, durations, Markdown tables), figures
and Markdown as cell outputs, and the last cell's record of results. Shared by notebooks 01-05,
so no notebook carries a copy of another's code.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

from .config import METHOD_SETTINGS, Config
from .methods import REGISTRY

# Characters that mean something in Markdown, in the HTML it may hold, or in the LaTeX pandoc passes
# through for the PDF: written as entities (`<` `>` `&`: never a tag, not even for nbconvert's
# citation2latex, which reads tags before Markdown is parsed; a backslash and `$`: never LaTeX or math),
# the rest backslash-escaped, which CommonMark (JupyterLab, nbconvert's mistune) and pandoc all read.
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "\\": "&#92;", "$": "&#36;"}
_SPECIAL = re.compile(r"[<>&\\$`*_\[\]|~^#!{}]")


def text(value) -> str:
    """A value from results or run folders (a name, a path, an error message) as Markdown that shows
    it as the text it is, in JupyterLab and in the HTML, Markdown and PDF exports: no tag, link,
    emphasis, math or raw LaTeX can come from it, and it stays on one line. The report's own
    wording is written as Markdown; everything read from files goes through this (or `code`)."""
    flat = " ".join(str(value).split())  # a newline could start a new Markdown block
    return _SPECIAL.sub(lambda m: _ENTITIES.get(m[0], "\\" + m[0]), flat)


def code(value) -> str:
    """A value as inline code (a path, a sweep name, a hash): a code span fenced by more backticks
    than the value holds, which every renderer shows verbatim. A value with <, > or & is written
    as `text` instead: nbconvert's PDF path reads tags inside code spans too."""
    flat = " ".join(str(value).split())
    if not flat or re.search(r"[<>&]", flat):
        return text(flat)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat[0] == "`" or flat[-1] == "`" else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def is_missing(x) -> bool:
    """None or NaN: a value a results table does not have (shown as 'n/a')."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x, digits: int = 1) -> str:
    """0.381 -> '38.1%'; None or NaN -> 'n/a'."""
    if is_missing(x):
        return "n/a"
    return f"{100 * float(x):.{digits}f}%"


def plural(n: int, word: str) -> str:
    """plural(1, "point") -> '1 point'; plural(3, "point") -> '3 points'."""
    return f"{n:g} {word}{'' if n == 1 else 's'}"


def listing(items) -> str:
    """["a"] -> 'a'; ["a", "b"] -> 'a and b'; ["a", "b", "c"] -> 'a, b and c'."""
    items = [str(i) for i in items]
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def duration(seconds) -> str:
    """45.2 -> '45 s'; 754 -> '12.6 min'; 7300 -> '2.0 h'."""
    if is_missing(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def fmt(x, digits: int = 3) -> str:
    """A table cell: floats to `digits` significant digits, NaN/None as 'n/a', the rest as text."""
    if is_missing(x):
        return "n/a"
    if isinstance(x, float):
        # integers that went through a CSV column with gaps come back as floats: 4096.0 -> 4096
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.{digits}g}"
    return str(x)


def markdown_table(rows, columns) -> str:
    """A Markdown table (renders in JupyterLab, HTML, PDF and Markdown exports alike).

    rows: list of dicts (or a DataFrame); columns: list of (key, header[, formatter]) where the
    formatter turns a value into text (default: fmt). Cells and headers are text, escaped (`text`):
    a table shows what the results hold, never markup from them."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    cols = [(c[0], c[1], c[2] if len(c) > 2 else fmt) for c in columns]
    esc = text
    cells = [[esc(f(r.get(k))) for k, _, f in cols] for r in rows]
    # The separator's dashes set the column widths when pandoc (the PDF export) wraps a wide table:
    # each column gets room for its longest cell and its header's longest word, so words stay whole.
    widths = [
        max([3, *(len(w) for w in esc(h).split()), *(len(row[i]) for row in cells)]) for i, (_, h, _) in enumerate(cols)
    ]
    lines = ["| " + " | ".join(esc(h) for _, h, _ in cols) + " |", "|" + "|".join("-" * w for w in widths) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def settings_read(cfg: dict) -> dict:
    """A config's settings (a dict, as config.json and eval.json hold it) that its method reads:
    the common ones and the method's own (selfsup.methods: `settings`); another method's, such as
    the temperature of a BYOL run, are left out."""
    own = set(REGISTRY[cfg["method"]].settings) if cfg.get("method") in REGISTRY else set()
    return {k: v for k, v in cfg.items() if k not in METHOD_SETTINGS or k in own}


def config_markdown(cfg) -> str:
    """A Config's settings that its method reads and that differ from the dataclass defaults, as a
    Markdown table."""
    defaults = Config()
    rows = [
        dict(key=k, value=v, default=getattr(defaults, k))
        for k, v in settings_read(cfg.to_dict()).items()
        if v != getattr(defaults, k)
    ]
    return markdown_table(rows, [("key", "key"), ("value", "value"), ("default", "default")])


def show(obj) -> None:
    """Display any object (a widget, say) as cell output, wherever the cell is."""
    from IPython.display import display

    display(obj)


def show_markdown(text: str) -> None:
    """Display Markdown as cell output: how the notebooks put numbers from results into prose."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def show_figure(path, caption: str | None = None, width: int | None = None) -> None:
    """Display a saved figure (embedded, so HTML and PDF exports carry it) under its file name, so
    the Markdown export links it as figures/<name>; then its caption."""
    from IPython.display import Image, display

    path = Path(path)
    # top-level output metadata "filename": nbconvert's ExtractOutputPreprocessor names the file by it
    # and "alt": the caption, which the HTML export gives the image as its alternative text
    display(Image(filename=str(path), width=width), metadata={"filename": path.name, "alt": caption or path.stem})
    if caption:
        show_markdown(f"*{caption}*")


def record(results: dict, path=None) -> None:
    """The last cell of a notebook: display the results as JSON (kept in the executed notebook,
    where papermill users read them) and, with `path`, also write them there."""
    from IPython.display import JSON, display

    clean = json.loads(json.dumps(results, default=_jsonable))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(clean, indent=2) + "\n")
    display(JSON(clean, expanded=True))


def _jsonable(x):
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def show_plot(fig, caption: str | None = None) -> None:
    """Display a matplotlib Figure (as selfsup.plots returns them) as a PNG, whatever the kernel's
    matplotlib backend (under `make`, MPLBACKEND=Agg and a Figure would show as text)."""
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    display(Image(data=buf.getvalue()), metadata={"alt": caption or "figure"})
    if caption:
        show_markdown(f"*{caption}*")
