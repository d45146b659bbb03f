"""Polygon hygiene, rasterisation, weighted voting, swaps, exclusions and pooled skill."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import MergeConfig
from pipeline.spec import load_spec
from pipeline.stages import polygons
from pipeline.stages.merge import (
    MIN_WEIGHT,
    Ballot,
    Tally,
    _agreement,
    class_quorum,
    fuse_photo,
    layer_iou,
    one_per_annotator,
    painted_box,
    photo_row,
    prepare_photo,
    weighted_region,
    window,
    work_key,
)
from pipeline.stages.polygons import (
    AssignmentLayers,
    Layer,
    ShapeRejected,
    clean_shape,
    composite,
    rasterise,
    value_counts,
)
from pipeline.stages.skill import IOU_ONE, PooledSkill, add_sums, score_sums
from tests.conftest import realdata

SPEC = load_spec("easyportrait")
CFG = MergeConfig()


def _fill(polys, h, w):
    layer = rasterise(polys, h, w)
    out = np.zeros((h, w), np.uint8)
    if layer is not None:
        out[layer.slices] = layer.mask
    return out


def test_valid_polygon_is_untouched_and_a_bowtie_is_made_valid():
    assert clean_shape([[2, 2], [7, 2], [7, 7], [2, 7]], [], 10, 10, 1)[1] == []
    polys, repairs = clean_shape([[0, 0], [8, 8], [8, 0], [0, 8]], [], 10, 10, 1)
    assert repairs == ["made_valid"] and len(polys) == 2


def test_polygon_is_clipped_to_the_image():
    polys, repairs = clean_shape([[-20, -20], [5, -20], [5, 5], [-20, 5]], [], 10, 10, 1)
    assert repairs == ["clipped"] and polys[0][0][:, 0].min() == -0.5


@pytest.mark.parametrize("points,code", [([[20, 20], [30, 20], [30, 30]], "outside_image"),
                                         ([[1e6, 1e6], [1e6 + 5, 1e6], [1e6, 1e6 + 5]], "outside_image"),
                                         ([[1, 1], [2, 2]], "too_few_points"),
                                         ([[1, 1], [2, 2], [3, 3]], "degenerate"),
                                         ([[1, 1], [1.5, 1], [1.5, 1.5]], "too_small"),
                                         ([[1, 1], [float("nan"), 2], [3, 1]], "bad_coordinates"),
                                         ([[1, 1], [float("inf"), 2], [3, 1]], "bad_coordinates"),
                                         ([[1, 1], [2], [3, 1]], "bad_coordinates")])
def test_unusable_shapes_are_rejected_with_a_reason(points, code):
    with pytest.raises(ShapeRejected) as e:
        clean_shape(points, [], 10, 10, 1)
    assert e.value.code == code


def test_a_collapsed_ring_with_holes_is_rejected_not_a_crash():
    """GEOS refuses to repair a polygon whose outline is one point but which has holes."""
    with pytest.raises(ShapeRejected) as e:
        clean_shape([[5, 5]] * 4, [[[1, 1], [2, 1], [2, 2]]], 100, 100, 0)
    assert e.value.code == "degenerate"


def test_a_million_point_polygon_is_thinned_not_choked_on():
    t = np.linspace(0, 2 * np.pi, 1_000_000, endpoint=False)
    ring = np.c_[50 + 40 * np.cos(t), 50 + 40 * np.sin(t)]
    polys, repairs = clean_shape(ring.tolist(), [], 100, 100, 1)
    assert repairs == ["thinned"] and len(polys[0][0]) <= 10_001
    assert abs(_fill(polys, 100, 100).sum() - np.pi * 40**2) < 300


def test_points_are_scaled_from_the_image_the_annotator_saw():
    polys, repairs = clean_shape([[10, 10], [29, 10], [29, 29], [10, 29]], [], 80, 80, 1, scale=(2.0, 2.0))
    filled = _fill(polys, 80, 80)
    assert repairs == ["scaled"] and abs(int(filled.sum()) - 40 * 40) <= 2 * 40  # 20x20 pixels become ~40x40
    assert filled[21, 21] == 1 and filled[60, 60] == 0 and filled[19, 19] == 0


def test_rasterise_includes_vertices_and_cuts_holes():
    polys, _ = clean_shape([[1, 1], [8, 1], [8, 8], [1, 8]], [[[3, 3], [6, 3], [6, 6], [3, 6]]], 10, 10, 1)
    full = _fill(polys, 10, 10)
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
    assert (_fill(polys, 40, 50) == truth).all()


def _layer(mask) -> Layer:
    return Layer(0, 0, np.asarray(mask, np.uint8))


def test_vote_matches_crowd_kit_majority_vote_on_its_own_fixture():
    data = json.loads(realdata("format_fixtures", "crowd_kit", "segmentation_aggregation_fixtures.json")
                      .read_text())
    for task, expected in data["simple_image"]["expected_majority_vote"].items():
        answers = [a for a in data["simple_image"]["answers"] if str(a["task"]) == task]
        region = weighted_region([_layer(a["segmentation"]) for a in answers], [1.0] * len(answers), 0.5)
        assert (region.within(0, 0, *np.array(expected).shape) == np.array(expected)).all()
    skilled = data["image_with_skills"]
    answers = skilled["answers"]
    region = weighted_region([_layer(a["segmentation"]) for a in answers],
                             [skilled["worker_skills"][a["worker"]] for a in answers], 0.5)
    expected = np.array(skilled["expected_weighted_majority_vote"]["1"])
    assert (region.within(0, 0, *expected.shape) == expected).all()


def test_quorum_is_a_weighted_share_and_a_share_at_the_quorum_passes():
    masks = [[[1, 1, 1, 0]], [[1, 1, 0, 0]], [[1, 0, 0, 0]], [[0, 0, 0, 0]]]
    layers = [_layer(m) if np.any(m) else None for m in masks]
    assert weighted_region(layers, [1, 1, 1, 1], 0.5).within(0, 0, 1, 4).tolist() == [[1, 1, 0, 0]]  # 2 of 4 pass
    assert weighted_region(layers, [1, 1, 1, 1], 0.75).within(0, 0, 1, 4).tolist() == [[1, 0, 0, 0]]
    assert weighted_region(layers, [1, 1, 3, 1], 0.5).within(0, 0, 1, 4).tolist() == [[1, 0, 0, 0]]
    assert weighted_region(layers, [1, 1, 1, 1], 0.5, skip=0).within(0, 0, 1, 4).tolist() == [[1, 0, 0, 0]]


def _random_layer(rng: np.random.Generator, h: int, w: int) -> Layer | None:
    y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
    mask = (rng.random((int(rng.integers(1, h - y0 + 1)), int(rng.integers(1, w - x0 + 1)))) < 0.6).astype(np.uint8)
    return Layer(y0, x0, mask) if mask.any() else None


@pytest.mark.parametrize("voters", [1, 5, 8, 9, 14])
def test_weighted_region_is_the_per_pixel_float32_vote_for_any_number_of_voters(voters):
    rng = np.random.default_rng(voters)
    layers = [_random_layer(rng, 12, 15) for _ in range(voters)]
    weights = rng.random(voters).tolist()
    for skip in range(-1, voters):
        share = np.zeros((12, 15), np.float32)  # weighted counts, summed voter by voter
        for la, w in zip(layers, weights, strict=True):
            if la is not None:
                share[la.slices] += np.float32(w) * la.mask
        if skip >= 0 and layers[skip] is not None:
            share[layers[skip].slices] -= np.float32(weights[skip]) * layers[skip].mask
        total = sum(weights) - (weights[skip] if skip >= 0 else 0.0)
        expected = (share >= 0.5 * total * (1 - 1e-6)) & (share > 0)
        region = weighted_region(layers, weights, 0.5, skip)
        got = region.within(0, 0, 12, 15) == 1 if region else np.zeros((12, 15), bool)
        assert got.tolist() == expected.tolist()


def test_tally_ious_are_the_layers_ious():
    rng = np.random.default_rng(3)
    layers = [_random_layer(rng, 20, 20) for _ in range(11)]
    tally = Tally.of(layers)
    vote = tally.passes([1.0] * 11, 0.5, list(range(11)))
    region = tally.region(vote)
    for i in range(11):
        assert tally.iou(i, vote) == layer_iou(layers[i], region)
        assert np.array_equal([tally.pair_iou(i, j) for j in range(11)], [layer_iou(layers[i], b) for b in layers],
                              equal_nan=True)


def test_value_counts_are_exact_on_runs_in_row_chunks(monkeypatch):
    monkeypatch.setattr(polygons, "CALCHIST_PIXELS", 64)  # a calcHist call per few rows
    a = np.repeat(np.random.default_rng(0).integers(0, 9, (37, 5)).astype(np.uint8), 9, axis=1)
    assert value_counts(a, 9).tolist() == np.bincount(a.ravel(), minlength=9).tolist()
    wide = a.astype(np.uint16) * 100
    assert value_counts(wide, 801).tolist() == np.bincount(wide.ravel(), minlength=801).tolist()


@pytest.mark.parametrize("seed", range(12))
def test_a_photo_row_measured_in_the_painted_window_is_the_whole_masks(tmp_path, seed):
    rng = np.random.default_rng(seed)
    h, w = 90, 120
    layers = {}
    for c in SPEC.draw_ids:  # ellipses anywhere, some past the image's edges
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (int(rng.integers(-10, w + 10)), int(rng.integers(-10, h + 10))),
                    (int(rng.integers(3, 40)), int(rng.integers(3, 30))), 0, 0, 360, 1, -1)
        ys, xs = np.nonzero(mask)
        if len(ys):
            y0, x0 = ys.min(), xs.min()
            layers[c] = Layer(int(y0), int(x0), mask[y0: ys.max() + 1, x0: xs.max() + 1])
    mask = composite(layers, SPEC.draw_ids, h, w)
    whole = photo_row("p", mask, None, tmp_path, SPEC)
    part = photo_row("p", mask, None, tmp_path, SPEC, painted_box(layers.values()))
    assert whole.keys() == part.keys()
    for k, v in whole.items():
        assert v == part[k] or (isinstance(v, float) and (math.isclose(v, part[k], rel_tol=1e-9)
                                                          or (math.isnan(v) and math.isnan(part[k])))), k
    assert painted_box([None]) is None and window(mask, None) is mask


def test_draw_order_not_class_ids_puts_lips_over_teeth():
    spec = SPEC.model_copy(update={"draw_order": [n for n in SPEC.draw_order if n != "lips"] + ["lips"]})
    teeth = _portrait()
    teeth[7] = Layer(0, 0, np.pad(np.ones((4, 10), np.uint8), ((20, 16), (15, 15))))  # lips over part of the teeth
    crowd = _crowd(_portrait(), teeth, teeth)
    result = fuse_photo("p", crowd, spec, MergeConfig(min_agreement=0), {}, 40, 40)
    assert (result.mask == _painted(teeth, spec.draw_ids)).all() and result.mask[22, 20] == 7
    agree = sum(_painted(a.layers, spec.draw_ids) == result.mask for a in crowd) / 3
    assert (result.agreement == np.round(agree.astype(np.float32) * 255).astype(np.uint8)).all()


def _painted(layers: dict[int, Layer], draw_ids: list[int]) -> np.ndarray:
    """What painting each layer in turn, bottom to top, gives on the 40x40 photo."""
    out = np.zeros((40, 40), np.uint8)
    for c in draw_ids:
        if c in layers:
            out[layers[c].slices][layers[c].mask.astype(bool)] = c
    return out


def _portrait(shift: int = 0) -> dict[int, Layer]:
    """Person, skin, two eyes (person's left eye on the image's right) and teeth on a 40x40 photo."""
    def box(y0, y1, x0, x1):
        m = np.zeros((40, 40), np.uint8)
        m[y0:y1, x0 + shift: x1 + shift] = 1
        return Layer(0, 0, m)

    return {1: box(2, 40, 5, 35), 2: box(5, 30, 10, 30), 5: box(10, 14, 22, 27), 6: box(10, 14, 13, 18),
            8: box(22, 25, 16, 24)}


def _crowd(*variants) -> list[AssignmentLayers]:
    return [AssignmentLayers(f"a{i}", f"w{i}", False, layers) for i, layers in enumerate(variants)]


def test_face_parts_are_painted_over_person_in_draw_order():
    result = fuse_photo("p", _crowd(_portrait(), _portrait(), _portrait()), SPEC, CFG, {}, 40, 40)
    assert result.mask[12, 24] == 5 and result.mask[12, 15] == 6 and result.mask[3, 6] == 1
    assert result.status == "accepted" and result.unanimous == 1.0


def test_swapped_assignment_is_detected_and_swapped_back():
    swapped = {SPEC.flip_lut[c]: lay for c, lay in _portrait().items()}
    crowd = _crowd(_portrait(), _portrait(), swapped)
    result = fuse_photo("p", crowd, SPEC, CFG, {}, 40, 40)
    rows = {r["assignment"]: r for r in result.assignments}
    assert rows["a2"]["swapped"] and not rows["a0"]["swapped"] and not rows["a2"]["excluded"]
    assert "a2" in result.used and result.mask[12, 24] == 5
    excluded = fuse_photo("p", crowd, SPEC, MergeConfig(swaps="exclude"), {}, 40, 40)
    assert {r["assignment"]: r["excluded"] for r in excluded.assignments}["a2"] == "swapped"


def test_spammer_is_left_out_and_banned_annotators_never_count():
    spam = {8: Layer(0, 0, np.ones((40, 40), np.uint8))}
    result = fuse_photo("p", _crowd(_portrait(), _portrait(), _portrait(), spam), SPEC, CFG, {}, 40, 40)
    assert {r["assignment"]: r["excluded"] for r in result.assignments}["a3"] == "low_agreement"
    assert (result.mask == composite(_portrait(), SPEC.draw_ids, 40, 40)).all()
    banned = fuse_photo("p", _crowd(_portrait(), _portrait(), spam), SPEC, MergeConfig(ban=["w0"]), {}, 40, 40)
    assert banned.status == "needs_reannotation" and banned.reasons[0].startswith("too_few_annotators")


def test_skill_weights_keep_what_a_lazy_annotator_skipped():
    lazy = {c: lay for c, lay in _portrait().items() if c != 8}
    crowd = _crowd(_portrait(), lazy, lazy)
    plain = fuse_photo("p", crowd, SPEC, MergeConfig(min_agreement=0), {}, 40, 40)
    assert (plain.mask == 8).sum() == 0  # two of three skipped the teeth
    weights = {("w1", 8): 0.2, ("w2", 8): 0.2, ("w0", 8): 0.95}
    weighted = fuse_photo("p", crowd, SPEC, MergeConfig(min_agreement=0), weights, 40, 40)
    assert (weighted.mask == 8).sum() == 3 * 8


def test_disputed_class_sends_the_photo_to_reannotation():
    moved = _portrait()
    moved[8] = Layer(0, 0, np.roll(moved[8].mask, 2, axis=0))
    crowd = _crowd(_portrait(), moved)
    result = fuse_photo("p", crowd, SPEC, MergeConfig(min_agreement=0, class_agreement={"teeth": 0.8}), {}, 40, 40)
    assert result.status == "needs_reannotation" and "teeth" in result.reasons[-1]


def test_golden_answer_is_the_mask_and_the_reference():
    half = {1: Layer(0, 0, np.pad(np.ones((40, 20), np.uint8), ((0, 0), (0, 20))))}
    gold = AssignmentLayers("g", "expert", True, half)
    result = fuse_photo("p", [*_crowd(_portrait(), _portrait()), gold], SPEC, CFG, {}, 40, 40)
    assert result.source == "golden" and (result.mask == composite(half, SPEC.draw_ids, 40, 40)).all()
    assert all(s["vs_gold"] for s in result.scores)


def test_layer_iou_handles_offsets_and_empties():
    a, b = Layer(0, 0, np.ones((2, 2), np.uint8)), Layer(1, 1, np.ones((2, 2), np.uint8))
    assert layer_iou(a, b) == pytest.approx(1 / 7) and layer_iou(a, None) == 0.0 and math.isnan(layer_iou(None, None))


def test_pooled_skill_shrinks_single_photo_annotators_and_counts_gold_more():
    rows = [("p1", "a", "good", 5, 0.9, False), ("p2", "b", "good", 5, 0.9, False), ("p3", "c", "good", 5, 0.9, False),
            ("p1", "d", "lazy", 5, 0.0, False), ("p2", "e", "lazy", 5, 0.0, False), ("p3", "f", "once", 5, 0.0, False),
            ("p4", "g", "gold", 5, 0.0, True)]
    scores = pd.DataFrame(rows, columns=["photo_id", "assignment", "annotator_id", "class_id", "iou", "vs_gold"])
    skills = PooledSkill(prior_photos=2).fit(scores).skills_.set_index("annotator_id")["skill"]
    assert skills["good"] > skills["once"] > skills["lazy"]
    assert skills["gold"] < skills["once"]  # one gold photo outweighs the prior more than one crowd photo


def test_one_assignment_per_annotator_and_photo():
    a = pd.DataFrame({"photo_id": ["p", "p", "p", "q"], "annotator_id": ["w", "w", "v", "w"],
                      "golden": [False, False, False, False], "file": "f", "row": [1, 2, 3, 4],
                      "assignment": ["f:1", "f:2", "f:3", "f:4"]})
    kept, rejected = one_per_annotator(a)
    assert kept["assignment"].tolist() == ["f:2", "f:3", "f:4"]
    assert rejected["reason"].tolist() == ["duplicate_assignment"] and rejected["row"].tolist() == [1]


def test_quorum_overrides_must_name_drawable_classes():
    assert class_quorum(SPEC, {"teeth": 0.3})[8] == 0.3
    with pytest.raises(ValueError, match="'hair' is not a drawable class"):
        class_quorum(SPEC, {"hair": 0.3})


def test_two_swappers_among_five_are_outvoted_not_followed():
    swapped = {SPEC.flip_lut[c]: lay for c, lay in _portrait().items()}
    crowd = _crowd(_portrait(), _portrait(), _portrait(), swapped, swapped)
    weights = {(f"w{k}", c): (0.95 if k >= 3 else 0.8) for k in range(5) for c in SPEC.draw_ids}
    result = fuse_photo("p", crowd, SPEC, CFG, weights, 40, 40)
    assert [r["swapped"] for r in result.assignments] == [False, False, False, True, True]
    assert result.mask[12, 24] == 5  # the person's left eye stays on the image's right


def test_best_annotators_stay_when_spammers_are_the_majority():
    spam = [{c: Layer(k * 9, k * 7, np.ones((8, 6), np.uint8))} for k, c in enumerate((3, 7, 8), start=1)]
    lazy = {c: lay for c, lay in _portrait().items() if c not in (5, 6, 8)}
    result = fuse_photo("p", _crowd(_portrait(), lazy, *spam), SPEC, CFG, {}, 40, 40)
    used = {r["assignment"] for r in result.assignments if r["used"]}
    assert used == {"a0", "a1"} and (result.mask == 1).sum() > 0


def test_skills_from_batch_sums_do_not_depend_on_batching():
    rng = np.random.default_rng(3)
    n = 4000
    scores = pd.DataFrame({"photo_id": [f"p{i // 40}" for i in range(n)],  # 5 assignments of 8 classes per photo
                           "assignment": [f"a{i // 8}" for i in range(n)],
                           "annotator_id": [f"w{i // 8 % 37}" for i in range(n)], "class_id": np.arange(n) % 8 + 1,
                           "iou": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
                           "vs_gold": rng.random(n) < 0.05})
    whole = PooledSkill(2, 3).fit(scores).skills_
    for size in (7, 333, 1000):
        batches = [score_sums(scores.iloc[i:i + size]) for i in range(0, n, size)]
        pd.testing.assert_frame_equal(PooledSkill(2, 3).fit_sums(add_sums(batches[::-1])).skills_, whole)
    assert whole["photos"].sum() == scores["iou"].notna().sum()


def test_score_sums_are_a_groupby_sum_in_fixed_point():
    rng = np.random.default_rng(5)
    n = 3000
    scores = pd.DataFrame({"photo_id": [f"p{i // 40}" for i in range(n)],
                           "assignment": [f"a{i // 8}" for i in range(n)],
                           "annotator_id": pd.array(rng.choice(["zed", "ann", "bo", "é1", "w10", "w2"], n),
                                                    dtype="string"),
                           "class_id": rng.integers(1, 9, n), "iou": np.where(rng.random(n) < 0.1, np.nan,
                                                                               rng.random(n)),
                           "vs_gold": rng.random(n) < 0.2})
    s = scores.dropna(subset=["iou"])
    fixed = np.rint(s["iou"].to_numpy() * IOU_ONE).astype(np.int64)
    gold = s["vs_gold"].to_numpy()
    expected = (pd.DataFrame({"annotator_id": s["annotator_id"], "class_id": s["class_id"].astype(np.int64),
                              "photos": 1, "gold_photos": gold.astype(np.int64), "iou_crowd": np.where(gold, 0, fixed),
                              "iou_gold": np.where(gold, fixed, 0)})
                .groupby(["annotator_id", "class_id"], as_index=False, sort=True).sum())
    pd.testing.assert_frame_equal(score_sums(scores), expected)
    assert score_sums(scores.iloc[:0]).empty and list(score_sums(scores.iloc[:0])) == list(expected)


def test_photo_row_writes_no_agreement_map_unless_asked(tmp_path):
    mask = np.zeros((4, 4), np.uint8)
    row = photo_row("p", mask, None, tmp_path, SPEC, status="accepted")
    assert row["agreement_path"] == "" and [p.name for p in tmp_path.iterdir()] == [f"{work_key('p')}.png"]
    row = photo_row("p", mask, np.full((4, 4), 255, np.uint8), tmp_path, SPEC, status="accepted")
    assert Path(row["agreement_path"]).exists()


def test_split_pixels_count_where_the_used_composites_differ_from_the_vote():
    """The tallies' count of pixels that are not unanimous equals painting every used assignment's composite and
    comparing it with the voted mask, pixel by pixel (``_agreement``), for random crowds, weights and quorums."""
    rng = np.random.default_rng(5)
    classes = SPEC.draw_ids
    for _ in range(150):
        h, w = rng.integers(4, 30, 2)
        crowd = []
        for k in range(rng.integers(1, 7)):
            layers = {}
            for c in rng.choice(classes, rng.integers(0, 5), replace=False).tolist():
                y0, x0 = rng.integers(0, h), rng.integers(0, w)
                m = (rng.random((rng.integers(1, h - y0 + 1), rng.integers(1, w - x0 + 1))) < 0.7).astype(np.uint8)
                if m.any():
                    layers[c] = Layer(int(y0), int(x0), m)
            crowd.append(AssignmentLayers(f"a{k}", f"w{k}", False, layers))
        weights = {(f"w{k}", c): float(rng.random()) for k in range(len(crowd)) for c in classes}
        quorum = {c: float(rng.choice([0.3, 0.5, 1.0])) for c in classes}
        ballot = Ballot({c: Tally.of([a.layers.get(c) for a in crowd]) for c in classes},
                        {c: [max(MIN_WEIGHT, weights[(a.annotator_id, c)]) for a in crowd] for c in classes}, quorum)
        used = sorted(rng.choice(len(crowd), rng.integers(1, len(crowd) + 1), replace=False).tolist())
        passing = {c: ballot.passes(c, used) for c in classes}
        mask = composite({c: ballot.tallies[c].region(passing[c]) for c in classes}, classes, int(h), int(w))
        _, unanimous = _agreement(mask, [crowd[k].layers for k in used], classes, as_map=False)
        assert (h * w - ballot.split_pixels(used, passing, classes)) / (h * w) == unanimous


def test_a_prepared_photo_gives_back_each_crowd_layer_exactly():
    """``Prepared`` keeps tallies, not layers: the layers cut out of them are the (swapped) layers themselves."""
    rng = np.random.default_rng(6)
    swaps = 0
    for _ in range(60):
        crowd = []
        for k in range(int(rng.integers(1, 6))):
            layers = {}
            for c in rng.choice(SPEC.draw_ids, int(rng.integers(0, 6)), replace=False).tolist():
                m = (rng.random((int(rng.integers(1, 12)), int(rng.integers(1, 12)))) < 0.6).astype(np.uint8)
                if m.any():  # as rasterise makes them
                    layers[c] = Layer(int(rng.integers(0, 9)), int(rng.integers(0, 9)), m)
            crowd.append(AssignmentLayers(f"a{k}", f"w{k}", False, layers))
        prep = prepare_photo("p", crowd, SPEC, MergeConfig(swap_margin=0.0))
        for k, a in enumerate(crowd):
            swaps += prep.rows[a.assignment]["swapped"]
            want = a.swapped(SPEC.flip_lut).layers if prep.rows[a.assignment]["swapped"] else a.layers
            got = prep.crowd_layers(k)
            assert sorted(got) == sorted(want)
            for c, la in got.items():
                assert (la.y0, la.x0) == (want[c].y0, want[c].x0)
                np.testing.assert_array_equal(la.mask, want[c].mask)
    assert swaps


def test_leave_one_out_ious_equal_each_layer_against_the_vote_without_it():
    rng = np.random.default_rng(8)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        layers = [None if rng.random() < 0.15 else
                  Layer(int(rng.integers(0, 4)), int(rng.integers(0, 4)),
                        (rng.random((int(rng.integers(1, 9)), int(rng.integers(1, 9)))) < 0.6).astype(np.uint8))
                  for _ in range(n)]
        tally = Tally.of(layers)
        weights = [float(w) for w in (rng.choice([0.5, 1.0], n) if rng.random() < 0.5 else rng.random(n))]
        quorum = float(rng.choice([0.2, 0.5, 2 / 3, 1.0]))
        voters = sorted(rng.choice(n, int(rng.integers(0, n + 1)), replace=False).tolist())
        expected = [tally.iou(k, tally.passes(weights, quorum, voters, k if k in voters else -1)) for k in range(n)]
        assert tally.loo_ious(weights, quorum, voters) == pytest.approx(expected, nan_ok=True, rel=0, abs=0)
