"""Read native annotation JSONL into the assignments and shapes tables, rejecting what cannot be used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from pipeline.io.formats import Assignment
from pipeline.io.manifest import read_text
from pipeline.spec import Spec, validation_reason
from pipeline.tables import REJECTION_COLUMNS, frame, rejection

ASSIGNMENT_COLUMNS = ["assignment", "photo_id", "annotator_id", "assignment_id", "golden", "file", "row", "n_shapes",
                      "seen_width", "seen_height"]
"""``seen_width``/``seen_height``: the image size the annotator worked on, 0 when it is the photo's own."""
SHAPE_COLUMNS = ["assignment", "photo_id", "annotator_id", "class_id", "label", "points", "holes", "row", "index"]


def read_annotations(path: Path, spec: Spec, label_map: dict[str, str] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Assignments, their shapes (labels mapped to class ids) and rejections.

    ``assignment`` is a build-wide key ``<file>:<row>``, since assignment ids are optional and not trusted unique.
    A line that does not parse or validate is rejected whole; a shape whose label the spec does not know is
    rejected alone, never guessed.
    """
    assignments: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    name = str(path)
    for row, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            a = Assignment.model_validate_json(line)
        except ValidationError as e:
            obj = _loose_json(line)
            kind = "bad_json" if obj is None else "bad_row"
            reason = validation_reason(e) if obj is not None else e.errors()[0]["msg"]
            rejected.append(rejection("import", "assignment", kind, reason, file=name, row=row,
                                      photo_id=str(obj.get("photo_id", "")) if obj else "",
                                      annotator_id=str(obj.get("annotator_id", "")) if obj else ""))
            continue
        key = f"{path.name}:{row}"
        assignments.append({"assignment": key, "photo_id": a.photo_id, "annotator_id": a.annotator_id,
                            "assignment_id": a.assignment_id or "", "golden": a.golden, "file": name, "row": row,
                            "n_shapes": len(a.shapes), "seen_width": a.image_width or 0,
                            "seen_height": a.image_height or 0})
        for i, s in enumerate(a.shapes):
            class_id = spec.class_id(s.label, label_map)
            if class_id is None or class_id == 0:
                why = "is not a class of spec" if class_id is None else "is background, which is never drawn in"
                rejected.append(rejection("import", "shape", "unknown_label",
                                          f"shape {i}: label {s.label!r} {why} {spec.name!r}", file=name, row=row,
                                          photo_id=a.photo_id, annotator_id=a.annotator_id))
                continue
            shapes.append({"assignment": key, "photo_id": a.photo_id, "annotator_id": a.annotator_id,
                           "class_id": class_id, "label": s.label, "points": s.points, "holes": s.holes,
                           "row": row, "index": i})
    return (frame(assignments, ASSIGNMENT_COLUMNS), frame(shapes, SHAPE_COLUMNS),
            frame(rejected, REJECTION_COLUMNS))


def _loose_json(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else {}
