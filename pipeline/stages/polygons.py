"""Polygon hygiene and rasterisation: one annotator's shapes become one bbox-local 0/1 layer per class; layers
painted into class-index masks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon, box

SHIFT = 4  # cv2 fixed-point bits: polygon vertices keep 1/16 px precision
MAX_VERTICES = 10_000  # rings are thinned to this before any geometry work, so a 10^6-point shape stays cheap
MAX_COORD = 1e7  # farther than this from the origin a coordinate is garbage, and GEOS loses precision on it
CALCHIST_PIXELS = 1 << 24  # cv2.calcHist counts in float32: exact up to this many pixels per call
Ring = np.ndarray  # (N, 2) float64, pixel coordinates with integer values at pixel centres
Poly = tuple[Ring, list[Ring]]  # exterior, holes


class ShapeRejected(ValueError):
    """A shape that cannot be used; ``code`` is the stable reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def thin(ring: np.ndarray, limit: int = MAX_VERTICES) -> np.ndarray:
    """At most ``limit`` vertices, taken evenly along the ring."""
    if len(ring) <= limit:
        return ring
    return ring[np.linspace(0, len(ring), limit, endpoint=False).astype(int)]


def clean_shape(points: list[list[float]], holes: list[list[list[float]]], width: int, height: int,
                min_area: float, scale: tuple[float, float] = (1.0, 1.0)) -> tuple[list[Poly], list[str]]:
    """Repair a polygon (huge rings, self-intersections, bad holes), scale it from the image the annotator saw,
    clip it to the photo and split it into simple parts.

    Returns the parts and the names of the repairs made; raises ShapeRejected when nothing usable is left.
    """
    try:
        ext = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        rings = [np.asarray(h, dtype=np.float64).reshape(-1, 2) for h in holes]
    except (TypeError, ValueError):
        raise ShapeRejected("bad_coordinates", "points are not [x, y] number pairs") from None
    if len(ext) < 3:
        raise ShapeRejected("too_few_points", f"a polygon needs 3 points, found {len(ext)}")
    if not np.isfinite(ext).all():
        raise ShapeRejected("bad_coordinates", "a coordinate is not a finite number")
    if np.abs(ext).max() > MAX_COORD:
        raise ShapeRejected("bad_coordinates", f"a coordinate is beyond +-{MAX_COORD:.0e} px")
    repairs: list[str] = []
    if len(ext) > MAX_VERTICES or any(len(r) > MAX_VERTICES for r in rings):
        ext, rings = thin(ext), [thin(r) for r in rings]
        repairs.append("thinned")
    if scale != (1.0, 1.0):
        ext, rings = _scaled(ext, scale), [_scaled(r, scale) for r in rings]
        repairs.append("scaled")
    good = [r for r in rings if len(r) >= 3 and np.isfinite(r).all()]
    if len(good) != len(rings):
        repairs.append("dropped_hole")
    try:
        geom: shapely.Geometry = Polygon(ext, good)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            repairs.append("made_valid")
        if not _inside(geom, width, height):
            geom = geom.intersection(_frame(width, height))
            repairs.append("clipped")
    except shapely.errors.GEOSException as e:  # e.g. a ring collapsed to a point that still has holes
        raise ShapeRejected("degenerate", f"the polygon cannot be repaired: {e}") from None
    parts = _polygons(geom)
    if not parts:
        code = "outside_image" if "clipped" in repairs else "degenerate"
        raise ShapeRejected(code, "nothing of the polygon lies inside the image" if code == "outside_image"
                            else "the polygon has no area")
    area = sum(p.area for p in parts)
    if area < min_area:
        raise ShapeRejected("too_small", f"area {area:.1f} px is below merge.min_shape_area_px={min_area}")
    hi = np.array([width - 0.5, height - 0.5])  # clipping leaves rounding errors of GEOS just outside the frame
    return [(np.clip(p.exterior.coords, -0.5, hi), [np.clip(r.coords, -0.5, hi) for r in p.interiors])
            for p in parts], repairs


def _frame(width: int, height: int) -> Polygon:
    """The photo's pixel area: pixel centres are integers, so it runs from -0.5 to size - 0.5."""
    return box(-0.5, -0.5, width - 0.5, height - 0.5)


def _inside(geom: shapely.Geometry, width: int, height: int) -> bool:
    """Whether the photo's pixel area contains the geometry (bounds strictly inside it answer without building it)."""
    x0, y0, x1, y1 = geom.bounds  # NaN when empty
    return (x0 > -0.5 and y0 > -0.5 and x1 < width - 0.5 and y1 < height - 0.5) or _frame(width, height).contains(geom)


def _polygons(geom: shapely.Geometry) -> list[Polygon]:
    """The non-empty polygons of a geometry, with multi-part geometries and collections opened (two levels)."""
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [q for p in shapely.get_parts(geom) for q in shapely.get_parts(p) if isinstance(q, Polygon)
            and not q.is_empty]


def _scaled(ring: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Map pixel-centre coordinates from a resized image to the photo (pixel edges scale, centres follow)."""
    return (ring + 0.5) * np.asarray(scale) - 0.5


@dataclass
class Layer:
    """One annotator's region of one class, rasterised inside its bounding box."""

    y0: int
    x0: int
    mask: np.ndarray  # uint8 0/1

    @cached_property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def within(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """This layer as a 0/1 array over the window (y0, x0, h, w), which must contain it."""
        out = np.zeros((h, w), np.uint8)
        out[self.y0 - y0: self.y1 - y0, self.x0 - x0: self.x1 - x0] = self.mask
        return out


def rasterise(polys: list[Poly], height: int, width: int) -> Layer | None:
    """Fill polygons (holes cut out) into a bbox-local 0/1 mask; None when nothing falls inside the image."""
    pts = np.concatenate([e for e, _ in polys])
    (lx, ly), (hx, hy) = pts.min(axis=0).tolist(), pts.max(axis=0).tolist()
    x0, y0 = max(0, math.floor(lx)), max(0, math.floor(ly))
    x1, y1 = min(width, math.ceil(hx) + 1), min(height, math.ceil(hy) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    origin = np.array([x0, y0], dtype=np.float64)
    for n, (ext, holes) in enumerate(polys):
        rings = [np.round((r - origin) * (1 << SHIFT)).astype(np.int32) for r in (ext, *holes)]
        if holes and n:  # holes cut only their own polygon: fill it apart (the first one fills a blank mask)
            part = np.zeros_like(mask)
            cv2.fillPoly(part, rings, 1, lineType=cv2.LINE_8, shift=SHIFT)
            mask |= part
        else:
            cv2.fillPoly(mask, rings, 1, lineType=cv2.LINE_8, shift=SHIFT)
    return Layer(y0, x0, mask) if mask.any() else None


@dataclass
class AssignmentLayers:
    """One assignment: its key, annotator, and class id -> rasterised layer."""

    assignment: str
    annotator_id: str
    golden: bool
    layers: dict[int, Layer] = field(default_factory=dict)

    def swapped(self, flip_lut: list[int]) -> AssignmentLayers:
        """The same work with left and right classes exchanged."""
        return AssignmentLayers(self.assignment, self.annotator_id, self.golden,
                                {flip_lut[c]: lay for c, lay in self.layers.items()})


def composite(layers: dict[int, Layer | None], draw_ids: list[int], height: int, width: int) -> np.ndarray:
    """Paint layers bottom to top in draw order into a class-index mask (missing or None layers paint nothing)."""
    top = paint_ranks(layers, draw_ids, np.zeros((height, width), np.uint8))
    if draw_ids == list(range(1, len(draw_ids) + 1)):  # draw positions are the class ids
        return top
    return lookup(np.array([0, *draw_ids], np.uint8), top)


def paint_ranks(layers: dict[int, Layer | None], draw_ids: list[int], out: np.ndarray, y0: int = 0, x0: int = 0
                ) -> np.ndarray:
    """Paint into ``out``, a zeroed window at (y0, x0) holding every layer, the 1-based draw position of each pixel's
    topmost layer (its class in ``composite``)."""
    blank = True
    for rank, c in enumerate(draw_ids, start=1):  # rising ranks: a later layer's pixel is the maximum
        lay = layers.get(c)
        if lay is None:
            continue
        view = out[lay.y0 - y0: lay.y1 - y0, lay.x0 - x0: lay.x1 - x0]
        if blank:  # nothing painted yet: the layer itself
            np.multiply(lay.mask, np.uint8(rank), out=view)
        else:  # a masked copy (np.copyto's where=) costs several times more
            np.maximum(view, lay.mask * np.uint8(rank), out=view)
        blank = False
    return out


def lookup(table: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``table[a]`` for an array of indices (with cv2.LUT, much faster, when ``a`` is uint8)."""
    if a.dtype != np.uint8 or not a.size:
        return table[a]
    full = np.zeros(256, table.dtype)  # np.pad would cost more than the lookup
    full[: len(table)] = table
    return cv2.LUT(a, full)


def value_counts(a: np.ndarray, n: int) -> np.ndarray:
    """How many elements of a non-negative integer array hold each value 0..n-1 (int64; n above its maximum).

    A uint8 array is counted by cv2.calcHist, a few times faster than np.bincount (on OpenCV 4.14, runs of one
    value do not slow it down: spreading them over extra bins, tried before, cost 30-70% more)."""
    if a.dtype != np.uint8 or n > 256:
        return np.bincount(a.ravel(), minlength=n)
    counts = np.zeros(256, np.int64)
    rows = max(1, CALCHIST_PIXELS // max(1, a.shape[1]))
    for i in range(0, a.shape[0], rows):
        counts += cv2.calcHist([a[i: i + rows]], [0], None, [256], [0, 256])[:, 0].astype(np.int64)
    return counts[:n]


def assignment_layers(shapes: list[dict[str, Any]], height: int, width: int, min_area: float,
                      scale: tuple[float, float] = (1.0, 1.0), sound: list[Poly | None] | None = None
                      ) -> tuple[dict[int, Layer], list[dict[str, Any]], list[dict[str, Any]]]:
    """Rasterise one assignment's shapes per class; also the shapes rejected and the repairs made.

    ``sound`` is ``sound_polygons`` of these shapes when the caller has it already (it checks many shapes at once).
    """
    by_class: dict[int, list[Poly]] = {}
    rejected, repairs = [], []
    if sound is None:
        sound = sound_polygons(shapes, width, height, min_area, [scale] * len(shapes))
    for s, poly in zip(shapes, sound, strict=True):
        if poly is not None:
            by_class.setdefault(int(s["class_id"]), []).append(poly)
            continue
        try:
            polys, fixed = clean_shape(s["points"], s["holes"], width, height, min_area, scale)
        except ShapeRejected as e:
            rejected.append({**_where(s), "reason": e.code, "message": f"shape {s['index']} ({s['label']}): {e}"})
            continue
        repairs += [{**_where(s), "repair": r} for r in fixed if r != "scaled"]
        by_class.setdefault(int(s["class_id"]), []).extend(polys)
    layers = {c: lay for c, polys in by_class.items() if (lay := rasterise(polys, height, width)) is not None}
    return layers, rejected, repairs


def sound_polygons(shapes: list[dict[str, Any]], width: int, height: int, min_area: float,
                   scales: list[tuple[float, float]]) -> list[Poly | None]:
    """Per shape, its rings scaled by its ``scales`` entry when ``clean_shape`` would return them unrepaired; else
    None.

    That is most shapes: rings of 3 to MAX_VERTICES finite points making a valid polygon strictly inside the photo
    with at least ``min_area`` px. They are checked together in shapely's vectorised functions, without a Python
    geometry object per shape; the others go through ``clean_shape``.
    """
    out: list[Poly | None] = [None] * len(shapes)
    polys: list[Poly] = []
    where = []
    for n, (s, scale) in enumerate(zip(shapes, scales, strict=True)):
        rings = [s["points"], *s["holes"]]
        if all(_plain(r) for r in rings):
            rings = rings if scale == (1.0, 1.0) else [_scaled(r, scale) for r in rings]
            polys.append((rings[0], rings[1:]))
            where.append(n)
    if not polys:
        return out
    rings = [r for ext, holes in polys for r in (ext, *holes)]
    ring_of = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    poly_of = np.repeat(np.arange(len(polys)), [1 + len(holes) for _, holes in polys])
    geoms = shapely.polygons(shapely.linearrings(np.concatenate(rings), indices=ring_of), indices=poly_of)
    bounds = shapely.bounds(geoms)
    sound = (shapely.is_valid(geoms) & (bounds[:, 0] > -0.5) & (bounds[:, 1] > -0.5) & (bounds[:, 2] < width - 0.5)
             & (bounds[:, 3] < height - 0.5) & (shapely.area(geoms) >= min_area))
    for k in np.flatnonzero(sound).tolist():
        out[where[k]] = polys[k]
    return out


def _plain(ring: Any) -> bool:
    """Whether a ring is a float64 (N, 2) array of 3 to MAX_VERTICES finite points."""
    return (isinstance(ring, np.ndarray) and ring.dtype == np.float64 and ring.ndim == 2 and ring.shape[1] == 2
            and 3 <= len(ring) <= MAX_VERTICES and bool(np.isfinite(ring).all()))


def _where(s: dict[str, Any]) -> dict[str, Any]:
    return {"assignment": s["assignment"], "photo_id": s["photo_id"], "annotator_id": s["annotator_id"],
            "row": s["row"], "index": s["index"], "label": s["label"]}
