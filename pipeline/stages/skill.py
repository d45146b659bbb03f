"""Annotator skill pooled over all of an annotator's photos, per class: the M-step of a Dawid-Skene style EM.

Each assignment is scored per class against the consensus of the *other* annotators of its photo (or against
the golden answer, where a photo has one). An annotator's skill for a class is the mean of those IoUs over their
photos, shrunk toward the class's population mean by ``prior_photos`` pseudo-photos, so an annotator seen on a
single photo is neither trusted nor condemned on it. Gold scores count ``gold_weight`` times.
"""

from __future__ import annotations

import pandas as pd

SCORE_COLUMNS = ["photo_id", "assignment", "annotator_id", "class_id", "iou", "vs_gold"]
SKILL_COLUMNS = ["annotator_id", "class_id", "skill", "photos", "gold_photos"]


class PooledSkill:
    """Per-annotator, per-class reliability in [0, 1]; ``skills_`` after ``fit``."""

    def __init__(self, prior_photos: float = 2.0, gold_weight: float = 3.0):
        if prior_photos < 0 or gold_weight <= 0:
            raise ValueError("prior_photos must be >= 0 and gold_weight > 0")
        self.prior_photos = prior_photos
        self.gold_weight = gold_weight

    def fit(self, scores: pd.DataFrame) -> PooledSkill:
        """Scores: one row per (assignment, class) where the class is in the assignment or its reference."""
        s = scores.dropna(subset=["iou"]).assign(w=lambda d: d["vs_gold"].map({True: self.gold_weight,
                                                                               False: 1.0}))
        if s.empty:
            self.prior_ = pd.Series(dtype=float)
            self.skills_ = pd.DataFrame(columns=SKILL_COLUMNS)
            return self
        prior = s.groupby("class_id").apply(lambda g: (g["iou"] * g["w"]).sum() / g["w"].sum(),
                                            include_groups=False)
        g = s.assign(wiou=s["iou"] * s["w"]).groupby(["annotator_id", "class_id"])
        agg = g.agg(wiou=("wiou", "sum"), w=("w", "sum"), photos=("photo_id", "nunique"))
        agg["gold_photos"] = s[s["vs_gold"]].groupby(["annotator_id", "class_id"])["photo_id"].nunique().reindex(
            agg.index, fill_value=0)
        mu = prior.reindex(agg.index.get_level_values("class_id")).to_numpy()
        agg["skill"] = (agg["wiou"] + self.prior_photos * mu) / (agg["w"] + self.prior_photos)
        self.prior_ = prior
        self.skills_ = agg.reset_index()[SKILL_COLUMNS].sort_values(["annotator_id", "class_id"], ignore_index=True)
        return self

    def weights(self) -> dict[tuple[str, int], float]:
        """(annotator, class) -> vote weight."""
        return {(a, int(c)): float(v) for a, c, v in zip(self.skills_["annotator_id"], self.skills_["class_id"],
                                                         self.skills_["skill"], strict=True)}
