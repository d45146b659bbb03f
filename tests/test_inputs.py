"""Manifest and native annotation readers."""

import json

import pandas as pd
import pytest

from pipeline.errors import CrowdsegError
from pipeline.io.annotations import read_annotations
from pipeline.io.manifest import read_manifest
from pipeline.spec import load_spec
from tests.conftest import write_lines


def test_csv_manifest_keeps_attributes_and_rejects_bad_rows(tmp_path):
    path = tmp_path / "photos.csv"
    path.write_text("photo_id,user_id,path,submitted_at,device\n"
                    "p1,u1,a/p1.jpg,2024-01-01,phone\n"
                    "p2,u1,/etc/passwd,,phone\n"
                    "p3,u2,../up.jpg,,laptop\n"
                    "p1,u3,p1b.jpg,,phone\n"
                    "p4,,p4.jpg,,phone\n"
                    "p5,u5,p5.jpg,,phone,extra\n"
                    "\n"
                    "p6,u6,p6.jpg,,\n")
    photos, rejected = read_manifest(path)
    assert photos["photo_id"].tolist() == ["p1", "p6"]
    assert photos.iloc[0]["path"] == str(tmp_path / "a" / "p1.jpg")
    assert json.loads(photos.iloc[0]["attrs"]) == {"device": "phone"}
    got = {(r.row, r.reason) for r in rejected.itertuples()}
    assert got == {(3, "bad_row"), (4, "bad_row"), (5, "duplicate_photo_id"), (6, "bad_row"), (7, "bad_row")}
    msgs = dict(zip(rejected["row"], rejected["message"], strict=True))
    assert "absolute" in msgs[3] and "escapes" in msgs[4] and "row 2" in msgs[5] and "user_id" in msgs[6]
    assert set(rejected["file"]) == {str(path)}


def test_jsonl_and_parquet_manifests_read_the_same(tmp_path):
    rows = [{"photo_id": "p1", "user_id": 7, "path": "p1.jpg", "brightness": 0.5},
            {"photo_id": "p2", "user_id": "u2", "path": "p2.jpg"}]
    write_lines(tmp_path / "m.jsonl", rows)
    pd.DataFrame(rows).astype({"user_id": str}).to_parquet(tmp_path / "m.parquet")
    a, ra = read_manifest(tmp_path / "m.jsonl")
    b, rb = read_manifest(tmp_path / "m.parquet")
    assert a["user_id"].tolist() == ["7", "u2"] and len(ra) == len(rb) == 0
    assert a.drop(columns=["manifest", "row", "attrs"]).equals(b.drop(columns=["manifest", "row", "attrs"]))


@pytest.mark.parametrize("content,where,reason", [
    (b"photo_id,path\np1,p1.jpg\n", 1, "missing required column(s) user_id"),
    (b"photo_id,user_id,path\np1,u\xe9,p.jpg\n", 2, "not UTF-8"),
    (b"", 1, "empty manifest"),
])
def test_malformed_manifest_is_one_error_naming_file_and_row(tmp_path, content, where, reason):
    path = tmp_path / "photos.csv"
    path.write_bytes(content)
    with pytest.raises(CrowdsegError) as e:
        read_manifest(path)
    assert e.value.line().startswith(f"{path}:{where}: {reason}")


def test_unknown_manifest_type_is_refused(tmp_path):
    with pytest.raises(CrowdsegError, match="unknown manifest type"):
        read_manifest(tmp_path / "photos.xlsx")


def test_annotations_map_labels_and_reject_what_they_cannot_use(tmp_path):
    square = [[0, 0], [10, 0], [10, 10]]
    path = write_lines(tmp_path / "a.jsonl", [
        {"photo_id": "p1", "annotator_id": "a1", "shapes": [{"label": "Left eye", "points": square},
                                                            {"label": "hair", "points": square},
                                                            {"label": "background", "points": square}]},
        {"photo_id": "p1", "annotator_id": "a2", "golden": True, "assignment_id": "x",
         "shapes": [{"label": "Oeil", "points": square, "holes": [[[1, 1], [2, 1], [2, 2]]]}]},
        {"photo_id": "p1", "shapes": []},
        {"photo_id": "p1", "annotator_id": "a3", "shapes": [{"label": "skin", "points": [[0, 0]]}]},
    ])
    with path.open("a") as f:
        f.write("{not json\n\n")
    assignments, shapes, rejected = read_annotations(path, load_spec("easyportrait"), {"Oeil": "right_eye"})
    assert assignments["annotator_id"].tolist() == ["a1", "a2", "a3"]  # a3's one-point shape fails at merge
    assert assignments["golden"].tolist() == [False, True, False]
    assert shapes["class_id"].tolist() == [5, 6, 2]
    assert [h.tolist() for h in shapes.iloc[1]["holes"]] == [[[1, 1], [2, 1], [2, 2]]]
    got = [(r.item, r.row, r.reason) for r in rejected.itertuples()]
    assert got == [("shape", 1, "unknown_label"), ("shape", 1, "unknown_label"), ("assignment", 3, "bad_row"),
                   ("assignment", 5, "bad_json")]
    assert "annotator_id" in rejected.iloc[2]["message"] and "'hair'" in rejected.iloc[0]["message"]
