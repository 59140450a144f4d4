"""PDF text with Poppler in-process: the `pdftotext` tool's TextOutputDev without a process per file.

Poppler's C++ API (libpoppler-cpp) through PyPI's `pdftotext` binding (maintained, one small C++
file built against Debian's libpoppler-cpp-dev). `page.text()` in the default (non-raw,
non-physical) layout runs the same TextOutputDev as the `pdftotext` tool with its default
options, form feed after every page included: the text is byte for byte the tool's on our
generated PDFs, matplotlib's and two real manuals (Debian's libtasn1 and shared-mime-info PDFs;
tests/unit/test_data_extract_pdf.py checks the first two). Why not the tool: one `pdftotext` process
per file cost ~6.5 ms of CPU on our PDFs (2.5 pages on average), about half of it process start
(dynamic linking, Poppler's global parameters); in-process the same PDF costs ~1.9 ms.

Poppler's C++ API builds its GlobalParams (a scan of poppler-data: name-to-Unicode tables, CMap
and unicodeMap directories, ~50 file-system calls) when a first document opens and frees them when
the last one closes, i.e. for every file when files are read one at a time: 0.9 ms of the 2.8 ms.
One empty in-memory document (`_KEEPER`) stays open for the life of the process instead.

Outcomes, as the tool gives them: a document Poppler cannot open (corrupt, truncated, not a PDF)
or one encrypted with a user password is `PdfUnreadable` with the reason; an owner-password-only
PDF (copy restrictions) is extracted, as Debian's pdftotext does (built without
ENFORCE_PERMISSIONS). This module runs Poppler in the process that calls it: the pipeline calls it
inside its extraction worker (saul.data.pdf_worker), which gives each file a timeout and keeps a
Poppler crash out of the rank. There is ONE PDF extractor: when the binding is missing,
`require()` says how to install it; nothing falls back to the tool. Torch-free, numpy-free (the
worker imports only this).
"""
from __future__ import annotations

from pathlib import Path

INSTALL_HINT = ("Debian/Ubuntu: apt-get install libpoppler-cpp-dev g++ && pip install pdftotext "
                "(scripts/install-pdf-deps.sh does both; it is in the project's images)")


class PdfUnreadable(Exception):
    """This file has no text to give: the message says why (a counted skip, never a stop)."""


# The smallest PDF Poppler opens (it rebuilds the missing cross-reference table): one empty page.
_EMPTY_PDF = (b"%PDF-1.1\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>"
              b"endobj\n3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 10 10]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
_KEEPER = None  # an open document: Poppler's global parameters live as long as one does


def _binding():
    try:
        import pdftotext
    except ImportError as exc:
        from saul.data.dataset import DatasetError

        raise DatasetError(f"PDF sources need Poppler's pdftotext Python binding, which does not import "
                           f"({exc}): {INSTALL_HINT}") from None
    return pdftotext


def _poppler():
    global _KEEPER
    binding = _binding()
    if _KEEPER is None:
        _KEEPER = binding.PDF(_Bytes(_EMPTY_PDF))
    return binding


def require() -> None:
    """Raise DatasetError (one line, with the fix) when PDFs cannot be extracted here."""
    _binding()


def pdf_text(path: Path) -> str:
    """The PDF's text, pages ending in form feeds (the cleaner finds running headers by page)."""
    binding = _poppler()
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
