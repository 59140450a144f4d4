"""Step 1 of the prepare pipeline: find a source's files and turn each into documents.

A source is `{path, role, weight, format, text_field, name}` (schema.SourceConfig). `path` is a
directory (walked recursively, hidden files skipped) or a glob; the format comes from the file
extension when `format: auto`. Per format:
    pdf      Poppler's pdftotext text (TextOutputDev) through its C++ API (saul.data.pdf_text),
             in the rank's one long-lived extraction worker (saul.data.pdf_worker: no process
             per file, each file at most data.pdf_timeout_s); pages kept apart by form feeds,
             which the cleaner uses to find running headers and page numbers; an encrypted or
             corrupt PDF, or one that crashes or hangs Poppler, is a skip
    html     trafilatura's main-content extraction (drops navigation, footers, cookie banners;
             well kept, pure Python on lxml, and the extractor most web-corpus pipelines compare
             against), with its readability/jusText fallback (`fast` would save a third of the
             CPU but lost text on 27 of 200 real documentation pages, on many over half of it);
             a page with no main content is `empty`
    txt      strict UTF-8; binary content (NUL bytes) or another encoding is a skip
    jsonl    one JSON object per line, the document in `text_field`; a bad line is a skip of
             that record only
    parquet  pyarrow, the document in column `text_field`
    synthetic  data.num_documents documents from saul.data.synthetic (demos and tests)
A file or record that cannot be read becomes an `Extracted` with `skip` set (reason
`extraction_failed` or `empty`) and the pipeline counts it: one bad file never stops the stage.
A source whose path does not exist or holds no files is a configuration error (DatasetError).

doc_id: the file's path relative to the source root, plus `#N` for record N (0-based) of a
JSONL/Parquet file. `extract(..., part=(start, end))` reads one part of a JSONL file (the lines
that start in bytes [start, end)) or of a Parquet file (row groups [start, end)), see
saul.data.pieces; its records are numbered from 0 within the part (`Extracted.record`), and the
generator returns how many records the part holds, so the pipeline can number them in the whole
file afterwards without reading the file twice. Torch-free.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, List, Optional, Sequence, Tuple

from saul.data import pdf_text, pdf_worker
from saul.data.dataset import DatasetError

FORMATS = ("auto", "pdf", "txt", "html", "jsonl", "parquet", "synthetic")
ROLES = ("legal", "replay", "math", "instruct")
_EXTENSIONS = {".pdf": "pdf", ".txt": "txt", ".text": "txt", ".md": "txt", ".html": "html",
               ".htm": "html", ".xhtml": "html", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet"}
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    """A validated data.sources entry."""

    index: int
    name: str
    root: Path  # what doc_ids are relative to
    pattern: str  # the glob, or "" for a directory
    role: str
    weight: Optional[float]
    format: str
    text_field: str
    perplexity: bool  # through the KenLM filter (when data.kenlm_model is set)


@dataclass(frozen=True)
class InputFile:
    source: int  # index into the source list
    path: Path
    rel: str  # path relative to the source root (the doc_id stem)
    format: str
    size: int
    mtime_ns: int


@dataclass
class Extracted:
    doc_id: str
    text: str = ""
    skip: str = ""  # "" = a document; else extraction_failed | empty
    detail: str = ""
    record: Optional[int] = None  # JSONL line / Parquet row within the part read; None: a whole file


def resolve_sources(cfg_data) -> List[Source]:
    """data.sources as `Source`s, checked: every mistake is one DatasetError line."""
    base = Path(cfg_data.root) if cfg_data.root else Path.cwd()
    sources, names = [], set()
    for i, spec in enumerate(cfg_data.sources):
        where = f"data.sources[{i}]"
        if spec.format not in FORMATS:
            raise DatasetError(f"{where}.format={spec.format!r} is unknown: use {', '.join(FORMATS)}")
        if spec.role not in ROLES:
            raise DatasetError(f"{where}.role={spec.role!r} is unknown: use {', '.join(ROLES)}")
        if spec.weight is not None and not 0.0 < spec.weight < 1.0:
            raise DatasetError(f"{where}.weight={spec.weight} is out of range: a token share in (0, 1), "
                               f"or leave it unset for a legal source")
        if spec.format == "synthetic":
            name = spec.name or "synthetic"
            root, pattern = Path("."), ""
        else:
            if not spec.path:
                raise DatasetError(f"{where}.path is empty: give a directory or a glob")
            path = Path(os.path.expanduser(spec.path))
            path = path if path.is_absolute() else base / path
            if _GLOB_CHARS & set(str(path)):
                root = Path(*[p for p in _prefix_parts(path)])
                pattern = str(path)
            else:
                root, pattern = path, ""
                if not path.exists():
                    raise DatasetError(f"{where}.path={spec.path}: {path} does not exist")
            name = spec.name or (root.name or str(root))
        if name in names:
            name = f"{name}-{i}"
        names.add(name)
        # The KenLM model is trained on legal text: other roles (replay, math, instructions) would
        # score as off-domain and be dropped wholesale, so they skip the filter unless asked.
        perplexity = spec.role == "legal" if spec.perplexity is None else bool(spec.perplexity)
        if spec.perplexity and not cfg_data.kenlm_model:
            raise DatasetError(f"{where}.perplexity=true but data.kenlm_model is empty: give the KenLM model "
                               f"(ARPA or binary), or drop the source's perplexity setting")
        sources.append(Source(i, name, root, pattern, spec.role, spec.weight, spec.format,
                              spec.text_field, perplexity))
    if not sources:
        raise DatasetError("data.sources is empty")
    if sum(s.weight or 0.0 for s in sources) >= 1.0:
        raise DatasetError("data.sources weights add up to >= 1: the legal sources need a share")
    if not any(s.weight is None for s in sources):
        raise DatasetError("every data.sources entry has a weight: leave at least one (the legal "
                           "sources) unset, it takes the remaining share")
    return sources


def _prefix_parts(path: Path) -> List[str]:
    parts = []
    for part in path.parts:
        if _GLOB_CHARS & set(part):
            break
        parts.append(part)
    return parts


def format_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = path.suffixes
    ext = suffixes[-1].lower() if suffixes else ""
    return _EXTENSIONS.get(ext, "")


def list_files(source: Source) -> List[InputFile]:
    """The source's files in a stable order (sorted relative paths)."""
    if source.format == "synthetic":
        return [InputFile(source.index, Path("synthetic"), "synthetic", "synthetic", 0, 0)]
    if source.pattern:
        candidates = [Path(p) for p in glob.glob(source.pattern, recursive=True)]
    elif source.root.is_file():
        candidates = [source.root]
    else:
        candidates = [Path(d) / f for d, dirs, files in os.walk(source.root)
                      for f in files]
    files = []
    for path in candidates:
        if not path.is_file():
            continue
        rel = path.name if path == source.root else str(path.relative_to(source.root))
        if any(part.startswith(".") for part in Path(rel).parts):
            continue  # editor swap files, our own temp files
        st = path.stat()
        files.append(InputFile(source.index, path, rel, format_of(path, source.format),
                               st.st_size, st.st_mtime_ns))
    if not files:
        what = source.pattern or source.root
        raise DatasetError(f"data.sources[{source.index}] ({source.name}): no files in {what}")
    return sorted(files, key=lambda f: f.rel)


def require_pdftotext() -> None:
    """DatasetError (with the fix) when PDF sources cannot be extracted on this machine."""
    pdf_text.require()


def start_pdf_worker() -> None:
    """Start this rank's PDF extraction worker now (DatasetError when it cannot start)."""
    try:
        pdf_worker.start()
    except pdf_worker.WorkerUnusable as exc:
        raise DatasetError(str(exc)) from None


def stop_pdf_worker() -> None:
    """End this rank's PDF extraction worker (the next PDF would start a new one)."""
    pdf_worker.stop()


def extract(file: InputFile, text_field: str = "text", num_synthetic: int = 0,
            seed: int = 0, part: Optional[Tuple[int, Optional[int]]] = None,
            pdf_timeout_s: float = pdf_worker.DEFAULT_TIMEOUT_S) -> Generator[Extracted, None, int]:
    """The documents of one file, or of one part of a JSONL/Parquet file; failures come back as
    skips, never as exceptions. Returns the part's record count (0 for other formats)."""
    fmt = file.format
    whole = part is None or part[0] == 0  # a file-level failure is reported once, by its first part
    if fmt == "synthetic":
        from saul.data.synthetic import generate_corpus

        for i, doc in enumerate(generate_corpus(num_synthetic, seed)):
            yield Extracted(f"synthetic#{i}", doc.text)
        return
    if not fmt:
        yield Extracted(file.rel, skip="extraction_failed",
                        detail=f"unknown file type {file.path.suffix or '(no extension)'}: set the "
                               f"source's format")
        return
    try:
        if fmt == "pdf":
            yield _one(file.rel, _pdf_text(file.path, pdf_timeout_s))
        elif fmt == "html":
            yield _one(file.rel, _html_text(file.path.read_bytes()))
        elif fmt == "txt":
            yield _one(file.rel, _decode(file.path.read_bytes()))
        elif fmt == "jsonl":
            return (yield from _jsonl(file, text_field, *(part or (0, None))))
        elif fmt == "parquet":
            return (yield from _parquet(file, text_field, *(part or (0, None))))
        else:
            raise ValueError(f"unsupported format {fmt}")
    except _Unreadable as exc:
        if whole:
            yield Extracted(file.rel, skip="extraction_failed", detail=str(exc))
    except OSError as exc:
        if whole:
            yield Extracted(file.rel, skip="extraction_failed", detail=f"cannot read: {exc.strerror or exc}")
    return 0


class _Unreadable(Exception):
    pass


def _one(doc_id: str, text: Optional[str]) -> Extracted:
    if text is None or not text.strip():
        return Extracted(doc_id, skip="empty", detail="no text extracted")
    return Extracted(doc_id, text)


def _decode(data: bytes) -> str:
    if b"\x00" in data[:65536]:
        raise _Unreadable("binary content (NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          f"convert it, e.g. iconv -f latin1 -t utf-8") from None


def _pdf_text(path: Path, timeout_s: float) -> str:
    try:
        return pdf_worker.text(path, timeout_s)
    except (pdf_text.PdfUnreadable, pdf_worker.WorkerFailed) as exc:  # a crash or a hang is this file's too
        raise _Unreadable(f"pdftotext: {exc}") from None
    except pdf_worker.WorkerUnusable as exc:  # not the file: no PDF of this rank could be read
        raise DatasetError(str(exc)) from None


def _html_text(data: bytes) -> Optional[str]:
    import trafilatura

    if b"\x00" in data[:65536]:
        raise _Unreadable("binary content (NUL bytes), not HTML")
    try:
        html = data.decode("utf-8")
    except UnicodeDecodeError:
        html = data.decode("cp1252", "replace")  # legacy pages; trafilatura would guess the same
    # favor_precision: boilerplate left in is worse for us than a sentence lost. Not fast=True:
    # without the fallback extractors pages the main one misreads lose most of their text.
    return trafilatura.extract(html, include_comments=False, include_tables=True,
                               favor_precision=True, deduplicate=False)


def _record_text(record, text_field: str) -> str:
    if not isinstance(record, dict):
        raise _Unreadable(f"a JSON {type(record).__name__}, not an object")
    if text_field not in record:
        raise _Unreadable(f"no field {text_field!r} (set the source's text_field)")
    value = record[text_field]
    if not isinstance(value, str):
        raise _Unreadable(f"field {text_field!r} is {type(value).__name__}, not a string")
    return value


def _jsonl_lines(path: Path, start: int, end: Optional[int]) -> List[bytes]:
    """The lines (split at \\n only) that start in bytes [start, end): one read of the range, plus
    the rest of a line that runs past `end`."""
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # to the first line start >= start (byte start-1 a newline: start itself)
        first = f.tell()
        data = f.read() if end is None else (f.read(end - first) if end > first else b"")
        if data and not data.endswith(b"\n") and end is not None:
            data += f.readline()
    lines = data.split(b"\n")
    return lines[:-1] if lines and not lines[-1] else lines


def _jsonl(file: InputFile, text_field: str, start: int = 0, end: Optional[int] = None
           ) -> Generator[Extracted, None, int]:
    lines = _jsonl_lines(file.path, start, end)
    for n, line in enumerate(lines):
        doc_id = f"{file.rel}#{n}"
        if not line.strip():
            continue
        try:
            text = _record_text(json.loads(_decode(line)), text_field)
        except _Unreadable as exc:
            yield Extracted(doc_id, skip="extraction_failed", detail=str(exc), record=n)
            continue
        except json.JSONDecodeError as exc:
            yield Extracted(doc_id, skip="extraction_failed", detail=f"bad JSON: {exc.msg}", record=n)
            continue
        one = _one(doc_id, text)
        one.record = n
        yield one
    return len(lines)


def _parquet(file: InputFile, text_field: str, start: int = 0, end: Optional[int] = None
             ) -> Generator[Extracted, None, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file.path)
        if text_field not in reader.schema_arrow.names:
            raise _Unreadable(f"no column {text_field!r} (columns: "
                              f"{', '.join(reader.schema_arrow.names[:8])}); set text_field")
        groups = list(range(start, reader.metadata.num_row_groups if end is None else end))
        rows = sum(reader.metadata.row_group(g).num_rows for g in groups)  # the part's records, read or not
        n = 0
        for batch in reader.iter_batches(columns=[text_field], batch_size=1024, row_groups=groups):
            for value in batch.column(0).to_pylist():
                doc_id = f"{file.rel}#{n}"
                if not isinstance(value, str):
                    yield Extracted(doc_id, skip="extraction_failed",
                                    detail=f"{text_field!r} is {type(value).__name__}, not a string", record=n)
                else:
                    one = _one(doc_id, value)
                    one.record = n
                    yield one
                n += 1
        return rows
    except (pa.ArrowException, OSError) as exc:
        raise _Unreadable(f"not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None


def files_for(sources: Sequence[Source]) -> List[InputFile]:
    """Every input file of every source, sources in order, files sorted within each."""
    return [f for source in sources for f in list_files(source)]
