"""Read native annotation JSONL into the assignments and shapes tables, rejecting what cannot be used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.io.formats import Assignment
from pipeline.io.manifest import read_lines
from pipeline.io.shapes import ASSIGNMENT_COLUMNS, SHAPE_COLUMNS, SPILL_ROWS, Collector, Sink, Tables
from pipeline.spec import Spec, validation_reason

__all__ = ["ASSIGNMENT_COLUMNS", "SHAPE_COLUMNS", "read_annotations"]

MAX_LINE_CHARS = 32 << 20
"""A line longer than this (~2 million points) is rejected unparsed, so a hostile 10^7-point polygon costs one
read of its line, not gigabytes of parsed floats. A real assignment (9 classes of 10,000 vertices) is ~2 MB."""


def read_annotations(path: Path, spec: Spec, label_map: dict[str, str] | None = None, sink: Sink | None = None,
                     start: tuple[int, int] = (0, 0)) -> Tables:
    """Assignments, their shapes (labels mapped to class ids) and rejections.

    ``assignment`` is a build-wide key ``<file>:<row>``, since assignment ids are optional and not trusted unique.
    A line that does not parse or validate is rejected whole; a shape whose label the spec does not know is
    rejected alone, never guessed. With a ``sink``, shape rows are handed to it as they pile up (see ``Collector``).
    ``start`` (byte offset, lines before it) reads only the lines from there (see ``read_lines``).
    """
    out = Collector(path, spec, label_map, sink)
    for row, line in read_lines(path, start):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            out.reject("assignment", "bad_row", f"the line is {len(line):,} characters long, over the limit of "
                       f"{MAX_LINE_CHARS:,}", row=row)
            continue
        try:
            a = Assignment.model_validate_json(line)
        except ValidationError as e:
            obj = _loose_json(line)
            kind = "bad_json" if obj is None else "bad_row"
            reason = validation_reason(e) if obj is not None else e.errors()[0]["msg"]
            out.reject("assignment", kind, reason, row=row, photo_ref=str(obj.get("photo_id", "")) if obj else "",
                       annotator=str(obj.get("annotator_id", "")) if obj else "")
            continue
        added = out.assignment(row, a.photo_id, a.annotator_id, assignment_id=a.assignment_id or "",
                               golden=a.golden, seen=(a.image_width or 0, a.image_height or 0))
        for i, s in enumerate(a.shapes):
            out.shape(added, i, s.label, [(s.points, s.holes)])
        out.spill(SPILL_ROWS)
    return out.tables()


def _loose_json(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than Python's stack
        return None
    return obj if isinstance(obj, dict) else {}
