"""Ingest: every bad upload is rejected with a named reason; good ones of any mode come out as oriented RGB."""

import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import xxhash
from PIL import Image, ImageOps

from pipeline.build import faceless, kept_photos, with_faces
from pipeline.config import IngestConfig
from pipeline.io.manifest import read_manifest
from pipeline.stages.ingest import (
    Unusable,
    chroma,
    decode,
    detect_faces,
    face_signals,
    find_faces,
    ingest,
    jpeg_scale,
    photo_signals,
    shrink,
)
from pipeline.stages.phash import phash_pair
from tests.conftest import realdata, write_jpeg

CFG = IngestConfig(min_side=32)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no data behind it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _code(data: bytes, cfg: IngestConfig = CFG) -> str:
    with pytest.raises(Unusable) as e:
        photo_signals(data, cfg)
    return e.value.code


def test_bad_uploads_are_rejected_with_named_reasons(tmp_path):
    jpeg = write_jpeg(tmp_path / "a.jpg", 1).read_bytes()
    frames = [Image.new("RGB", (64, 64), (40 * i, 0, 0)) for i in range(3)]
    assert _code(jpeg[: len(jpeg) // 2]) == "corrupt_image"
    assert _code(b"") == "empty_file"
    assert _code(b"this is a text file named photo.jpg\n") == "not_an_image"
    assert _code(_huge_png_header(100_000, 100_000)) == "too_many_pixels"
    assert _code(_encode(frames[0], "GIF", save_all=True, append_images=frames[1:])) == "unsupported_format"
    gif_ok = IngestConfig(min_side=32, formats=["GIF"])
    assert _code(_encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), gif_ok) == "animated"
    assert _code(_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])) == "animated"
    assert _code(_encode(Image.new("RGB", (40, 20)), "PNG")) == "too_small"


@pytest.mark.parametrize("im,fmt,mode,pixel", [
    (Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", "CMYK", (255, 0, 0)),
    (Image.fromarray(np.full((48, 64), 65535, np.uint16)), "PNG", "I;16", (255, 255, 255)),
    (Image.fromarray(np.full((48, 64), 32896, np.uint16)), "PNG", "I;16", (128, 128, 128)),
    (Image.new("P", (64, 48), 3), "PNG", "P", (3, 3, 3)),
    (Image.new("RGBA", (64, 48), (10, 20, 30, 0)), "PNG", "RGBA", (10, 20, 30)),
    (Image.new("LA", (64, 48), (90, 255)), "PNG", "LA", (90, 90, 90)),
    (Image.new("RGB", (64, 48), (200, 40, 40)), "WEBP", "RGB", None),
    (Image.new("RGB", (64, 48), (200, 40, 40)), "HEIF", "RGB", None),
])
def test_every_accepted_mode_and_format_becomes_8bit_rgb(im, fmt, mode, pixel):
    if im.mode == "P":
        im.putpalette([v for i in range(256) for v in (i, i, i)])
    sig = photo_signals(_encode(im, fmt, **({"lossless": True} if fmt == "WEBP" else {})), CFG)
    assert (sig["format"], sig["mode"], sig["width"], sig["height"]) == (fmt, mode, 64, 48)
    if pixel is not None:
        rgb = np.asarray(decode(_encode(im, fmt), CFG)[0])
        assert np.abs(rgb[0, 0].astype(int) - np.array(pixel)).max() <= 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_oriented_photo_decodes_as_pillow_shows_it(tmp_path, orientation):
    src = write_jpeg(tmp_path / "a.jpg", 4, size=(160, 120))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.open(src), "JPEG", exif=exif)
    sig = photo_signals(data, CFG)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert (sig["width"], sig["height"], sig["orientation"]) == (*upright.size, orientation)
    assert (decode(data, CFG)[0] == np.asarray(upright)).all()  # OpenCV's decode, Pillow's pixels
    size = f"{upright.width}x{upright.height}:".encode()
    assert sig["pixel_hash"] == xxhash.xxh3_128_hexdigest(size + upright.tobytes())
    assert abs(sig["brightness"] - float(np.asarray(upright.convert("L")).mean()) / 255.0) < 1 / 255


def test_format_comes_from_the_content_not_the_name(tmp_path):
    folder = realdata("imagededup", "data", "formats_images")
    for name in ("ukbench09380.bmp", "ukbench09380.png", "ukbench09380.svg"):
        assert photo_signals((folder / name).read_bytes(), CFG)["format"] == "JPEG"
    assert photo_signals((folder / "ukbench09380.webp").read_bytes(), CFG)["format"] == "WEBP"


def test_ingest_batch_rejects_missing_and_escaping_files_and_keeps_good_ones(tmp_path):
    write_jpeg(tmp_path / "ok.jpg", 1)
    outside = write_jpeg(tmp_path.parent / f"{tmp_path.name}_outside.jpg", 2)
    (tmp_path / "link.jpg").symlink_to(outside)
    (tmp_path / "photos.csv").write_text("photo_id,user_id,path\na,u,ok.jpg\nb,u,none.jpg\nc,u,link.jpg\n"
                                         "d,u,../x.jpg\n")
    manifest, bad_rows = read_manifest(tmp_path / "photos.csv")
    kept, rejected = ingest(manifest, CFG)
    assert kept["photo_id"].tolist() == ["a"]
    assert dict(zip(rejected["photo_id"], rejected["reason"], strict=True)) == {"b": "missing_file",
                                                                                "c": "outside_root"}
    assert rejected.set_index("photo_id").loc["c", "row"] == 4
    assert bad_rows["row"].tolist() == [5] and "escapes" in bad_rows["message"].iloc[0]


def test_signals_are_recorded(tmp_path):
    sig = photo_signals(write_jpeg(tmp_path / "a.jpg", 3, size=(320, 240)).read_bytes(), CFG)
    assert len(sig["sha256"]) == 64 and len(sig["pixel_hash"]) == 32 and len(sig["phash"]) == 16
    assert 0 <= sig["brightness"] <= 1 and sig["sharpness"] > 0
    blurred = Image.open(tmp_path / "a.jpg").resize((40, 30)).resize((320, 240))
    assert photo_signals(_encode(blurred, "JPEG"), CFG)["sharpness"] < sig["sharpness"] / 2


def test_chroma_tells_greyscale_from_colour_so_later_tables_can_drop_the_thumbnail(tmp_path):
    colour = photo_signals(write_jpeg(tmp_path / "a.jpg", 3, size=(320, 240)).read_bytes(), CFG)
    grey = photo_signals(_encode(Image.open(tmp_path / "a.jpg").convert("L"), "JPEG"), CFG)
    assert grey["chroma"] < 4 < colour["chroma"]
    thumb = np.frombuffer(bytes.fromhex(colour["thumb"]), np.uint8)
    assert colour["chroma"] == chroma(thumb)
    photos = pd.DataFrame([{"photo_id": "p1", **colour}, {"photo_id": "p2", **grey}])
    kept = kept_photos(photos, pd.DataFrame(columns=["photo_id", "action"]))
    assert "thumb" not in kept and kept["chroma"].tolist() == [colour["chroma"], grey["chroma"]]


def test_face_detector_finds_selfie_sized_faces_in_a_real_photo():
    path = realdata("labelme", "semantic_segmentation", "data_annotated", "2011_000006.jpg")
    three = Image.open(path).crop((170, 80, 370, 230)).resize((800, 600), Image.LANCZOS)  # faces ~23% of 600 px
    sig = face_signals(_encode(three, "JPEG", quality=95), CFG)
    assert sig["faces"] == 3
    x, y, w, h = sig["face_x"], sig["face_y"], sig["face_w"], sig["face_h"]
    assert x >= 0 and x + w <= 800 and y >= 0 and y + h <= 600
    small, scale = shrink(np.asarray(three.convert("L")), 640)
    centres = sorted((x + w / 2, y + h / 2) for x, y, w, h in detect_faces(small, scale))
    truth = [(172, 248), (366, 238), (602, 254)]  # the three faces of the original photo, times 4
    assert np.abs(np.array(centres) - truth).max() <= 16
    assert detect_faces(np.zeros((200, 200), np.uint8)) == []


def test_the_detector_runs_only_on_photos_whose_mask_has_no_face(tmp_path):
    path = realdata("labelme", "semantic_segmentation", "data_annotated", "2011_000006.jpg")
    three = Image.open(path).crop((170, 80, 370, 230)).resize((800, 600), Image.LANCZOS)
    three.save(tmp_path / "three.jpg", quality=95)
    photos = pd.DataFrame({"photo_id": ["a", "b", "c", "gone"], "manifest": str(tmp_path / "photos.csv"),
                           "path": [str(tmp_path / n) for n in ("three.jpg", "three.jpg", "three.jpg", "x.jpg")]})
    merged = pd.DataFrame({"photo_id": ["a", "b"], "face_width_px": [120.0, float("nan")]})  # c: no mask at all
    look = faceless(photos, merged)
    assert look["photo_id"].tolist() == ["b", "c", "gone"]
    found = find_faces(look, CFG)
    assert found["faces"].tolist() == [3, 3, 0]  # a photo gone since ingest reads as no face
    table = with_faces(photos, found).set_index("photo_id")
    assert table.loc["a", "faces"] == 0 and table.loc["b", "face_w"] == found["face_w"].iloc[0] > 0


def test_corrupt_file_of_imagededup_is_rejected():
    folder = realdata("imagededup", "data", "mixed_images")
    assert _code((folder / "ukbench09268_corrupt.jpg").read_bytes()) in ("not_an_image", "corrupt_image")
    assert pd.notna(photo_signals((folder / "ukbench09268.jpg").read_bytes(), CFG)["phash"])


@pytest.mark.parametrize(("size", "side", "scale"), [((1920, 1080), 640, 2), ((1080, 1920), 640, 2),
                                                     ((4032, 3024), 640, 4), ((5200, 3900), 640, 8),
                                                     ((1279, 960), 640, 1), ((960, 720), 640, 1)])
def test_jpeg_scale_keeps_the_longer_side_at_least_side(size, side, scale):
    assert jpeg_scale(*size, side) == scale
    assert max(size) // scale >= side and (scale == 8 or max(size) // (2 * scale) < side)


@pytest.mark.parametrize("orientation", [1, 6])
def test_large_jpeg_signals_come_from_a_reduced_decode_close_to_the_full_one(orientation):
    path = realdata("labelme", "semantic_segmentation", "data_annotated", "2011_000006.jpg")
    big = Image.open(path).crop((170, 80, 370, 230)).resize((1601, 1201), Image.LANCZOS)  # faces ~23% of 1201 px
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = big.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else big  # 6: shown turned clockwise
    data = _encode(stored, "JPEG", quality=95, exif=exif)
    reduced, full = decode(data, CFG, 640), decode(data, CFG)
    upright = (1601, 1201)
    assert (reduced.scale, full.scale) == (2, 1) and (reduced.width, reduced.height) == upright
    assert reduced.pixels.shape[1::-1] == (-(-upright[0] // 2), -(-upright[1] // 2))
    assert full.pixels.shape[1::-1] == upright and (full.width, full.height) == upright
    sig = photo_signals(data, CFG)
    assert (sig["width"], sig["height"]) == upright
    grey = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    assert abs(sig["brightness"] - grey.mean() / 255.0) < 1 / 255
    small, _ = shrink(grey, 640)
    assert (int(sig["phash"], 16) ^ phash_pair(small)[0]).bit_count() <= 4
    faces = face_signals(data, CFG)
    assert faces["faces"] == 3
    x, y, w, h = faces["face_x"], faces["face_y"], faces["face_w"], faces["face_h"]
    truth = np.array([(172, 248), (366, 238), (602, 254)]) * 2  # as in the 800x600 test, in full-size pixels
    assert np.abs(truth - (x + w / 2, y + h / 2)).max(axis=1).min() <= 32 and w > 0.15 * min(upright)


def test_a_large_photo_measures_as_sharp_in_any_format():
    path = realdata("labelme", "semantic_segmentation", "data_annotated", "2011_000006.jpg")
    big = Image.open(path).resize((1600, 1200), Image.LANCZOS)
    jpeg = _encode(big, "JPEG", quality=100)
    twin = _encode(Image.open(io.BytesIO(jpeg)), "PNG")  # the JPEG's own pixels, losslessly
    a, b = photo_signals(jpeg, CFG), photo_signals(twin, CFG)
    assert decode(jpeg, CFG, 640).scale == 2 and decode(twin, CFG, 640).scale == 1
    assert abs(a["sharpness"] / b["sharpness"] - 1) < 0.01 and abs(a["brightness"] - b["brightness"]) < 1e-3
    assert (int(a["phash"], 16) ^ int(b["phash"], 16)).bit_count() <= 2
