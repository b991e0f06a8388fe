"""selfsup: a workbook for self-supervised image representation learning."""

__version__ = "0.1.0"
