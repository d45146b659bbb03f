"""QA: checks over merged photos, annotators and the dataset, as one findings table."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.config import QAConfig
from pipeline.spec import Spec
from pipeline.tables import FINDING_COLUMNS, frame


def finding(level: str, subject: str, check: str, severity: str, value: float, threshold: float,
            message: str) -> dict[str, Any]:
    return {"level": level, "subject_id": subject, "check": check, "severity": severity, "value": value,
            "threshold": threshold, "message": message}


def photo_findings(merged: pd.DataFrame, spec: Spec, cfg: QAConfig) -> list[dict[str, Any]]:
    """Per photo: too few annotators, low agreement, an empty mask, parts below their minimum area."""
    out = []
    for p in merged.to_dict("records"):
        pid = p["photo_id"]
        if p["n_assignments"] < cfg.min_annotators_per_photo:
            out.append(finding("photo", pid, "few_annotators", "warning", p["n_assignments"],
                               cfg.min_annotators_per_photo, f"merged from {p['n_assignments']} assignment(s)"))
        if p["median_iou"] < cfg.min_photo_agreement:
            out.append(finding("photo", pid, "low_agreement", "warning", round(p["median_iou"], 4),
                               cfg.min_photo_agreement, f"annotators' median IoU with the merged mask is "
                               f"{p['median_iou']:.2f}"))
        if sum(p[f"px_{c.name}"] for c in spec.classes[1:]) == 0:
            out.append(finding("photo", pid, "empty_mask", "error", 0, 1, "the merged mask has no labelled pixel"))
        for c in spec.classes[1:]:
            px = p[f"px_{c.name}"]
            if 0 < px < c.min_area_px:
                out.append(finding("photo", pid, "small_part", "info", px, c.min_area_px,
                                   f"{c.name} covers only {px} px"))
    return out


def annotator_findings(assignments: pd.DataFrame, cfg: QAConfig) -> list[dict[str, Any]]:
    """Per annotator: mean agreement with the merged masks below the threshold."""
    if assignments.empty:
        return []
    crowd = assignments[~assignments["golden"].astype(bool)]
    stats = crowd.groupby("annotator_id")["mean_iou"].agg(["mean", "size"]).sort_index()
    return [finding("annotator", a, "low_annotator_agreement", "warning", round(float(s["mean"]), 4),
                    cfg.min_annotator_agreement, f"mean IoU {s['mean']:.2f} over {int(s['size'])} photo(s)")
            for a, s in stats.iterrows() if s["mean"] < cfg.min_annotator_agreement]


def dataset_findings(merged: pd.DataFrame, spec: Spec) -> list[dict[str, Any]]:
    """Dataset level: classes that appear in no merged mask."""
    return [finding("dataset", "dataset", "class_absent", "warning", 0, 1, f"no photo has any {c.name} pixel")
            for c in spec.classes[1:] if len(merged) and int(merged[f"px_{c.name}"].sum()) == 0]


def duplicate_findings(duplicates: pd.DataFrame) -> list[dict[str, Any]]:
    """Near copies across users that were kept: flagged ones for review, grouped ones for information."""
    out = []
    for d in duplicates[duplicates["action"].isin(["flag", "group"]) & duplicates["photo_id"].ne(
            duplicates["cluster"])].to_dict("records"):
        flagged = d["action"] == "flag"
        out.append(finding("photo", d["photo_id"], "cross_user_duplicate", "warning" if flagged else "info",
                           d["distance"], 0, f"{d['kind']} copy of {d['cluster']} by another user"
                           + ("" if flagged else "; both kept in one split")))
    return out


def run_checks(merged: pd.DataFrame, assignments: pd.DataFrame, duplicates: pd.DataFrame, spec: Spec,
               cfg: QAConfig) -> pd.DataFrame:
    """All findings, sorted by level, check and subject."""
    rows = (photo_findings(merged, spec, cfg) + annotator_findings(assignments, cfg) + dataset_findings(merged, spec)
            + duplicate_findings(duplicates))
    return frame(rows, FINDING_COLUMNS).sort_values(["level", "check", "subject_id"], ignore_index=True)
