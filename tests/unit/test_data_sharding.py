"""Pieces of work (saul.data.pieces) on real files: JSONL cut into byte ranges at line starts, Parquet
into row groups, small files grouped; every record read exactly once and numbered in its whole file."""
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saul.data.extract import InputFile, extract
from saul.data.pieces import deal, file_parts, plan_pieces


def _input(path: Path, fmt: str, rel: str = "") -> InputFile:
    st = path.stat()
    return InputFile(0, path, rel or path.name, fmt, st.st_size, st.st_mtime_ns)


def _read_all(f: InputFile, parts):
    """(doc_id numbered in the whole file, text or skip) over all parts, the way the pipeline numbers them."""
    out, base = [], 0
    for part in parts:
        reader = extract(f, part=None if part.start == 0 and part.end is None else (part.start, part.end))
        got = []
        while True:
            try:
                got.append(next(reader))
            except StopIteration as done:
                count = done.value
                break
        for ex in got:
            out.append((f"{f.rel}#{base + ex.record}" if ex.record is not None else ex.doc_id, ex.text or ex.skip))
        base += count
    return out


def _jsonl(tmp_path) -> InputFile:
    """Records of very different lengths (one much longer than a part), blank lines, a bad line, CRLF
    endings and no newline at the end: the edge cases of cutting at byte offsets."""
    lines = []
    for i in range(60):
        text = f"record {i} " + "word " * (3 if i % 7 else 400)
        lines.append(json.dumps({"text": text}))
        if i % 11 == 0:
            lines.append("")
        if i == 30:
            lines.append('{"text": "cut off')
    body = "\n".join(lines[:40]) + "\r\n" + "\n".join(lines[40:])  # ...and no final newline
    path = tmp_path / "dump.jsonl"
    path.write_bytes(body.encode("utf-8"))
    return _input(path, "jsonl")


@pytest.mark.parametrize("limit", [1, 7, 64, 500, 1999, 10 ** 6])
def test_jsonl_parts_read_every_record_once_with_its_whole_file_number(tmp_path, limit):
    f = _jsonl(tmp_path)
    whole = _read_all(f, file_parts(0, f, 10 ** 9))
    parts = file_parts(0, f, limit)
    assert len(parts) == -(-f.size // limit)  # cut at multiples of the limit, no read needed
    assert _read_all(f, parts) == whole
    assert len(whole) == 60 + 1 and whole[-1][0] == f"{f.rel}#{60 + 6 + 1 - 1}"  # 6 blank lines, 1 bad one
    assert sum(1 for _, t in whole if t == "extraction_failed") == 1


def test_parquet_parts_follow_row_groups(tmp_path):
    path = tmp_path / "p.parquet"
    texts = [f"problem {i} " + "x " * (i * 10) for i in range(23)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=5)  # 5 row groups, growing
    f = _input(path, "parquet")
    parts = file_parts(0, f, 1500)
    assert 1 < len(parts) <= 5 and parts[0].start == 0 and parts[-1].end is None
    assert [p.start for p in parts[1:]] == [p.end for p in parts[:-1]]  # consecutive row-group ranges
    got = _read_all(f, parts)
    assert got == [(f"p.parquet#{i}", t) for i, t in enumerate(texts)]
    assert file_parts(0, f, 10 ** 9) == [file_parts(0, f, 10 ** 9)[0]]  # small enough: whole


def test_a_corrupt_parquet_or_a_pdf_stays_whole(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(os.urandom(5000))
    pdf = tmp_path / "big.pdf"
    pdf.write_bytes(b"%PDF" + os.urandom(5000))
    for f in (_input(bad, "parquet"), _input(pdf, "pdf")):
        assert [(p.start, p.end) for p in file_parts(0, f, 100)] == [(0, None)]
    skips = _read_all(_input(bad, "parquet"), file_parts(0, _input(bad, "parquet"), 100))
    assert skips == [("bad.parquet", "extraction_failed")]  # one skip, not one per part


def _files(sizes, fmt="pdf"):
    return [InputFile(0, Path(f"f{i}"), f"f{i}", fmt, size, 0) for i, size in enumerate(sizes)]


def test_small_files_are_grouped_and_pieces_do_not_depend_on_the_rank_count():
    files = _files([100] * 40 + [5000] + [100] * 40)
    pieces = plan_pieces(files, 1000)
    assert [part.file for piece in pieces for part in piece.parts] == list(range(len(files)))  # each once, in order
    assert all(p.size <= 1000 for p in pieces if len(p.parts) > 1)
    big = [p for p in pieces if any(part.file == 40 for part in p.parts)]
    assert len(big) == 1 and len(big[0].parts) == 1  # a file over the limit that cannot be cut: alone
    assert len(pieces) == 4 + 1 + 4
    for world in (1, 2, 3, 8):
        ranks = deal(pieces, world)
        assert sorted(i for r in ranks for i in r) == list(range(len(pieces)))  # each piece on one rank
        assert all(r == sorted(r) for r in ranks)
        assert deal(pieces, world) == ranks  # deterministic: every rank computes the same deal
    loads = [sum(pieces[i].size for i in r) for r in deal(pieces, 3)]
    assert max(loads) - min(loads) <= 1000


def test_more_ranks_than_pieces_leaves_ranks_without_work():
    pieces = plan_pieces(_files([10, 10]), 1000)
    assert deal(pieces, 4) == [[0], [], [], []]


@pytest.mark.parametrize("world", [1, 2, 5, 42, 96, 384])
def test_every_band_has_one_rank_spread_over_the_nodes(world):
    from saul.data.buckets import bands_of_rank

    owners = {b: r for r in range(world) for b in bands_of_rank(r, world, 42)}
    assert sorted(owners) == list(range(42))  # each band exactly once (dict: no band twice per rank)
    assert sum(len(bands_of_rank(r, world, 42)) for r in range(world)) == 42
    assert 0 in bands_of_rank(0, world, 42)
    if world >= 96:  # 96 ranks per node: no node takes more than its share of the band tasks
        per_node = [sum(1 for r in owners.values() if r // 96 == n) for n in range(world // 96)]
        assert max(per_node) <= -(-42 // (world // 96))
