"""PDF extraction in-process (saul.data.pdf_text): the pdftotext tool's text, its failures as counted
skips, and one clear error line when the Poppler binding is missing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saul.data import pdf_text
from saul.data.dataset import DatasetError
from saul.data.extract import InputFile, extract

from tests.data_fixtures import raw_corpus  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
SENTENCE = "The court held that the arbitration clause was void."


def _tool_text(path: Path) -> str:
    """What the pdftotext tool (poppler-utils) writes, with the options the pipeline used to pass."""
    proc = subprocess.run(["pdftotext", "-q", "-enc", "UTF-8", "-eol", "unix", str(path), "-"],
                          capture_output=True, check=True)
    return proc.stdout.decode("utf-8")


def _fpdf(path: Path, **encryption) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    for page in range(2):
        pdf.add_page()
        pdf.set_font("helvetica", size=11)  # a core font, not embedded: Poppler substitutes it
        pdf.text(20, 20, f"{SENTENCE} Page {page + 1}.")
    if encryption:
        pdf.set_encryption(**encryption)
    pdf.output(str(path))
    return path


def _matplotlib(path: Path, fonttype: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with matplotlib.rc_context({"pdf.fonttype": fonttype}):
        fig = plt.figure(figsize=(6, 2))
        fig.text(0.05, 0.5, SENTENCE)
        fig.savefig(path)
        plt.close(fig)
    return path


def test_in_process_text_is_the_pdftotext_tools(raw_corpus, tmp_path):
    from fpdf.enums import AccessPermission

    root, _ = raw_corpus
    pdfs = sorted((root / "legal/pdf").glob("opinion-*.pdf"))  # fpdf2, embedded DejaVu, 3-6 pages
    pdfs += [_fpdf(tmp_path / "core-font.pdf"),
             _fpdf(tmp_path / "no-copy.pdf", owner_password="owner", permissions=AccessPermission.PRINT_LOW_RES),
             _matplotlib(tmp_path / "type3.pdf", 3), _matplotlib(tmp_path / "type42.pdf", 42)]
    for path in pdfs:
        text = pdf_text.pdf_text(path)
        assert text == _tool_text(path), path.name
        assert "\f" in text and len(text.split()) >= 8, path.name
    assert pdf_text.pdf_text(tmp_path / "core-font.pdf").count("\f") == 2  # one form feed per page


def test_encrypted_corrupt_and_truncated_pdfs_are_counted_skips(tmp_path):
    good = _fpdf(tmp_path / "good.pdf")
    (tmp_path / "truncated.pdf").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "page.pdf").write_bytes(b"<html><body>not a PDF</body></html>")
    (tmp_path / "empty.pdf").write_bytes(b"")
    _fpdf(tmp_path / "locked.pdf", owner_password="owner", user_password="secret")
    expected = {"truncated.pdf": "cannot open: corrupt or not a PDF", "page.pdf": "cannot open: corrupt or not a PDF",
                "empty.pdf": "cannot open: corrupt or not a PDF", "locked.pdf": "encrypted: opening it needs a password"}
    for name, why in expected.items():
        [ex] = list(extract(InputFile(0, tmp_path / name, name, "pdf", 0, 0)))
        assert (ex.skip, ex.detail) == ("extraction_failed", f"pdftotext: {why}"), name
    [ex] = list(extract(InputFile(0, tmp_path / "missing.pdf", "missing.pdf", "pdf", 0, 0)))
    assert ex.skip == "extraction_failed" and ex.detail.startswith("cannot read")
    [ex] = list(extract(InputFile(0, good, "good.pdf", "pdf", 0, 0)))
    assert not ex.skip and SENTENCE in ex.text


def test_a_missing_binding_is_one_error_line_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "pdftotext", None)  # what `import pdftotext` meets when not installed
    with pytest.raises(DatasetError) as err:
        pdf_text.require()
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get install libpoppler-cpp-dev" in message and "pip install pdftotext" in message


def test_prepare_without_the_binding_says_error_and_writes_nothing(tmp_path):
    """End to end through jobs/submit.py: a PDF source on a machine whose binding cannot load."""
    broken = tmp_path / "broken-site"
    broken.mkdir()
    (broken / "pdftotext.py").write_text("raise ImportError('libpoppler-cpp.so.0: cannot open shared object file')\n")
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    _fpdf(pdfs / "a.pdf")
    env = {**os.environ, "PYTHONPATH": f"{broken}:{REPO}"}
    proc = subprocess.run([sys.executable, str(REPO / "jobs/submit.py"), "stage=prepare", "model=tiny-mixtral",
                           "site=local", f"runs_root={tmp_path}", "run=nobind", f"data.sources=[{{path:{pdfs}}}]"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert errors[0].startswith("error: PDF sources need Poppler's pdftotext Python binding")
    assert "apt-get install libpoppler-cpp-dev" in errors[0] and "pip install pdftotext" in errors[0]
    assert not (tmp_path / "nobind" / "data").exists()
