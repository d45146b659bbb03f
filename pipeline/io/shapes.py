"""Shared parts of the annotation importers: building the assignments / shapes / rejections tables, label mapping,
and turning each tool's geometry (boxes, ellipses, masks) into crowdseg polygons.

crowdseg points have pixel centres at integers (pixel ``i`` spans ``i - 0.5 .. i + 0.5``). Most tools draw on a
canvas whose pixel edges are at integers (COCO, CVAT, LabelMe, Label Studio and Toloka alike), so their coordinates
become crowdseg points by ``value * scale - 0.5`` (see :func:`edge_to_centre`). Where only relative coordinates
are known, the seen image is 1x1: ``relative - 0.5``, which the merge stage scales to the photo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline.errors import CrowdsegError
from pipeline.io.manifest import read_text
from pipeline.spec import Spec
from pipeline.tables import REJECTION_COLUMNS, frame, rejection

ASSIGNMENT_COLUMNS = ["assignment", "photo_id", "annotator_id", "assignment_id", "golden", "file", "row", "n_shapes",
                      "seen_width", "seen_height"]
"""``seen_width``/``seen_height``: the image size the annotator worked on, 0 when it is the photo's own."""
SHAPE_COLUMNS = ["assignment", "photo_id", "annotator_id", "class_id", "label", "points", "holes", "row", "index"]

Ring = list[list[float]]
Part = tuple[Ring, list[Ring]]  # outer ring, holes
Tables = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
Sink = Callable[[list[tuple[Any, ...]]], object]
SPILL_ROWS = 20_000  # shape rows a streaming reader holds before handing them to its sink
ELLIPSE_VERTICES = 256  # a 1000 px radius strays 0.08 px from the true ellipse
RELATIVE = (1, 1)  # seen size of sources that give coordinates relative to the image


def compact(ring: Any) -> Any:
    """A ring of [x, y] number pairs as an (n, 2) float64 array, ~6x smaller than lists of floats, which keeps a
    whole crowd's shapes in memory; anything else unchanged, for merge to reject with its reason."""
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        return ring
    return points if points.ndim == 2 and points.shape[1] == 2 else ring


@dataclass
class Collector:
    """Rows of the three import tables for one source, with the label checks every format shares.

    ``assignment`` keys are ``<file name>:<row>`` (``#2``, ``#3``... when one row holds several assignments).
    """

    path: Path
    spec: Spec
    label_map: dict[str, str] | None = None
    sink: Sink | None = None  # takes shape rows off the collector as they pile up (``spill``)
    assignments: list[dict[str, Any]] = field(default_factory=list, init=False)
    shapes: list[tuple[Any, ...]] = field(default_factory=list, init=False)  # SHAPE_COLUMNS order: a crowd's worth
    rejected: list[dict[str, Any]] = field(default_factory=list, init=False)
    keys: set[str] = field(default_factory=set, init=False, repr=False)

    def assignment(self, row: int, photo_ref: str, annotator: str, *, assignment_id: str = "", golden: bool = False,
                   seen: tuple[float, float] = (0, 0), path: Path | None = None) -> dict[str, Any]:
        """Add one assignment (its ``photo_id`` is the raw image reference until photos are resolved)."""
        path = path or self.path
        key = base = f"{path.name}:{row}"
        n = 1
        while key in self.keys:
            n += 1
            key = f"{base}#{n}"
        self.keys.add(key)
        a = {"assignment": key, "photo_id": photo_ref, "annotator_id": annotator, "assignment_id": assignment_id,
             "golden": golden, "file": str(path), "row": row, "n_shapes": 0, "seen_width": seen[0],
             "seen_height": seen[1]}
        self.assignments.append(a)
        return a

    def shape(self, a: dict[str, Any], index: int, label: str, parts: list[Part], what: str = "") -> None:
        """Add one drawn shape (several parts share its index), or reject it when its label is not a class."""
        a["n_shapes"] += 1
        class_id = self.spec.class_id(label, self.label_map)
        if class_id is None or class_id == 0:
            why = "is not a class of spec" if class_id is None else "is background, which is never drawn in"
            self._reject_shape(a, "unknown_label", f"{what or f'shape {index}'}: label {label!r} {why} "
                               f"{self.spec.name!r}")
            return
        self.shapes += [(a["assignment"], a["photo_id"], a["annotator_id"], class_id, label, compact(points),
                         [compact(h) for h in holes], a["row"], index) for points, holes in parts]

    def not_drawn(self, a: dict[str, Any], index: int, reason: str, message: str, what: str = "") -> None:
        """Reject one shape of an assignment that cannot become a region."""
        a["n_shapes"] += 1
        self._reject_shape(a, reason, f"{what or f'shape {index}'}: {message}")

    def reject(self, item: str, reason: str, message: str, *, row: int | None = None, photo_ref: str = "",
               annotator: str = "", path: Path | None = None) -> None:
        """Reject an input that never became an assignment (or a shape outside any assignment)."""
        self.rejected.append(rejection("import", item, reason, message, file=str(path or self.path), row=row,
                                       photo_id=photo_ref, annotator_id=annotator))

    def _reject_shape(self, a: dict[str, Any], reason: str, message: str) -> None:
        self.rejected.append(rejection("import", "shape", reason, message, file=a["file"], row=a["row"],
                                       photo_id=a["photo_id"], annotator_id=a["annotator_id"]))

    def spill(self, at_least: int = 0) -> None:
        """Hand the shape rows collected so far to the sink once there are ``at_least`` of them. Call it between
        assignments only: the sink gets each assignment's rows together."""
        if self.sink is not None and len(self.shapes) >= at_least:
            self.sink(self.shapes)
            self.shapes = []

    def tables(self) -> Tables:
        """(assignments, shapes, rejections) with exactly the declared columns; with a sink, shapes is empty."""
        self.spill()
        return (frame(self.assignments, ASSIGNMENT_COLUMNS), frame(self.shapes, SHAPE_COLUMNS),
                frame(self.rejected, REJECTION_COLUMNS))


def positive_int(v: Any) -> int:
    """An image size field of a tool export: a positive whole number (720, 720.0 or "720"), else 0 (unknown)."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return 0
    try:
        f = float(v)
    except ValueError:
        return 0
    return int(f) if math.isfinite(f) and f == int(f) and f > 0 else 0


def load_json(path: Path) -> Any:
    """A JSON file, or a one-line error naming the line where it stops parsing."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise CrowdsegError(f"invalid JSON: {e.msg} at column {e.colno}", file=str(path), where=e.lineno) from None
    except RecursionError:
        raise CrowdsegError("invalid JSON: nested too deeply", file=str(path)) from None


def edge_to_centre(points: Any, scale: tuple[float, float] = (1.0, 1.0)) -> Ring:
    """Tool coordinates (pixel edges at integers, optionally in units of ``1/scale`` px) as crowdseg points."""
    return (np.asarray(points, dtype=np.float64).reshape(-1, 2) * scale - 0.5).tolist()


def box_corners(x0: float, y0: float, x1: float, y1: float, degrees: float = 0.0,
                pivot: tuple[float, float] | None = None) -> np.ndarray:
    """The 4 corners of a box, rotated clockwise on screen (y down) about ``pivot`` (default: its centre)."""
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    return rotate(corners, degrees, pivot or ((x0 + x1) / 2, (y0 + y1) / 2))


def ellipse_ring(cx: float, cy: float, rx: float, ry: float, degrees: float = 0.0) -> np.ndarray:
    """An ellipse as a polygon of :data:`ELLIPSE_VERTICES` points, rotated clockwise on screen about its centre."""
    t = np.linspace(0, 2 * math.pi, ELLIPSE_VERTICES, endpoint=False)
    ring = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
    return rotate(ring, degrees, (cx, cy))


def rotate(points: np.ndarray, degrees: float, pivot: tuple[float, float]) -> np.ndarray:
    """Points rotated clockwise on screen (y axis pointing down) about ``pivot``."""
    if not degrees:
        return points
    a = math.radians(degrees)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points - pivot) @ m.T + pivot


def trace_mask(mask: np.ndarray, x0: int = 0, y0: int = 0) -> list[Part]:
    """The regions of a 0/1 mask as outer rings with their holes, in crowdseg points offset by ``(x0, y0)``.

    Each pixel is traced (``cv2.findContours``, ``RETR_CCOMP``) as a 3x3 block, so rings run a third of a pixel
    inside the outer edges of boundary pixels and one-pixel-wide parts keep an area. Pixels that touch only at a
    corner are notched apart there, so no ring touches itself or its holes. Filling the rings (holes cut out)
    gives back exactly the mask's pixels.
    """
    m = np.asarray(mask) > 0
    up = np.kron(m, np.ones((3, 3), bool)).astype(np.uint8)
    # pixels that meet only at a corner: clear the upper one's corner sub-pixel at the meeting point
    ys, xs = np.nonzero(m[:-1, :-1] & m[1:, 1:] & ~m[:-1, 1:] & ~m[1:, :-1])  # (y, x) meets (y+1, x+1)
    up[3 * ys + 2, 3 * xs + 2] = 0
    ys, xs = np.nonzero(m[:-1, 1:] & m[1:, :-1] & ~m[:-1, :-1] & ~m[1:, 1:])  # (y, x+1) meets (y+1, x)
    up[3 * ys + 2, 3 * xs + 3] = 0
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0]
    rings = [((c[:, 0, :] - 1) / 3 + (x0, y0)).tolist() for c in contours]
    parts: list[Part] = []
    for i, (_, _, child, parent) in enumerate(links):
        if parent != -1:
            continue
        holes = []
        while child != -1:
            holes.append(rings[child])
            child = links[child][0]
        parts.append((rings[i], holes))
    return parts
