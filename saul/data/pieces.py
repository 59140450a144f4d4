"""The prepare pipeline's unit of work: a piece of about `data.piece_mb` of input.

A piece is a run of consecutive parts in input order; a part is a whole file, a byte range of a
JSONL file, or a range of row groups of a Parquet file:
    JSONL    a file over the piece size is cut at multiples of it; the reader of [start, end)
             takes the lines that START in it (a line straddling `end` belongs to this part, the
             next part skips to the first line start after its own `start`), so each record
             belongs to exactly one part without anyone reading the file ahead of time
    Parquet  a file over the piece size is cut between row groups (from its footer), about one
             piece size of uncompressed data per part; one huge row group stays one part
    others   a PDF, HTML or text file is one part (extraction needs the whole file)
Small files are grouped into one piece until it reaches the piece size, so a million small PDFs
do not become a million directories of outputs.

The plan depends on the inputs and the piece size only, never on the rank count: a prepare
resumed on another rank count finds the same pieces and keeps every finished one. Ranks take
pieces by `deal` (largest first onto the lightest rank).

Why 64 MiB by default: the per-document steps (extraction, cleaning, perplexity,
decontamination, signatures) ran at 3.2 MB/s per core on the demo corpus at 2,000 documents
(PDFs, HTML and dumps alike, KenLM and LegalBench decontamination on), so a piece is ~20 s of one
core's work and a killed rank loses about that; a 1 TB corpus is ~16,000 pieces, enough to keep
384 ranks (4 ADASTRA CPU nodes x 96) busy to the end, with 10 files per piece directory, not per
document; and a rank holds one piece's bytes at a time. A corpus much smaller than ranks x 64 MiB leaves
ranks idle: set a smaller data.piece_mb there.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from saul.data.extract import InputFile

DEFAULT_PIECE_MB = 64.0
DONE_MARKER = "done.json"  # written last in a piece's directory: the piece is finished


@dataclass(frozen=True)
class Part:
    file: int  # index into the input file list
    start: int  # JSONL: first byte (lines starting at or after it); Parquet: first row group; else 0
    end: Optional[int]  # JSONL: lines starting before it; Parquet: end row group; None = to the end
    size: int  # bytes (Parquet: uncompressed bytes of its row groups)


@dataclass(frozen=True)
class Piece:
    index: int
    parts: Tuple[Part, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


def piece_dir(work: Path, index: int) -> Path:
    return work / f"piece-{index:05d}"


def piece_bytes(piece_mb: float) -> int:
    return max(1, int(piece_mb * (1 << 20)))


def file_parts(file_index: int, f: InputFile, size_limit: int) -> List[Part]:
    """One file as parts of at most about `size_limit` bytes (JSONL, Parquet) or whole."""
    if f.size <= size_limit or f.format not in ("jsonl", "parquet"):
        return [Part(file_index, 0, None, f.size)]
    if f.format == "jsonl":
        cuts = list(range(0, f.size, size_limit))
        return [Part(file_index, a, b if b < f.size else None, min(b, f.size) - a)
                for a, b in zip(cuts, cuts[1:] + [f.size])]
    sizes = _row_group_sizes(f)
    if len(sizes) < 2:
        return [Part(file_index, 0, None, f.size)]  # one row group, or an unreadable footer: whole
    parts, first, load = [], 0, 0
    for g, size in enumerate(sizes):
        if g > first and load + size > size_limit:
            parts.append(Part(file_index, first, g, load))
            first, load = g, 0
        load += size
    parts.append(Part(file_index, first, None, load))
    return parts


def _row_group_sizes(f: InputFile) -> List[int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(f.path).metadata
        return [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
    except (pa.ArrowException, OSError):
        return []  # extraction reports it as a skip of the whole file


def plan_pieces(files: Sequence[InputFile], size_limit: int) -> List[Piece]:
    """Parts in input order, grouped into pieces of at most `size_limit` bytes (a single part
    may be larger: a big PDF, one huge row group)."""
    pieces: List[Piece] = []
    current: List[Part] = []
    load = 0
    for i, f in enumerate(files):
        for part in file_parts(i, f, size_limit):
            if current and load + part.size > size_limit:
                pieces.append(Piece(len(pieces), tuple(current)))
                current, load = [], 0
            current.append(part)
            load += part.size
    if current:
        pieces.append(Piece(len(pieces), tuple(current)))
    return pieces


def deal(pieces: Sequence[Piece], world: int) -> List[List[int]]:
    """Piece indices per rank: largest first onto the least loaded rank (by bytes), each rank's
    list in input order. Deterministic: every rank computes the same deal."""
    loads = [(0, r) for r in range(world)]
    out: List[List[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(pieces)), key=lambda i: (-pieces[i].size, i)):
        load, r = heapq.heappop(loads)
        out[r].append(i)
        heapq.heappush(loads, (load + max(pieces[i].size, 1), r))
    return [sorted(x) for x in out]
