"""Read a Toloka results TSV of an image-annotation project: one assignment per row, plus the golden answers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pipeline.errors import CrowdsegError
from pipeline.io.manifest import read_text
from pipeline.io.shapes import RELATIVE, Collector, Tables, box_corners, edge_to_centre
from pipeline.spec import Spec

CANCELLED = {"SKIPPED": "cancelled", "EXPIRED": "cancelled", "REJECTED": "rejected_on_platform"}


def read_toloka(path: Path, spec: Spec, label_map: dict[str, str], annotator: str) -> Tables:
    """Assignments, shapes and rejections of a Toloka TSV; ``row`` is the line number.

    The image is ``INPUT:image`` (else the only ``INPUT:`` column), the answer ``OUTPUT:result`` (else the only
    ``OUTPUT:`` column), the annotator ``ASSIGNMENT:worker_id``. A control task's ``GOLDEN:`` answer becomes one
    golden assignment per image (annotator ``golden``); the worker's answer to it stays a crowd assignment, so it
    can be scored. Rejected, skipped and expired assignments are rejected. Answers are Template Builder
    ``{"shape": "polygon", "points": [{"left", "top"}]}`` / ``{"shape": "rectangle", "left", "top", "width",
    "height"}`` or legacy ``{"type": "polygon", "data": [{"x", "y"}]}`` objects in coordinates relative to the
    image, so the seen size is 1x1; points have no area (``not_a_region``).
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t")
    header = [h.strip() for h in next(reader, [])]
    image, answer = _column(path, header, "INPUT:", "image"), _column(path, header, "OUTPUT:", "result")
    golden = "GOLDEN:" + answer.removeprefix("OUTPUT:")
    out = Collector(path, spec, label_map)
    golden_seen: set[tuple[str, str]] = set()
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            rec = dict(zip(header, fields, strict=False))
            ref = rec.get(image, "").strip()
            _row(out, reader.line_num, ref, rec, answer, annotator)
            gold = rec.get(golden, "").strip()
            if gold and (ref, gold) not in golden_seen:
                golden_seen.add((ref, gold))
                _answer(out, reader.line_num, ref, "golden", gold, golden=True)
    except csv.Error as e:  # e.g. a cell over the csv module's 128 KiB limit
        raise CrowdsegError(f"invalid TSV: {e}", file=str(path), where=reader.line_num) from None
    return out.tables()


def _column(path: Path, header: list[str], prefix: str, name: str) -> str:
    """``<prefix><name>`` if present, else the only column with the prefix."""
    if prefix + name in header:
        return prefix + name
    found = [h for h in header if h.startswith(prefix)]
    if len(found) != 1:
        raise CrowdsegError(f"cannot tell which column is {prefix}{name}: found {found or 'none'}", file=str(path),
                            where=1)
    return found[0]


def _row(out: Collector, row: int, ref: str, rec: dict[str, str], answer: str, annotator: str) -> None:
    who = rec.get("ASSIGNMENT:worker_id", "").strip() or annotator
    status = rec.get("ASSIGNMENT:status", "").strip().upper()
    if status in CANCELLED:
        out.reject("assignment", CANCELLED[status], f"the assignment is {status} on Toloka", row=row, photo_ref=ref,
                   annotator=who)
    elif not who:
        out.reject("assignment", "no_annotator", "ASSIGNMENT:worker_id is empty", row=row, photo_ref=ref)
    else:
        _answer(out, row, ref, who, rec.get(answer, ""), assignment_id=rec.get("ASSIGNMENT:assignment_id", "").strip())


def _answer(out: Collector, row: int, ref: str, who: str, text: str, *, golden: bool = False,
            assignment_id: str = "") -> None:
    what = "GOLDEN answer" if golden else "answer"
    try:
        shapes = (json.loads(text) if text.strip() else None) or []
    except (json.JSONDecodeError, RecursionError) as e:
        reason = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        out.reject("assignment", "bad_json", f"{what}: {reason}", row=row, photo_ref=ref, annotator=who)
        return
    if not isinstance(shapes, list):
        out.reject("assignment", "bad_row", f"{what} is not a list of shapes", row=row, photo_ref=ref, annotator=who)
        return
    a = out.assignment(row, ref, who, assignment_id=assignment_id, golden=golden, seen=RELATIVE)
    for i, s in enumerate(shapes):
        s = s if isinstance(s, dict) else {}
        kind = str(s.get("shape") or s.get("type") or "")
        if kind not in ("polygon", "rectangle"):
            reason = "not_a_region" if kind == "point" else "unsupported_shape"
            out.not_drawn(a, i, reason, f"a {kind or 'shapeless'} answer " + ("has no area" if kind == "point"
                                                                               else "is not one crowdseg reads"))
            continue
        try:
            ring = edge_to_centre(_ring(kind, s))
        except (KeyError, TypeError, ValueError) as e:
            out.not_drawn(a, i, "bad_coordinates", f"{kind}: {e}")
            continue
        out.shape(a, i, str(s.get("label", "")), [(ring, [])])


def _ring(kind: str, s: dict[str, Any]) -> Any:
    """The outline in relative units (0..1 across the image, pixel edges at the ends)."""
    if "data" in s:  # legacy HTML editor
        if kind == "polygon":
            return [[float(p["x"]), float(p["y"])] for p in s["data"]]
        p1, p2 = s["data"]["p1"], s["data"]["p2"]
        return box_corners(float(p1["x"]), float(p1["y"]), float(p2["x"]), float(p2["y"]))
    if kind == "polygon":
        return [[float(p["left"]), float(p["top"])] for p in s["points"]]
    x, y = float(s["left"]), float(s["top"])
    return box_corners(x, y, x + float(s["width"]), y + float(s["height"]))
