"""Anatomy: measure a spec's anatomy rules and class fragmentation on one merged class-index mask.

``measure`` returns one value per rule id (see the rule models in ``pipeline.spec``), ``components_<class>`` for each
class with ``max_components``, and ``face_width_px``; ``violations`` turns those values into findings. Pure and
deterministic; NaN where a value does not apply.

Definitions:
- A class is *present* when it covers at least its trace floor, max(4, min_area_px // 4) pixels; a rule is measured
  only when its classes are present (list-valued parameters skip absent members; NaN when none is left).
- A class's *counted regions* are its 8-connected components of at least the trace floor and ``COMPONENT_SHARE`` of
  its largest component, so rasterisation crumbs and merge slivers do not count; the largest always counts.
- The *silhouette* is the 8-connected region of non-background pixels (ignore_index is not a class) whose outer
  outline encloses the largest area, holes filled. The *face* classes are those named by the ``inside`` rules;
  ``face_width_px`` is the width of the bounding box of the face-class region (skin and face parts together) whose
  outline encloses the largest area, so a stray blob elsewhere does not widen it.
- Centroids are means of pixel coordinates; image y grows downward.

Speed (about 3 ms on a FullHD mask, one thread): the face classes are searched only inside the bounding box of all
face-class pixels; only the silhouette's outline (for ``inside``) is traced over the whole image, and only classes
outside the face (none in easyportrait) are labelled over it for ``max_components``, which costs a few ms more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import cv2
import numpy as np

from pipeline.spec import AboveRule, ClassDef, InsideRule, NearRule, Rule, SideRule, Spec, TouchesRule
from pipeline.stages.polygons import value_counts

TRACE_PX = 4  # a class or region smaller than this is a rasterisation crumb, whatever its min_area_px
COMPONENT_SHARE = 0.02  # a region smaller than this share of the class's largest one is a crumb, not a component
FACE_WIDTH = "face_width_px"
NAN = float("nan")

Box = tuple[int, int, int, int]  # x, y, width, height
Labels = tuple[np.ndarray, list[int]]  # a region's component labels, and the labels that count


class Violation(NamedTuple):
    """One broken rule on one mask."""

    rule: str  # rule id, or components_<class>
    value: float
    threshold: float
    message: str


@dataclass(frozen=True)
class Region:
    """One class's pixels: their bounding box in the image, the 0/1 bits inside it, area and centroid."""

    box: Box
    bits: np.ndarray  # uint8, box-sized
    area: int
    cx: float
    cy: float


def measure_columns(spec: Spec) -> list[str]:
    """The columns ``measure`` returns for this spec, in order."""
    return [*(r.id for r in spec.rules), *(f"components_{c.name}" for c in spec.classes if c.max_components),
            FACE_WIDTH]


def face_classes(spec: Spec) -> list[str]:
    """The classes named by the spec's ``inside`` rules, in order: the face box is theirs."""
    return list(dict.fromkeys(n for r in spec.rules if isinstance(r, InsideRule) for n in r.parts))


def trace_floor(c: ClassDef) -> int:
    """Fewer pixels than this are rasterisation traces: the class counts as absent."""
    return max(TRACE_PX, c.min_area_px // 4)


def measure(mask: np.ndarray, spec: Spec) -> dict[str, float]:
    """Every value of ``measure_columns(spec)`` on one class-index mask (H x W, uint8)."""
    out = dict.fromkeys(measure_columns(spec), NAN)
    named = {n for r in spec.rules for n in r.classes} | {c.name for c in spec.classes if c.max_components}
    if not named:
        return out
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    face = face_classes(spec)
    face_ids = [spec.by_name[n].id for n in face]
    search = _bounding_box(_select(mask, face_ids)) if face else None
    regions: dict[str, Region] = {}
    for name in named:
        c = spec.by_name[name]
        where = search if name in face else (0, 0, mask.shape[1], mask.shape[0])
        region = _region(mask, c.id, where) if where is not None else None
        if region is not None and region.area >= trace_floor(c):
            regions[name] = region
    face_box = _face_box(mask, face_ids, search) if search is not None else None
    face_width = NAN if face_box is None else float(face_box[2])
    labels: dict[str, Labels] = {}

    def components(name: str) -> Labels:
        if name not in labels:
            labels[name] = _components(regions[name], trace_floor(spec.by_name[name]))
        return labels[name]

    for rule in spec.rules:
        out[rule.id] = _measure_rule(rule, mask, spec, regions, components, face_width)
    for c in spec.classes:
        if c.max_components:
            out[f"components_{c.name}"] = float(len(components(c.name)[1])) if c.name in regions else 0.0
    out[FACE_WIDTH] = face_width
    return out


def _measure_rule(rule: Rule, mask: np.ndarray, spec: Spec, regions: dict[str, Region],
                  components: Callable[[str], Labels], face_width: float) -> float:
    """One rule's value, or NaN when the classes it needs are absent."""
    match rule:
        case InsideRule():
            parts = [regions[n] for n in rule.parts if n in regions]
            return _inside_share(mask, len(spec.classes), parts) if parts else NAN
        case TouchesRule():
            parts = [n for n in rule.parts if n in regions]
            if rule.part not in regions or not parts:
                return NAN
            return _touching_share(mask, spec.by_name[rule.part].id, [components(n) for n in parts],
                                   [regions[n] for n in parts], rule.max_gap_px + 1)
    if any(n not in regions for n in rule.classes):
        return NAN
    match rule:
        case AboveRule():
            return regions[rule.lower].cy - regions[rule.upper].cy
        case SideRule():
            return regions[rule.left].cx - regions[rule.right].cx
        case NearRule():
            gap = max(rule.max_gap_px, 0 if math.isnan(face_width) else round(rule.max_gap_face * face_width))
            return _near_share(regions[rule.part], regions[rule.to], gap)
    raise TypeError(f"unknown rule {rule!r}")


def violations(values: dict[str, float], spec: Spec) -> list[Violation]:
    """The rules and component limits that ``values`` (from ``measure``) break, in spec order; NaN never breaks."""
    found = []
    for rule in spec.rules:
        v = values.get(rule.id, NAN)
        if v is None or math.isnan(v):
            continue
        hit = _broken(rule, v)
        if hit is not None:
            found.append(Violation(rule.id, v, *hit))
    for c in spec.classes:
        v = values.get(f"components_{c.name}", NAN)
        if c.max_components and v is not None and not math.isnan(v) and v > c.max_components:
            found.append(Violation(f"components_{c.name}", v, c.max_components,
                                   f"{c.name} has {v:.0f} separate regions (at most {c.max_components} expected)"))
    return found


def _broken(rule: Rule, v: float) -> tuple[float, str] | None:
    """(threshold, message) when value ``v`` breaks ``rule``, else None."""
    match rule:
        case InsideRule() if v < rule.min_share:
            return rule.min_share, (f"only {v:.0%} of a face part's pixels lie inside the person's silhouette (at "
                                    f"least {rule.min_share:.0%} expected): it is drawn away from the body")
        case AboveRule() if v <= rule.min_gap_px:
            where = f"{-v:.0f} px below" if v < 0 else f"only {v:.0f} px above"
            return rule.min_gap_px, (f"{rule.upper}'s centre is {where} {rule.lower}'s ({rule.upper} should be above "
                                     f"{rule.lower}" + (f" by more than {rule.min_gap_px:g} px)" if rule.min_gap_px
                                                        else ")"))
        case NearRule() if v < rule.min_share:
            return rule.min_share, (f"only {v:.0%} of {rule.part} lies within or next to {rule.to} (at least "
                                    f"{rule.min_share:.0%} expected)")
        case SideRule() if v <= 0:
            return 0.0, (f"{rule.left} appears on the image's left of {rule.right} ({v:+.0f} px): the person's "
                         f"{rule.left.replace('_', ' ')} should be on the image's right (swapped labels or a mirrored "
                         f"photo)")
        case TouchesRule() if v < rule.min_share:
            return rule.min_share, (f"only {v:.0%} of the {' and '.join(rule.parts)} regions touch {rule.part} (at "
                                    f"least {rule.min_share:.0%} expected)")
    return None


# --- regions ----------------------------------------------------------------------------------------------------

@cache
def _kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _select(mask: np.ndarray, ids: list[int]) -> np.ndarray:
    """Non-zero where the mask holds one of ``ids`` (a range test when they are consecutive, which is faster)."""
    lo, hi = min(ids), max(ids)
    if hi - lo + 1 == len(set(ids)):
        return cv2.inRange(mask, lo, hi)
    lut = np.zeros(256, dtype=np.uint8)
    lut[ids] = 1
    return cv2.LUT(mask, lut)


def _bounding_box(bits: np.ndarray) -> Box | None:
    """The bounding box of the non-zero pixels, or None."""
    box = cv2.boundingRect(bits)
    return None if box[2] == 0 else box


def _crop(a: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return a[y:y + h, x:x + w]


def _region(mask: np.ndarray, class_id: int, where: Box) -> Region | None:
    """Class ``class_id``'s pixels, searched within box ``where``."""
    bits = (_crop(mask, where) == class_id).view(np.uint8)
    box = _bounding_box(bits)
    if box is None:
        return None
    bits = _crop(bits, box)
    m = cv2.moments(bits, binaryImage=True)
    x, y = where[0] + box[0], where[1] + box[1]
    return Region((x, y, box[2], box[3]), bits, int(m["m00"]), x + m["m10"] / m["m00"], y + m["m01"] / m["m00"])


def _components(region: Region, floor: int) -> Labels:
    """8-connected labels of the region's bits, and the labels that count as components, largest first: those of at
    least ``floor`` pixels and ``COMPONENT_SHARE`` of the largest; the largest always counts."""
    n, labels = cv2.connectedComponents(region.bits, connectivity=8)  # the stats variant is several times slower
    areas = value_counts(labels.astype(np.uint8) if n <= 256 else labels, n)[1:]
    least = max(floor, math.ceil(COMPONENT_SHARE * areas.max()))
    order = np.argsort(-areas, kind="stable")
    return labels, [int(i) + 1 for n, i in enumerate(order) if n == 0 or areas[i] >= least]


def _face_box(mask: np.ndarray, face_ids: list[int], search: Box) -> Box:
    """The bounding box of the face-class region with the largest outline (8-connected, holes filled)."""
    contours, _ = cv2.findContours(_select(_crop(mask, search), face_ids), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return search[0] + x, search[1] + y, w, h


# --- rules ------------------------------------------------------------------------------------------------------

def _inside_share(mask: np.ndarray, classes: int, parts: list[Region]) -> float:
    """The least share, over the parts, of a part's pixels inside the silhouette: the outer outline of the
    non-background region with the largest enclosed area, filled (so holes and whatever lies in them are inside)."""
    contours, _ = cv2.findContours(cv2.inRange(mask, 1, classes - 1), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    body = max(contours, key=cv2.contourArea)
    x0, y0 = min(p.box[0] for p in parts), min(p.box[1] for p in parts)
    x1, y1 = max(p.box[0] + p.box[2] for p in parts), max(p.box[1] + p.box[3] for p in parts)
    filled = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.drawContours(filled, [body], -1, 1, cv2.FILLED, offset=(-x0, -y0))
    return min(np.count_nonzero(_crop(filled, (p.box[0] - x0, p.box[1] - y0, *p.box[2:])) & p.bits) / p.area
               for p in parts)


def _near_share(part: Region, to: Region, gap: int) -> float:
    """The share of ``part``'s pixels within ``gap`` px of the convex hull of ``to``."""
    contours, _ = cv2.findContours(to.bits, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull = cv2.convexHull(np.concatenate(contours)) + np.array(to.box[:2], dtype=np.int32)
    x, y, w, h = part.box
    canvas = np.zeros((h + 2 * gap, w + 2 * gap), dtype=np.uint8)
    cv2.fillConvexPoly(canvas, hull - np.array([x - gap, y - gap], dtype=np.int32), 1)
    if gap:
        canvas = cv2.dilate(canvas, _kernel(gap))
    return int(np.count_nonzero(canvas[gap:gap + h, gap:gap + w] & part.bits)) / part.area


def _touching_share(mask: np.ndarray, touch_id: int, comps: list[Labels],
                    parts: list[Region], reach: int) -> float:
    """The share of the parts' counted components with a ``touch_id`` pixel within ``reach`` px."""
    hits = total = 0
    height, width = mask.shape
    for (labels, counted), p in zip(comps, parts, strict=True):
        x, y, w, h = p.box
        x0, y0 = max(0, x - reach), max(0, y - reach)
        near = (mask[y0:min(height, y + h + reach), x0:min(width, x + w + reach)] == touch_id).view(np.uint8)
        near = _crop(cv2.dilate(near, _kernel(reach)), (x - x0, y - y0, w, h))
        touched = set(np.unique(labels[near > 0]).tolist())
        hits += sum(i in touched for i in counted)
        total += len(counted)
    return hits / total
