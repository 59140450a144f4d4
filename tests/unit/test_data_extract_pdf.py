"""PDF extraction (saul.data.pdf_text, run in the rank's worker saul.data.pdf_worker): the pdftotext
tool's text, its failures as counted skips, a crashed or hanging worker as a counted skip, no
orphaned worker, and one clear error line when the Poppler binding is missing."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from saul.config.compose import compose
from saul.data import pdf_text, pdf_worker
from saul.data.dataset import DatasetError
from saul.data.extract import InputFile, extract, start_pdf_worker
from saul.data.pipeline import run_prepare

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
        assert pdf_worker.text(path) == text, path.name  # what the pipeline gets, through the worker's pipe
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


def _big_pdf(path: Path, pages: int = 400) -> Path:
    """~260 kB, 400 pages of text: Poppler needs ~0.1 s of CPU for it (10x the tiny timeout below)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for page in range(pages):
        pdf.add_page()
        for line in range(30):
            pdf.text(20, 20 + 8 * line, f"Page {page + 1}, line {line + 1}: {SENTENCE}")
    pdf.output(str(path))
    return path


def _workers_of(pid: int) -> list:
    """Live (not zombie) PDF workers whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z" and b"saul.data.pdf_worker" in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pid: int, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_worker_killed_mid_file_is_a_counted_skip_and_the_next_files_are_read(tmp_path):
    """The PDF comes through a FIFO: once the test's open() returns the worker is reading it, and it
    is SIGKILLed with half of a real PDF read (what a segfault in Poppler looks like to the rank)."""
    good = _fpdf(tmp_path / "good.pdf")
    fifo = tmp_path / "in-flight.pdf"
    os.mkfifo(fifo)
    result = {}
    rank = threading.Thread(target=lambda: result.update(
        ex=list(extract(InputFile(0, fifo, "in-flight.pdf", "pdf", 0, 0)))))
    rank.start()
    with open(fifo, "wb", buffering=0) as pipe:  # blocks until the worker opened it
        killed = pdf_worker.worker_pid()
        pipe.write(_big_pdf(tmp_path / "big.pdf").read_bytes()[:100_000])
        os.kill(killed, signal.SIGKILL)
        rank.join(timeout=60)
    [ex] = result["ex"]
    assert (ex.skip, ex.detail) == ("extraction_failed", "pdftotext: Poppler crashed (signal 9)")
    assert _gone(killed)
    for name in ("good.pdf", "big.pdf"):  # a fresh worker reads the following files
        [ex] = list(extract(InputFile(0, tmp_path / name, name, "pdf", 0, 0)))
        assert not ex.skip and SENTENCE in ex.text, name
    assert pdf_worker.worker_pid() not in (None, killed)


def test_the_jobs_stop_signal_does_not_cost_the_file_in_flight(tmp_path):
    """Slurm's SIGTERM reaches every process of the step: the worker finishes the file (the rank
    stops after it), instead of dying and leaving a "crash" skip that a requeue would keep."""
    data = _fpdf(tmp_path / "good.pdf").read_bytes()
    fifo = tmp_path / "in-flight.pdf"
    os.mkfifo(fifo)
    result = {}
    rank = threading.Thread(target=lambda: result.update(
        ex=list(extract(InputFile(0, fifo, "in-flight.pdf", "pdf", 0, 0)))))
    rank.start()
    with open(fifo, "wb", buffering=0) as pipe:
        worker = pdf_worker.worker_pid()
        pipe.write(data[:200])
        for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(worker, stop)
        pipe.write(data[200:])
    rank.join(timeout=60)
    [ex] = result["ex"]
    assert not ex.skip and SENTENCE in ex.text
    assert pdf_worker.worker_pid() == worker


def test_a_pdf_over_the_timeout_is_a_skip_and_the_stage_ends_without_a_worker(raw_corpus, tmp_path):
    """data.pdf_timeout_s=0.01 on a 400-page PDF, through the whole prepare stage: the big PDF is a
    counted skip in the audit, the others are extracted, the dataset is complete, no worker is left."""
    root, _ = raw_corpus
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for path in sorted((root / "legal/pdf").glob("opinion-*.pdf"))[:4]:
        shutil.copy(path, pdfs / path.name)
    _big_pdf(pdfs / "big.pdf")
    cfg = compose(["stage=prepare", "model=tiny-mixtral", "site=local", f"data.sources=[{{path:{pdfs}}}]",
                   "data.pdf_timeout_s=0.01"], env={}).cfg
    manifest = run_prepare(cfg, tmp_path / "data").manifest
    audit = tmp_path / "data" / "audit"
    removed = [json.loads(line) for line in (audit / "removed.jsonl").read_text().splitlines()]
    kept = [json.loads(line)["doc_id"] for line in (audit / "kept.jsonl").read_text().splitlines()]
    [skip] = [r for r in removed if r["doc_id"] == "big.pdf"]
    assert (skip["step"], skip["reason"], skip["detail"]) == (
        "extraction", "extraction_failed", "pdftotext: no answer within 0.01 s")
    assert all(r["reason"] != "extraction_failed" for r in removed if r is not skip)
    assert len(kept) >= 3 and "big.pdf" not in kept
    assert manifest is not None and (tmp_path / "data" / "manifest.json").is_file()
    assert _workers_of(os.getpid()) == []  # stopped at the end of the extraction phase


def test_the_worker_dies_with_its_rank_even_mid_file(tmp_path):
    """A rank killed while its worker is busy (blocked on a FIFO: no EOF on the request pipe would
    reach it there): the kernel's parent-death signal ends the worker."""
    fifo = tmp_path / "stuck.pdf"
    os.mkfifo(fifo)
    script = ("import sys; from pathlib import Path; from saul.data import pdf_worker\n"
              "pdf_worker.start(); print(pdf_worker.worker_pid(), flush=True)\n"
              "pdf_worker.text(Path(sys.argv[1]))\n")
    rank = subprocess.Popen([sys.executable, "-c", script, str(fifo)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        worker = int(rank.stdout.readline())
        with open(fifo, "wb", buffering=0):  # the worker has the file open: it is mid-file
            rank.kill()
            rank.wait()
            assert _gone(worker), "the worker outlived its rank"
    finally:
        rank.kill()
        rank.wait()


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_bad_pdf_timeout_is_refused_at_submit(tmp_path, value):
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    _fpdf(pdfs / "a.pdf")
    proc = subprocess.run([sys.executable, str(REPO / "jobs/submit.py"), "stage=prepare", "model=tiny-mixtral",
                           "site=local", f"runs_root={tmp_path}", "run=bad", f"data.sources=[{{path:{pdfs}}}]",
                           f"data.pdf_timeout_s={value}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: data.pdf_timeout_s={float(value)} is out of range: it must be > 0 (seconds one PDF "
                    f"may take before it is skipped; default 120)")
    assert not (tmp_path / "bad").exists()


def test_a_worker_that_cannot_load_the_binding_is_one_error_line(tmp_path, monkeypatch):
    """The rank imports the binding but its worker cannot (another environment): a configuration
    error with the fix, not a skip per PDF."""
    broken = tmp_path / "broken-site"
    broken.mkdir()
    (broken / "pdftotext.py").write_text("raise ImportError('libpoppler-cpp.so.0: cannot open shared object file')\n")
    pdf_worker.stop()
    monkeypatch.setenv("PYTHONPATH", str(broken))
    with pytest.raises(DatasetError) as err:
        start_pdf_worker()
    message = str(err.value)
    assert "\n" not in message and message.startswith("PDF sources need Poppler's pdftotext Python binding")
    assert "libpoppler-cpp.so.0" in message and "pip install pdftotext" in message
    assert pdf_worker.worker_pid() is None
