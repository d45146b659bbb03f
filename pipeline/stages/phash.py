"""Perceptual hashing: a 64-bit DCT pHash and its mirror, from one small greyscale image.

The hash is imagehash's pHash (32x32 greyscale, unnormalised DCT-II, the 8x8 low band thresholded at its median),
computed with an area resize and two small matrix products. A horizontal mirror multiplies each DCT coefficient
of odd horizontal frequency by -1, so the mirrored photo's hash costs no second transform.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

SIDE = 32
BAND = 8


def _dct_rows(n: int = SIDE, k: int = BAND) -> np.ndarray:
    """The first k rows of the unnormalised DCT-II matrix (scipy.fftpack's scaling, as imagehash uses)."""
    i = np.arange(n)
    return 2.0 * np.cos(np.pi * np.arange(k)[:, None] * (2 * i[None, :] + 1) / (2 * n))


DCT = _dct_rows()
MIRROR_SIGN = np.where(np.arange(BAND) % 2 == 0, 1.0, -1.0)[None, :]
BIT_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def low_band(grey: np.ndarray) -> np.ndarray:
    """The 8x8 low-frequency DCT block of a greyscale image (any size, uint8 or float)."""
    small = cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float64)
    return DCT @ small @ DCT.T


def bits_to_int(bits: np.ndarray) -> int:
    """64 booleans, row-major, first one most significant (imagehash's hex order)."""
    return int((bits.ravel().astype(np.uint64) * BIT_WEIGHTS).sum(dtype=np.uint64))


def phash_pair(grey: np.ndarray) -> tuple[int, int]:
    """(pHash, pHash of the mirrored image) of a greyscale image, as 64-bit integers."""
    band = low_band(grey)
    mirrored = band * MIRROR_SIGN
    return bits_to_int(band > np.median(band)), bits_to_int(mirrored > np.median(mirrored))


def to_hex(h: int) -> str:
    return f"{h:016x}"


def draft_grey(path: str | Path) -> np.ndarray:
    """A photo's EXIF-oriented greyscale pixels, decoded at the smallest JPEG scale that still covers 64x64.

    Other formats decode in full.
    """
    with Image.open(path) as im:
        im.draft("L", (SIDE * 2, SIDE * 2))
        return np.asarray(ImageOps.exif_transpose(im).convert("L"))


def phash_file(path: str | Path) -> tuple[int, int]:
    """(pHash, mirrored pHash) of a photo file, using a reduced-scale JPEG decode."""
    return phash_pair(draft_grey(path))
