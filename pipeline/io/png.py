"""Single-channel uint8 PNGs (label masks, agreement maps): written fast, small and byte-identical for equal arrays.

Rows are stored unfiltered and deflated with run-length matching only (zlib's ``Z_RLE``): label maps are long runs of
one value, so this is smaller than zlib level 6 on them. The deflate is zlib-ng's, ~4x faster than zlib's (and
OpenCV's PNG writer) on the same stream: 0.5 against 2.1 ms for a FullHD mask, at the same size. Reading takes a
fast path for such files (one inflate, no libpng) and hands any other PNG to OpenCV.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
from zlib_ng import zlib_ng

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY8 = (8, 0, 0, 0, 0)  # IHDR after the size: bit depth 8, greyscale, deflate, no filtering method, no interlace
LEVEL = 1  # Z_RLE ignores the level beyond 0 (stored); 1 says "fast"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib_ng.crc32(data, zlib_ng.crc32(tag)))


def encode_mask(array: np.ndarray) -> bytes:
    """The PNG bytes of a 2-D uint8 array (an 8-bit greyscale PNG with no metadata)."""
    if array.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {array.shape}")
    h, w = array.shape
    if not (h and w):
        raise ValueError(f"cannot encode a {array.shape} mask as PNG")
    rows = np.zeros((h, w + 1), np.uint8)  # each row starts with its filter type, 0: none
    rows[:, 1:] = array
    deflate = zlib_ng.compressobj(LEVEL, zlib_ng.DEFLATED, 15, 8, zlib_ng.Z_RLE)
    data = deflate.compress(rows) + deflate.flush()
    return (SIGNATURE + _chunk(b"IHDR", struct.pack(">II5B", w, h, *GREY8)) + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


def write_mask(array: np.ndarray, path: Path) -> None:
    """Write ``encode_mask(array)`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mask(array))


def read_mask(path: str | Path) -> np.ndarray:
    """A single-channel 8-bit PNG as a 2-D uint8 array (values as stored: no palette or colour conversion). The
    array of an ``encode_mask`` file is a read-only view of the inflated rows: copy it to change it."""
    return decode_mask(Path(path).read_bytes(), path)


def decode_mask(data: bytes, path: str | Path) -> np.ndarray:
    """``read_mask`` of the bytes of the file ``path`` (named in the error)."""
    mask = _unfiltered_grey(data)
    if mask is None:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
        if decoded is None or decoded.ndim != 2 or decoded.dtype != np.uint8:
            raise ValueError(f"{path}: not a single-channel 8-bit PNG")
        mask = decoded
    return mask


def _unfiltered_grey(data: bytes) -> np.ndarray | None:
    """The pixels of an 8-bit greyscale, non-interlaced PNG whose rows are all unfiltered (``encode_mask``'s), read
    with one inflate into a read-only view; None for any other file, or one with a bad checksum, for OpenCV to
    decode or refuse."""
    if not data.startswith(SIGNATURE):
        return None
    at, size, idat = len(SIGNATURE), None, []
    while at + 12 <= len(data):
        (n,), tag = struct.unpack_from(">I", data, at), data[at + 4: at + 8]
        body, end = data[at + 8: at + 8 + n], at + 12 + n
        if end > len(data) or struct.unpack_from(">I", data, end - 4)[0] != zlib_ng.crc32(body, zlib_ng.crc32(tag)):
            return None
        if tag == b"IHDR":
            if n != 13:
                return None
            w, h, *rest = struct.unpack(">II5B", body)
            if tuple(rest) != GREY8 or not (h and w):
                return None
            size = (h, w)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        elif not tag[0] & 0x20 or tag == b"PLTE":  # a critical chunk this reader does not know
            return None
        at = end
    else:
        return None
    if size is None:
        return None
    h, w = size
    inflate = zlib_ng.decompressobj()
    try:  # at most the rows' size: a stream that inflates to more is not this writer's
        raw = inflate.decompress(b"".join(idat), h * (w + 1) + 1)
    except zlib_ng.error:
        return None
    if len(raw) != h * (w + 1) or not inflate.eof:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(h, w + 1)
    if rows[:, 0].any():  # filtered rows: libpng undoes the filters
        return None
    return rows[:, 1:]
