"""Annotator skill pooled over all of an annotator's photos, per class: the M-step of a Dawid-Skene style EM.

Each assignment is scored per class against the consensus of the *other* annotators of its photo (or against
the golden answer, where a photo has one). An annotator's skill for a class is the mean of those IoUs over their
photos, shrunk toward the class's population mean by ``prior_photos`` pseudo-photos, so an annotator seen on a
single photo is neither trusted nor condemned on it. Gold scores count ``gold_weight`` times.

The fit needs only per-(annotator, class) sums (``score_sums``), so a build reduces each batch's score rows to
sums as it reads them instead of holding every row. IoUs are summed in fixed point (``IOU_ONE`` units, int64):
integer sums do not depend on the order or grouping of the batches, so skills are the same bits however a build
was batched. Counting rows as photos assumes one crowd assignment per annotator and photo (``one_per_annotator``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SCORE_COLUMNS = ["photo_id", "assignment", "annotator_id", "class_id", "iou", "vs_gold"]
SUM_COLUMNS = ["annotator_id", "class_id", "photos", "gold_photos", "iou_crowd", "iou_gold"]
SKILL_COLUMNS = ["annotator_id", "class_id", "skill", "photos", "gold_photos"]
IOU_ONE = 1 << 32
"""An IoU of 1 in the fixed-point sums: 2^-32 resolution, and room for 2^31 scores per sum in int64."""


def score_sums(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (annotator, class) of score rows with an IoU: photos, gold photos and the IoU sums of crowd and gold
    scores in fixed point. Sums of several tables add up row-wise (``add_sums``)."""
    s = scores[scores["iou"].notna()]
    if s.empty:
        return add_sums([])
    gold = s["vs_gold"].astype(bool).to_numpy()
    fixed = np.rint(s["iou"].to_numpy(np.float64) * IOU_ONE).astype(np.int64)
    # grouped in numpy (pandas' groupby cost ~5 ms per batch, a second of every 20k rebuild): rows sorted by
    # (annotator, class) as one integer, then summed run by run
    codes, names = pd.factorize(s["annotator_id"], sort=True)
    classes = s["class_id"].to_numpy(np.int64)
    span = int(classes.max()) + 1
    key = codes.astype(np.int64) * span + classes
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))

    def total(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values[order], starts)

    return pd.DataFrame({"annotator_id": names.take(key[starts] // span).array, "class_id": key[starts] % span,
                         "photos": np.diff(np.append(starts, len(key))), "gold_photos": total(gold.astype(np.int64)),
                         "iou_crowd": total(np.where(gold, 0, fixed)), "iou_gold": total(np.where(gold, fixed, 0))})


def add_sums(sums: list[pd.DataFrame]) -> pd.DataFrame:
    """Several ``score_sums`` tables as one, sorted by annotator and class."""
    both = pd.concat([pd.DataFrame(columns=SUM_COLUMNS).astype({c: np.int64 for c in SUM_COLUMNS[1:]}),
                      *[t for t in sums if len(t)]], ignore_index=True)
    return both.groupby(["annotator_id", "class_id"], as_index=False, sort=True)[SUM_COLUMNS[2:]].sum()


class PooledSkill:
    """Per-annotator, per-class reliability in [0, 1]; ``skills_`` after ``fit``."""

    def __init__(self, prior_photos: float = 2.0, gold_weight: float = 3.0):
        if prior_photos < 0 or gold_weight <= 0:
            raise ValueError("prior_photos must be >= 0 and gold_weight > 0")
        self.prior_photos = prior_photos
        self.gold_weight = gold_weight

    def fit(self, scores: pd.DataFrame) -> PooledSkill:
        """Scores: one row per (assignment, class) where the class is in the assignment or its reference."""
        return self.fit_sums(score_sums(scores))

    def fit_sums(self, sums: pd.DataFrame) -> PooledSkill:
        """Fit from ``score_sums`` (of every score row, or ``add_sums`` of every batch's)."""
        if sums.empty:
            self.prior_ = pd.Series(dtype=float)
            self.skills_ = pd.DataFrame(columns=SKILL_COLUMNS)
            return self
        w, wiou = self._weighted(sums)
        cw, cwiou = self._weighted(sums.groupby("class_id")[SUM_COLUMNS[2:]].sum())  # exact integer sums
        prior = cwiou / cw
        mu = prior.reindex(sums["class_id"]).to_numpy()
        skills = sums[["annotator_id", "class_id", "photos", "gold_photos"]].assign(
            skill=(wiou + self.prior_photos * mu) / (w + self.prior_photos))
        self.prior_ = prior
        self.skills_ = skills[SKILL_COLUMNS].sort_values(["annotator_id", "class_id"], ignore_index=True)
        return self

    def _weighted(self, sums: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        """The weighted photo count and weighted IoU sum of each row of sums (gold counting ``gold_weight``)."""
        gold = sums["gold_photos"]
        return (sums["photos"] - gold + self.gold_weight * gold,
                (sums["iou_crowd"] + self.gold_weight * sums["iou_gold"]) / IOU_ONE)

    def weights(self) -> dict[tuple[str, int], float]:
        """(annotator, class) -> vote weight."""
        return {(a, int(c)): float(v) for a, c, v in zip(self.skills_["annotator_id"], self.skills_["class_id"],
                                                         self.skills_["skill"], strict=True)}
