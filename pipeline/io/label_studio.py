"""Read a Label Studio JSON export (a list of tasks): one assignment per element of a task's ``annotations``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CrowdsegError
from pipeline.io.shapes import RELATIVE, Collector, Tables, box_corners, edge_to_centre, ellipse_ring, load_json
from pipeline.spec import Spec

REGIONS = ("polygon", "rectangle", "ellipse")
NO_AREA = ("keypoint",)


def read_label_studio(path: Path, spec: Spec, label_map: dict[str, str], annotator: str) -> Tables:
    """Assignments, shapes and rejections of a Label Studio export; ``row`` is the task's element number.

    The annotator is ``completed_by`` (its id), else ``annotator``; ``ground_truth`` annotations are golden and
    cancelled ones are rejected (``cancelled``). Coordinates are percent of the image: with one
    ``original_width``/``original_height`` per annotation they become pixels of that size, else relative units
    (seen size 1x1). Polygons, rectangles and ellipses (rotation kept) become regions; key points have no area
    (``not_a_region``); brushes and other results are ``unsupported_shape``.
    """
    tasks = load_json(path)
    tasks = [tasks] if isinstance(tasks, dict) else tasks
    if not isinstance(tasks, list):
        raise CrowdsegError("expected a Label Studio export: a JSON list of tasks", file=str(path))
    out = Collector(path, spec, label_map)
    for row, task in enumerate(tasks, start=1):
        if not isinstance(task, dict) or not isinstance(task.get("annotations", []), list):
            out.reject("assignment", "bad_row", "not a Label Studio task with an 'annotations' list", row=row)
            continue
        ref = _image(task.get("data"))
        for ann in task.get("annotations", []):
            if isinstance(ann, dict):
                _annotation(out, row, ref, ann, annotator)
            else:
                out.reject("assignment", "bad_row", "an element of 'annotations' is not an object", row=row,
                           photo_ref=ref)
    return out.tables()


def _image(data: Any) -> str:
    """The task's image: ``data.image``, else its only string value."""
    if not isinstance(data, dict):
        return ""
    if isinstance(data.get("image"), str):
        return data["image"]
    texts = [v for v in data.values() if isinstance(v, str)]
    return texts[0] if len(texts) == 1 else ""


def _annotation(out: Collector, row: int, ref: str, ann: dict[str, Any], annotator: str) -> None:
    who = _who(ann.get("completed_by")) or annotator
    if not ref:
        out.reject("assignment", "unknown_photo", "the task's data names no image", row=row, annotator=who)
        return
    if ann.get("was_cancelled"):
        out.reject("assignment", "cancelled", f"annotation {ann.get('id')} was cancelled (skipped) by the annotator",
                   row=row, photo_ref=ref, annotator=who)
        return
    if not who:
        out.reject("assignment", "no_annotator", f"annotation {ann.get('id')} has no completed_by; set annotator in "
                   "the source config", row=row, photo_ref=ref)
        return
    results = [r for r in ann.get("result") or [] if isinstance(r, dict)]
    shaped = {r.get("id") for r in results if r.get("type") != "labels"}
    labels = {r.get("id"): _value(r).get("labels", []) for r in results if r.get("type") == "labels"}
    regions = [r for r in results if r.get("type") != "labels" or r.get("id") not in shaped]
    seen = _seen(regions)
    a = out.assignment(row, ref, who, assignment_id=str(ann.get("id", "")), golden=bool(ann.get("ground_truth")),
                       seen=seen)
    for i, r in enumerate(regions):
        _result(out, a, i, r, labels.get(r.get("id"), []), seen)


def _seen(results: list[dict[str, Any]]) -> tuple[int, int]:
    """The one image size the results record, else 1x1 (relative units)."""
    sizes = {(r.get("original_width"), r.get("original_height")) for r in results if "original_width" in r}
    if len(sizes) == 1:
        w, h = sizes.pop()
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            return w, h
    return RELATIVE


def _who(completed_by: Any) -> str:
    """``completed_by`` is a user id, or (in some exports) a user object with an id and an email."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id") or completed_by.get("email")
    return "" if completed_by in (None, "") else str(completed_by)


def _result(out: Collector, a: dict[str, Any], i: int, r: dict[str, Any], linked: list[str],
            seen: tuple[int, int]) -> None:
    rtype = str(r.get("type", ""))
    kind = rtype.removesuffix("labels")
    value = _value(r)
    if kind not in REGIONS:
        reason = "not_a_region" if kind in NO_AREA else "unsupported_shape"
        out.not_drawn(a, i, reason, f"a {rtype!r} result " + ("has no area" if reason == "not_a_region"
                                                              else "is not one crowdseg reads"))
        return
    try:
        parts = [(edge_to_centre(_ring(kind, value, seen)), [])]
    except (KeyError, TypeError, ValueError) as e:
        out.not_drawn(a, i, "bad_coordinates", f"{rtype}: {e}")
        return
    names = value.get(rtype) if rtype.endswith("labels") else linked
    for name in names or [""]:
        out.shape(a, i, str(name), parts)


def _value(result: dict[str, Any]) -> dict[str, Any]:
    value = result.get("value")
    return value if isinstance(value, dict) else {}


def _ring(kind: str, v: dict[str, Any], seen: tuple[int, int]) -> np.ndarray:
    """A region's outline in units of the seen image; boxes rotate about their top-left corner, ellipses about
    their centre (Label Studio's anchors). Rotation needs the image's aspect, so relative units refuse it."""
    sx, sy = seen[0] / 100, seen[1] / 100
    if kind == "polygon":
        return np.asarray(v["points"], dtype=np.float64).reshape(-1, 2) * (sx, sy)
    degrees = float(v.get("rotation") or 0)
    if degrees and seen == RELATIVE:
        raise ValueError("a rotated shape needs the image size (original_width, original_height)")
    if kind == "rectangle":
        x, y, w, h = float(v["x"]) * sx, float(v["y"]) * sy, float(v["width"]) * sx, float(v["height"]) * sy
        return box_corners(x, y, x + w, y + h, degrees, pivot=(x, y))
    return ellipse_ring(float(v["x"]) * sx, float(v["y"]) * sy, float(v["radiusX"]) * sx, float(v["radiusY"]) * sy,
                        degrees)
