"""Read a COCO instances JSON file: one assignment per image (and annotator, when annotations name one)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from pipeline.errors import CrowdsegError
from pipeline.io.shapes import (
    Collector,
    Part,
    Tables,
    box_corners,
    edge_to_centre,
    load_json,
    positive_int,
    trace_mask,
)
from pipeline.spec import Spec


def read_coco(path: Path, spec: Spec, label_map: dict[str, str], annotator: str) -> Tables:
    """Assignments, shapes and rejections of a COCO file; ``row`` is the image's element number in ``images``.

    The annotator is ``annotator`` when given, else an ``annotator_id``/``annotator`` key of each annotation (or of
    its ``attributes``). Polygons (several lists = one shape in parts) and RLE (``counts`` list or compressed
    string), traced to rings, become regions; an annotation with only a ``bbox`` becomes its box. An image without
    annotations is rejected as ``not_annotated``: COCO files list every image, done or not.
    """
    data = load_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                         "categories")):
        raise CrowdsegError("expected a COCO object with 'images', 'annotations' and 'categories' lists",
                            file=str(path))
    categories = {c["id"]: str(c.get("name", "")) for c in data["categories"] if isinstance(c, dict)
                  and _is_id(c.get("id"))}
    rows = {img["id"]: row for row, img in enumerate(data["images"], start=1) if isinstance(img, dict)
            and _is_id(img.get("id"))}
    out = Collector(path, spec, label_map)
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for k, ann in enumerate(data["annotations"], start=1):
        if not isinstance(ann, dict) or not _is_id(ann.get("image_id")) or ann["image_id"] not in rows:
            image = ann.get("image_id") if isinstance(ann, dict) else None
            out.reject("shape", "unknown_image", f"annotations element {k}: image_id {image!r} is not in images",
                       row=k)
            continue
        groups[rows[ann["image_id"]], annotator or _annotator(ann)].append(ann)
    by_row: dict[int, list[tuple[str, list[dict[str, Any]]]]] = defaultdict(list)
    for (row, who), anns in groups.items():
        by_row[row].append((who, anns))
    for row, img in enumerate(data["images"], start=1):
        _image(out, row, img if isinstance(img, dict) else {}, by_row.get(row, []), categories)
    return out.tables()


def _is_id(v: Any) -> bool:
    """Whether a COCO id can name an image or category (an integer or a string)."""
    return isinstance(v, int | str) and not isinstance(v, bool)


def _annotator(ann: dict[str, Any]) -> str:
    attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    for source in (ann, attrs):
        for key in ("annotator_id", "annotator"):
            if source.get(key) not in (None, ""):
                return str(source[key])
    return ""


def _image(out: Collector, row: int, img: dict[str, Any], groups: list[tuple[str, list[dict[str, Any]]]],
           categories: dict[Any, str]) -> None:
    ref = str(img.get("file_name", ""))
    if not groups:
        out.reject("assignment", "not_annotated", f"image {ref!r} has no annotations", row=row, photo_ref=ref)
        return
    size = (positive_int(img.get("width")), positive_int(img.get("height")))
    for who, anns in groups:
        if not who:
            out.reject("assignment", "no_annotator", f"{len(anns)} annotation(s) of image {ref!r} name no "
                       "annotator; set annotator in the source config", row=row, photo_ref=ref)
            continue
        a = out.assignment(row, ref, who, seen=size)
        for i, ann in enumerate(anns):
            what = f"shape {i} (annotation id {ann.get('id')})"
            if not _is_id(ann.get("category_id")) or ann["category_id"] not in categories:
                out.not_drawn(a, i, "unknown_label", f"category_id {ann.get('category_id')!r} is not in categories",
                              what)
                continue
            try:
                parts = _parts(ann, size)
            except (KeyError, TypeError, ValueError) as e:
                out.not_drawn(a, i, "bad_coordinates", str(e), what)
                continue
            out.shape(a, i, categories[ann["category_id"]], parts, what)


def _parts(ann: dict[str, Any], size: tuple[int, int]) -> list[Part]:
    """The regions of one annotation in crowdseg points."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        return trace_mask(_decode_rle(seg, size))
    if seg:
        for poly in seg:
            if len(poly) % 2:
                raise ValueError(f"a polygon has an odd number ({len(poly)}) of coordinates")
        return [(edge_to_centre(poly), []) for poly in seg]
    x, y, w, h = (float(v) for v in ann["bbox"])
    return [(edge_to_centre(box_corners(x, y, x + w, y + h)), [])]


def _decode_rle(seg: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """An RLE mask (uncompressed ``counts`` list or compressed string), which must have the image's size."""
    h, w = (int(v) for v in seg["size"])
    if size != (0, 0) and (w, h) != size:
        raise ValueError(f"RLE size {w}x{h} is not the image size {size[0]}x{size[1]}")
    counts = seg["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise ValueError(f"RLE counts cover {sum(counts)} pixels, its size {h * w}")
        rle = coco_mask.frPyObjects(seg, h, w)
        return coco_mask.decode(rle)
    rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    mask = coco_mask.decode(rle)
    if coco_mask.encode(np.asfortranarray(mask))["counts"] != rle["counts"]:  # pycocotools decodes junk silently
        raise ValueError("the compressed RLE string is not a valid encoding of a mask of its size")
    return mask
