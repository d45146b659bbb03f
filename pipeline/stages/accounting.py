"""Accounting: every photo and every assignment that entered is published, rejected, deduplicated or held back."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.stages.review import HELD_REASONS
from pipeline.tables import REJECTION_COLUMNS, frame, isin, rejection


class AccountingError(RuntimeError):
    """The build lost track of an input; this is a bug, never a user error."""


def route_orphans(assignments: pd.DataFrame, manifest_ids: set[str], rejected_ids: set[str],
                  dropped_ids: set[str], trusted_ids: frozenset[str] = frozenset()
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split assignments into those whose photo goes on to merge, and rejections for the rest.

    ``rejected_ids`` are photos refused at ingest (a photo id rejected only as a repeated manifest row is not
    among them, since its first row stands); ``trusted_ids`` are datasets' samples, whose mask is not voted on.
    """
    photo = assignments["photo_id"]
    routed = ~isin(photo, manifest_ids) | isin(photo, set(rejected_ids) | set(dropped_ids) | set(trusted_ids))
    if not routed.any():  # the table as it came, not a copy of it
        return assignments, frame([], REJECTION_COLUMNS)
    rows: list[dict[str, Any]] = []
    for a in assignments[routed].itertuples(index=False):  # rows by Python only for the few routed away
        if a.photo_id in rejected_ids:
            reason, msg = "photo_rejected", "its photo was rejected at ingest"
        elif a.photo_id not in manifest_ids:
            reason, msg = "unknown_photo", f"photo_id {a.photo_id!r} is not in the photos manifest"
        elif a.photo_id in dropped_ids:
            reason, msg = "photo_deduplicated", "its photo was dropped as a duplicate"
        else:
            reason, msg = "trusted_photo", "its photo is a dataset's sample, whose own mask is used: no vote"
        rows.append(rejection("import", "assignment", reason, msg, file=a.file, row=a.row, photo_id=a.photo_id,
                              annotator_id=a.annotator_id))
    return assignments[~routed], frame(rows, REJECTION_COLUMNS)


def balance(photos_in: int, assignments_in: int, published: pd.DataFrame, used_assignments: int,
            rejections: pd.DataFrame, duplicates: pd.DataFrame) -> dict[str, int]:
    """The build's input/output ledger; raises AccountingError when something went missing."""
    item = rejections["item"]
    held = int(((item == "photo") & rejections["reason"].isin(HELD_REASONS)).sum())
    ledger = {
        "photos_in": photos_in, "photos_published": len(published),
        "photos_rejected": int((item == "photo").sum()) - held,
        "photos_deduplicated": int((duplicates["action"] == "drop").sum()), "photos_held_back": held,
        "assignments_in": assignments_in, "assignments_used": used_assignments,
        "assignments_rejected": int((item == "assignment").sum()),
        "shapes_rejected": int((item == "shape").sum()),
    }
    out_photos = sum(ledger[k] for k in ("photos_published", "photos_rejected", "photos_deduplicated",
                                         "photos_held_back"))
    if out_photos != photos_in:
        raise AccountingError(f"photos: {photos_in} in but {out_photos} accounted for: {ledger}")
    if used_assignments + ledger["assignments_rejected"] != assignments_in:
        raise AccountingError(f"assignments: {assignments_in} in but "
                              f"{used_assignments + ledger['assignments_rejected']} accounted for: {ledger}")
    return ledger
