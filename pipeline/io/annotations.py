"""Read native annotation JSONL into the assignments and shapes tables, rejecting what cannot be used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
from pydantic import ValidationError

from pipeline.io.formats import Assignment, Shape
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
        a = plain_line(line)
        if a is None:
            try:
                a = Line.of(Assignment.model_validate_json(line))
            except ValidationError as e:
                obj = _loose_json(line)
                kind = "bad_json" if obj is None else "bad_row"
                reason = validation_reason(e) if obj is not None else e.errors()[0]["msg"]
                out.reject("assignment", kind, reason, row=row, photo_ref=str(obj.get("photo_id", "")) if obj else "",
                           annotator=str(obj.get("annotator_id", "")) if obj else "")
                continue
        added = out.assignment(row, a.photo_id, a.annotator_id, assignment_id=a.assignment_id, golden=a.golden,
                               seen=a.seen)
        for i, (label, points, holes) in enumerate(a.shapes):
            out.shape(added, i, label, [(points, holes)])
        out.spill(SPILL_ROWS)
    return out.tables()


class Line(NamedTuple):
    """What a build keeps of one valid annotation line."""

    photo_id: str
    annotator_id: str
    assignment_id: str
    golden: bool
    seen: tuple[int, int]  # image_width and image_height, 0 when absent
    shapes: list[tuple[str, Any, list[Any]]]  # label, outer ring, holes

    @classmethod
    def of(cls, a: Assignment) -> Line:
        return cls(a.photo_id, a.annotator_id, a.assignment_id or "", a.golden,
                   (a.image_width or 0, a.image_height or 0), [(s.label, s.points, s.holes) for s in a.shapes])


SHAPE_KEYS = frozenset(Shape.model_fields)


def plain_line(line: str) -> Line | None:
    """A line read without pydantic (1.8x faster, points straight into arrays) when it holds only what ``Assignment``
    takes as it is: strings, a boolean, positive integers, and rings of [x, y] JSON numbers. Anything else (a
    number as a string, a missing field, a bad value) gives None, and pydantic reads the line and says what is
    wrong. Both give the same values: a JSON number becomes the nearest float64 either way."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    photo, who, shapes = obj.get("photo_id"), obj.get("annotator_id"), obj.get("shapes", [])
    aid, golden = obj.get("assignment_id"), obj.get("golden", False)
    w, h = obj.get("image_width"), obj.get("image_height")
    if not (_text(photo) and _text(who) and (aid is None or type(aid) is str) and type(golden) is bool
            and _size(w) and _size(h) and type(shapes) is list
            and (obj.get("submitted_at") is None or type(obj["submitted_at"]) is str)):
        return None
    out = []
    for shape in shapes:
        if type(shape) is not dict or not shape.keys() <= SHAPE_KEYS or not _text(label := shape.get("label")):
            return None
        holes = shape.get("holes", [])
        if type(holes) is not list:
            return None
        rings = [_ring(r) for r in (shape.get("points"), *holes)]
        if any(r is None for r in rings):
            return None
        out.append((label, rings[0], rings[1:]))
    return Line(photo, who, aid or "", golden, (w or 0, h or 0), out)


def _text(value: Any) -> bool:
    return type(value) is str and len(value) > 0


def _size(value: Any) -> bool:
    return value is None or (type(value) is int and value > 0)


def _ring(value: Any) -> np.ndarray | None:
    """A non-empty list of [x, y] numbers (booleans count as 0 and 1, as pydantic takes them) as an (n, 2) float64
    array; None for anything else."""
    if type(value) is not list or not value:
        return None
    try:
        points = np.asarray(value)
    except ValueError:  # ragged
        return None
    if points.ndim != 2 or points.shape[1] != 2 or points.dtype.kind not in "bif":
        return None
    return points.astype(np.float64, copy=False)


def _loose_json(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than Python's stack
        return None
    return obj if isinstance(obj, dict) else {}
