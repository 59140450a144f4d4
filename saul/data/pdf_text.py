"""PDF text with Poppler in-process: the `pdftotext` tool's TextOutputDev without a process per file.

Poppler's C++ API (libpoppler-cpp) through PyPI's `pdftotext` binding (maintained, one small C++
file built against Debian's libpoppler-cpp-dev). `page.text()` in the default (non-raw,
non-physical) layout runs the same TextOutputDev as the `pdftotext` tool with its default
options, form feed after every page included: on our generated PDFs the text is byte for byte the
tool's (tests/unit/test_data_extract_pdf.py checks it). Why not the tool: one `pdftotext` process
per file cost ~6.5 ms of CPU on a 6-page PDF, about half of it process start (dynamic linking,
Poppler's global parameters); in-process the same PDF costs ~2.7 ms.

Outcomes, as the tool gives them: a document Poppler cannot open (corrupt, truncated, not a PDF)
or one encrypted with a user password is `PdfUnreadable` with the reason; an owner-password-only
PDF (copy restrictions) is extracted, as Debian's pdftotext does (built without
ENFORCE_PERMISSIONS). Trade-off against a child process: no per-file timeout and no isolation
from a crash inside Poppler (Poppler is fuzzed continuously; a rank that dies is requeued).
There is ONE PDF extractor: when the binding is missing, `require()` says how to install it;
nothing falls back to the tool. Torch-free.
"""
from __future__ import annotations

from pathlib import Path

from saul.data.dataset import DatasetError

INSTALL_HINT = ("Debian/Ubuntu: apt-get install libpoppler-cpp-dev g++ && pip install pdftotext "
                "(scripts/install-pdf-deps.sh does both; it is in the project's images)")


class PdfUnreadable(Exception):
    """This file has no text to give: the message says why (a counted skip, never a stop)."""


def _binding():
    try:
        import pdftotext
    except ImportError as exc:
        raise DatasetError(f"PDF sources need Poppler's pdftotext Python binding, which does not import "
                           f"({exc}): {INSTALL_HINT}") from None
    return pdftotext


def require() -> None:
    """Raise DatasetError (one line, with the fix) when PDFs cannot be extracted here."""
    _binding()


def pdf_text(path: Path) -> str:
    """The PDF's text, pages ending in form feeds (the cleaner finds running headers by page)."""
    binding = _binding()
    data = Path(path).read_bytes()
    try:
        pages = binding.PDF(_Bytes(data))
    except binding.Error as exc:
        if "unlock" in str(exc):
            raise PdfUnreadable("encrypted: opening it needs a password") from None
        raise PdfUnreadable("cannot open: corrupt or not a PDF") from None
    try:
        return "".join(pages)
    except (binding.Error, UnicodeDecodeError) as exc:  # a page Poppler cannot create or decode
        raise PdfUnreadable(f"cannot read a page: {exc}") from None


class _Bytes:
    """The binding reads its input with `.read()`: hand it the bytes we already hold, no copy."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes):
        self._data = data

    def read(self) -> bytes:
        return self._data
