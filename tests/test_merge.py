"""Polygon hygiene, rasterisation and voting."""

import json

import cv2
import numpy as np
import pytest

from pipeline.spec import load_spec
from pipeline.stages.merge import (
    AssignmentLayers,
    Layer,
    ShapeRejected,
    class_ious,
    class_quorum,
    clean_shape,
    composite,
    merge_photo,
    rasterise,
    vote,
)
from tests.conftest import realdata

SPEC = load_spec("easyportrait")
SQUARE = [[2, 2], [7, 2], [7, 7], [2, 7]]


def test_clean_shape_keeps_a_valid_polygon_untouched():
    polys, repairs = clean_shape(SQUARE, [], 10, 10, 1)
    assert repairs == [] and len(polys) == 1


def test_self_intersecting_polygon_is_made_valid_and_counted():
    bowtie = [[0, 0], [8, 8], [8, 0], [0, 8]]
    polys, repairs = clean_shape(bowtie, [], 10, 10, 1)
    assert repairs == ["made_valid"] and len(polys) == 2


def test_polygon_is_clipped_to_the_image():
    polys, repairs = clean_shape([[-20, -20], [5, -20], [5, 5], [-20, 5]], [], 10, 10, 1)
    assert repairs == ["clipped"]
    assert polys[0][0][:, 0].min() == -0.5


@pytest.mark.parametrize("points,code", [([[20, 20], [30, 20], [30, 30]], "outside_image"),
                                         ([[1, 1], [2, 2]], "too_few_points"),
                                         ([[1, 1], [2, 2], [3, 3]], "degenerate"),
                                         ([[1, 1], [1.5, 1], [1.5, 1.5]], "too_small"),
                                         ([[1, 1], [float("nan"), 2], [3, 1]], "bad_coordinates")])
def test_unusable_shapes_are_rejected_with_a_reason(points, code):
    with pytest.raises(ShapeRejected) as e:
        clean_shape(points, [], 10, 10, 1)
    assert e.value.code == code


def test_rasterise_includes_vertices_and_cuts_holes():
    polys, _ = clean_shape([[1, 1], [8, 1], [8, 8], [1, 8]], [[[3, 3], [6, 3], [6, 6], [3, 6]]], 10, 10, 1)
    layer = rasterise(polys, 10, 10)
    full = np.zeros((10, 10), np.uint8)
    full[layer.slices] = layer.mask
    # vertices are pixel centres and rings include their boundary pixels, as cv2 contours do
    assert full.sum() == 64 - 4 and full[4, 4] == 0 and full[3, 3] == 1 and full[0, 0] == 0


def test_rasterise_reproduces_opencv_contours_with_holes_exactly():
    truth = np.zeros((40, 50), np.uint8)
    cv2.ellipse(truth, (25, 20), (15, 9), 20, 0, 360, 1, -1)
    cv2.circle(truth, (25, 20), 4, 0, -1)
    contours, hierarchy = cv2.findContours(truth, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = [c[:, 0, :].tolist() for c, h in zip(contours, hierarchy[0], strict=True) if h[3] < 0]
    holes = [c[:, 0, :].tolist() for c, h in zip(contours, hierarchy[0], strict=True) if h[3] >= 0]
    polys, _ = clean_shape(outer[0], holes, 50, 40, 1)
    layer = rasterise(polys, 40, 50)
    out = np.zeros_like(truth)
    out[layer.slices] = layer.mask
    assert (out == truth).all()


def _layers(mask: np.ndarray, class_id: int) -> dict[int, Layer]:
    return {class_id: Layer(0, 0, mask.astype(np.uint8))}


def test_vote_matches_crowd_kit_majority_vote_on_its_own_fixture():
    data = json.loads(realdata("format_fixtures", "crowd_kit", "segmentation_aggregation_fixtures.json")
                      .read_text())["simple_image"]
    for task, expected in data["expected_majority_vote"].items():
        answers = [a for a in data["answers"] if str(a["task"]) == task]
        crowd = [AssignmentLayers(str(i), a["worker"], False, _layers(np.array(a["segmentation"]), 1))
                 for i, a in enumerate(answers)]
        h, w = np.array(expected).shape
        assert (vote(crowd, {1: 0.5}, [1], h, w) == np.array(expected)).all()


def test_quorum_is_a_share_of_annotators():
    masks = [np.array([[1, 1, 1, 0]]), np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]]), np.array([[0, 0, 0, 0]])]
    crowd = [AssignmentLayers(str(i), f"a{i}", False, _layers(m, 1)) for i, m in enumerate(masks)]
    assert vote(crowd, {1: 0.5}, [1], 1, 4).tolist() == [[1, 1, 0, 0]]
    assert vote(crowd, {1: 0.75}, [1], 1, 4).tolist() == [[1, 0, 0, 0]]
    assert vote(crowd, {1: 0.25}, [1], 1, 4).tolist() == [[1, 1, 1, 0]]


def test_face_parts_are_painted_over_person_in_draw_order():
    person = np.ones((4, 4), np.uint8)
    eye = np.zeros((4, 4), np.uint8)
    eye[1:3, 1:3] = 1
    layers = {1: Layer(0, 0, person), 5: Layer(0, 0, eye)}
    mask = composite(layers, SPEC.draw_ids, 4, 4)
    assert mask[1, 1] == 5 and mask[0, 0] == 1  # person keeps a hole where the eye is
    crowd = [AssignmentLayers(str(i), f"a{i}", False, dict(layers)) for i in range(3)]
    assert (vote(crowd, class_quorum(SPEC, {}), SPEC.draw_ids, 4, 4) == mask).all()


def test_golden_answer_wins_and_everyone_is_scored_against_it():
    person = np.ones((4, 4), np.uint8)
    half = np.zeros((4, 4), np.uint8)
    half[:, :2] = 1
    crowd = [AssignmentLayers(str(i), f"a{i}", False, _layers(person, 1)) for i in range(3)]
    gold = AssignmentLayers("g", "expert", True, _layers(half, 1))
    result = merge_photo([*crowd, gold], SPEC, class_quorum(SPEC, {}), 4, 4)
    assert result.source == "golden" and (result.mask == half).all()
    assert [r["mean_iou"] for r in result.per_assignment] == [0.5, 0.5, 0.5, 1.0]
    assert merge_photo([*crowd, gold], SPEC, class_quorum(SPEC, {}), 4, 4, use_golden=False).source == "vote"


def test_class_ious_are_nan_where_a_class_is_absent():
    a = np.array([[0, 1, 1, 2]])
    b = np.array([[0, 1, 2, 2]])
    ious = class_ious(a, b, 4)
    assert ious[1] == 0.5 and ious[2] == 0.5 and np.isnan(ious[3])


def test_quorum_overrides_must_name_drawable_classes():
    assert class_quorum(SPEC, {"teeth": 0.3})[8] == 0.3
    with pytest.raises(ValueError, match="'hair' is not a drawable class"):
        class_quorum(SPEC, {"hair": 0.3})
