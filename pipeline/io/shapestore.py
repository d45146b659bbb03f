"""Imported shapes on disk, one record per assignment, so no process holds a whole crowd's polygons.

The read-inputs stage streams shape rows (``SHAPE_COLUMNS`` tuples) into one append-only file as it parses them,
each assignment's rows pickled together, and the assignment table gets where each record lies
(``LOCATION_COLUMNS``). A merge batch, or the report's thumbnails, then read exactly the records of their own
assignments' rows. An assignment's rows always arrive in one write,
in their imported order, so its digest (part of the merge keys) is taken as it is written.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io.shapes import SHAPE_COLUMNS
from pipeline.store import Spans
from pipeline.tables import frame

DIGESTED = (3, 4, 5, 6, 8)  # class_id, label, points, holes, index: what an assignment's digest covers


def by_assignment(rows: Iterable[Sequence[Any]]) -> dict[str, list[tuple[Any, ...]]]:
    """Shape rows grouped by their assignment, in order."""
    grouped: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for r in rows:
        grouped[r[0]].append(tuple(r))
    return grouped


def digest(rows: Sequence[Sequence[Any]]) -> str:
    """The hash of one assignment's shape rows: their ``DIGESTED`` fields, in order."""
    return hashlib.sha256(pickle.dumps([tuple(r[i] for i in DIGESTED) for r in rows], protocol=4)).hexdigest()[:16]


SPAN_COLUMNS = ["shape_offset", "shape_length"]
"""Where an assignment's record lies in the store's file (length 0: it has no shapes). Not content: another read of
the same files may place a record elsewhere, so no key includes them."""
LOCATION_COLUMNS = [*SPAN_COLUMNS, "shape_digest"]
"""Columns the read-inputs stage adds to the assignment table: the span and the digest of the assignment's shapes."""

Record = tuple[int, int, str]  # offset, length, digest


@dataclass(frozen=True)
class ShapeStore:
    """The append-only file ``path`` of shape records; the assignment table says where each record lies, so the
    store itself holds no per-assignment index (a 1M-assignment crowd's would be hundreds of MB of dicts)."""

    path: str

    @classmethod
    def create(cls, path: Path) -> ShapeStore:
        """An empty store (a file already at ``path`` is replaced, never truncated: it may be another store's too)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_bytes(b"")
        return cls(str(path))

    def write(self, rows: Sequence[Sequence[Any]]) -> dict[str, Record]:
        """Append shape rows (every row of each assignment at once); per assignment, where its record lies and the
        digest of its shapes."""
        out: dict[str, Record] = {}
        with open(self.path, "ab") as f:
            offset = f.tell()
            for assignment, mine in by_assignment(rows).items():
                record = pickle.dumps(mine, protocol=5)
                f.write(record)
                out[assignment] = (offset, len(record), digest(mine))
                offset += len(record)
        return out

    def read(self, assignments: pd.DataFrame) -> pd.DataFrame:
        """The shape rows of ``assignments`` (rows with ``LOCATION_COLUMNS``), in imported order per assignment."""
        spans = sorted({(int(o), int(n)) for o, n in zip(assignments["shape_offset"], assignments["shape_length"],
                                                         strict=True) if n})
        rows: list[tuple[Any, ...]] = []
        with Spans() as records:
            for offset, length in spans:
                rows += pickle.loads(records.read(self.path, offset, length))
        return frame(rows, SHAPE_COLUMNS)


def located(assignments: pd.DataFrame, records: dict[str, Record]) -> pd.DataFrame:
    """``assignments`` with ``LOCATION_COLUMNS`` from ``records`` (0, 0, "" for an assignment without shapes)."""
    found = [records.get(a, (0, 0, "")) for a in assignments["assignment"]]
    columns = zip(*found, strict=True) if found else ([], [], [])
    return assignments.assign(**{c: pd.Series(v, index=assignments.index, dtype=t) for c, v, t in
                                 zip(LOCATION_COLUMNS, columns, ("int64", "int64", "str"), strict=True)})


def records_of(assignments: pd.DataFrame) -> dict[str, Record]:
    """The ``located`` records of assignments with shapes, back from their columns."""
    has = assignments[assignments["shape_length"] > 0]
    return dict(zip(has["assignment"], zip(has["shape_offset"].tolist(), has["shape_length"].tolist(),
                                           has["shape_digest"].tolist(), strict=True), strict=True))
