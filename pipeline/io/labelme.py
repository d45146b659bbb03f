"""Read LabelMe JSON: one file per image (a file, or every ``*.json`` directly in a folder), one assignment each."""

from __future__ import annotations

import base64
import binascii
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import CrowdsegError
from pipeline.io.shapes import (
    Collector,
    Part,
    Tables,
    box_corners,
    edge_to_centre,
    ellipse_ring,
    load_json,
    positive_int,
    trace_mask,
)
from pipeline.spec import Spec

NO_AREA = {"line", "linestrip", "point", "points"}


def read_labelme(path: Path, spec: Spec, label_map: dict[str, str], annotator: str) -> Tables:
    """Assignments, shapes and rejections of LabelMe JSON files; each file is ``row`` 1 of itself.

    LabelMe records no annotator, so ``annotator`` is required (else each file is rejected, ``no_annotator``).
    Polygons, rectangles, circles and masks become regions; lines, line strips and points have no area
    (``not_a_region``). Labels such as ``__ignore__`` are unknown unless the label map names a class for them.
    """
    files = sorted(p for p in path.glob("*.json") if p.is_file()) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise CrowdsegError("no such file" if not path.exists() else "no *.json files in this folder", file=str(path))
    out = Collector(path, spec, label_map)
    for file in files:
        try:
            doc = load_json(file)
        except CrowdsegError as e:
            out.reject("assignment", "bad_json", e.reason, row=e.where if isinstance(e.where, int) else 1, path=file)
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
            out.reject("assignment", "bad_row", "not a LabelMe file: no 'shapes' list", row=1, path=file)
            continue
        _file(out, file, doc, annotator)
    return out.tables()


def _file(out: Collector, file: Path, doc: dict[str, Any], annotator: str) -> None:
    ref = str(doc.get("imagePath") or "")
    if not annotator:
        out.reject("assignment", "no_annotator", "LabelMe records no annotator; set annotator in the source config",
                   row=1, photo_ref=ref, path=file)
        return
    size = (positive_int(doc.get("imageWidth")), positive_int(doc.get("imageHeight")))
    a = out.assignment(1, ref, annotator, seen=size, path=file)
    for i, shape in enumerate(doc["shapes"]):
        kind = str(shape.get("shape_type") or "polygon") if isinstance(shape, dict) else "?"
        try:
            parts = _parts(kind, shape)
        except (KeyError, TypeError, ValueError) as e:
            out.not_drawn(a, i, "bad_coordinates", f"{kind}: {e}")
            continue
        if parts is None:
            reason = "not_a_region" if kind in NO_AREA else "unsupported_shape"
            out.not_drawn(a, i, reason, f"a {kind} has no area" if reason == "not_a_region"
                          else f"shape_type {kind!r} is not one crowdseg reads")
            continue
        out.shape(a, i, str(shape.get("label", "")), parts)


def _parts(kind: str, shape: dict[str, Any]) -> list[Part] | None:
    """The regions of one LabelMe shape in crowdseg points; None when it has no area."""
    if kind in ("polygon", "rectangle", "circle"):
        pts = np.asarray(shape["points"], dtype=np.float64).reshape(-1, 2)
        if kind == "rectangle":
            (x0, y0), (x1, y1) = pts
            pts = box_corners(x0, y0, x1, y1)
        elif kind == "circle":
            (cx, cy), edge = pts
            r = math.dist((cx, cy), edge)
            pts = ellipse_ring(cx, cy, r, r)
        return [(edge_to_centre(pts), [])]
    if kind == "mask":
        return trace_mask(_mask(shape["mask"]), *(int(v) for v in shape["points"][0]))
    return None


def _mask(data: str) -> np.ndarray:
    """A LabelMe mask: a base64 PNG of the shape's box, placed at its first point (pixel indices)."""
    try:
        png = base64.b64decode(data, validate=True)
    except binascii.Error as e:
        raise ValueError(f"mask is not base64: {e}") from None
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("mask is not a PNG image")
    return mask

