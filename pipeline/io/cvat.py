"""Read a "CVAT for images 1.1" XML export: one assignment per ``<image>`` element."""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

import numpy as np

from pipeline.errors import CrowdsegError
from pipeline.io.manifest import read_text
from pipeline.io.shapes import Collector, Part, Tables, box_corners, edge_to_centre, ellipse_ring, trace_mask
from pipeline.spec import Spec

NO_AREA = {"polyline", "points", "skeleton", "cuboid", "tag"}


def read_cvat(path: Path, spec: Spec, label_map: dict[str, str], annotator: str) -> Tables:
    """Assignments, shapes and rejections of a CVAT for images XML file.

    The annotator is ``annotator`` when given, else the assignee (else owner) that ``<meta>`` names for the image's
    task, else for the job or file.
    Polygons, boxes (rotation kept), ellipses and masks become regions; polylines, points, skeletons, cuboids and
    tags have no area and are rejected (``not_a_region``), as are video ``<track>`` elements. An ``<image>``
    without shapes is rejected as ``not_annotated``: CVAT lists every image of a task, done or not.
    """
    root, lines = parse_xml(path)
    if root.tag != "annotations":
        raise CrowdsegError(f"expected a CVAT <annotations> root, found <{root.tag}>", file=str(path), where=1)
    tasks, whole = meta_annotators(root)
    out = Collector(path, spec, label_map)
    for el in root:
        if el.tag == "image":
            _image(out, el, lines[el], annotator or tasks.get(el.get("task_id", "")) or whole)
        elif el.tag == "track":
            out.reject("shape", "unsupported_shape", f"<track label={el.get('label', '')!r}> is a video track; "
                       "export the task as 'CVAT for images 1.1'", row=lines[el])
    return out.tables()


def parse_xml(path: Path) -> tuple[Element, dict[Element, int]]:
    """The element tree and each element's line; DTDs and entities are refused (no entity expansion attacks)."""
    builder = TreeBuilder()
    lines: dict[Element, int] = {}
    parser = expat.ParserCreate()

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[builder.start(tag, attrs)] = parser.CurrentLineNumber

    def refuse(*_: object) -> None:
        raise CrowdsegError("XML document type declarations are not allowed", file=str(path),
                            where=parser.CurrentLineNumber)

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(read_text(path), True)
    except expat.ExpatError as e:
        raise CrowdsegError(f"invalid XML: {expat.errors.messages[e.code]}", file=str(path), where=e.lineno) from None
    return builder.close(), lines


def meta_annotators(root: Element) -> tuple[dict[str, str], str]:
    """Who ``<meta>`` says did the work: per task id, and for the whole file (job, else first task, else project).

    Each scope names its assignee, else its owner.
    """
    def who(scope: Element | None) -> str:
        for tag in ("assignee", "owner"):
            el = scope.find(tag) if scope is not None else None
            name = "" if el is None else (el.findtext("username") or el.text or "").strip()
            if name:
                return name
        return ""

    tasks = {(t.findtext("id") or "").strip(): who(t) for t in root.iterfind("meta//task")}
    whole = who(root.find("meta/job")) or next((w for w in tasks.values() if w), "") or who(root.find("meta/project"))
    return tasks, whole


def _image(out: Collector, el: Element, row: int, annotator: str) -> None:
    ref = el.get("name", "")
    if not annotator:
        out.reject("assignment", "no_annotator", "the export names no assignee or owner; set annotator in the "
                   "source config", row=row, photo_ref=ref)
        return
    if len(el) == 0:
        out.reject("assignment", "not_annotated", f"image {ref!r} has no shapes", row=row, photo_ref=ref,
                   annotator=annotator)
        return
    a = out.assignment(row, ref, annotator, assignment_id=el.get("id", ""), seen=(_size(el, "width"),
                                                                                    _size(el, "height")))
    for i, shape in enumerate(el):
        try:
            parts = _parts(shape)
        except (TypeError, ValueError) as e:
            out.not_drawn(a, i, "bad_coordinates", f"<{shape.tag}>: {e}")
            continue
        if parts is None:
            reason = "not_a_region" if shape.tag in NO_AREA else "unsupported_shape"
            out.not_drawn(a, i, reason, f"<{shape.tag}> has no area" if reason == "not_a_region"
                          else f"<{shape.tag}> is not a CVAT shape crowdseg reads")
            continue
        out.shape(a, i, shape.get("label", ""), parts)


def _parts(el: Element) -> list[Part] | None:
    """The regions of one CVAT shape in crowdseg points; None when the element has no area."""
    if el.tag == "polygon":
        pairs = [p.split(",") for p in el.get("points", "").split(";") if p]
        return [(edge_to_centre([[float(x), float(y)] for x, y in pairs]), [])]
    if el.tag == "box":
        corners = box_corners(_num(el, "xtl"), _num(el, "ytl"), _num(el, "xbr"), _num(el, "ybr"), _num(el, "rotation"))
        return [(edge_to_centre(corners), [])]
    if el.tag == "ellipse":
        ring = ellipse_ring(_num(el, "cx"), _num(el, "cy"), _num(el, "rx"), _num(el, "ry"), _num(el, "rotation"))
        return [(edge_to_centre(ring), [])]
    if el.tag == "mask":
        return trace_mask(_mask(el), int(_num(el, "left")), int(_num(el, "top")))
    return None


def _num(el: Element, name: str) -> float:
    return float(el.get(name, 0))


def _size(el: Element, name: str) -> int:
    """An image dimension; 0 (the photo's own size) when absent or not a whole number."""
    value = el.get(name, "")
    return int(value) if value.isdigit() else 0


def _mask(el: Element) -> np.ndarray:
    """A CVAT mask: run lengths over its ``width`` x ``height`` box, row by row, starting with a run of 0s."""
    width, height = int(el.get("width", 0)), int(el.get("height", 0))
    runs = [int(v) for v in el.get("rle", "").replace(" ", "").split(",") if v]
    if sum(runs) != width * height or min(runs, default=0) < 0:
        raise ValueError(f"rle covers {sum(runs)} pixels, its box {width}x{height}")
    values = np.arange(len(runs)) % 2
    return np.repeat(values, runs).astype(np.uint8).reshape(height, width)
