"""Export: metadata stripping, pseudonyms, COCO, derived views, extras, the dataset card and SHA256SUMS."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ExifTags, Image, ImageCms
from PIL.PngImagePlugin import PngInfo
from pycocotools import mask as mask_utils

from pipeline.config import load_config
from pipeline.errors import CrowdsegError
from pipeline.spec import Spec, load_spec
from pipeline.stages import card, export, views
from pipeline.stages.export import ExportOptions, UnsafeJpeg

SPEC = load_spec("easyportrait")
KEY = b"k" * 32
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="Jane Doe"/></rdf:RDF></x:xmpmeta>')
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def pixels(size: tuple[int, int] = (96, 64), seed: int = 0) -> np.ndarray:
    """An RGB image with blocks and noise, so that rotations and re-encodings are visible."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = rng.integers(0, 8, (h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 3] += np.uint8(200)
    img[h // 2:, w // 2:, 2] += np.uint8(150)
    return img


def camera_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "PhoneMaker", "Phone 12 of Jane"
    exif[ExifTags.Base.Orientation] = orientation
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 31.0, 12.5), "E", (13.0, 24.0, 1.5)
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.MakerNote] = b"serial 0042"
    return exif


def insert_after_soi(data: bytes, *segments: bytes) -> bytes:
    return data[:2] + b"".join(segments) + data[2:]


def segment(code: int, payload: bytes) -> bytes:
    return bytes((0xFF, code)) + (len(payload) + 2).to_bytes(2, "big") + payload


def camera_jpeg(path: Path, orientation: int = 1, mode: str = "RGB", **save: object) -> Path:
    """A JPEG as a phone writes it: EXIF with GPS and maker note, XMP, ICC, a comment, Photoshop IRB, fill bytes
    and a trailer after EOI (as motion photos append their video)."""
    im = Image.fromarray(pixels()).convert(mode)
    buf = BytesIO()
    im.save(buf, "JPEG", quality=90, exif=camera_exif(orientation), comment="taken at Jane's home", xmp=XMP,
            icc_profile=ICC, **save)
    data = insert_after_soi(buf.getvalue(), segment(0xED, b"Photoshop 3.0\x00secret IRB"), b"\xff\xff\xff")
    path.write_bytes(data + b"MotionPhoto_Data" + b"\x00" * 64)
    return path


def decoded(data: bytes | Path) -> np.ndarray:
    with Image.open(BytesIO(data) if isinstance(data, bytes) else data) as im:
        return np.asarray(im.convert("RGB") if im.mode == "CMYK" else im).astype(np.int16)


def assert_no_metadata(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "JPEG"
        assert {name for name, _ in im.applist} <= {"APP0", "APP14"}
        assert len(im.getexif()) == 0
        assert not {"exif", "xmp", "comment", "icc_profile", "photoshop"} & set(im.info)
    assert b"Jane" not in path.read_bytes() and b"MotionPhoto" not in path.read_bytes()


def _export(src: Path, dst: Path, quality: int) -> str | None:
    """export_photo's bytes written to ``dst``; its reason."""
    data, reason = export.export_photo(src, quality)
    dst.write_bytes(data)
    return reason


@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"restart_marker_rows": 1}, {"mode": "L"}])
def test_strip_keeps_coded_pixels_and_drops_every_metadata_segment(tmp_path, save):
    src = camera_jpeg(tmp_path / "in.jpg", **save)
    with Image.open(src) as im:
        assert im.getexif().get_ifd(ExifTags.IFD.GPSInfo) and "xmp" in im.info and "comment" in im.info
    stripped = export.strip_jpeg_metadata(src.read_bytes())
    assert np.array_equal(decoded(stripped), decoded(src))
    assert _export(src, tmp_path / "out.jpg", 90) is None
    assert (tmp_path / "out.jpg").read_bytes() == stripped
    assert_no_metadata(tmp_path / "out.jpg")


def test_strip_is_byte_exact_on_the_coded_data_and_drops_the_jfif_thumbnail():
    buf = BytesIO()
    Image.fromarray(pixels()).save(buf, "JPEG", quality=80)
    data = buf.getvalue()
    assert data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\x00"
    jfif = data[4 + 2:4 + 16]  # identifier .. density, thumbnail size 0x0
    thumb = segment(0xE0, jfif[:12] + b"\x02\x01" + b"\x80" * 6)
    assert export.strip_jpeg_metadata(data) == data
    assert export.strip_jpeg_metadata(insert_after_soi(data[:2] + data[20:], thumb)) == data


@pytest.mark.parametrize("damage,reason", [
    (lambda d: d[:-40], "runs past the end"),  # truncated inside the scan
    (lambda d: d[2:], "no SOI"),
    (lambda d: insert_after_soi(d, segment(0xCC, b"\x00\x00")), "0xFFCC"),  # DAC: arithmetic coding
    (lambda d: insert_after_soi(d, segment(0xEE, b"Adobe\x00")), "Adobe"),  # short Adobe segment
    (lambda d: d[:2] + b"\xff\xf0" + d[4:], "0xFFF0"),  # JPEG extension marker in place of APP0
    (lambda d: d[:-2] + segment(0xC0, b"\x08\x00\x10\x00\x10\x01\x01\x11\x00") + d[-2:], "more than one frame"),
    (lambda d: insert_after_soi(d, segment(0xE0, b"JFIF\x00\x01")), "short JFIF"),
])
def test_odd_jpegs_are_refused(damage, reason):
    buf = BytesIO()
    Image.fromarray(pixels()).save(buf, "JPEG", quality=80)
    with pytest.raises(UnsafeJpeg, match=reason):
        export.strip_jpeg_metadata(damage(buf.getvalue()))


def test_rotated_jpeg_is_reencoded_upright_without_metadata(tmp_path):
    src = camera_jpeg(tmp_path / "in.jpg", orientation=6)
    assert _export(src, tmp_path / "out.jpg", 95) == "rotated"
    out = decoded(tmp_path / "out.jpg")
    with Image.open(src) as im:
        upright = np.asarray(im.transpose(Image.Transpose.ROTATE_270)).astype(np.int16)
    assert out.shape == upright.shape == (96, 64, 3)
    assert np.abs(out - upright).mean() < 3
    assert_no_metadata(tmp_path / "out.jpg")


def test_png_and_cmyk_inputs_are_reencoded(tmp_path):
    info = PngInfo()
    info.add_text("comment", "Jane's phone")
    Image.fromarray(pixels()).save(tmp_path / "in.png", pnginfo=info, exif=camera_exif())
    assert _export(tmp_path / "in.png", tmp_path / "png.jpg", 95) == "not_jpeg"
    assert np.abs(decoded(tmp_path / "png.jpg") - pixels()).mean() < 3
    assert_no_metadata(tmp_path / "png.jpg")
    src = camera_jpeg(tmp_path / "cmyk.jpg", mode="CMYK")
    assert _export(src, tmp_path / "cmyk_out.jpg", 95) == "cmyk"
    with Image.open(tmp_path / "cmyk_out.jpg") as im:
        assert im.mode == "RGB"
    assert_no_metadata(tmp_path / "cmyk_out.jpg")


def test_unusual_jpeg_falls_back_to_reencoding(tmp_path):
    buf = BytesIO()
    Image.fromarray(pixels()).save(buf, "JPEG", quality=90)
    (tmp_path / "in.jpg").write_bytes(insert_after_soi(buf.getvalue(), segment(0xCC, b"\x00\x00")))
    assert _export(tmp_path / "in.jpg", tmp_path / "out.jpg", 95) == "unusual_jpeg"
    assert np.abs(decoded(tmp_path / "out.jpg") - pixels()).mean() < 3


def test_pseudonym_key_from_env_or_throwaway():
    key, throwaway = export.pseudonym_key({export.KEY_ENV: "s3cret-s3cret-s3cret"}, throwaway=True)
    assert key == b"s3cret-s3cret-s3cret" and throwaway is False
    with pytest.raises(CrowdsegError, match=r"set CROWDSEG_PSEUDONYM_KEY .* export\.throwaway_key = true"):
        export.pseudonym_key({}, throwaway=False)
    with pytest.raises(CrowdsegError, match="shorter than 16"):
        export.pseudonym_key({export.KEY_ENV: "short"}, throwaway=True)
    a, b = export.pseudonym_key({}, throwaway=True), export.pseudonym_key({}, throwaway=True)
    assert a[1] and b[1] and len(a[0]) == 32 and a[0] != b[0]


def test_pseudonyms_are_keyed_hashes():
    name = export.image_name("IMG_0042.jpg", KEY)
    assert len(name) == 32 and name == export.image_name("IMG_0042.jpg", KEY)
    assert name != export.image_name("IMG_0042.jpg", b"other" * 8) and "IMG" not in name
    assert len(export.public_user("u1", KEY)) == 16 and export.public_user("u1", KEY) != export.public_user("u2", KEY)
    assert export.public_user("x", KEY) != export.image_name("x", KEY)[:16]


def face_mask(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """Every class in blocks, a few ignore pixels, shifted by seed."""
    mask = np.zeros((h, w), np.uint8)
    mask[8:, 10 + seed: 80] = 1
    mask[12:50, 20 + seed: 70] = 2
    for c, (y, x) in zip(range(3, 9), [(16, 25), (16, 50), (24, 26), (24, 51), (38, 35), (41, 40)], strict=True):
        mask[y: y + 3, x + seed: x + seed + 8] = c
    mask[0, :5] = 255
    return mask


def photo_inputs(tmp_path: Path, n: int = 4) -> pd.DataFrame:
    """A published table of n photos (one PNG upload, one rotated JPEG) with masks and agreement maps."""
    rows = []
    for i in range(n):
        src = tmp_path / "in" / f"p{i}.jpg"
        src.parent.mkdir(parents=True, exist_ok=True)
        if i == 0:
            src = src.with_suffix(".png")
            Image.fromarray(pixels()).save(src)
        else:
            camera_jpeg(src, orientation=8 if i == 1 else 1)
        mask = face_mask(seed=i)
        if i == 1:  # upright, the rotated photo is 64 wide and 96 high
            mask = np.zeros((96, 64), np.uint8)
            mask[10:80, 5:60], mask[20:40, 20:40] = 1, 2
        agreement = np.full(mask.shape, 255, np.uint8)
        agreement[mask.shape[0] // 2, :] = 60
        Image.fromarray(mask).save(tmp_path / "in" / f"m{i}.png")
        Image.fromarray(agreement).save(tmp_path / "in" / f"a{i}.png")
        rows.append({"photo_id": f"p{i}", "user_id": f"u{i % 2}", "path": str(src),
                     "mask_path": str(tmp_path / "in" / f"m{i}.png"),
                     "agreement_path": str(tmp_path / "in" / f"a{i}.png"),
                     "split": "train" if i < 3 else "test"})
    return pd.DataFrame(rows)


OPTIONS = ExportOptions(quality=90, ignore_below=0.5, agreement_maps=True, ignore_masks=True)


def build_tree(published: pd.DataFrame, root: Path) -> list[export.Exported]:
    done, digests = export.export_photos(published, root, SPEC, KEY, OPTIONS)
    files = export.tree_files(root)
    assert list(digests) == files  # every file written, in path order, with the digest of what is on disk
    assert all(digests[f] == hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files)
    for split in ("train", "test"):
        export.write_coco(root, split, SPEC, done)
    export.write_view_classes(root, SPEC)
    return done


def test_coco_decodes_back_to_the_png_masks(tmp_path):
    done = build_tree(photo_inputs(tmp_path), tmp_path / "ds")
    root = tmp_path / "ds"
    assert [e.reencoded for e in done] == ["not_jpeg", "rotated", None, None]
    for split in ("train", "test"):
        coco = json.loads((root / "coco" / f"{split}.json").read_text())
        assert [c["id"] for c in coco["categories"]] == list(range(1, 9))
        assert [i["id"] for i in coco["images"]] == list(range(1, len(coco["images"]) + 1))
        assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
        names = [i["file_name"] for i in coco["images"]]
        assert names == sorted(names) and len(names) == (3 if split == "train" else 1)
        by_image = {i["id"]: i for i in coco["images"]}
        seen: dict[int, set[int]] = {}
        for a in coco["annotations"]:
            img = by_image[a["image_id"]]
            mask = np.asarray(Image.open(root / img["file_name"].replace("images", "annotations")
                                         .replace(".jpg", ".png")))
            assert Image.open(root / img["file_name"]).size == (img["width"], img["height"])
            decoded_mask = mask_utils.decode(a["segmentation"])
            assert isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 1
            assert np.array_equal(decoded_mask, (mask == a["category_id"]).astype(np.uint8))
            assert a["area"] == int(decoded_mask.sum())
            ys, xs = np.nonzero(decoded_mask)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            seen.setdefault(a["image_id"], set()).add(a["category_id"])
        for image_id, img in by_image.items():
            mask = np.asarray(Image.open(root / img["file_name"].replace("images", "annotations")
                                         .replace(".jpg", ".png")))
            assert seen.get(image_id, set()) == set(np.unique(mask)) - {0, 255}


def test_views_extras_and_ignore_index(tmp_path):
    published = photo_inputs(tmp_path)
    done = build_tree(published, tmp_path / "ds")
    root, e = tmp_path / "ds", done[2]
    mask = np.asarray(Image.open(root / "annotations" / e.split / f"{e.name}.png"))
    source = face_mask(seed=2)
    assert (mask[32] == 255).all() and (mask[0, :5] == 255).all()  # agreement 60/255 < 0.5, and merged 255
    assert np.array_equal(mask[mask != 255], source[mask != 255])
    face = np.asarray(Image.open(root / "views" / "face_parsing" / "train" / f"{e.name}.png"))
    portrait = np.asarray(Image.open(root / "views" / "portrait" / "train" / f"{e.name}.png"))
    expected_face = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7], np.uint8)
    labelled = mask != 255
    assert np.array_equal(face[labelled], expected_face[mask[labelled]])
    assert np.array_equal(portrait[labelled], (mask[labelled] > 0).astype(np.uint8))
    assert (face[~labelled] == 255).all() and (portrait[~labelled] == 255).all()
    ignore = np.asarray(Image.open(root / "extras" / "ignore" / "train" / f"{e.name}.png"))
    assert np.array_equal(ignore, np.where(labelled, 0, 255))
    agreement = root / "extras" / "agreement" / "train" / f"{e.name}.png"
    assert agreement.read_bytes() == Path(published.loc[2, "agreement_path"]).read_bytes()
    classes = json.loads((root / "views" / "face_parsing" / "classes.json").read_text())
    assert [c["name"] for c in classes["classes"]] == ["background", "skin", "left_brow", "right_brow", "left_eye",
                                                       "right_eye", "lips", "teeth"]
    assert classes["classes"][0]["from"] == ["background", "person"] and classes["ignore_index"] == 255
    assert e.ignored == int((mask == 255).sum()) and sum(e.pixels) + e.ignored == mask.size
    assert e.pixels == tuple(int((mask == c.id).sum()) for c in SPEC.classes)


def test_views_follow_the_spec():
    portrait_spec = load_spec("portrait")
    assert views.derived_views(portrait_spec)[0] == []
    assert len(views.derived_views(portrait_spec)[1]) == 2
    no_person = Spec.model_validate({"name": "faces", "classes": [
        {"id": 0, "name": "background", "color": [0, 0, 0]}, {"id": 1, "name": "skin", "color": [1, 1, 1]},
        {"id": 2, "name": "lips", "color": [2, 2, 2]}], "draw_order": ["skin", "lips"]})
    found, notes = views.derived_views(no_person)
    assert [v.name for v in found] == ["portrait"] and "face_parsing" in notes[0] and "person" in notes[0]
    mask = np.array([[0, 1, 2, 255]], np.uint8)
    assert views.apply_view(mask, found[0], 255).tolist() == [[0, 1, 1, 255]]


def test_tree_is_deterministic_and_sha256sums_verify(tmp_path):
    published = photo_inputs(tmp_path)
    for root in (tmp_path / "a", tmp_path / "b"):
        build_tree(published, root)
        card.sha256sums(root)
    a, b = (sorted(p.relative_to(r).as_posix() for p in r.rglob("*") if p.is_file())
            for r in (tmp_path / "a", tmp_path / "b"))
    assert a == b and all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in a)
    sums = (tmp_path / "a" / "SHA256SUMS").read_text().splitlines()
    listed = [line.split("  ", 1)[1] for line in sums]
    assert listed == sorted(listed) and "SHA256SUMS" not in listed and len(listed) == len(a) - 1
    if shutil.which("sha256sum"):
        run = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=tmp_path / "a", capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_card_states_the_facts(tmp_path):
    done = build_tree(photo_inputs(tmp_path), tmp_path / "ds")
    findings = pd.DataFrame({"check": ["blur", "blur", "spammer"], "severity": ["warning", "warning", "error"]})
    facts = card.CardFacts(
        spec=SPEC, splits=["train", "val", "test"], exported=done, options=OPTIONS,
        sources=[card.Source("crowd", "crowdsourced uploads", "CC BY-SA 4.0")],
        source_counts={"crowd": card.photos_per_split(done)},
        config_hash=card.config_hash({"merge": {"ignore_below": 0.5}}),
        thresholds=card.card_thresholds(load_config(None, {"merge.quorum": {"skin": 0.6}, "merge.ban": ["anna"]}),
                                        SPEC),
        findings=findings, ledger={"photos_in": 9, "photos_published": 4, "photos_rejected": 2,
                                   "photos_deduplicated": 1, "photos_held_back": 2},
        throwaway_key=True)
    text = card.dataset_card(facts)
    for heading in ("# easyportrait dataset", "## Splits", "## Sources", "## Classes", "## Derived views",
                    "## Privacy", "## Build and QA", "## Files", "## Known limits"):
        assert heading in text, heading
    assert f"`{card.config_hash({'merge': {'ignore_below': 0.5}})}`" in text
    assert len(card.config_hash({"a": 1})) == 16 and card.config_hash({"a": 1, "b": 2}) == card.config_hash(
        {"b": 2, "a": 1})
    assert "| train | 3 | 2 |" in text and "| crowd | crowdsourced uploads | CC BY-SA 4.0 | 3 | 0 | 1 | 4 |" in text
    assert "throwaway key" in text and "not stable across builds" in text
    assert "| not_jpeg |" in text and "| rotated |" in text and "2 JPEGs were copied" in text
    assert '"skin": 0.6' in text and "`qa.min_sharpness` = 20.0" in text and "anna" not in text
    assert "| blur | warning | 2 |" in text
    assert "held back for re-annotation or review: 2" in text and "views/face_parsing" in text
    assert "| 0 | background | background, person |" in text and "extras/ignore" in text
    assert "Haar" in text and "unmirrored" in text
    secret = card.dataset_card(card.CardFacts(**{**facts.__dict__, "throwaway_key": False}))
    assert "CROWDSEG_PSEUDONYM_KEY" in secret and "throwaway" not in secret


def test_meta_table_uses_the_pseudonyms():
    published = pd.DataFrame({"photo_id": ["p1", "p2"], "user_id": ["alice", "bob"], "height": [4, 5],
                              "width": [6, 7], "split": ["val", "train"], "brightness": [0.123456, 0.5],
                              "n_assignments": [3, 4], "median_iou": [0.91234, 0.8], "source": ["vote", "golden"]})
    meta = export.meta_table(published, KEY)
    assert list(meta.columns) == export.META_COLUMNS and list(meta["set"]) == ["train", "val"]
    assert set(meta["user_id"]) == {export.public_user("alice", KEY), export.public_user("bob", KEY)}
    assert "alice" not in meta.to_csv() and "p1" not in set(meta["image_name"])


def test_options_from_config():
    cfg = load_config(None, {"merge.ignore_below": 0.4, "export.jpeg_quality": 90, "export.ignore_masks": True})
    assert ExportOptions.from_config(cfg) == ExportOptions(90, 0.4, False, True)


def test_coco_file_is_canonical_json_of_the_whole_document(tmp_path):
    done = build_tree(photo_inputs(tmp_path), tmp_path / "ds")
    for split in ("train", "test"):
        path = tmp_path / "ds" / "coco" / f"{split}.json"
        export.write_json(json.loads(path.read_text(encoding="utf-8")), tmp_path / "again.json")
        assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    assert sum(len(e.annotations) for e in done) > 4
    with pytest.raises(ValueError, match="sort outside"):
        export.coco_lines([{"area": 1, "ignore": 0}])


def test_coco_rles_equal_pycocotools_encoding_each_class_mask():
    spec = SPEC
    rng = np.random.default_rng(3)
    masks = [rng.integers(0, 10, (rng.integers(1, 9), rng.integers(1, 9))).astype(np.uint8) for _ in range(300)]
    masks += [np.full((3, 4), v, np.uint8) for v in (0, 1, 8, 255)]
    for mask in masks:
        expected = []
        for c in spec.classes[1:]:
            rle = mask_utils.encode(np.asfortranarray(mask == c.id).view(np.uint8))
            if mask_utils.area(rle):
                expected.append({"category_id": c.id, "iscrowd": 1, "area": int(mask_utils.area(rle)),
                                 "bbox": [int(v) for v in mask_utils.toBbox(rle)],
                                 "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode()}})
        assert export.coco_annotations(export.Runs.of(mask), spec) == expected, mask


def test_place_links_each_file_into_its_split(tmp_path):
    src = tmp_path / "exported"
    files = {f"{kind}/{name}.{ext}": f"digest-{kind}-{name}" for kind, ext in (("images", "jpg"), ("annotations",
                                                                                "png")) for name in "abcde"}
    for rel in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    split_of = {"a": "train", "b": "val", "c": "test", "d": "train", "e": "train"}
    placed = export.place(src, tmp_path / "staging", files, split_of)
    assert placed == {f"{rel.split('/')[0]}/{split_of[rel[-5]]}/{rel.split('/')[1]}": d for rel, d in files.items()}
    for rel, target in zip(files, placed, strict=True):
        assert (tmp_path / "staging" / target).read_text() == rel
        assert (tmp_path / "staging" / target).stat().st_ino == (src / rel).stat().st_ino  # linked, not copied
    assert export.tree_files(tmp_path / "staging") == sorted(placed)


def test_publish_swaps_the_tree_in_and_hands_back_the_old_one(tmp_path):
    final, staging = tmp_path / "dataset", tmp_path / "dataset.staging"
    staging.mkdir()
    (staging / "v1").write_text("1")
    assert export.publish(staging, final) is None  # nothing was published before
    staging.mkdir()
    (staging / "v2").write_text("2")
    old = export.publish(staging, final)
    assert [p.name for p in final.iterdir()] == ["v2"] and not staging.exists()
    assert old == tmp_path / "dataset.old" and [p.name for p in old.iterdir()] == ["v1"]
    staging.mkdir()  # a build that stopped before deleting the old tree: the next one deletes it first
    assert export.publish(staging, final) == old and not (old / "v1").exists()
