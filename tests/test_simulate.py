"""The synthetic crowd: files a user would hand crowdseg, consistent with the truth it writes alongside."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from shapely.geometry import Polygon
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import IngestConfig, load_config
from pipeline.errors import CrowdsegError
from pipeline.io.formats import Assignment, PhotoRecord
from pipeline.simulate import simulate
from pipeline.simulate.crowd import DEFECT_KINDS, DUPLICATE_KINDS, encode_jpeg
from pipeline.simulate.portrait import Layer
from pipeline.simulate.trace import outlines
from pipeline.spec import load_spec
from pipeline.stages.ingest import photo_signals

SPEC = load_spec("easyportrait")
RUN = {"photos": 60, "users": 15, "annotators": 3, "seed": 3, "size": (320, 240), "broken": True}
DEFECT_RUN = {"photos": 30, "users": 8, "annotators": 2, "seed": 4, "size": (240, 320)}
FACE_PARTS = ("skin", "left_brow", "right_brow", "left_eye", "right_eye", "lips", "teeth")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(out, **RUN)
    return out


@pytest.fixture(scope="module")
def portrait_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("portrait")
    simulate(out, photos=12, users=4, annotators=2, seed=5, size=(240, 320), profiles={"careful": 1.0},
             spec="portrait")
    return out


@pytest.fixture(scope="module")
def clean_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    simulate(out, **DEFECT_RUN)
    return out


@pytest.fixture(scope="module")
def defect_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("defects")
    assert simulate(out, **DEFECT_RUN, defects=3)["defects"] == 9
    return out


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text(encoding="utf-8").splitlines()]


def truth(out: Path, photo_id: str) -> np.ndarray:
    return np.asarray(Image.open(out / "truth" / "masks" / f"{photo_id}.png"))


def broken(out: Path) -> dict[str, dict[str, str]]:
    return {r["kind"]: r for r in rows(out / "truth" / "broken.csv")}


def rasterise(shapes: list[dict], width: int, height: int) -> np.ndarray:
    """Fill each class's polygons (holes cleared), then paint the classes in draw order."""
    layers: dict[int, np.ndarray] = {}
    for s in shapes:
        cid = SPEC.class_id(s["label"])
        part = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(part, [np.round(np.array(s["points"])).astype(np.int32)], 1)
        for hole in s["holes"]:
            cv2.fillPoly(part, [np.round(np.array(hole)).astype(np.int32)], 0)
        layers[cid] = layers.get(cid, np.zeros_like(part)) | part
    mask = np.zeros((height, width), dtype=np.uint8)
    for cid in SPEC.draw_ids:
        if cid in layers:
            mask[layers[cid] > 0] = cid
    return mask


def test_same_arguments_give_identical_files(sim: Path, tmp_path: Path) -> None:
    simulate(tmp_path, **RUN)
    files = sorted(p.relative_to(sim) for p in sim.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all((sim / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)


def test_rerun_replaces_an_earlier_simulation_but_refuses_other_folders(tmp_path: Path) -> None:
    simulate(tmp_path, photos=3, users=2, annotators=1, seed=1, size=(160, 120))
    counts = simulate(tmp_path, photos=2, users=1, annotators=1, seed=1, size=(160, 120))
    assert counts["manifest_rows"] == len(list((tmp_path / "truth" / "masks").iterdir())) == 2
    assert counts["assignments"] == len(lines(tmp_path)) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CrowdsegError, match="not empty"):
        simulate(other, photos=2, users=1, annotators=1, seed=1)


def test_manifest_and_annotations_follow_the_input_formats(sim: Path) -> None:
    manifest = rows(sim / "photos.csv")
    assert list(manifest[0]) == ["photo_id", "user_id", "path", "submitted_at", "device"]
    records = [PhotoRecord.model_validate(r) for r in manifest]
    assert [r.photo_id for r in records] == sorted(r.photo_id for r in records)
    assert all((sim / r.path).is_file() for r in records)
    work = [Assignment.model_validate(line) for line in lines(sim)]
    assert [(a.photo_id, a.annotator_id) for a in work] == sorted((a.photo_id, a.annotator_id) for a in work)
    assert len({a.assignment_id for a in work}) == len(work)
    assert any(a.golden and a.annotator_id == "expert" for a in work)
    cfg = load_config(sim / "config.toml")
    assert cfg.path(cfg.inputs.photos) == (sim / "photos.csv").resolve()
    assert (cfg.inputs.annotations, cfg.inputs.spec, cfg.output.out) == ("annotations.jsonl", "easyportrait", "build")


def test_every_label_resolves_except_the_broken_one(sim: Path) -> None:
    labels = {s["label"] for line in lines(sim) for s in line["shapes"]}
    unknown = {label for label in labels if SPEC.class_id(label) is None}
    assert unknown == {"glasses"}
    assert len(labels) > len(SPEC.draw_order) + 1, "annotators use other spellings now and then"


def test_truth_masks_have_the_oriented_size(sim: Path) -> None:
    truncated = broken(sim)["truncated_jpeg"]["photo_id"]
    manifest = {r["photo_id"]: r for r in rows(sim / "photos.csv")}
    turned = 0
    for row in rows(sim / "truth" / "photos.csv"):
        size = (int(row["width"]), int(row["height"]))
        assert truth(sim, row["photo_id"]).shape == size[::-1]
        if row["photo_id"] == truncated:
            continue
        with Image.open(sim / manifest[row["photo_id"]]["path"]) as im:
            stored = im.size
            assert ImageOps.exif_transpose(im).size == size
        turned += row["orientation"] != "1"
        assert stored == (size if row["orientation"] == "1" else size[::-1])
    assert turned > 0


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_rotated_files_come_out_upright_after_exif_transpose(orientation: int) -> None:
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    image[:20, :40] = 255  # a bright top-left corner
    with Image.open(io.BytesIO(encode_jpeg(image, 90, orientation))) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=float)
    assert np.abs(upright - image).mean() < 3


def test_careful_traces_reproduce_the_truth(sim: Path) -> None:
    careful = {r["annotator_id"] for r in rows(sim / "truth" / "annotators.csv") if r["profile"] == "careful"}
    spoiled = {(r["photo_id"], int(r["row"])) for r in rows(sim / "truth" / "broken.csv")}
    sizes = {r["photo_id"]: (int(r["width"]), int(r["height"])) for r in rows(sim / "truth" / "photos.csv")}
    checked = 0
    for n, line in enumerate(lines(sim), start=1):
        if line["annotator_id"] not in careful or (line["photo_id"], n) in spoiled:
            continue
        ref = truth(sim, line["photo_id"])
        got = rasterise(line["shapes"], *sizes[line["photo_id"]])
        for name in ("person", "skin"):
            cid = SPEC.by_name[name].id
            iou = ((ref == cid) & (got == cid)).sum() / ((ref == cid) | (got == cid)).sum()
            assert iou > 0.9, (line["assignment_id"], name, iou)
        checked += 1
    assert checked > 20


def test_an_unsimplified_trace_gives_the_region_back_holes_and_islands_included() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:35, 5:45] = True
    mask[10:20, 10:20] = False          # a hole
    mask[13:17, 13:17] = True           # an island inside it
    mask[25:27, 30:33] = False          # a small hole (holes of 1-2 pixels have no polygon and are dropped)
    layer = Layer(mask, 100, 7)
    canvas = np.zeros((60, 160), dtype=np.uint8)
    for outer, holes in outlines(layer, epsilon=0):
        part = np.zeros_like(canvas)
        cv2.fillPoly(part, [outer.astype(np.int32)], 1)
        for hole in holes:
            cv2.fillPoly(part, [hole.astype(np.int32)], 0)
        canvas |= part
    assert np.array_equal(canvas.astype(bool), layer.on((0, 0, 160, 60)))


def test_duplicates_cover_every_kind_and_keep_truth_consistent(sim: Path) -> None:
    dups = rows(sim / "truth" / "duplicates.csv")
    assert {d["kind"] for d in dups} == set(DUPLICATE_KINDS)
    manifest = {r["photo_id"]: r for r in rows(sim / "photos.csv")}
    lut = np.array(SPEC.flip_lut, dtype=np.uint8)
    for d in dups:
        dup, orig = manifest[d["photo_id"]], manifest[d["original_photo_id"]]
        assert (dup["user_id"] == orig["user_id"]) == (d["same_user"] == "true")
        if d["kind"] == "mirrored":
            assert np.array_equal(truth(sim, d["photo_id"]), lut[truth(sim, d["original_photo_id"])[:, ::-1]])
        if d["kind"] == "exact_cross_user":
            assert (sim / dup["path"]).read_bytes() == (sim / orig["path"]).read_bytes()
        if d["kind"] in ("brightness", "recompressed"):
            assert np.array_equal(truth(sim, d["photo_id"]), truth(sim, d["original_photo_id"]))


def test_broken_mode_writes_one_of_each_broken_item(sim: Path) -> None:
    found = broken(sim)
    assert set(found) == {"truncated_jpeg", "unknown_label", "self_intersecting", "outside_image", "unknown_photo"}
    with Image.open(sim / found["truncated_jpeg"]["file"]) as im, pytest.raises(OSError):
        im.load()
    work = lines(sim)
    shape = {k: work[int(found[k]["row"]) - 1]["shapes"][-1] for k in found if k != "truncated_jpeg"}
    assert SPEC.class_id(shape["unknown_label"]["label"]) is None
    assert not Polygon(shape["self_intersecting"]["points"]).is_valid
    assert min(x for x, _ in shape["outside_image"]["points"]) > RUN["size"][0]
    stray = work[int(found["unknown_photo"]["row"]) - 1]["photo_id"]
    assert stray not in {r["photo_id"] for r in rows(sim / "photos.csv")}


def test_portrait_spec_and_an_all_careful_crowd(portrait_sim: Path) -> None:
    assert {r["profile"] for r in rows(portrait_sim / "truth" / "annotators.csv")} == {"careful", "expert"}
    assert rows(portrait_sim / "truth" / "broken.csv") == []
    spec = load_spec("portrait")
    assert {spec.class_id(s["label"]) for line in lines(portrait_sim) for s in line["shapes"]} == {1}
    for row in rows(portrait_sim / "truth" / "photos.csv"):
        mask = truth(portrait_sim, row["photo_id"])
        assert mask.shape == (320, 240) and set(np.unique(mask)) == {0, 1}
    assert load_config(portrait_sim / "config.toml").inputs.spec == "portrait"


@pytest.mark.parametrize("bad", [{"pool": 2}, {"profiles": {"careful": 1, "genius": 1}}, {"spec": "nope"},
                                 {"size": (32, 32)}, {"gold_share": 2.0}, {"defects": -1},
                                 {"devices": {"flip_phone": 1.0}}, {"devices": {"phone_vga": 0.0}}, {"workers": 0}])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(CrowdsegError):
        simulate(tmp_path, **({"photos": 2, "users": 1, "annotators": 3, "seed": 0} | bad))


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_device_shares_choose_photo_sizes_and_workers_change_no_byte(tmp_path: Path) -> None:
    run = {"photos": 10, "users": 6, "annotators": 2, "seed": 2, "devices": {"laptop_webcam": 1.0, "phone_vga": 1.0}}
    counts = simulate(tmp_path / "one", **run)
    assert simulate(tmp_path / "two", **run, workers=2) == counts
    assert files(tmp_path / "one") == files(tmp_path / "two")
    originals = [r for r in rows(tmp_path / "one" / "truth" / "photos.csv") if r["kind"] == "original"]
    sizes = {r["device"]: (int(r["width"]), int(r["height"])) for r in originals}
    assert sizes == {"laptop_webcam": (1920, 1080), "phone_vga": (720, 960)}


def defective(out: Path) -> dict[str, list[str]]:
    """Photo ids by defect kind ('' for the fine ones)."""
    kinds: dict[str, list[str]] = {}
    for r in rows(out / "truth" / "photos.csv"):
        kinds.setdefault(r["defect"], []).append(r["photo_id"])
    return kinds


def signals(out: Path, photo_ids: list[str]) -> list[dict]:
    """What ingest measures on each photo (brightness, sharpness), without the face detector."""
    paths = {r["photo_id"]: out / r["path"] for r in rows(out / "photos.csv")}
    return [photo_signals(paths[p].read_bytes(), IngestConfig(detect_faces=False)) for p in photo_ids]


def face_share(mask: np.ndarray) -> float:
    """Width of the face parts' bounding box over the photo's shorter side, from a truth mask."""
    cols = np.flatnonzero(np.isin(mask, [SPEC.by_name[n].id for n in FACE_PARTS]).any(axis=0))
    return (cols[-1] - cols[0] + 1) / min(mask.shape)


def test_defects_go_to_plain_originals_and_into_truth(defect_sim: Path) -> None:
    kinds = defective(defect_sim)
    assert Counter({k: len(v) for k, v in kinds.items() if k}) == dict.fromkeys(DEFECT_KINDS, 3)
    copied = {d["original_photo_id"] for d in rows(defect_sim / "truth" / "duplicates.csv")}
    for r in rows(defect_sim / "truth" / "photos.csv"):
        if r["defect"]:
            assert (r["kind"], r["gold"], r["photo_id"] in copied) == ("original", "false", False), r


def test_defects_leave_everything_else_as_it_was(clean_sim: Path, defect_sim: Path, tmp_path: Path) -> None:
    simulate(tmp_path, **DEFECT_RUN, defects=0)
    clean = files(clean_sim)
    assert files(tmp_path) == clean
    assert all(r["defect"] == "" for r in rows(clean_sim / "truth" / "photos.csv"))
    kinds = defective(defect_sim)
    photos = {f"photos/{r['user_id']}/{r['photo_id']}.jpg" for r in rows(defect_sim / "truth" / "photos.csv")
              if r["defect"]}
    masks = {f"truth/masks/{p}.png" for p in kinds["tiny_face"]}
    changed = {f for f, data in files(defect_sim).items() if clean[f] != data}
    assert changed == photos | masks | {"annotations.jsonl", "truth/photos.csv"}
    same = [line for line in lines(defect_sim) if line["photo_id"] not in kinds["tiny_face"]]
    assert same == [line for line in lines(clean_sim) if line["photo_id"] not in kinds["tiny_face"]]


def test_defects_are_deterministic(defect_sim: Path, tmp_path: Path) -> None:
    simulate(tmp_path, **DEFECT_RUN, defects=3)
    assert files(tmp_path) == files(defect_sim)


def test_blurred_and_dark_photos_measure_so(defect_sim: Path) -> None:
    kinds = defective(defect_sim)
    fine = signals(defect_sim, kinds[""])
    blurred, dark = signals(defect_sim, kinds["blurred"]), signals(defect_sim, kinds["dark"])
    assert max(s["sharpness"] for s in blurred) < 20 < min(s["sharpness"] for s in fine)  # 20: blurry in a real photo
    assert max(s["brightness"] for s in dark) < 0.13
    assert min(s["brightness"] for s in fine) > 0.2


def test_tiny_faces_are_small_in_the_truth(defect_sim: Path) -> None:
    kinds = defective(defect_sim)
    tiny = [face_share(truth(defect_sim, p)) for p in kinds["tiny_face"]]
    assert all(0.03 < share < 0.12 for share in tiny), tiny
    assert min(face_share(truth(defect_sim, p)) for p in kinds[""]) > 0.2
    facts = {r["photo_id"]: int(r["face_width"]) for r in rows(defect_sim / "truth" / "photos.csv")}
    assert all(0.05 * 240 <= facts[p] <= 0.1 * 240 + 1 for p in kinds["tiny_face"])


def test_too_many_defects_is_an_error_and_broken_photos_are_spared(tmp_path: Path) -> None:
    run = {"photos": 12, "users": 4, "annotators": 1, "seed": 2, "size": (96, 128), "broken": True}
    with pytest.raises(CrowdsegError, match=r"defects=5 needs 15 photos") as e:
        simulate(tmp_path, **run, defects=5)
    assert not any(tmp_path.iterdir()), "nothing is written before the check"
    room = int(re.search(r"only (\d+) are", str(e.value))[1])
    simulate(tmp_path, **run, defects=room // 3)
    assert broken(tmp_path)["truncated_jpeg"]["photo_id"] in defective(tmp_path)[""]


def test_cli_simulates_defects(tmp_path: Path) -> None:
    args = ["simulate", str(tmp_path), "--photos", "12", "--users", "3", "--annotators", "1", "--size", "96x128",
            "--defects", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "defects=3" in result.output
