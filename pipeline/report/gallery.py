"""The QA report's gallery: which photos to show, and their thumbnails with the merged and each annotator's mask."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pipeline.io.png import read_mask
from pipeline.spec import Spec
from pipeline.stages.ingest import to_rgb

Thumb = tuple[str, str]  # (caption, data URI)

FLAG_LEVELS = ("photo", "annotation")
FLAG_RANK = {"error": 0, "warning": 1}  # severities that put a photo in the gallery, worst first
ALPHA = 0.45  # opacity of a class colour over the photo
EDGE_ALPHA = 0.9  # opacity on region outlines, so small parts (eyes, brows) stand out
IGNORE_RGB = (128, 128, 128)  # pixels marked with the spec's ignore index
ANNOTATOR_SCALE = 0.6  # annotator thumbs are this share of `side`: the merged one is the large one
JPEG_QUALITY = 80


def flagged_photos(findings: pd.DataFrame, limit: int) -> list[str]:
    """Photo ids for the gallery: photos with at least one photo- or annotation-level finding of severity warning
    or error (``subject_id`` is the photo id), ordered by worst severity (error first), then by the number of such
    findings (most first), then by photo id; at most ``limit``."""
    f = findings[findings["level"].isin(FLAG_LEVELS) & findings["severity"].isin(FLAG_RANK)]
    ranked = (f.assign(photo_id=f["subject_id"].astype(str), rank=f["severity"].map(FLAG_RANK))
              .groupby("photo_id", sort=False).agg(worst=("rank", "min"), n=("rank", "size")).reset_index()
              .sort_values(["worst", "n", "photo_id"], ascending=[True, False, True], kind="stable"))
    return ranked["photo_id"].head(max(limit, 0)).tolist()


def gallery_thumbs(photo_path: str, mask_path: str, annotator_masks: Callable[[], dict[str, np.ndarray]],
                   spec: Spec, cache: Path, key: str, side: int = 200) -> list[Thumb]:
    """The photo with the merged mask overlaid (caption ``merged``, at most ``side`` px), then one smaller thumb
    per annotator (caption = annotator id, sorted) with that annotator's mask overlaid, as JPEG data URIs.

    Cached in ``cache`` under a file named from ``key`` (the caller's hash of the photo, the masks and the code that
    draws them), ``side`` and the palette: on a hit nothing is decoded and ``annotator_masks`` is not called. Masks
    are class-index arrays in the oriented photo frame, at any size.
    """
    file = thumb_file(cache, key, spec, side)
    hit = _read_cache(file)
    if hit is not None:
        return hit
    colors, alpha = overlay_lut(spec)
    photo = oriented_thumbnail(photo_path, side)
    thumbs = [("merged", _overlay_uri(photo, read_mask(mask_path), colors, alpha))]
    small = photo.copy()
    small.thumbnail((max(1, round(side * ANNOTATOR_SCALE)),) * 2)
    thumbs += [(str(a), _overlay_uri(small, m, colors, alpha)) for a, m in sorted(annotator_masks().items())]
    _write_cache(file, thumbs)
    return thumbs


def thumb_file(cache: Path, key: str, spec: Spec, side: int = 200) -> Path:
    """Where ``gallery_thumbs`` caches the thumbnails of ``key``."""
    name = f"{side}:{spec.palette}:{spec.ignore_index}:{key}"
    return Path(cache) / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")


def oriented_thumbnail(path: str | Path, side: int) -> Image.Image:
    """The photo upright (EXIF orientation applied) as 8-bit RGB, at most ``side`` px.

    Like ``ingest.load_oriented``, but a JPEG is decoded at 1/2 to 1/8 scale when that still covers ``side``
    (2.5x faster on a FullHD photo).
    """
    with Image.open(path) as im:
        scale = side / max(im.size)
        im.draft("RGB", (math.ceil(im.width * scale), math.ceil(im.height * scale)))
        rgb = to_rgb(ImageOps.exif_transpose(im))
    rgb.thumbnail((side, side))
    return rgb


def overlay_lut(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """Colour (256 x 3) and opacity (256) per mask value: class colours except background; ignore in grey."""
    colors = np.zeros((256, 3), np.float32)
    alpha = np.zeros(256, np.float32)
    for c in spec.classes[1:]:
        colors[c.id], alpha[c.id] = c.color, ALPHA
    colors[spec.ignore_index], alpha[spec.ignore_index] = IGNORE_RGB, ALPHA
    return colors, alpha


def overlay(photo: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend the label colours over an H x W x 3 photo, outlines stronger; ``labels`` is sampled (nearest) to the
    photo's size."""
    h, w = photo.shape[:2]
    lh, lw = labels.shape
    rows = np.minimum(((np.arange(h) + 0.5) * lh / h).astype(np.intp), lh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * lw / w).astype(np.intp), lw - 1)
    small = np.asarray(labels, dtype=np.uint8)[np.ix_(rows, cols)]
    edge = np.zeros(small.shape, bool)
    across, down = small[:, 1:] != small[:, :-1], small[1:] != small[:-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:] |= down
    edge[:-1] |= down
    a = alpha[small]
    a = np.where(edge & (a > 0), np.float32(EDGE_ALPHA), a)[..., None]
    return (photo * (1 - a) + colors[small] * a + 0.5).astype(np.uint8)


def jpeg_uri(pixels: np.ndarray) -> str:
    """An RGB array as a JPEG data URI."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _overlay_uri(photo: Image.Image, labels: np.ndarray, colors: np.ndarray, alpha: np.ndarray) -> str:
    return jpeg_uri(overlay(np.asarray(photo, dtype=np.float32), labels, colors, alpha))


def _read_cache(file: Path) -> list[Thumb] | None:
    try:
        return [(str(c), str(u)) for c, u in json.loads(file.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return None


def _write_cache(file: Path, thumbs: list[Thumb]) -> None:
    """Write the cache entry atomically, so a crash or a concurrent writer never leaves half a file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=file.parent, suffix=".tmp", delete=False) as f:
        json.dump(thumbs, f, separators=(",", ":"))
    os.replace(f.name, file)
