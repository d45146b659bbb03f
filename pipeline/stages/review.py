"""Review: reviewers' decisions from an earlier QA report (accept, reject, re-annotate), applied to this build.

A decision acts on a photo this build merged: ``accept`` publishes it even if it was held back for re-annotation,
``reject`` keeps it out of the dataset, ``reannotate`` holds it back and queues it for the crowd. A decision about
a photo the build did not merge (rejected at ingest, deduplicated, unknown) is listed as not applied, with why.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pipeline.errors import CrowdsegError
from pipeline.io.manifest import read_text
from pipeline.tables import REJECTION_COLUMNS, concat, frame, isin, rejection

DECISIONS = ("accept", "reject", "reannotate")
DECISION_COLUMNS = ["photo_id", "decision", "note", "status", "detail"]
HELD_REASONS = ("needs_reannotation", "reviewer_reannotate")
"""Photo rejection reasons that mean 'held back for re-annotation', not 'refused'."""


def read_decisions(path: Path) -> pd.DataFrame:
    """The decisions file as photo_id, decision, note, row; a later row about the same photo replaces an earlier.

    Raises CrowdsegError naming the file and row for a missing column, an empty photo id or an unknown decision.
    """
    lines = read_text(path).splitlines()
    reader = csv.DictReader(lines)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in ("photo_id", "decision") if c not in header]
    if missing:
        raise CrowdsegError(f"decisions file: missing column(s) {', '.join(missing)}; header is {header}",
                            file=str(path), where=1)
    reader.fieldnames = header
    rows = []
    for rec in reader:
        pid, decision = (rec.get("photo_id") or "").strip(), (rec.get("decision") or "").strip().lower()
        if not pid:
            raise CrowdsegError("decisions file: empty photo_id", file=str(path), where=reader.line_num)
        if decision not in DECISIONS:
            raise CrowdsegError(f"decisions file: decision {decision!r} is not one of {', '.join(DECISIONS)}",
                                file=str(path), where=reader.line_num)
        rows.append({"photo_id": pid, "decision": decision, "note": (rec.get("note") or "").strip(),
                     "row": reader.line_num})
    table = pd.DataFrame(rows, columns=["photo_id", "decision", "note", "row"])
    return table.drop_duplicates("photo_id", keep="last").sort_values("photo_id", ignore_index=True)


def apply_decisions(decisions: pd.DataFrame, merged: pd.DataFrame, held: pd.DataFrame, photos: pd.DataFrame,
                    assignments: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """This build's held-back and reviewer-rejected rows after the decisions, and the decisions with their outcome.

    ``merged`` is every photo merge produced; ``held`` the rejections of photos held back for re-annotation (and
    of their assignments); ``photos`` the kept photos (for manifest file and row); ``assignments`` the assignments
    that went to merge.
    """
    if decisions.empty:
        return held, frame([], DECISION_COLUMNS)
    held_ids = set(held.loc[held["item"] == "photo", "photo_id"])
    merged_ids = set(merged["photo_id"])
    reasons = merged.set_index("photo_id")["reasons"] if len(merged) else pd.Series(dtype=str)
    touched, added, outcome = set(), [], []
    for d in decisions.itertuples(index=False):
        status, detail = "applied", ""
        if d.photo_id not in merged_ids:
            status, detail = "not_applied", "this build merged no such photo (unknown, rejected or deduplicated)"
        elif d.decision == "accept":
            detail = (f"published despite: {reasons[d.photo_id]}" if d.photo_id in held_ids else "already published")
            touched.add(d.photo_id)
        elif d.decision == "reannotate" and d.photo_id in held_ids:
            detail = "already held back for re-annotation"
        else:
            touched.add(d.photo_id)
            code = "reviewer_rejected" if d.decision == "reject" else "reviewer_reannotate"
            detail = "kept out of the dataset" if d.decision == "reject" else "held back and queued for the crowd"
            added.append(_review_rows(d.photo_id, code, d.note, photos, assignments))
        outcome.append({"photo_id": d.photo_id, "decision": d.decision, "note": d.note, "status": status,
                        "detail": detail})
    kept = held[~isin(held["photo_id"], touched)]
    return concat([kept, *added], REJECTION_COLUMNS), frame(outcome, DECISION_COLUMNS)


def _review_rows(photo_id: str, code: str, note: str, photos: pd.DataFrame, assignments: pd.DataFrame
                 ) -> pd.DataFrame:
    """Rejection rows for a photo a reviewer took out, and for its assignments."""
    p = photos.loc[photos["photo_id"] == photo_id].iloc[0]
    why = "a reviewer rejected the photo" if code == "reviewer_rejected" else "a reviewer sent it back to the crowd"
    rows = [rejection("review", "photo", code, why + (f": {note}" if note else ""), file=p["manifest"],
                      row=int(p["row"]), photo_id=photo_id)]
    own = assignments[assignments["photo_id"] == photo_id]
    a_code = "photo_rejected_by_reviewer" if code == "reviewer_rejected" else "photo_held_back"
    rows += [rejection("review", "assignment", a_code, why, file=a.file, row=a.row, photo_id=photo_id,
                       annotator_id=a.annotator_id) for a in own.itertuples()]
    return frame(rows, REJECTION_COLUMNS)
