"""Row tables a build keeps on disk instead of in memory: merge's per-assignment and per-class rows (at 200k photos
~1.0 M and ~1.5 M rows, ~200 MB as DataFrames). Such a table (``Chunked``) is a folder of pickled chunks, each
sorted by the table's keys, photo first; readers take it a chunk at a time. Stage functions take either one or a
DataFrame (``Rows``), so they are tested on plain tables and run on stored ones alike."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import store
from pipeline.tables import shared_categories, sorted_by

PHOTO = "photo_id"


@dataclass(frozen=True)
class Chunked:
    """A table saved as chunks (``ChunkWriter``), read back in ``keys`` order: ``spans`` holds each chunk's first
    and last photo id, ``lengths`` its rows, ``empty`` the table's columns and dtypes without rows."""

    files: tuple[Path, ...]
    spans: tuple[tuple[str, str], ...]
    lengths: tuple[int, ...]
    keys: tuple[str, ...]
    empty: pd.DataFrame

    def __len__(self) -> int:
        return sum(self.lengths)

    @property
    def columns(self) -> pd.Index:
        return self.empty.columns

    def __iter__(self) -> Iterator[pd.DataFrame]:
        """The rows in ``keys`` order, a chunk's worth at a time. Chunks whose photo ranges interleave (the vote's
        and a dataset's trusted masks) are read per range between their first photos, their rows joined and sorted
        there; chunks in order, as the vote's are, are read once each as they are."""
        if not self.files:
            yield self.empty
            return
        starts = sorted({first for first, _ in self.spans})
        for lo, hi in zip(starts, [*starts[1:], None], strict=True):
            within = [i for i, (first, last) in enumerate(self.spans) if last >= lo and (hi is None or first < hi)]
            parts = [self._range(i, lo, hi) for i in within]
            yield parts[0] if len(parts) == 1 else sorted_by(joined(parts), list(self.keys))

    def _range(self, i: int, lo: str, hi: str | None) -> pd.DataFrame:
        """Chunk ``i``'s rows whose photo is in [lo, hi)."""
        rows = store.load(self.files[i])
        first, last = self.spans[i]
        if first >= lo and (hi is None or last < hi):
            return rows
        ids = rows[PHOTO].to_numpy(dtype=object)
        keep = (ids >= lo) & (ids < hi) if hi is not None else ids >= lo
        return rows[np.asarray(keep, bool)].reset_index(drop=True)


Rows = pd.DataFrame | Chunked
"""A row table held in memory or stored in chunks."""


@dataclass
class ChunkWriter:
    """Saves a table chunk by chunk into ``folder`` (emptied first), each chunk sorted by ``keys``."""

    folder: Path
    keys: tuple[str, ...]
    files: list[Path] = field(default_factory=list)
    spans: list[tuple[str, str]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    empty: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)

    def add(self, rows: pd.DataFrame) -> None:
        if self.empty is None:
            self.empty = rows.iloc[:0].copy()  # not a slice, which would keep the rows' arrays
        if not len(rows):
            return
        rows = sorted_by(rows, list(self.keys))
        self.files.append(store.save(rows, self.folder / f"{len(self.files):06d}.pkl"))
        self.spans.append((str(rows[PHOTO].iloc[0]), str(rows[PHOTO].iloc[-1])))
        self.lengths.append(len(rows))

    def table(self, empty: pd.DataFrame) -> Chunked:
        """What was added, as one table; ``empty`` gives its columns if nothing was."""
        return Chunked(tuple(self.files), tuple(self.spans), tuple(self.lengths), self.keys,
                       empty if self.empty is None else self.empty)


def chunks(rows: Rows) -> Iterator[pd.DataFrame]:
    """A table's rows a chunk at a time, in order (a DataFrame is one chunk)."""
    if isinstance(rows, pd.DataFrame):
        yield rows
    else:
        yield from rows


def joined(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Tables of one schema as one, in order; a column categorical in each stays categorical."""
    return pd.concat(shared_categories([p for p in parts if len(p)] or list(parts[:1])), ignore_index=True)


def select(rows: Rows, columns: list[str]) -> pd.DataFrame:
    """These columns of every row, in order: a narrow table read a chunk at a time."""
    return joined([c[columns] for c in chunks(rows)])


def where(rows: Rows, keep: Callable[[pd.DataFrame], pd.Series | np.ndarray],
          columns: list[str] | None = None) -> pd.DataFrame:
    """The rows ``keep`` marks (chunk by chunk; ``columns``: only these), in order."""
    return joined([c.loc[np.asarray(keep(c), bool), columns if columns is not None else c.columns]
                   for c in chunks(rows)])


def count(rows: Rows, keep: Callable[[pd.DataFrame], pd.Series | np.ndarray]) -> int:
    """How many rows ``keep`` marks."""
    return sum(int(np.asarray(keep(c), bool).sum()) for c in chunks(rows))


def ordered(rows: Rows, keys: list[str]) -> Rows:
    """The table in ``keys`` order: a DataFrame sorted (``sorted_by``); a stored table, which reads in its own
    order, as it is (it must be this one)."""
    if isinstance(rows, pd.DataFrame):
        return sorted_by(rows, keys)
    if list(rows.keys) != keys:
        raise ValueError(f"a table stored in {list(rows.keys)} order cannot be read in {keys} order")
    return rows


def added_up(parts: Iterable[pd.DataFrame], keys: list[str], every: int = 8) -> pd.DataFrame:
    """Partial sums (one per chunk of a table, say) added up by ``keys``, ``every`` parts at a time as they come:
    only a few parts are held at once (at 200k photos, each chunk's per-annotator rows come to ~30k)."""
    held: list[pd.DataFrame] = []
    for part in parts:
        held.append(part)
        if len(held) == every:
            held = [_sum_by(held, keys)]
    return _sum_by(held, keys)


def _sum_by(parts: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    return pd.concat(parts).groupby(keys, sort=True).sum().reset_index()
