"""Single-channel uint8 PNGs (label masks, agreement maps): written fast, small and byte-identical for equal arrays.

Rows are stored unfiltered and deflated with run-length matching only: label maps are long runs of one value, so this
is ~3x faster than PNG's default adaptive filtering with zlib level 1 and smaller than zlib level 6 on them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

PARAMS = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def encode_mask(array: np.ndarray) -> bytes:
    """The PNG bytes of a 2-D uint8 array (an 8-bit greyscale PNG with no metadata)."""
    if array.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {array.shape}")
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array, dtype=np.uint8), PARAMS)
    if not ok:
        raise ValueError(f"cannot encode a {array.shape} mask as PNG")
    return data.tobytes()


def write_mask(array: np.ndarray, path: Path) -> None:
    """Write ``encode_mask(array)`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mask(array))


def read_mask(path: str | Path) -> np.ndarray:
    """A single-channel 8-bit PNG as a 2-D uint8 array (values as stored: no palette or colour conversion)."""
    data = np.fromfile(path, np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"{path}: not a single-channel 8-bit PNG")
    return mask
