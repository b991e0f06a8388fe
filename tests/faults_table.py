"""docs/faults.md's tables: the one-line messages the reliability tests saw, one table per file.

Each tests/test_reliability*.py keeps a ``Faults`` of what it tried and, as its last test, calls
``check()``: its own table in docs/faults.md must hold exactly those messages (run with
SELFSUP_UPDATE_FAULTS=1 to rewrite it), and every such file must have a table there. In a file:

    FAULTS = Faults(__file__, minimum=20)   # the number of faults a full run of the file records
    record = FAULTS.record                   # record(fault, exit status, stderr line)

    def test_faults_table_is_current():      # last in the file
        FAULTS.check()
"""

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "faults.md"
END = "<!-- /faults -->"


def _begin(source: str) -> str:
    return f"<!-- faults: {source} -->\n"


class Faults(dict):
    """fault -> (exit status, message), as one test file saw them."""

    def __init__(self, test_file, minimum: int):
        super().__init__()
        self.source = Path(test_file).resolve().relative_to(REPO).as_posix()
        self.minimum = minimum

    def record(self, fault: str, code: int, message: str, expect_code: int = 2) -> None:
        """A fault's one line: an error (exit status 1 or 2), or a note on what was skipped (exit 0)."""
        assert code == expect_code, message
        prefix = "selfsup: error: " if code else "selfsup: note: "
        assert message.startswith(prefix) and "\n" not in message and "Traceback" not in message, message
        self[fault] = (code, re.sub(r"pid \d+ on \S+?;", "pid <pid> on <host>;", message))

    def table(self) -> str:
        lines = [f"Tried by `{self.source}`:", "", "| input or fault | exit | message |", "|---|---|---|"]
        for fault, (code, message) in sorted(self.items()):
            lines.append(f"| {fault} | {code} | `{message.replace('|', '/')}` |")
        return "\n".join(lines) + "\n"

    def check(self, complete: bool = True) -> None:
        """This file's table in docs/faults.md is what it recorded; every reliability test file
        that keeps a Faults has its table there. ``complete=False`` (tests this machine cannot
        run were skipped): every row recorded must be in the table, which is left as it is."""
        if len(self) < self.minimum:
            pytest.skip("run the whole file: the table needs every fault's message")
        text = DOC.read_text()
        begin = _begin(self.source)
        if not complete:
            rows = self.table().splitlines()[4:]
            missing = [r for r in rows if r not in text[text.index(begin) : text.index(END, text.index(begin))]]
            assert not missing, f"docs/faults.md is stale: {missing[0]}"
            return
        if os.environ.get("SELFSUP_UPDATE_FAULTS"):
            if begin not in text:  # a new file's table goes after the last one
                at = text.rindex(END) + len(END) + 1 if END in text else len(text)
                text = text[:at] + "\n" + begin + END + "\n" + text[at:]
            start = text.index(begin) + len(begin)
            DOC.write_text(text[:start] + self.table() + text[text.index(END, start) :])
            text = DOC.read_text()
        assert begin in text, f"docs/faults.md has no table for {self.source}: rerun with SELFSUP_UPDATE_FAULTS=1"
        start = text.index(begin) + len(begin)
        assert text[start : text.index(END, start)] == self.table(), (
            "docs/faults.md is stale: rerun with SELFSUP_UPDATE_FAULTS=1"
        )
        keeping = sorted(
            p.relative_to(REPO).as_posix()
            for p in (REPO / "tests").glob("test_reliability*.py")
            if "Faults(" in p.read_text()
        )
        assert sorted(re.findall(r"<!-- faults: (\S+) -->", text)) == keeping, "one table per reliability test file"
