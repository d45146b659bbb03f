import math

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.simulate import simulate
from pipeline.spec import load_spec
from pipeline.stages.anatomy import FACE_WIDTH, measure, measure_columns, violations

SPEC = load_spec("easyportrait")
ID = {c.name: c.id for c in SPEC.classes}


def _blob(m: np.ndarray, name: str, centre: tuple[int, int], axes: tuple[int, int]) -> None:
    cv2.ellipse(m, centre, axes, 0, 0, 360, ID[name], -1)


def face(**moved: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """A 240 x 200 portrait drawn like the merge paints it: person, then skin, then the face parts on top. The
    person's left parts are on the image's right. ``moved`` redraws a part elsewhere: name=(centre, axes)."""
    m = np.zeros((240, 200), np.uint8)
    cv2.rectangle(m, (30, 160), (170, 239), ID["person"], -1)
    _blob(m, "person", (100, 100), (50, 65))
    _blob(m, "skin", (100, 105), (42, 55))
    parts = {"left_brow": ((120, 78), (12, 3)), "right_brow": ((80, 78), (12, 3)),
             "left_eye": ((120, 92), (9, 4)), "right_eye": ((80, 92), (9, 4)),
             "lips": ((100, 130), (18, 7)), "teeth": ((100, 129), (10, 3))}
    for name, (centre, axes) in (parts | moved).items():
        _blob(m, name, centre, axes)
    return m


def fired(m: np.ndarray) -> set[str]:
    return {v.rule for v in violations(measure(m, SPEC), SPEC)}


def test_the_spec_declares_the_anatomy_rules():
    assert [r.id for r in SPEC.rules] == [
        "parts_inside_person", "left_brow_above_left_eye", "right_brow_above_right_eye", "left_eye_above_lips",
        "right_eye_above_lips", "teeth_near_lips", "eyes_sides", "brows_sides", "skin_touches_eyes"]
    assert {c.name: c.max_components for c in SPEC.classes if c.max_components} == {
        "skin": 3, "left_brow": 1, "right_brow": 1, "left_eye": 1, "right_eye": 1, "lips": 2, "teeth": 2}
    assert measure_columns(SPEC)[-1] == FACE_WIDTH


def test_a_correct_face_breaks_nothing_and_every_value_is_measured():
    values = measure(face(), SPEC)
    assert list(values) == measure_columns(SPEC)
    assert not any(math.isnan(v) for v in values.values())
    assert violations(values, SPEC) == []
    assert values["eyes_sides"] == pytest.approx(40) and values["left_brow_above_left_eye"] == pytest.approx(14)
    assert values["parts_inside_person"] == 1 and values["teeth_near_lips"] == 1 and values["skin_touches_eyes"] == 1
    assert values["components_left_eye"] == 1 and values[FACE_WIDTH] == 85  # the skin oval, 2 x 42 + 1 px


def swapped(m: np.ndarray, a: str, b: str) -> np.ndarray:
    out = m.copy()
    out[m == ID[a]], out[m == ID[b]] = ID[b], ID[a]
    return out


def with_ring(m: np.ndarray) -> np.ndarray:
    """The right eye surrounded by a 5 px band of person, so it no longer touches skin."""
    out = m.copy()
    band = cv2.dilate((m == ID["right_eye"]).view(np.uint8), np.ones((11, 11), np.uint8)) > 0
    out[band & (m == ID["skin"])] = ID["person"]
    return out


def with_blob(m: np.ndarray, name: str, centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    out = m.copy()
    _blob(out, name, centre, axes)
    return out


@pytest.mark.parametrize("broken,rules", [
    (swapped(face(), "left_eye", "right_eye"), {"eyes_sides"}),
    (swapped(face(), "left_brow", "right_brow"), {"brows_sides"}),
    (face(right_eye=((80, 150), (9, 4))), {"right_eye_above_lips"}),
    (face(left_brow=((120, 105), (12, 3))), {"left_brow_above_left_eye"}),
    (with_blob(face(), "left_eye", (184, 110), (12, 8)),  # an eye drawn over the background
     {"parts_inside_person", "components_left_eye", "skin_touches_eyes"}),
    (face(teeth=((100, 150), (10, 3))), {"teeth_near_lips"}),
    (with_blob(face(), "left_eye", (125, 112), (6, 3)), {"components_left_eye"}),
    (with_ring(face()), {"skin_touches_eyes"}),
])
def test_each_rule_fires_on_its_broken_mask(broken, rules):
    assert fired(broken) == rules


def test_violations_explain_themselves():
    (v,) = violations(measure(swapped(face(), "left_eye", "right_eye"), SPEC), SPEC)
    assert v.rule == "eyes_sides" and v.value == pytest.approx(-40) and v.threshold == 0
    assert "left_eye appears on the image's left of right_eye" in v.message
    assert "person's left eye should be on the image's right" in v.message
    (v,) = violations(measure(face(teeth=((100, 150), (10, 3))), SPEC), SPEC)
    assert v.value == 0 and v.threshold == 0.9 and "teeth" in v.message and "lips" in v.message


def test_absent_classes_leave_their_rules_unmeasured():
    m = face()
    m[m == ID["teeth"]] = ID["skin"]
    m[m == ID["right_eye"]] = ID["skin"]
    values = measure(m, SPEC)
    unmeasured = {k for k, v in values.items() if math.isnan(v)}
    assert unmeasured == {"teeth_near_lips", "right_eye_above_lips", "right_brow_above_right_eye", "eyes_sides"}
    assert values["components_teeth"] == 0 and values["skin_touches_eyes"] == 1  # the left eye still counts
    assert violations(values, SPEC) == []
    empty = measure(np.zeros((50, 40), np.uint8), SPEC)
    assert all(math.isnan(v) for k, v in empty.items() if not k.startswith("components_"))
    assert violations(empty, SPEC) == []


def test_crumbs_do_not_count_as_components_or_presence():
    m = face()
    m[200, 10] = m[10, 10] = ID["left_eye"]  # single pixels from polygon rasterisation, one over the background
    m[5, 190] = ID["teeth"]
    values = measure(m, SPEC)
    assert values["components_left_eye"] == 1 and fired(m) == set()
    m[m == ID["teeth"]] = ID["skin"]
    m[5, 190] = ID["teeth"]  # a lone teeth pixel is below teeth's trace floor: teeth count as absent
    values = measure(m, SPEC)
    assert values["components_teeth"] == 0 and math.isnan(values["teeth_near_lips"])
    m[m == ID["right_brow"]] = ID["skin"]
    m[78, 70:72] = m[79, 74:76] = ID["right_brow"]  # a brow at thumbnail size: two 2 px crumbs, one brow
    assert measure(m, SPEC)["components_right_brow"] == 1


def test_components_are_counted_past_256_regions():
    m = face()
    m[m == ID["lips"]] = ID["skin"]
    grid = m[::4, ::4]
    grid[grid == 0] = ID["lips"]  # over a thousand 1 px crumbs on the background
    for y in range(20, 220, 10):
        m[y: y + 4, 5:25] = m[y: y + 4, 175:195] = ID["lips"]  # and 40 regions of about 80 px
    assert measure(m, SPEC)["components_lips"] == 40


def test_parts_in_a_hole_of_the_silhouette_are_inside():
    m = face()
    m[m == ID["skin"]] = 0  # the face is now a hole in the person, with the parts floating in it
    assert measure(m, SPEC)["parts_inside_person"] == 1


def test_rolled_faces_keep_their_order():
    m = face()
    rolled = cv2.warpAffine(m, cv2.getRotationMatrix2D((100, 100), 25, 1), (200, 240), flags=cv2.INTER_NEAREST)
    assert violations(measure(rolled, SPEC), SPEC) == []


def test_measure_is_deterministic_and_leaves_the_mask_alone():
    m = with_blob(face(), "left_eye", (180, 20), (14, 9))
    before = m.copy()
    a, b = measure(m, SPEC), measure(m, SPEC)
    assert a == b and np.array_equal(m, before)


def test_the_two_class_spec_has_no_rule_values():
    spec = load_spec("portrait")
    assert measure_columns(spec) == [FACE_WIDTH]
    m = (face() > 0).astype(np.uint8)
    values = measure(m, spec)
    assert list(values) == [FACE_WIDTH] and math.isnan(values[FACE_WIDTH])
    assert violations(values, spec) == []


def test_simulated_truth_masks_break_no_rule(tmp_path):
    simulate(tmp_path, photos=12, users=6, annotators=1, seed=5, size=(240, 320))
    masks = sorted((tmp_path / "truth" / "masks").glob("*.png"))
    assert len(masks) >= 12
    for path in masks:
        values = measure(np.asarray(Image.open(path)), SPEC)
        assert violations(values, SPEC) == [], path.name
        assert values["parts_inside_person"] == 1 and values["eyes_sides"] > 0
