"""Ingest: decode every photo once, check it, and record the signals later stages need."""

from __future__ import annotations

import hashlib
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import IngestConfig
from pipeline.tables import REJECTION_COLUMNS, frame, rejection

SIGNAL_COLUMNS = ["format", "width", "height", "orientation", "sha256", "pixel_hash", "phash", "phash_mirror",
                  "brightness"]


def load_oriented(path: str | Path) -> Image.Image:
    """Decode a photo with its EXIF orientation applied, as 8-bit RGB."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def photo_signals(data: bytes, cfg: IngestConfig) -> dict[str, Any]:
    """Signals of one encoded photo; raises ValueError with a reason code and message when it is unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(BytesIO(data))
            fmt = im.format or ""
            if im.width * im.height > cfg.max_pixels:
                raise ValueError("too_many_pixels", f"{im.width}x{im.height} exceeds max_pixels={cfg.max_pixels}")
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError("too_many_pixels", str(e)) from None
    except UnidentifiedImageError:
        raise ValueError("not_an_image", "the file is not a readable image") from None
    except (OSError, SyntaxError) as e:
        raise ValueError("corrupt_image", f"cannot decode: {e}") from None
    rgb = ImageOps.exif_transpose(im).convert("RGB")
    w, h = rgb.size
    if min(w, h) < cfg.min_side:
        raise ValueError("too_small", f"{w}x{h} has a side below min_side={cfg.min_side}")
    pixels = np.asarray(rgb)
    grey = rgb.convert("L")
    return {
        "format": fmt, "width": w, "height": h, "orientation": orientation,
        "sha256": hashlib.sha256(data).hexdigest(),
        "pixel_hash": hashlib.sha256(f"{w}x{h}".encode() + pixels.tobytes()).hexdigest(),
        "phash": str(imagehash.phash(grey)),
        "phash_mirror": str(imagehash.phash(ImageOps.mirror(grey))),
        "brightness": round(float(np.asarray(grey, dtype=np.float32).mean()) / 255.0, 4),
    }


def ingest(photos: pd.DataFrame, cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the signal columns to a batch of manifest rows; unreadable or unfit photos go to rejections."""
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for rec in photos.to_dict("records"):
        try:
            data = _read_inside(rec["path"])
            kept.append(rec | photo_signals(data, cfg))
        except ValueError as e:
            code, message = e.args if len(e.args) == 2 else ("unreadable", str(e))
            rejected.append(rejection("ingest", "photo", code, f"{rec['path']}: {message}",
                                      file=rec["manifest"], row=rec["row"], photo_id=rec["photo_id"]))
    return frame(kept, list(photos.columns) + SIGNAL_COLUMNS), frame(rejected, REJECTION_COLUMNS)


def _read_inside(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError("missing_file", "no such file") from None
    except OSError as e:
        raise ValueError("unreadable", e.strerror or str(e)) from None
