"""Perceptual hash and Hamming search: correctness against references, and the work the search does."""

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.stages.hamming import brute_pairs, mih_pairs, near_pairs, probe_masks
from pipeline.stages.phash import phash_file, phash_pair, to_hex
from tests.conftest import realdata, write_jpeg


def _planted(n: int, seed: int, radius: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    k = max(1, n // 50)
    src, dst = rng.integers(0, n, k), rng.integers(0, n, k)
    for s, d in zip(src, dst, strict=True):
        flip = sum(1 << int(b) for b in rng.choice(64, rng.integers(0, radius + 3), replace=False))
        h[d] = h[s] ^ np.uint64(flip)
    return h


def test_phash_matches_imagehash_and_its_mirror_needs_no_second_transform():
    img = Image.open(realdata("imagededup", "data", "mixed_images", "ukbench00120.jpg")).convert("L")
    ph, mirror = phash_pair(np.asarray(img))
    assert (imagehash.hex_to_hash(to_hex(ph)) - imagehash.phash(img)) <= 3  # area vs Lanczos resize
    assert mirror == phash_pair(np.asarray(ImageOps.mirror(img)))[0]
    assert to_hex(mirror) == str(imagehash.phash(ImageOps.mirror(img)))


def test_reduced_scale_decode_agrees_with_full_decode(tmp_path):
    for seed in range(5):
        path = write_jpeg(tmp_path / f"{seed}.jpg", seed, size=(1920, 1080))
        full = phash_pair(np.asarray(Image.open(path).convert("L")))[0]
        assert (phash_file(path)[0] ^ full).bit_count() <= 4


def test_phash_file_applies_exif_orientation(tmp_path):
    src = write_jpeg(tmp_path / "a.jpg", 1, size=(320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = Image.open(src).rotate(90, expand=True)  # stored so that orientation 6 displays it as src
    rotated.save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert (phash_file(tmp_path / "r.jpg")[0] ^ phash_file(src)[0]).bit_count() <= 4


@pytest.mark.parametrize("n", [300, 3000])
def test_mih_finds_exactly_the_brute_force_pairs(n):
    h = _planted(n, n)
    brute, mih = brute_pairs(h, 10), mih_pairs(h, 10)
    assert len(brute) > 0
    assert np.array_equal(brute.i, mih.i) and np.array_equal(brute.j, mih.j) and np.array_equal(brute.d, mih.d)
    assert (brute.i < brute.j).all()


def test_mih_cross_join_matches_brute_force():
    a, b = _planted(2000, 1), _planted(1500, 2)
    b[:100] = a[:100] ^ np.uint64(0b1011)
    brute, mih = brute_pairs(a, 6, b), mih_pairs(a, 6, b)
    assert len(brute) >= 100 and np.array_equal(brute.i, mih.i) and np.array_equal(brute.j, mih.j)


def test_mih_does_a_small_fraction_of_the_brute_force_work():
    h = _planted(30_000, 3)
    result = near_pairs(h, 10)
    all_pairs = len(h) * (len(h) - 1) // 2
    assert result.checked < all_pairs / 50  # brute force would verify every pair
    assert len(result) >= 400  # 600 planted, about 11 in 13 of them within the radius


def test_probe_masks_enumerate_every_pattern_once():
    masks = probe_masks(10, 2)
    assert len(masks) == 1 + 10 + 45 and len(set(masks.tolist())) == len(masks)
    assert max(int(m).bit_count() for m in masks) == 2
