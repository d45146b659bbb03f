"""Reviewer decisions: the file a reviewer downloads from the QA report, and what each decision does to a build."""

from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import CrowdsegError
from pipeline.stages.accounting import balance
from pipeline.stages.review import DECISION_COLUMNS, apply_decisions, read_decisions
from pipeline.tables import DUPLICATE_COLUMNS, REJECTION_COLUMNS, frame, rejection

PHOTOS = pd.DataFrame({"photo_id": ["ok", "ok2", "held"], "manifest": "photos.csv", "row": [2, 3, 4]})
MERGED = pd.DataFrame({"photo_id": ["ok", "ok2", "held"], "reasons": ["", "", "disputed:teeth"]})
ASSIGNMENTS = pd.DataFrame({"photo_id": ["ok", "ok", "ok2", "ok2", "held", "held"], "annotator_id": list("abab" "ab"),
                            "file": "annotations.jsonl", "row": range(1, 7)})
HELD = frame([rejection("merge", "photo", "needs_reannotation", "disputed:teeth", photo_id="held"),
              rejection("merge", "assignment", "photo_held_back", "", photo_id="held", annotator_id="a"),
              rejection("merge", "assignment", "photo_held_back", "", photo_id="held", annotator_id="b")],
             REJECTION_COLUMNS)


def _decisions(tmp_path: Path, text: str) -> pd.DataFrame:
    path = tmp_path / "decisions.csv"
    path.write_text(text, encoding="utf-8")
    return read_decisions(path)


def test_each_decision_moves_its_photo_and_the_ledger_still_balances(tmp_path):
    d = _decisions(tmp_path, 'photo_id,decision,note\nheld,accept,"teeth are fine, see ""lips"""\nok,reject,blurry\n'
                             "ok2,reannotate,\nghost,reject,\n")
    held, outcome = apply_decisions(d, MERGED, HELD, PHOTOS, ASSIGNMENTS)
    assert list(outcome.columns) == DECISION_COLUMNS
    status = outcome.set_index("photo_id")["status"].to_dict()
    assert status == {"held": "applied", "ok": "applied", "ok2": "applied", "ghost": "not_applied"}
    photo_rows = held[held["item"] == "photo"].set_index("photo_id")["reason"].to_dict()
    assert photo_rows == {"ok": "reviewer_rejected", "ok2": "reviewer_reannotate"}
    assert "blurry" in held.set_index("photo_id").loc["ok", "message"].iloc[0]
    published = MERGED[~MERGED["photo_id"].isin(held["photo_id"])]
    assert list(published["photo_id"]) == ["held"]
    ledger = balance(3, 6, published, 2, held, frame([], DUPLICATE_COLUMNS))
    assert (ledger["photos_held_back"], ledger["photos_rejected"], ledger["assignments_rejected"]) == (1, 1, 4)


def test_no_decisions_change_nothing():
    held, outcome = apply_decisions(pd.DataFrame(columns=["photo_id", "decision", "note", "row"]), MERGED, HELD,
                                    PHOTOS, ASSIGNMENTS)
    assert held.equals(HELD) and outcome.empty and list(outcome.columns) == DECISION_COLUMNS


def test_a_later_row_about_the_same_photo_wins(tmp_path):
    d = _decisions(tmp_path, "photo_id,decision\nok,reject\nok,ACCEPT\n")
    assert d[["photo_id", "decision", "row"]].values.tolist() == [["ok", "accept", 3]]


@pytest.mark.parametrize(("text", "where", "reason"), [
    ("photo,decision\nok,accept\n", 1, "missing column(s) photo_id"),
    ("photo_id,decision\nok,approve\n", 2, "'approve' is not one of accept, reject, reannotate"),
    ("photo_id,decision\n,accept\n", 2, "empty photo_id"),
])
def test_a_bad_decisions_file_names_the_file_row_and_reason(tmp_path, text, where, reason):
    with pytest.raises(CrowdsegError) as e:
        _decisions(tmp_path, text)
    assert e.value.where == where and reason in e.value.reason and e.value.file.endswith("decisions.csv")
