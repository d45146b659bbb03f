"""Imported shapes on disk, one record per assignment, so no process holds a whole crowd's polygons.

The read-inputs stage streams shape rows (``SHAPE_COLUMNS`` tuples) into one append-only file as it parses them,
each assignment's rows pickled together, and keeps where each record lies. A merge batch, or the report's
thumbnails, then read exactly the records of their own assignments. An assignment's rows always arrive in one write,
in their imported order, so its digest (part of the merge keys) is taken as it is written.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io.shapes import SHAPE_COLUMNS
from pipeline.store import Spans
from pipeline.tables import frame

DIGESTED = (3, 4, 5, 6, 8)  # class_id, label, points, holes, index: what an assignment's digest covers


def assignment_digests(rows: Iterable[Sequence[Any]]) -> dict[str, str]:
    """Per assignment, a hash of its shape rows as imported (class, label, points, holes, order)."""
    grouped: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for r in rows:
        grouped[r[0]].append(tuple(r[i] for i in DIGESTED))
    return {a: hashlib.sha256(pickle.dumps(g, protocol=4)).hexdigest()[:16] for a, g in sorted(grouped.items())}


@dataclass
class ShapeStore:
    """The file ``path`` and, per assignment, the (offset, length) of its record there."""

    path: str
    index: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path) -> ShapeStore:
        """An empty store (a file already at ``path`` is replaced, never truncated: it may be another store's too)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_bytes(b"")
        return cls(str(path))

    def write(self, rows: Sequence[Sequence[Any]]) -> dict[str, str]:
        """Append shape rows (every row of each assignment at once); their assignments' digests."""
        grouped: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for r in rows:
            grouped[r[0]].append(tuple(r))
        with open(self.path, "ab") as f:
            offset = f.tell()
            for assignment, mine in grouped.items():
                record = pickle.dumps(mine, protocol=5)
                f.write(record)
                self.index[assignment] = (offset, len(record))
                offset += len(record)
        return assignment_digests(rows)

    def subset(self, assignments: Iterable[str]) -> ShapeStore:
        """The same file with the index of these assignments only: small enough to send to a worker process."""
        return ShapeStore(self.path, {a: self.index[a] for a in assignments if a in self.index})

    def read(self, assignments: Iterable[str]) -> pd.DataFrame:
        """The shape rows of ``assignments`` (none for one without shapes), in imported order per assignment."""
        spans = sorted(self.index[a] for a in set(assignments) if a in self.index)
        rows: list[tuple[Any, ...]] = []
        with Spans() as records:
            for offset, length in spans:
                rows += pickle.loads(records.read(self.path, offset, length))
        return frame(rows, SHAPE_COLUMNS)
