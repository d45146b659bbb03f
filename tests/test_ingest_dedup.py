"""Ingest signals and duplicate detection."""

import io

import imagehash
import pandas as pd
import pytest
from PIL import Image, ImageOps

from pipeline.config import DedupConfig, IngestConfig
from pipeline.io.manifest import read_manifest
from pipeline.stages.dedup import find_duplicates, hashes_to_uint64, near_pairs
from pipeline.stages.ingest import ingest, photo_signals
from tests.conftest import realdata, write_jpeg

CFG = IngestConfig(min_side=32)


def _manifest(tmp_path, rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    lines = ["photo_id,user_id,path,submitted_at"] + [",".join(r) for r in rows]
    (tmp_path / "photos.csv").write_text("\n".join(lines) + "\n")
    return read_manifest(tmp_path / "photos.csv")[0]


def test_ingest_rejects_missing_corrupt_and_small_photos(tmp_path):
    write_jpeg(tmp_path / "ok.jpg", 1)
    data = (write_jpeg(tmp_path / "t.jpg", 2)).read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("hello")
    write_jpeg(tmp_path / "tiny.jpg", 3, size=(40, 20))
    photos = _manifest(tmp_path, [("a", "u", "ok.jpg", ""), ("b", "u", "trunc.jpg", ""), ("c", "u", "text.jpg", ""),
                                  ("d", "u", "tiny.jpg", ""), ("e", "u", "none.jpg", "")])
    kept, rejected = ingest(photos, CFG)
    assert kept["photo_id"].tolist() == ["a"]
    assert dict(zip(rejected["photo_id"], rejected["reason"], strict=True)) == {
        "b": "corrupt_image", "c": "not_an_image", "d": "too_small", "e": "missing_file"}
    assert rejected.set_index("photo_id").loc["d", "row"] == 5


def test_signals_follow_exif_orientation_and_sniff_the_format(tmp_path):
    src = write_jpeg(tmp_path / "a.jpg", 4, size=(160, 120))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    buf = io.BytesIO()
    Image.open(src).save(buf, "JPEG", exif=exif)
    sig = photo_signals(buf.getvalue(), CFG)
    assert (sig["width"], sig["height"], sig["orientation"]) == (120, 160, 6)
    png = io.BytesIO()
    Image.open(src).save(png, "PNG")
    assert photo_signals(png.getvalue(), CFG)["format"] == "PNG"  # content decides, not the file name


def test_decompression_bomb_guard(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (400, 300)).save(buf, "PNG")
    with pytest.raises(ValueError) as e:
        photo_signals(buf.getvalue(), IngestConfig(max_pixels=100_000))
    assert e.value.args[0] == "too_many_pixels"


def test_phash_matches_imagehash_golden_value():
    path = realdata("imagehash", "imagehash.png")
    sig = photo_signals(path.read_bytes(), CFG)
    # imagehash's own golden value is for the image as loaded; ours hashes the RGB-flattened photo
    assert sig["phash"] == str(imagehash.phash(Image.open(path).convert("RGB").convert("L")))
    assert (imagehash.hex_to_hash(sig["phash"]) - imagehash.hex_to_hash("ba8c84536bd3c366")) <= 4


def _photos(tmp_path, specs) -> pd.DataFrame:
    rows = []
    for pid, user, img, when in specs:
        img.save(tmp_path / f"{pid}.jpg", "JPEG", quality=92)
        rows.append((pid, user, f"{pid}.jpg", when))
    kept, rejected = ingest(_manifest(tmp_path, rows), CFG)
    assert rejected.empty
    return kept


def test_dedup_finds_exact_mirrored_and_resized_copies_and_keeps_the_best(tmp_path):
    base = Image.open(write_jpeg(tmp_path / "src.jpg", 5, size=(320, 240)))
    other = Image.open(write_jpeg(tmp_path / "src2.jpg", 6, size=(320, 240)))
    photos = _photos(tmp_path, [
        ("p1", "u1", base, "2024-01-02"),
        ("p2", "u1", base.resize((160, 120)), "2024-01-01"),
        ("p3", "u1", ImageOps.mirror(base), "2024-01-03"),
        ("p4", "u2", other, ""),
        ("p5", "u3", other.resize((200, 150)), ""),  # near copy under another account: not this stage's job
    ])
    (tmp_path / "p6.jpg").write_bytes((tmp_path / "p4.jpg").read_bytes())
    more, _ = ingest(_manifest(tmp_path, [("p6", "u9", "p6.jpg", "2024-02-01")]), CFG)
    found = find_duplicates(pd.concat([photos, more], ignore_index=True), DedupConfig())
    rows = {r.photo_id: (r.action, r.kept_photo_id, r.kind) for r in found.itertuples()}
    assert rows == {"p1": ("keep", "p1", ""), "p2": ("drop", "p1", "near"), "p3": ("drop", "p1", "mirrored"),
                    "p4": ("drop", "p6", "exact"), "p6": ("keep", "p6", "")}
    assert find_duplicates(photos, DedupConfig(mirror=False)).set_index("photo_id").index.tolist() == ["p1", "p2"]


def test_near_pairs_uses_the_mirrored_hash():
    ph = hashes_to_uint64(pd.Series(["ffff000000000000", "0000ffff00000000"]))
    mirror = hashes_to_uint64(pd.Series(["0000ffff00000000", "ffff000000000000"]))
    assert near_pairs(ph, None, 8) == []
    assert near_pairs(ph, mirror, 8) == [(0, 1, 0, True)]


def test_imagededup_flip_is_found_only_with_the_mirror_hash():
    folder = realdata("imagededup", "data", "mixed_images")
    sig = {p.stem: photo_signals(p.read_bytes(), CFG) for p in folder.glob("ukbench00120*.jpg")}
    a, flip = sig["ukbench00120"], sig["ukbench00120_hflip"]
    plain = (int(a["phash"], 16) ^ int(flip["phash"], 16)).bit_count()
    mirrored = (int(a["phash_mirror"], 16) ^ int(flip["phash"], 16)).bit_count()
    assert plain > 20 and mirrored <= 8
    resize = (int(a["phash"], 16) ^ int(sig["ukbench00120_resize"]["phash"], 16)).bit_count()
    assert resize <= 8
