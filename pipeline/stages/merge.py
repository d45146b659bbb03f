"""Merge: clean each annotator's polygons, rasterise them in spec draw order, and vote one mask per photo."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import Polygon, box

from pipeline.config import MergeConfig
from pipeline.spec import Spec
from pipeline.tables import REJECTION_COLUMNS, frame, keyed_hash, rejection

SHIFT = 4  # cv2 fixed-point bits: polygon vertices keep 1/16 px precision
Ring = np.ndarray  # (N, 2) float64, pixel coordinates with integer values at pixel centres
Poly = tuple[Ring, list[Ring]]  # exterior, holes


class ShapeRejected(ValueError):
    """A shape that cannot be used; ``code`` is the stable reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def clean_shape(points: list[list[float]], holes: list[list[list[float]]], width: int, height: int,
                min_area: float) -> tuple[list[Poly], list[str]]:
    """Repair a polygon (self-intersections, bad holes), clip it to the image and split it into simple parts.

    Returns the parts and the names of the repairs made; raises ShapeRejected when nothing usable is left.
    """
    ext = np.asarray(points, dtype=np.float64)
    if len(ext) < 3:
        raise ShapeRejected("too_few_points", f"a polygon needs 3 points, found {len(ext)}")
    if not np.isfinite(ext).all():
        raise ShapeRejected("bad_coordinates", "a coordinate is not a finite number")
    repairs: list[str] = []
    rings = [np.asarray(h, dtype=np.float64) for h in holes]
    good = [r for r in rings if len(r) >= 3 and np.isfinite(r).all()]
    if len(good) != len(rings):
        repairs.append("dropped_hole")
    geom: shapely.Geometry = Polygon(ext, good)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        repairs.append("made_valid")
    frame = box(-0.5, -0.5, width - 0.5, height - 0.5)
    if not frame.contains(geom):
        geom = geom.intersection(frame)
        repairs.append("clipped")
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and not p.is_empty]
    parts += [q for p in shapely.get_parts(geom) if p.geom_type == "MultiPolygon" for q in p.geoms]
    if not parts:
        code = "outside_image" if "clipped" in repairs else "degenerate"
        raise ShapeRejected(code, "nothing of the polygon lies inside the image" if code == "outside_image"
                            else "the polygon has no area")
    area = sum(p.area for p in parts)
    if area < min_area:
        raise ShapeRejected("too_small", f"area {area:.1f} px is below min_shape_area_px={min_area}")
    return [(np.asarray(p.exterior.coords), [np.asarray(r.coords) for r in p.interiors]) for p in parts], repairs


@dataclass
class Layer:
    """One annotator's region of one class, rasterised inside its bounding box."""

    y0: int
    x0: int
    mask: np.ndarray  # uint8 0/1

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.mask.shape[0]), slice(self.x0, self.x0 + self.mask.shape[1])


def rasterise(polys: list[Poly], height: int, width: int) -> Layer | None:
    """Fill polygons (holes cut out) into a bbox-local 0/1 mask; None when nothing falls inside the image."""
    pts = np.concatenate([e for e, _ in polys])
    x0, y0 = (max(0, math.floor(v)) for v in pts.min(axis=0))
    x1, y1 = min(width, math.ceil(pts[:, 0].max()) + 1), min(height, math.ceil(pts[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    origin = np.array([x0, y0], dtype=np.float64)
    for ext, holes in polys:
        rings = [np.round((r - origin) * (1 << SHIFT)).astype(np.int32) for r in (ext, *holes)]
        if holes:
            part = np.zeros_like(mask)
            cv2.fillPoly(part, rings, 1, lineType=cv2.LINE_8, shift=SHIFT)
            mask |= part
        else:
            cv2.fillPoly(mask, rings, 1, lineType=cv2.LINE_8, shift=SHIFT)
    return Layer(y0, x0, mask)


@dataclass
class AssignmentLayers:
    """One assignment: its key, annotator, and class id -> rasterised layer."""

    assignment: str
    annotator_id: str
    golden: bool
    layers: dict[int, Layer] = field(default_factory=dict)


def composite(layers: dict[int, Layer], draw_ids: list[int], height: int, width: int) -> np.ndarray:
    """Paint layers bottom to top in draw order into a class-index mask."""
    out = np.zeros((height, width), np.uint8)
    for c in draw_ids:
        if c in layers:
            lay = layers[c]
            out[lay.slices][lay.mask.astype(bool)] = c
    return out


def vote(crowd: list[AssignmentLayers], quorum: dict[int, float], draw_ids: list[int], height: int, width: int
         ) -> np.ndarray:
    """Per-class binary vote composited in draw order.

    A pixel belongs to class c's region when at least ``ceil(quorum[c] * n)`` of the n annotators drew c there;
    regions are then painted bottom to top, so a face part that passes its quorum sits over person and skin.
    """
    n = len(crowd)
    out = np.zeros((height, width), np.uint8)
    for c in draw_ids:
        lays = [a.layers[c] for a in crowd if c in a.layers]
        need = max(1, math.ceil(quorum[c] * n - 1e-9))
        if len(lays) < need:
            continue
        y0, x0 = min(la.y0 for la in lays), min(la.x0 for la in lays)
        y1 = max(la.y0 + la.mask.shape[0] for la in lays)
        x1 = max(la.x0 + la.mask.shape[1] for la in lays)
        counts = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for la in lays:
            counts[la.y0 - y0: la.y0 - y0 + la.mask.shape[0], la.x0 - x0: la.x0 - x0 + la.mask.shape[1]] += la.mask
        out[y0:y1, x0:x1][counts >= need] = c
    return out


def class_ious(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class IoU of two index masks; NaN where the class is in neither."""
    cm = np.bincount(pred.ravel().astype(np.int64) * n_classes + ref.ravel(), minlength=n_classes**2)
    cm = cm.reshape(n_classes, n_classes)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


@dataclass
class PhotoMerge:
    """The merged mask of one photo and how the annotators agreed with it."""

    mask: np.ndarray
    source: str  # "vote" or "golden"
    per_assignment: list[dict[str, Any]]
    unanimous: float


def merge_photo(assignments: list[AssignmentLayers], spec: Spec, quorum: dict[int, float], height: int, width: int,
                use_golden: bool = True) -> PhotoMerge:
    """Vote the crowd's layers into one mask (or take the golden answer) and score every assignment against it."""
    draw = spec.draw_ids
    crowd = [a for a in assignments if not a.golden]
    gold = [a for a in assignments if a.golden]
    if use_golden and gold:
        mask, source = composite(gold[0].layers, draw, height, width), "golden"
    else:
        mask, source = vote(crowd, quorum, draw, height, width), "vote"
    n_classes = len(spec.classes)
    rows, same = [], None
    for a in assignments:
        own = composite(a.layers, draw, height, width)
        ious = class_ious(own, mask, n_classes)
        fg = ious[1:]
        rows.append({"assignment": a.assignment, "annotator_id": a.annotator_id, "golden": a.golden,
                     "mean_iou": float(np.nanmean(fg)) if np.isfinite(fg).any() else 1.0,
                     **{f"iou_{c.name}": float(ious[c.id]) for c in spec.classes[1:]}})
        if not a.golden:
            same = (own == mask) if same is None else same & (own == mask)
    unanimous = float(same.mean()) if same is not None else 1.0
    return PhotoMerge(mask, source, rows, unanimous)


def class_quorum(spec: Spec, overrides: dict[str, float]) -> dict[int, float]:
    """Per-class quorum: the spec's default, overridden by the config's ``merge.quorum``."""
    unknown = sorted(set(overrides) - set(spec.names[1:]))
    if unknown:
        raise ValueError(f"merge.quorum: {unknown[0]!r} is not a drawable class of spec {spec.name!r}")
    return {c.id: overrides.get(c.name, c.quorum) for c in spec.classes[1:]}


def assignment_layers(shapes: list[dict[str, Any]], height: int, width: int, min_area: float
                      ) -> tuple[dict[int, Layer], list[dict[str, Any]], list[dict[str, Any]]]:
    """Rasterise one assignment's shapes per class; also the shapes rejected and the repairs made."""
    by_class: dict[int, list[Poly]] = {}
    rejected, repairs = [], []
    for s in shapes:
        try:
            polys, fixed = clean_shape(s["points"], s["holes"], width, height, min_area)
        except ShapeRejected as e:
            rejected.append({**_where(s), "reason": e.code, "message": f"shape {s['index']} ({s['label']}): {e}"})
            continue
        repairs += [{**_where(s), "repair": r} for r in fixed]
        by_class.setdefault(int(s["class_id"]), []).extend(polys)
    layers = {c: lay for c, polys in by_class.items() if (lay := rasterise(polys, height, width)) is not None}
    return layers, rejected, repairs


def _where(s: dict[str, Any]) -> dict[str, Any]:
    return {"assignment": s["assignment"], "photo_id": s["photo_id"], "annotator_id": s["annotator_id"],
            "row": s["row"], "index": s["index"], "label": s["label"]}


@dataclass
class MergeResult:
    """Tables produced by merging a batch of photos; masks are written to disk, not held here."""

    photos: pd.DataFrame
    assignments: pd.DataFrame
    rejections: pd.DataFrame
    repairs: pd.DataFrame


def merge_batch(photos: pd.DataFrame, assignments: pd.DataFrame, shapes: pd.DataFrame, spec: Spec,
                cfg: MergeConfig, mask_dir: Path) -> MergeResult:
    """Merge every photo of a batch and write its mask to ``mask_dir/<photo key>.png``.

    ``assignments`` and ``shapes`` hold only rows of these photos. A photo with fewer than
    ``cfg.min_annotators`` crowd assignments and no golden answer is held back, and so are its assignments.
    """
    quorum = class_quorum(spec, cfg.quorum)
    shapes_by = {k: g.to_dict("records") for k, g in shapes.groupby("assignment", sort=False)}
    assign_by = {k: g for k, g in assignments.groupby("photo_id", sort=False)}
    photo_rows, assign_rows, rejected, repairs = [], [], [], []
    for p in photos.itertuples(index=False):
        todo = assign_by.get(p.photo_id, assignments.iloc[:0]).sort_values("assignment")
        n_crowd = int((~todo["golden"]).sum())
        has_gold = cfg.use_golden and bool(todo["golden"].any())
        if n_crowd < cfg.min_annotators and not has_gold:
            rejected.append(rejection("merge", "photo", "too_few_annotators",
                                      f"{n_crowd} assignment(s), merge.min_annotators={cfg.min_annotators}",
                                      file=p.manifest, row=p.row, photo_id=p.photo_id))
            rejected += [rejection("merge", "assignment", "photo_held_back", "its photo was held back for "
                                   "re-annotation", file=a.file, row=a.row, photo_id=a.photo_id,
                                   annotator_id=a.annotator_id) for a in todo.itertuples(index=False)]
            continue
        layers = []
        for a in todo.itertuples(index=False):
            lay, bad, fixed = assignment_layers(shapes_by.get(a.assignment, []), p.height, p.width,
                                                cfg.min_shape_area_px)
            layers.append(AssignmentLayers(a.assignment, a.annotator_id, bool(a.golden), lay))
            rejected += [rejection("merge", "shape", b["reason"], b["message"], file=a.file, row=a.row,
                                   photo_id=p.photo_id, annotator_id=a.annotator_id) for b in bad]
            repairs += fixed
        result = merge_photo(layers, spec, quorum, p.height, p.width, cfg.use_golden)
        mask_path = mask_dir / f"{work_key(p.photo_id)}.png"
        cv2.imwrite(str(mask_path), result.mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        counts = np.bincount(result.mask.ravel(), minlength=len(spec.classes))
        crowd_iou = [r["mean_iou"] for r in result.per_assignment if not r["golden"]]
        photo_rows.append({"photo_id": p.photo_id, "source": result.source, "n_assignments": n_crowd,
                           "n_golden": int(todo["golden"].sum()),
                           "mean_iou": float(np.mean(crowd_iou)) if crowd_iou else float("nan"),
                           "median_iou": float(np.median(crowd_iou)) if crowd_iou else float("nan"),
                           "unanimous": result.unanimous, "mask_path": str(mask_path),
                           **{f"px_{c.name}": int(counts[c.id]) for c in spec.classes}})
        assign_rows += [{"photo_id": p.photo_id, **r} for r in result.per_assignment]
    return MergeResult(pd.DataFrame(photo_rows), pd.DataFrame(assign_rows), frame(rejected, REJECTION_COLUMNS),
                       pd.DataFrame(repairs, columns=[*REPAIR_COLUMNS]))


REPAIR_COLUMNS = ["assignment", "photo_id", "annotator_id", "row", "index", "label", "repair"]


def work_key(photo_id: str) -> str:
    """A filesystem-safe name for a photo's files in the work directory."""
    return keyed_hash("work", photo_id, 24)
