"""Portrait crops: window geometry, every rejection reason, deterministic jitter, and real photos."""

import json
import math

import cv2
import numpy as np
import pytest

from pipeline.config import CropConfig
from pipeline.stages.portrait_crops import Crop, crop_window, find_faces, portrait_crops
from tests.conftest import realdata

CODES = {"face_too_small", "face_cut_off", "several_faces", "face_not_on_person", "crop_outside_image", "no_face"}
CFG = CropConfig()
FACE = (280, 150, 60, 60)  # centre (310, 180): window 200x267 at (210, 73)


def _scene(size: tuple[int, int] = (640, 480)) -> tuple[np.ndarray, np.ndarray]:
    """A noise image and a mask with an ellipse "person" (class 1) around FACE and a body (class 2) below it."""
    w, h = size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (310, 330), (110, 160), 0, 0, 360, 2, -1)
    cv2.ellipse(mask, (310, 180), (40, 50), 0, 0, 360, 1, -1)
    return image, mask


def _codes(rejected) -> list[str]:
    return [r.code for r in rejected]


def test_main_crop_geometry_and_pixels():
    image, mask = _scene()
    crops, rejected = portrait_crops(image, mask, CFG, "s1", faces=[FACE])
    assert rejected == []
    [c] = crops
    assert isinstance(c, Crop) and (c.index, c.face_index, c.face) == (0, 0, FACE)
    x, y, w, h = c.box
    assert abs(FACE[2] / w - CFG.face_width_share) < 0.01
    assert abs(h / w - CFG.aspect) < 0.01
    assert abs(x + w / 2 - 310) <= 1 and abs(180 - y - CFG.face_center_y * h) <= 1
    assert c.box == crop_window(FACE, CFG) == (210, 73, 200, 267)
    np.testing.assert_array_equal(c.mask, mask[y:y + h, x:x + w])
    np.testing.assert_array_equal(c.image, image[y:y + h, x:x + w])
    assert c.image.shape[:2] == c.mask.shape == (h, w) and c.image.dtype == c.mask.dtype == np.uint8
    assert not np.shares_memory(c.image, image) and not np.shares_memory(c.mask, mask)
    assert c.image.flags.c_contiguous and set(np.unique(c.mask)) == {0, 1, 2}


def test_crop_window_scale_and_shift():
    x, y, w, h = crop_window(FACE, CFG, scale=1.1, shift=(0.05, -0.05))
    assert (w, h) == (220, round(220 * CFG.aspect))
    assert x == round(310 - 110 + 0.05 * 220) and y == round(180 - CFG.face_center_y * h - 0.05 * h)


@pytest.mark.parametrize(("faces", "code"), [
    ([(300, 170, 20, 20)], "face_too_small"),
    ([(1, 150, 60, 60)], "face_cut_off"),
    ([(280, 150, 60, 60), (300, 419, 60, 60)], "face_cut_off"),  # the second face reaches the bottom
    ([(40, 20, 60, 60)], "face_not_on_person"),  # a face on the background: a poster, a false detection
    ([(20, 150, 60, 60)], "crop_outside_image"),  # on the person, but its window leaves the image on the left
])
def test_face_rejections(faces, code):
    image, mask = _scene()
    mask[150:210, 20:80] = 1
    crops, rejected = portrait_crops(image, mask, CFG, "s2", faces=faces)
    assert code in _codes(rejected)
    assert len(crops) + len(rejected) == len(faces)  # one outcome per face: no face is lost
    r = next(r for r in rejected if r.code == code)
    assert r.face in faces and r.index == 0 and r.message


def test_outside_message_names_the_sides():
    image, mask = _scene()
    mask[:] = 1
    _, [r] = portrait_crops(image, mask, CFG, "s3", faces=[(30, 10, 60, 60)])
    x, y, _, _ = crop_window((30, 10, 60, 60), CFG)
    assert r.code == "crop_outside_image" and f"{-x} px on the left" in r.message and f"{-y} px on the top" in r.message
    assert "right" not in r.message and "640x480" in r.message


def test_several_faces_reject_both_and_small_neighbours_do_not():
    image, mask = _scene()
    mask[:] = 1
    near = (340, 160, 40, 40)  # 40 >= 0.5 x 60, and each centre lies in the other's window
    crops, rejected = portrait_crops(image, mask, CFG, "s4", faces=[FACE, near])
    assert crops == [] and _codes(rejected) == ["several_faces", "several_faces"]
    assert [r.face for r in rejected] == [FACE, near] and "40 px wide" in rejected[0].message
    tiny = (360, 160, 20, 20)  # under half FACE's width: FACE keeps its crops, the tiny one is too small
    crops, rejected = portrait_crops(image, mask, CFG.model_copy(update={"jitter": 2}), "s4", faces=[FACE, tiny])
    assert [c.face for c in crops] == [FACE] * 3 and _codes(rejected) == ["face_too_small"]


def test_extra_crops_that_reach_another_face_are_rejected():
    image, mask = _scene()
    mask[:] = 1
    beside = (392, 160, 40, 40)  # centre (412, 180): just right of FACE's main window, which ends at x = 410
    cfg = CFG.model_copy(update={"jitter": 16})
    crops, rejected = portrait_crops(image, mask, cfg, "s6", faces=[FACE, beside])
    mine = [r for r in rejected if r.face == FACE]
    assert any(c.face == FACE and c.index == 0 for c in crops)
    assert mine and {r.code for r in mine} == {"several_faces"} and all(r.index >= 1 for r in mine)
    assert len([c for c in crops if c.face == FACE]) + len(mine) == 17


def test_no_face():
    image, mask = _scene()
    crops, [r] = portrait_crops(image, mask, CFG, "s5", faces=[])
    assert crops == []
    assert (r.code, r.face, r.index) == ("no_face", None, 0) and "640x480" in r.message
    blank = np.full_like(image, 128)
    assert find_faces(blank) == []
    assert _codes(portrait_crops(blank, mask, CFG, "s5")[1]) == ["no_face"]


def test_jitter_is_deterministic_and_checked():
    image, mask = _scene()
    cfg = CFG.model_copy(update={"jitter": 3})
    crops, rejected = portrait_crops(image, mask, cfg, "photo/7", faces=[FACE])
    again, _ = portrait_crops(image, mask, cfg, "photo/7", faces=[FACE])
    other, _ = portrait_crops(image, mask, cfg, "photo/8", faces=[FACE])
    assert rejected == [] and [c.index for c in crops] == [0, 1, 2, 3]
    boxes = [c.box for c in crops]
    assert len(set(boxes)) == 4 and boxes == [c.box for c in again] and boxes != [c.box for c in other]
    for c in crops[1:]:
        x, y, w, h = c.box
        assert 0.9 * 200 - 1 <= w <= 1.1 * 200 + 1 and abs(h / w - cfg.aspect) < 0.01
        np.testing.assert_array_equal(c.mask, mask[y:y + h, x:x + w])
    # near the border some extra windows leave the image: each is then rejected on its own
    near = (30, 100, 40, 40)
    mask[:] = 1
    cfg = CFG.model_copy(update={"jitter": 8, "face_width_share": 0.4})
    assert crop_window(near, cfg)[0] == 0
    crops, rejected = portrait_crops(image, mask, cfg, "edge", faces=[near])
    assert len(crops) + len(rejected) == 9 and set(_codes(rejected)) == {"crop_outside_image"}
    assert crops and rejected and all(r.index >= 1 for r in rejected)
    for c in crops:
        x, y, w, h = c.box
        assert x >= 0 and y >= 0 and x + w <= 640 and y + h <= 480


def _person_mask(path, shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    shapes = json.loads(path.read_text())["shapes"]
    polys = [np.round(np.asarray(s["points"])).astype(np.int32) for s in shapes if s["label"] == "person"]
    cv2.fillPoly(mask, polys, 1)
    return mask


def test_real_photos():
    folder = realdata("labelme", "semantic_segmentation", "data_annotated")
    cfg = CropConfig(min_face_px=20, face_width_share=0.35)
    good = 0
    for stem in ("2011_000003", "2011_000006"):
        image = cv2.cvtColor(cv2.imread(str(folder / f"{stem}.jpg")), cv2.COLOR_BGR2RGB)
        mask = _person_mask(folder / f"{stem}.json", image.shape[:2])
        faces = find_faces(image, math.floor(cfg.min_face_px * cfg.compete_share))
        crops, rejected = portrait_crops(image, mask, cfg, stem)
        assert set(_codes(rejected)) <= CODES - {"no_face"} and faces
        outcomes = {c.face for c in crops if c.index == 0} | {r.face for r in rejected if r.index == 0}
        assert outcomes == set(faces)
        for c in crops:
            x, y, w, h = c.box
            fx, fy, fw, fh = c.face
            if (c.mask > 0).any() and x <= fx and y <= fy and fx + fw <= x + w and fy + fh <= y + h:
                good += 1
    assert good >= 1
