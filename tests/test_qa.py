"""QA checks: each registered check fires on its defect and stays quiet on a clean photo."""

import numpy as np
import pandas as pd

from pipeline.config import QAConfig
from pipeline.spec import load_spec
from pipeline.stages.ingest import chroma
from pipeline.stages.qa import REGISTRY, QAInputs, run_checks

SPEC = load_spec("easyportrait")
COLOUR = chroma(np.tile(np.array([200, 120, 60], np.uint8), 64))
GREY = chroma(np.full(192, 90, np.uint8))


def _photo(pid: str, **over) -> dict:
    row = {"photo_id": pid, "user_id": f"u_{pid}", "split": "train", "width": 720, "height": 960,
           "brightness": 0.5, "sharpness": 200.0, "faces": 1, "face_w": 300, "chroma": COLOUR, "n_used": 5,
           "source": "vote", **{f"px_{c.name}": 500 for c in SPEC.classes}}
    return row | over


def _inputs() -> QAInputs:
    photos = pd.DataFrame([
        _photo("clean"), _photo("blurry", sharpness=3.0), _photo("dark", brightness=0.05),
        _photo("glare", brightness=0.95), _photo("faceless", faces=0, face_w=0), _photo("far", face_w=40),
        _photo("grey", chroma=GREY), _photo("tiny", width=320, height=240), _photo("few", n_used=2),
        _photo("empty", **{f"px_{c.name}": 0 for c in SPEC.classes[1:]}), _photo("specks", px_teeth=2),
        _photo("leak_a", user_id="u_same", split="train"), _photo("leak_b", user_id="u_same", split="test"),
        _photo("held", user_id="u_same", split=""),  # held back: photo checks yes, dataset checks no
    ])
    classes = pd.DataFrame([
        {"photo_id": "clean", "class": "teeth", "pixels": 500, "drawn_by": 5, "agreement": 0.9, "disputed": False},
        {"photo_id": "few", "class": "teeth", "pixels": 0, "drawn_by": 2, "agreement": 0.3, "disputed": True},
        {"photo_id": "dark", "class": "left_eye", "pixels": 0, "drawn_by": 4, "agreement": 0.0, "disputed": False},
    ])
    work = [("clean", "w1", "", 0.9), ("blurry", "w9", "low_agreement", 0.9)]
    work += [(p, w, "", 0.9) for p in ("dark", "glare", "grey", "tiny", "few", "specks") for w in ("w1", "w2")]
    work += [(p, "w6", "", 0.0) for p in ("dark", "glare", "grey", "tiny", "few", "specks")]  # never draws teeth
    assignments = pd.DataFrame([{"photo_id": p, "assignment": f"{p}/{w}", "annotator_id": w, "golden": False,
                                 "excluded": x, "drawn": "person,skin,teeth" if v else "person,skin"}
                                for p, w, x, v in work])
    repairs = pd.DataFrame([{"photo_id": "grey", "repair": "made_valid"}, {"photo_id": "grey", "repair": "clipped"}])
    annotators = pd.DataFrame([
        {"annotator_id": "w1", "photos": 40, "agreement": 0.95, "swaps": 0, "spam_score": 0.0, "status": "ok"},
        {"annotator_id": "w2", "photos": 40, "agreement": 0.93, "swaps": 0, "spam_score": 0.0, "status": "ok"},
        {"annotator_id": "w3", "photos": 40, "agreement": 0.55, "swaps": 0, "spam_score": 0.0,
         "status": "low_agreement"},
        {"annotator_id": "w4", "photos": 40, "agreement": 0.10, "swaps": 0, "spam_score": 0.9, "status": "spammer"},
        {"annotator_id": "w5", "photos": 40, "agreement": 0.90, "swaps": 30, "spam_score": 0.0, "status": "swapper"},
    ])
    duplicates = pd.DataFrame([{"cluster": "clean", "photo_id": "clean", "action": "group"},
                               {"cluster": "clean", "photo_id": "leak_b", "action": "group"}])
    return QAInputs(photos, assignments, classes, repairs, annotators, duplicates, SPEC,
                    QAConfig(), {"train": 0.5, "test": 0.5})


def test_each_check_fires_on_its_defect_and_not_on_the_clean_photo():
    findings = run_checks(_inputs())
    got = {(f.check, f.subject_id) for f in findings.itertuples()}
    expected = {("blur", "blurry"), ("underexposed", "dark"), ("overexposed", "glare"), ("no_face", "faceless"),
                ("small_face", "far"), ("greyscale", "grey"), ("low_resolution", "tiny"), ("few_annotators", "few"),
                ("empty_mask", "empty"), ("small_part", "specks"), ("low_class_agreement", "few"),
                ("class_missing", "dark"), ("excluded_assignments", "blurry"), ("polygon_repairs", "grey"),
                ("spammer", "w4"), ("swapper", "w5"), ("low_annotator_agreement", "w3"), ("misses_classes", "w6"),
                ("user_across_splits", "u_same"), ("duplicate_across_splits", "clean"), ("split_ratio", "train"),
                ("split_ratio", "test")}
    assert expected <= got
    assert not {s for c, s in got if s == "clean" and c != "duplicate_across_splits"}
    assert not {c for c, s in got if s in ("held", "w1", "w2")}
    assert {c.id for c in REGISTRY} == {c for c, _ in got} | {"class_absent", "class_presence_by_split", "anatomy"}
    row = findings[findings["check"] == "blur"].iloc[0]
    assert row["severity"] == "warning" and row["threshold"] == QAConfig().min_sharpness


def test_thresholds_come_from_the_config():
    q = _inputs()
    q.cfg = QAConfig(min_sharpness=1.0, face_checks=False)
    checks = set(run_checks(q)["check"])
    assert "blur" not in checks and "no_face" not in checks and "small_face" not in checks


def test_greyscale_spread():
    assert GREY == 0.0 and COLOUR > 50


def test_the_merged_mask_overrules_a_face_detector_that_missed():
    q = _inputs()
    q.photos = q.photos[q.photos["photo_id"].isin(["faceless", "far"])].assign(face_width_px=[250.0, 0.0])
    got = {(f.check, f.subject_id) for f in run_checks(q).itertuples()}
    assert ("no_face", "faceless") not in got and ("small_face", "far") in got
    q.photos = q.photos.assign(face_width_px=[30.0, 0.0])
    assert ("small_face", "faceless") in {(f.check, f.subject_id) for f in run_checks(q).itertuples()}


def test_anatomy_findings_come_from_the_spec_rules():
    from pipeline.stages.anatomy import measure_columns

    q = _inputs()
    broken = {"eyes_sides": -12.0, "components_left_eye": 2.0, "teeth_near_lips": float("nan")}
    q.photos = q.photos.assign(**{k: [broken.get(k, 1.0) if p == "far" else float("nan") for p in q.photos["photo_id"]]
                                  for k in measure_columns(SPEC) if k != "face_width_px"})
    got = {(f.check, f.subject_id) for f in run_checks(q).itertuples() if f.check.startswith("anatomy.")}
    assert got == {("anatomy.eyes_sides", "far"), ("anatomy.components_left_eye", "far")}
    q.spec = load_spec("portrait")
    assert not any(c.startswith("anatomy.") for c in run_checks(q)["check"])
