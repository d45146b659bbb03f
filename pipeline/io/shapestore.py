"""Imported shapes on disk, in shards of consecutive photo ids, so no process holds a whole crowd's polygons.

The read-inputs stage streams shape rows (``SHAPE_COLUMNS`` tuples) into the shards as it parses them; each merge
batch then loads the one or two shards its photos fall in. An assignment's rows always arrive in one write, in
their imported order, so each assignment's digest (part of the merge keys) is taken as they are written.
"""

from __future__ import annotations

import hashlib
import pickle
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io.shapes import SHAPE_COLUMNS
from pipeline.tables import frame

SHARD_PHOTOS = 64  # consecutive photo ids per shard: a batch of 32-128 photos reads one to three shards
DIGESTED = (3, 4, 5, 6, 8)  # class_id, label, points, holes, index: what an assignment's digest covers


def assignment_digests(rows: Iterable[Sequence[Any]]) -> dict[str, str]:
    """Per assignment, a hash of its shape rows as imported (class, label, points, holes, order)."""
    grouped: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for r in rows:
        grouped[r[0]].append(tuple(r[i] for i in DIGESTED))
    return {a: hashlib.sha256(pickle.dumps(g, protocol=4)).hexdigest()[:16] for a, g in sorted(grouped.items())}


@dataclass(frozen=True)
class ShapeShards:
    """Shards under ``folder``; shard ``i`` holds the shapes of photo ids from ``starts[i]`` up to ``starts[i+1]``
    (ids not in the manifest land in a neighbouring shard and are simply never asked for)."""

    folder: str
    starts: tuple[str, ...]

    @classmethod
    def create(cls, folder: Path, photo_ids: Iterable[str], per_shard: int = SHARD_PHOTOS) -> ShapeShards:
        """An empty store for these photos (any shards already in ``folder`` are deleted)."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.pkl"):
            old.unlink()
        ids = sorted(set(photo_ids))
        return cls(str(folder), tuple(ids[::per_shard]) or ("",))

    def path(self, photo_id: str) -> Path:
        return Path(self.folder) / f"{max(bisect_right(self.starts, photo_id) - 1, 0):06d}.pkl"

    def write(self, rows: Sequence[Sequence[Any]]) -> dict[str, str]:
        """Append shape rows (every row of each assignment at once) to their shards; their assignments' digests."""
        by_shard: dict[Path, list[tuple[Any, ...]]] = defaultdict(list)
        for r in rows:
            by_shard[self.path(r[1])].append(tuple(r))
        for path, chunk in sorted(by_shard.items()):
            with path.open("ab") as f:
                pickle.dump(chunk, f, protocol=5)
        return assignment_digests(rows)

    def read(self, photo_ids: Iterable[str], assignments: Iterable[str]) -> pd.DataFrame:
        """The shapes of ``assignments`` (which belong to ``photo_ids``), in imported order per assignment."""
        wanted = set(assignments)
        rows: list[tuple[Any, ...]] = []
        for path in sorted({self.path(p) for p in photo_ids}):
            if not path.exists():
                continue
            with path.open("rb") as f:
                while True:
                    try:
                        chunk = pickle.load(f)
                    except EOFError:
                        break
                    rows += [r for r in chunk if r[0] in wanted]
        return frame(rows, SHAPE_COLUMNS)
