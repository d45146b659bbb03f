"""Ingest: read and decode every photo exactly once, check it, and record the signals later stages need."""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd
import pillow_heif
import xxhash
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import IngestConfig
from pipeline.stages.phash import phash_pair, to_hex
from pipeline.tables import REJECTION_COLUMNS, frame, records, rejection

pillow_heif.register_heif_opener()

SIGNAL_COLUMNS = ["format", "mode", "width", "height", "orientation", "bytes", "sha256", "pixel_hash", "phash",
                  "phash_mirror", "thumb", "brightness", "sharpness", "chroma"]
FACE_COLUMNS = ["faces", "face_x", "face_y", "face_w", "face_h"]
"""The face detector's count and largest box. It runs only where the merged mask has no face (``find_faces``):
QA takes a face's width from the mask first, so elsewhere its answer would never be read."""
THUMB_SIDE = 8  # the colour thumbnail that confirms near-duplicate candidates
ANALYSIS_SIDE = 640  # sharpness is measured at this longer side, so its threshold does not depend on size
FACE_SIDE = 200  # faces are sought at this shorter side, so the cascade's 24-px window sets the smallest at 12%


class Unusable(ValueError):
    """A photo that cannot enter the dataset; ``code`` is the stable reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit and 32-bit greys are scaled, not clipped; alpha and palettes are flattened."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        scale = 257.0 if a.max(initial=0) > 255 else 1.0
        im = Image.fromarray(np.clip(np.round(a / scale), 0, 255).astype(np.uint8), "L")
    elif im.mode == "P":
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


_local = threading.local()


def face_detector() -> cv2.CascadeClassifier:
    """OpenCV's bundled frontal-face Haar cascade, one instance per thread (detection is not thread-safe)."""
    if not hasattr(_local, "faces"):
        _local.faces = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    return _local.faces


def shrink(image: np.ndarray, side: int, fit: Callable[[int, int], int] = max) -> tuple[np.ndarray, float]:
    """The image with its longer side (its shorter one with ``fit=min``) at most ``side`` pixels, and the scale."""
    h, w = image.shape[:2]
    s = min(1.0, side / fit(h, w))
    if s == 1.0:
        return image, 1.0
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA), s


def detect_faces(grey: np.ndarray, scale: float = 1.0) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (x, y, w, h), largest first, in full-size pixels when ``grey`` is the photo shrunk by ``scale``.

    Selfie faces are large: the search runs at FACE_SIDE in coarse steps, so boxes under 12% of the shorter side go
    unseen.
    """
    small, s = shrink(grey, FACE_SIDE, min)
    found = face_detector().detectMultiScale(cv2.equalizeHist(small), scaleFactor=1.25, minNeighbors=4)
    boxes = [tuple(round(v / (s * scale)) for v in box) for box in found]
    return sorted(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))


ORIENT = {2: lambda a: cv2.flip(a, 1), 3: lambda a: cv2.rotate(a, cv2.ROTATE_180), 4: lambda a: cv2.flip(a, 0),
          5: cv2.transpose, 6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
          7: lambda a: cv2.flip(cv2.transpose(a), -1), 8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE)}
"""EXIF orientation -> the array operation that displays it upright (what ``ImageOps.exif_transpose`` does)."""


class Decoded(NamedTuple):
    """One decoded upload: its upright 8-bit RGB pixels, at ``1 / scale`` of the photo's size."""

    pixels: np.ndarray
    format: str
    mode: str  # the file's own mode, before conversion to RGB
    orientation: int  # EXIF orientation, applied to the pixels
    width: int  # the upright photo's size in full-size pixels
    height: int
    scale: int  # 1, or libjpeg's DCT scaling denominator 2, 4 or 8


REDUCED = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
           8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
"""libjpeg's scaled decode by denominator; combined with IMREAD_COLOR_RGB it gives colour."""


def jpeg_scale(width: int, height: int, side: int) -> int:
    """The largest DCT scaling denominator (1, 2, 4 or 8) that keeps the longer side at least ``side`` pixels."""
    return next((f for f in (8, 4, 2) if max(width, height) >= f * side), 1)


def decode(data: bytes, cfg: IngestConfig, side: int = 0) -> Decoded:
    """Decode one upload to upright 8-bit RGB pixels; with ``side``, a JPEG decodes at a reduced scale (libjpeg
    scales in the DCT, skipping most of the work) whose longer side is still at least ``side`` pixels.

    Pillow reads the header and does the checks; an RGB or greyscale JPEG (nearly every upload) is then decoded by
    OpenCV straight into an array (the same libjpeg-turbo pixels, without Pillow's copy out of its own buffer).
    Raises Unusable for empty, unreadable, corrupt, animated, oversized or unsupported files.
    """
    if not data:
        raise Unusable("empty_file", "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(BytesIO(data))
            fmt = "JPEG" if im.format == "MPO" else (im.format or "")
            if fmt not in cfg.formats:
                raise Unusable("unsupported_format", f"{fmt or 'unknown'} is not an accepted format "
                               f"({', '.join(cfg.formats)})")
            if im.width * im.height > cfg.max_pixels:
                raise Unusable("too_many_pixels", f"{im.width}x{im.height} exceeds ingest.max_pixels="
                               f"{cfg.max_pixels}")
            if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":
                raise Unusable("animated", f"animated image with {im.n_frames} frames; a still photo is needed")
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            mode = im.mode
            if im.format == "JPEG" and mode in ("RGB", "L"):
                f = jpeg_scale(im.width, im.height, side) if side else 1
                flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION | REDUCED[f]
                pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
                if pixels is None or pixels.shape[:2] != (-(-im.height // f), -(-im.width // f)):
                    raise Unusable("corrupt_image", "cannot decode the JPEG data")
                w, h = (im.height, im.width) if orientation in (5, 6, 7, 8) else im.size
                pixels = np.ascontiguousarray(ORIENT.get(orientation, np.asarray)(pixels))
                return Decoded(pixels, fmt, mode, orientation, w, h, f)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Unusable("too_many_pixels", str(e)) from None
    except UnidentifiedImageError:
        raise Unusable("not_an_image", "the content is not a readable image") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, Unusable):
            raise
        raise Unusable("corrupt_image", f"cannot decode: {e}") from None
    ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of an upright photo
    return Decoded(np.asarray(to_rgb(im)), fmt, mode, orientation, im.width, im.height, 1)


def pixel_hash(pixels: np.ndarray) -> str:
    """xxh3-128 of the size and the decoded RGB bytes, read in place: equal pixels, equal hash.

    Ingest hashes its analysis decode, so a JPEG of 1280 px or more is hashed at its reduced scale: copies that
    differ only in metadata match, but its lossless re-encoding in another format does not (dedup then finds the two
    as near duplicates at distance 0).

    Not a cryptographic hash (sha256 took 3 ms per FullHD photo, this 0.3 ms). A crafted collision could only make
    a user's two photos look identical, dropping one as a duplicate of their own.
    """
    digest = xxhash.xxh3_128(f"{pixels.shape[1]}x{pixels.shape[0]}:".encode())
    digest.update(pixels)
    return digest.hexdigest()


def photo_signals(data: bytes, cfg: IngestConfig) -> dict[str, Any]:
    """Everything later stages need from one photo but its faces, from a single decode.

    A JPEG of 1280 px or more decodes at a reduced scale still covering ANALYSIS_SIDE (half as long for FullHD).
    The pHash and sharpness take ``reduced_grey`` shrunk to ANALYSIS_SIDE; the colour thumbnail averages every
    4th full-size pixel of every 4th row (a few thousand per cell), which costs a sixteenth of an area resize.
    """
    d = decode(data, cfg, ANALYSIS_SIDE)
    w, h, pixels = d.width, d.height, d.pixels
    if min(w, h) < cfg.min_side:
        raise Unusable("too_small", f"{w}x{h} has a side below ingest.min_side={cfg.min_side}")
    grey = reduced_grey(d)
    small, _ = shrink(grey, ANALYSIS_SIDE)
    ph, mirror = phash_pair(small)
    step = max(1, 4 // d.scale)
    sampled = np.ascontiguousarray(pixels[::step, ::step]) if min(h, w) >= 4 * THUMB_SIDE else pixels
    thumb = cv2.resize(sampled, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    return {
        "format": d.format, "mode": d.mode, "width": w, "height": h, "orientation": d.orientation,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "pixel_hash": pixel_hash(pixels),
        "phash": to_hex(ph), "phash_mirror": to_hex(mirror),
        "thumb": thumb.tobytes().hex(),
        "brightness": round(cv2.sumElems(grey)[0] / grey.size / 255.0, 4),
        "sharpness": round(float(cv2.meanStdDev(cv2.Laplacian(small, cv2.CV_16S))[1][0, 0]) ** 2, 2),
        "chroma": chroma(thumb),
    }


def reduced_grey(d: Decoded) -> np.ndarray:
    """The greyscale photo reduced by ``jpeg_scale``'s factor for ANALYSIS_SIDE, whatever its format: a JPEG's
    decode did it in the DCT; anything else (a PNG, a CMYK JPEG) is box-filtered here, which measures the same
    sharpness (within 0.1% on FullHD photos), so a lossless copy in another format does not look sharper."""
    grey = cv2.cvtColor(d.pixels, cv2.COLOR_RGB2GRAY)
    f = jpeg_scale(d.width, d.height, ANALYSIS_SIDE) // d.scale
    if f == 1:
        return grey
    h, w = grey.shape
    return cv2.resize(grey, (-(-w // f), -(-h // f)), interpolation=cv2.INTER_AREA)


def chroma(thumb: np.ndarray) -> float:
    """Mean |R-G| + |G-B| of a colour thumbnail's pixels: near 0 for a greyscale photo."""
    rgb = thumb.reshape(-1, 3).astype(np.float32)
    return float(np.abs(np.diff(rgb, axis=1)).sum(axis=1).mean())


def face_signals(data: bytes, cfg: IngestConfig) -> dict[str, int]:
    """FACE_COLUMNS of one photo: the detector on its oriented greyscale pixels at ANALYSIS_SIDE."""
    d = decode(data, cfg, ANALYSIS_SIDE)
    grey = reduced_grey(d)
    small, s = shrink(grey, ANALYSIS_SIDE)
    faces = detect_faces(small, s * grey.shape[1] / d.width)
    return dict(zip(FACE_COLUMNS, (len(faces), *(faces[0] if faces else (0, 0, 0, 0))), strict=True))


def find_faces(photos: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    """photo_id and FACE_COLUMNS for ingested photos (photo_id, path, manifest); all zeros for a photo that cannot
    be read again (ingest already read it: it changed since)."""
    rows = []
    for pid, path, manifest in zip(photos["photo_id"], photos["path"], photos["manifest"], strict=True):
        try:
            found = face_signals(read_photo(path, Path(manifest).parent), cfg)
        except Unusable:
            found = dict.fromkeys(FACE_COLUMNS, 0)
        rows.append({"photo_id": pid, **found})
    return pd.DataFrame(rows, columns=["photo_id", *FACE_COLUMNS])


def read_photo(path: str, root: Path) -> bytes:
    """The bytes of a photo that must live under ``root`` (symlinks included)."""
    p = Path(path)
    try:
        if not p.resolve().is_relative_to(root.resolve()):
            raise Unusable("outside_root", f"resolves to {p.resolve()}, outside the photo root {root}")
        return p.read_bytes()
    except FileNotFoundError:
        raise Unusable("missing_file", "no such file") from None
    except IsADirectoryError:
        raise Unusable("missing_file", "the path is a directory") from None
    except OSError as e:
        raise Unusable("unreadable", e.strerror or str(e)) from None


def ingest(photos: pd.DataFrame, cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the signal columns to a batch of manifest rows; unreadable or unfit photos go to rejections."""
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for rec in records(photos):
        try:
            data = read_photo(rec["path"], Path(rec["manifest"]).parent)
            kept.append(rec | photo_signals(data, cfg))
        except Unusable as e:
            rejected.append(rejection("ingest", "photo", e.code, f"{rec['path']}: {e}", file=rec["manifest"],
                                      row=rec["row"], photo_id=rec["photo_id"]))
    return frame(kept, list(photos.columns) + SIGNAL_COLUMNS), frame(rejected, REJECTION_COLUMNS)


def load_oriented(path: str | Path) -> Image.Image:
    """Decode a photo with its EXIF orientation applied, as 8-bit RGB."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(ImageOps.exif_transpose(im))
