"""Phase 2 of the prepare pipeline: near-dedup buckets, spread over the ranks by band.

Once every piece is done, each rank takes bands r, r + N, ... (`bands_of_rank`: spread over the
nodes when there are more ranks than bands; datatrove's bucket stage takes a band range per task
the same way) and writes each band's clusters as a spanning forest
(saul.data.dedup.band_edges) to <work>/bands/band-BBB.i8, atomically: the file is the band's
completion marker, so a killed prepare redoes only missing bands, on any rank count. Rank 0's
merge unites the forests (the same clusters as one pass over all bands). Documents are numbered
the same way on every rank (`Survivors`: input order, exact duplicates out), from small per-piece
files; a band task reads only its rows of the permutation-major signature files, plus the whole
signatures of the documents that share one of its buckets. Memory per band task: ~150 bytes per
document (order, exact hash and its sort, the survivor index, the band's values): ~15 GB at 100 M
documents, on at most 42 ranks (one per band), spread over the nodes. Torch-free.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np

from saul.data import dedup
from saul.data.atomic import write_bytes_atomic
from saul.data.dataset import DatasetError
from saul.data.pieces import piece_dir


def band_file(work: Path, band: int) -> Path:
    return work / "bands" / f"band-{band:03d}.i8"


class Survivors:
    """Every piece's documents in input order, and which survive exact dedup: the same numbering
    on every rank (the bands' edges use it) and at rank 0's merge. Reads the small per-piece
    order and hash files; signatures are read per band (a band task touches its rows only)."""

    def __init__(self, work: Path, num_pieces: int):
        orders, keys, self.counts = [], [], []
        for p in range(num_pieces):
            d = piece_dir(work, p)
            order = np.frombuffer((d / "order.i8").read_bytes(), dtype="<i8").reshape(-1, 3)
            orders.append(order)
            keys.append(np.frombuffer((d / "exact.bin").read_bytes(), dtype="V32"))
            self.counts.append(len(order))
        self.work = work
        order = np.concatenate(orders) if orders else np.empty((0, 3), dtype=np.int64)
        key = np.concatenate(keys) if keys else np.empty(0, dtype="V32")
        if len(key) != len(order):
            raise DatasetError(f"{work}: document hashes and order disagree; delete {work} and re-run")
        self.perm = np.lexsort((order[:, 2], order[:, 1], order[:, 0]))  # input order -> concatenated index
        _, first, inverse = np.unique(key[self.perm], return_index=True, return_inverse=True)
        first_of = first[inverse.ravel()]
        position = np.arange(len(first_of))
        self.exact_dup_of = np.where(first_of == position, -1, first_of)  # in input order
        self.survivors = self.perm[self.exact_dup_of < 0]  # concatenated indices, input order
        starts = np.concatenate(([0], np.cumsum(self.counts)))
        self.piece_of = np.searchsorted(starts, self.survivors, side="right") - 1
        self.local = self.survivors - starts[self.piece_of]

    def _path(self, p: int) -> Path:
        return piece_dir(self.work, p) / "signatures.u32"

    def band_columns(self, lo: int, hi: int) -> np.ndarray:
        """Signature values lo..hi-1 of every survivor: survivors x (hi - lo). Rows lo..hi-1 of a
        permutation-major file are one contiguous read."""
        out = np.empty((len(self.survivors), hi - lo), dtype=np.uint32)
        for p, mine in _by_piece(self.piece_of):
            n = self.counts[p]
            rows = np.fromfile(self._path(p), dtype="<u4", count=(hi - lo) * n, offset=lo * n * 4).reshape(hi - lo, n)
            out[mine] = rows[:, self.local[mine]].T
        return out

    def signatures_of(self, idx: np.ndarray) -> np.ndarray:
        """Whole signatures of survivors `idx` (a band's candidates only); one short-lived map per
        piece, so thousands of pieces never hold thousands of open files."""
        out = np.empty((len(idx), dedup.NUM_PERM), dtype=np.uint32)
        for p, mine in _by_piece(self.piece_of[idx]):
            sig = np.memmap(self._path(p), dtype="<u4", mode="r", shape=(dedup.NUM_PERM, self.counts[p]))
            out[mine] = sig[:, self.local[idx[mine]]].T
            del sig
        return out


def _by_piece(piece_of: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
    """(piece, positions in `piece_of` holding it), one sort instead of one scan per piece."""
    order = np.argsort(piece_of, kind="stable")
    if not len(order):
        return
    for group in np.split(order, np.flatnonzero(np.diff(piece_of[order])) + 1):
        yield int(piece_of[group[0]]), group


def bands_of_rank(rank: int, world: int, bands: int) -> List[int]:
    """Rank r takes bands r, r + N, ...; with more ranks than bands, band b goes to rank b x N / bands,
    spread over the nodes (ranks are numbered node by node), so no node holds every band task's
    document index at once."""
    if world <= bands:
        return list(range(rank, bands, world))
    return [b for b in range(bands) if b * world // bands == rank]


def run_bands(work: Path, num_pieces: int, bands: int, rows: int, mine: Sequence[int],
              should_stop: Callable[[], bool], beat: Callable[[], None] = lambda: None) -> int:
    """Phase 2 on one rank: the buckets and clusters of bands `mine` (those not done yet)."""
    unfinished = [b for b in mine if not band_file(work, b).is_file()]
    if not unfinished:
        return 0
    survivors = Survivors(work, num_pieces)
    band_file(work, 0).parent.mkdir(parents=True, exist_ok=True)
    done = 0
    for b in unfinished:
        if should_stop():
            break
        beat()  # a band of a large corpus takes minutes: the hang detector hears from rank 0 meanwhile
        key = dedup.band_key(survivors.band_columns(b * rows, (b + 1) * rows))
        edges = dedup.band_edges(key, survivors.signatures_of)
        write_bytes_atomic(band_file(work, b), edges.astype("<i8").tobytes(), sync_dir=False)
        done += 1
    return done
