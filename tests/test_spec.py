import copy

import pytest
import yaml
from pydantic import ValidationError

from pipeline.errors import CrowdsegError
from pipeline.spec import SPEC_DIR, Spec, load_spec, validation_reason


def test_easyportrait_spec_matches_the_published_dataset():
    spec = load_spec("easyportrait")
    assert spec.names == ["background", "person", "skin", "left_brow", "right_brow", "left_eye", "right_eye",
                          "lips", "teeth"]
    assert spec.palette[1] == (223, 87, 188) and spec.palette[8] == (230, 232, 230)
    assert spec.draw_order[0] == "person"  # face parts are drawn over the person
    assert spec.flip_lut == [0, 1, 2, 4, 3, 6, 5, 7, 8]


@pytest.mark.parametrize("label,expected", [("left_eye", 5), ("Left eye", 5), ("eye_l", 5), ("LEFT-EYE", 5),
                                             ("Teeth", 8), ("face skin", 2), ("hair", None), ("", None)])
def test_labels_resolve_through_aliases_and_never_guess(label, expected):
    assert load_spec("easyportrait").class_id(label) == expected


def test_source_label_map_applies_before_aliases():
    spec = load_spec("easyportrait")
    assert spec.class_id("Oeil gauche", {"Oeil gauche": "left_eye"}) == 5


def test_portrait_spec_has_two_classes():
    spec = load_spec("portrait")
    assert spec.names == ["background", "person"] and spec.draw_ids == [1]
    assert spec.rules == [] and spec.classes[1].max_components is None  # no anatomy to check


def test_rules_are_typed_by_kind_with_defaults():
    rules = {r.id: r for r in load_spec("easyportrait").rules}
    assert rules["parts_inside_person"].min_share == 0.98
    assert rules["teeth_near_lips"].kind == "near" and rules["teeth_near_lips"].max_gap_px == 3
    assert rules["skin_touches_eyes"].classes == ["skin", "left_eye", "right_eye"]
    assert rules["eyes_sides"].classes == ["left_eye", "right_eye"]


def _bad(mutate) -> str:
    data = yaml.safe_load((SPEC_DIR / "easyportrait.yaml").read_text())
    data = copy.deepcopy(data)
    mutate(data)
    with pytest.raises(ValidationError) as e:
        Spec.model_validate(data)
    return validation_reason(e.value)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["classes"].pop(3), "class ids must be 0..7"),
    (lambda d: d["classes"][0].update(name="void"), "class 0 must be 'background'"),
    (lambda d: d["classes"][2].update(name="person"), "unique"),
    (lambda d: d["classes"][3].update(flip="nose"), "flip partner 'nose' is not a class"),
    (lambda d: d["classes"][3].update(flip="left_eye"), "does not flip back"),
    (lambda d: d["classes"][4]["aliases"].append("left eye"), "names both"),
    (lambda d: d["draw_order"].pop(), "draw_order must list every class"),
    (lambda d: d.update(colour=1), "Extra inputs"),
    (lambda d: d["classes"][5].update(max_components=0), "classes.5.max_components"),
    (lambda d: d["rules"][5].update(to="tongue"), "rule 'teeth_near_lips': 'tongue' is not a class"),
    (lambda d: d["rules"][2].update(id="left_brow_above_left_eye"), "rule id 'left_brow_above_left_eye' is used twice"),
    (lambda d: d["rules"][0].update(kind="behind"), "tag 'behind' found using 'kind' does not match"),
    (lambda d: d["rules"][0].pop("kind"), "Unable to extract tag using discriminator 'kind'"),
    (lambda d: d["rules"][0].update(id="Eyes-Sides"), "String should match pattern"),
    (lambda d: d["rules"][6].update(min_gap_px=3), "rules.6.side.min_gap_px: Extra inputs"),
    (lambda d: d["rules"][6].update(left="background"), "rule 'eyes_sides': background cannot be a part"),
    (lambda d: d["rules"][6].update(right="left_eye"), "rule 'eyes_sides': a class is named twice"),
    (lambda d: d["rules"][6].update(id="face_width_px"), "reserved for a measure column"),
])
def test_bad_specs_are_refused_with_a_reason(mutate, message):
    assert message in _bad(mutate)


def test_load_spec_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nclasses: [{id: 0, name: background, color: [0,0,0]}, {id: 2, name: a, color: [1,1,1]}]\n"
                   "draw_order: [a]\n")
    with pytest.raises(CrowdsegError) as e:
        load_spec(bad)
    assert e.value.line().startswith(str(bad)) and "class ids" in e.value.line()
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(CrowdsegError, match="invalid YAML"):
        load_spec(tmp_path / "broken.yaml")
    with pytest.raises(CrowdsegError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")
