"""Small helpers shared by the tests."""

from pypdf import PdfReader


def pdf_text(path) -> str:
    """The text of a PDF with whitespace collapsed (table cells wrap across lines)."""
    text = "\n".join(page.extract_text() for page in PdfReader(str(path)).pages)
    return " ".join(text.split())
