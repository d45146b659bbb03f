"""pipeline.io.png: mask PNGs other decoders read back exactly, and a reader that takes any 8-bit greyscale PNG."""

import io

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from pipeline.io.png import _unfiltered_grey, encode_mask, read_mask, write_mask


def label_map(h: int = 96, w: int = 64) -> np.ndarray:
    """A mask as merges make them: long runs of a few classes, and a noisy band."""
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), min(h, w) // 3, 1, -1)
    cv2.rectangle(mask, (w // 4, h // 3), (w // 2, h // 2), 8, -1)
    mask[-8:] = np.random.default_rng(0).integers(0, 9, (8, w), dtype=np.uint8)
    return mask


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_opencv_and_pillow_decode_the_bytes_back_exactly(mask):
    data = encode_mask(mask)
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).reshape(mask.shape), mask)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), mask)
    assert np.array_equal(_unfiltered_grey(data), mask)


def test_equal_arrays_give_equal_bytes_whatever_their_layout():
    mask = label_map()
    strided = np.asfortranarray(mask)
    assert encode_mask(mask) == encode_mask(strided) == encode_mask(mask.copy())
    assert len(encode_mask(mask)) < mask.size // 4


def test_the_reader_takes_its_own_files_on_the_fast_path(tmp_path):
    mask = label_map()
    write_mask(mask, tmp_path / "a" / "m.png")
    out = read_mask(tmp_path / "a" / "m.png")
    assert np.array_equal(out, mask) and out.dtype == np.uint8
    assert not out.flags.writeable  # a view of the inflated rows


@pytest.mark.parametrize("writer", ["pillow", "opencv"])
def test_other_writers_greyscale_pngs_are_read_through_opencv(tmp_path, writer):
    mask, path = label_map(), tmp_path / "m.png"
    if writer == "pillow":  # adaptive filters, zlib level 6
        Image.fromarray(mask).save(path, optimize=True)
    else:
        cv2.imwrite(str(path), mask)
    assert np.array_equal(read_mask(path), mask)


def test_colour_palette_empty_and_corrupt_files_are_refused_with_their_path(tmp_path):
    mask = label_map()
    cases = {"rgb.png": cv2.imencode(".png", np.dstack([mask] * 3))[1].tobytes(), "empty.png": b"",
             "text.png": b"not a png at all"}
    palette = io.BytesIO()
    Image.fromarray(mask).convert("P").save(palette, "PNG")
    cases["palette.png"] = palette.getvalue()
    data = bytearray(encode_mask(mask))
    data[-20] ^= 0xFF  # inside the pixel data: its CRC no longer matches
    cases["crc.png"] = bytes(data)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=name):
            read_mask(tmp_path / name)


def test_only_2d_masks_are_encoded():
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="cannot encode"):
        encode_mask(np.zeros((0, 5), np.uint8))
