"""Trusted masks: an external or derived sample carries one mask, used as it is instead of a vote.

Each mask is checked against its photo (same size, only values of its source's class map), mapped to the spec's
class ids and written like a merged mask, with an agreement map of full agreement, so that QA, split and export
treat it like any other photo's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.io.datasets import labelme_mask
from pipeline.spec import Spec
from pipeline.stages.ingest import Unusable
from pipeline.stages.merge import MergeResult, photo_row
from pipeline.tables import rejection

SOURCE = "trusted"  # the ``source`` of a trusted mask in merge tables (a vote's is "vote" or "golden")


def read_values(path: str | Path) -> np.ndarray:
    """A mask file's stored values as a 2-D array (palette indices for palette PNGs, never colours)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
                raise Unusable("mask_not_single_channel", f"the mask is {im.mode}, not a single-channel image of "
                               "class values")
            return np.asarray(im, dtype=np.uint8) if im.mode == "1" else np.asarray(im)  # bilevel: 0/1
    except Unusable:
        raise
    except FileNotFoundError:
        raise Unusable("missing_mask", "no such mask file") from None
    except Image.DecompressionBombError as e:
        raise Unusable("corrupt_mask", f"the mask is too large to read: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise Unusable("corrupt_mask", f"cannot read the mask: {e}") from None


def class_mask(values: np.ndarray, mapping: dict[str, int]) -> np.ndarray:
    """Stored mask values -> spec class ids (uint8); raises Unusable naming the values the map lacks."""
    found, counts = np.unique(values, return_counts=True)
    unknown = [(int(v), int(n)) for v, n in zip(found, counts, strict=True) if str(int(v)) not in mapping]
    if unknown:
        listed = ", ".join(f"{v} ({n} px)" for v, n in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise Unusable("mask_values_outside_class_map", f"values outside the class map: {listed}")
    table = np.zeros(int(found.max(initial=0)) + 1, np.uint8)
    for v in found.tolist():
        table[v] = mapping[str(v)]
    return table[values]


def load_trusted(mask_path: str, mapping: dict[str, int], height: int, width: int, spec: Spec) -> np.ndarray:
    """A sample's mask in spec class ids, checked against its photo's (oriented) size. A LabelMe file's polygons
    (labels in ``mapping``) are rasterised at the photo's size."""
    if mask_path.lower().endswith(".json"):
        return labelme_mask(Path(mask_path), spec, mapping, height, width)
    values = read_values(mask_path)
    if values.shape != (height, width):
        raise Unusable("mask_size_mismatch", f"the mask is {values.shape[1]}x{values.shape[0]}, its image "
                       f"{width}x{height}")
    return class_mask(values, mapping)


def trusted_batch(photos: pd.DataFrame, spec: Spec, out_dir: Path) -> MergeResult:
    """The merge tables of a batch of ingested samples with trusted masks (columns ``mask``, ``mask_values``); a
    mask that does not fit its photo rejects the photo, with the reason."""
    rows: list[dict[str, Any]] = []
    classes: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for p in photos.itertuples(index=False):
        try:
            mask = load_trusted(p.mask, json.loads(p.mask_values), int(p.height), int(p.width), spec)
        except Unusable as e:
            rejected.append(rejection("merge", "photo", e.code, f"{p.mask}: {e}", file=p.manifest, row=p.row,
                                      photo_id=p.photo_id))
            continue
        row = photo_row(p.photo_id, mask, np.full(mask.shape, 255, np.uint8), out_dir, spec, status="accepted",
                        reasons="", source=SOURCE, n_assignments=0, n_used=0, n_golden=0, n_swapped=0,
                        mean_iou=math.nan, median_iou=math.nan, unanimous=1.0)
        rows.append(row)
        classes += [{"photo_id": p.photo_id, "class": c.name, "pixels": row[f"px_{c.name}"], "drawn_by": 0,
                     "agreement": math.nan, "pairwise_iou": math.nan, "disputed": False, "gold_iou": math.nan}
                    for c in spec.classes[1:]]
    return MergeResult.of(spec, rows, [], [], classes, rejected, [])
