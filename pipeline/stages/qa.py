"""QA: a registry of small checks over photos, annotations, annotators and the dataset, as one findings table.

Each check has an id, a level and a severity, reads its thresholds from ``QAConfig`` and returns findings; checks
flag, they never drop. Register one with ``@check(id, level, severity)``. The anatomy check runs the annotation
spec's own rules on each merged mask and reports each broken rule as check ``anatomy.<rule id>``, so a spec without
rules (a 2-class portrait spec) gets none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import QAConfig
from pipeline.rows import Rows, added_up, chunks, where
from pipeline.spec import Spec
from pipeline.stages.anatomy import FACE_WIDTH, measure_columns, violations
from pipeline.tables import CROWD, FINDING_COLUMNS, isin, positions

Finding = dict[str, Any]
Findings = list[Finding] | pd.DataFrame
"""What a check returns: a dict per finding (``found``), or, for a check that may find one per photo and class, a
table of them (``found_all``)."""


@dataclass
class QAInputs:
    """Everything the checks may read. ``photos`` holds the published photos with ingest signals, merge results
    and their split; ``assignments`` merge's per-assignment rows and ``classes`` the per-photo, per-class
    agreement (each maybe stored, read a chunk at a time: ``pipeline.rows``); ``repairs`` the polygon repairs."""

    photos: pd.DataFrame
    assignments: Rows
    classes: Rows
    repairs: pd.DataFrame
    annotators: pd.DataFrame
    duplicates: pd.DataFrame
    spec: Spec
    cfg: QAConfig
    ratios: dict[str, float]


@dataclass(frozen=True)
class Check:
    id: str
    level: str  # photo, annotation, annotator or dataset
    severity: str  # info, warning or error
    run: Callable[[QAInputs, Check], Findings]


REGISTRY: list[Check] = []


def check(id: str, level: str, severity: str) -> Callable[[Callable[[QAInputs, Check], Findings]], Check]:
    """Register a check function under an id, a level and a severity."""
    def register(fn: Callable[[QAInputs, Check], Findings]) -> Check:
        registered = Check(id, level, severity, fn)
        REGISTRY.append(registered)
        return registered
    return register


def found(c: Check, subject: str, value: Any, threshold: Any, message: str) -> Finding:
    """One finding of check ``c``."""
    return {"level": c.level, "subject_id": subject, "check": c.id, "severity": c.severity, "value": value,
            "threshold": threshold, "message": message}


def found_all(c: Check, subjects: list[str], values: list[Any], threshold: Any, messages: list[str]) -> pd.DataFrame:
    """Many findings of check ``c`` as one table, each as ``found`` gives it, without a dict per finding."""
    return pd.DataFrame({"level": c.level, "subject_id": subjects, "check": c.id, "severity": c.severity,
                         "value": values, "threshold": threshold, "message": messages}, columns=FINDING_COLUMNS,
                        dtype=object)


def _flag(c: Check, photos: pd.DataFrame, values: pd.Series, bad: pd.Series, threshold: float, what: str
          ) -> list[Finding]:
    return [found(c, p, round(float(v), 4), threshold, f"{what} {v:.3g}")
            for p, v in zip(photos.loc[bad, "photo_id"], values[bad], strict=True)]


# --- photo ------------------------------------------------------------------------------------------------------

@check("low_resolution", "photo", "warning")
def _low_resolution(q: QAInputs, c: Check) -> list[Finding]:
    side = q.photos[["width", "height"]].min(axis=1)
    return _flag(c, q.photos, side, side < q.cfg.min_side, q.cfg.min_side, "shorter side (px)")


@check("blur", "photo", "warning")
def _blur(q: QAInputs, c: Check) -> list[Finding]:
    s = q.photos["sharpness"]
    return _flag(c, q.photos, s, s < q.cfg.min_sharpness, q.cfg.min_sharpness, "variance of the Laplacian")


@check("underexposed", "photo", "warning")
def _dark(q: QAInputs, c: Check) -> list[Finding]:
    b = q.photos["brightness"]
    return _flag(c, q.photos, b, b < q.cfg.dark_below, q.cfg.dark_below, "mean brightness")


@check("overexposed", "photo", "warning")
def _bright(q: QAInputs, c: Check) -> list[Finding]:
    b = q.photos["brightness"]
    return _flag(c, q.photos, b, b > q.cfg.bright_above, q.cfg.bright_above, "mean brightness")


@check("no_face", "photo", "warning")
def _no_face(q: QAInputs, c: Check) -> list[Finding]:
    if not q.cfg.face_checks:
        return []
    faceless = face_width(q.photos) == 0
    return [found(c, p, 0, 1, "no face: the detector found none and the merged mask has none")
            for p in q.photos.loc[faceless, "photo_id"]]


@check("small_face", "photo", "warning")
def _small_face(q: QAInputs, c: Check) -> list[Finding]:
    if not q.cfg.face_checks:
        return []
    width = face_width(q.photos)
    share = width / q.photos[["width", "height"]].min(axis=1)
    bad = (width > 0) & (share < q.cfg.min_face_share)
    return _flag(c, q.photos, share, bad, q.cfg.min_face_share, "face width / shorter side")


def face_width(photos: pd.DataFrame) -> pd.Series:
    """Face width in pixels: from the merged mask where it has a face (annotators overrule a detector that missed
    it), else from the face detector; 0 when neither has one."""
    detected = photos["face_w"].where(photos["faces"] > 0, 0).astype(float)
    if FACE_WIDTH not in photos:
        return detected
    return photos[FACE_WIDTH].where(photos[FACE_WIDTH] > 0, detected).fillna(detected)


@check("greyscale", "photo", "info")
def _greyscale(q: QAInputs, c: Check) -> list[Finding]:
    chroma = q.photos["chroma"]
    return _flag(c, q.photos, chroma, chroma < q.cfg.grey_below, q.cfg.grey_below, "colour spread")


@check("empty_mask", "photo", "error")
def _empty(q: QAInputs, c: Check) -> list[Finding]:
    drawn = sum(q.photos[f"px_{k.name}"] for k in q.spec.classes[1:])
    return [found(c, p, 0, 1, "the merged mask has no labelled pixel") for p in q.photos.loc[drawn == 0, "photo_id"]]


@check("small_part", "photo", "info")
def _small_part(q: QAInputs, c: Check) -> list[Finding]:
    out = []
    for k in q.spec.classes[1:]:
        px = q.photos[f"px_{k.name}"]
        bad = (px > 0) & (px < k.min_area_px)
        out += [found(c, p, int(v), k.min_area_px, f"{k.name} covers only {v} px")
                for p, v in zip(q.photos.loc[bad, "photo_id"], px[bad], strict=True)]
    return out


# --- annotation ---------------------------------------------------------------------------------------------------

@check("few_annotators", "annotation", "warning")
def _few(q: QAInputs, c: Check) -> list[Finding]:
    n = q.photos["n_used"]
    bad = (n < q.cfg.min_annotators_per_photo) & (q.photos["source"] == "vote")
    return [found(c, p, int(v), q.cfg.min_annotators_per_photo, f"merged from {v} assignment(s)")
            for p, v in zip(q.photos.loc[bad, "photo_id"], n[bad], strict=True)]


@check("low_class_agreement", "annotation", "warning")
def _class_agreement(q: QAInputs, c: Check) -> pd.DataFrame:
    rows = where(q.classes, lambda k: k["disputed"].astype(bool) & isin(k["photo_id"], q.photos["photo_id"]),
                 ["photo_id", "class", "agreement"])  # at 200k photos ~140k rows: one finding each
    agreement = rows["agreement"].astype(float).tolist()
    return found_all(c, rows["photo_id"].tolist(), [round(a, 4) for a in agreement], "",
                     [f"{k}: annotators agree at {a:.2f}" for k, a in zip(rows["class"].tolist(), agreement,
                                                                          strict=True)])


@check("class_missing", "annotation", "warning")
def _class_missing(q: QAInputs, c: Check) -> list[Finding]:
    used = q.photos.set_index("photo_id")["n_used"]
    rows = where(q.classes, lambda k: (k["pixels"] == 0) & (k["drawn_by"] > 0),  # the few rows that can fail
                 ["photo_id", "class", "drawn_by", "pixels"])
    rows = rows[isin(rows["photo_id"], used.index)]
    half = rows["photo_id"].map(used).astype(float) / 2
    bad = rows["drawn_by"] > half
    return [found(c, r.photo_id, int(r.drawn_by), "", f"{r['class']} was drawn by {r.drawn_by} annotators but is "
                  "missing from the merged mask") for _, r in rows[bad].iterrows()]


@check("anatomy", "annotation", "warning")
def _anatomy(q: QAInputs, c: Check) -> list[Finding]:
    columns = [k for k in measure_columns(q.spec) if k != FACE_WIDTH and k in q.photos]
    if not columns:
        return []
    out = []
    for at in range(0, len(q.photos), ROWS_AT_ONCE):  # a dict per photo: a chunk of them at a time
        chunk = q.photos.iloc[at:at + ROWS_AT_ONCE]
        for pid, values in zip(chunk["photo_id"], chunk[columns].to_dict("records"), strict=True):
            out += [{**found(c, pid, round(v.value, 4), v.threshold, v.message), "check": f"anatomy.{v.rule}"}
                    for v in violations(values, q.spec)]
    return out


ROWS_AT_ONCE = 10_000


@check("excluded_assignments", "annotation", "info")
def _excluded(q: QAInputs, c: Check) -> list[Finding]:
    a = where(q.assignments, lambda a: a["excluded"].ne("") & a["excluded"].notna(),
              ["photo_id", "annotator_id", "excluded"])
    a = a[isin(a["photo_id"], q.photos["photo_id"])]
    who = (a["annotator_id"].astype(str) + " (" + a["excluded"].astype(str) + ")").groupby(a["photo_id"], sort=True)
    return [found(c, pid, len(names), "", "left out: " + ", ".join(names)) for pid, names in who.agg(list).items()]


@check("polygon_repairs", "annotation", "info")
def _repairs(q: QAInputs, c: Check) -> list[Finding]:
    r = q.repairs[isin(q.repairs["photo_id"], q.photos["photo_id"])]
    kinds = r.groupby(["photo_id", "repair"], sort=True).size().reset_index(name="n")
    kinds["text"] = kinds["repair"].astype(str) + " x" + kinds["n"].astype(str)
    per_photo = kinds.groupby("photo_id", sort=True).agg(n=("n", "sum"), text=("text", ", ".join))
    return [found(c, pid, int(n), "", text) for pid, n, text in zip(per_photo.index, per_photo["n"],
                                                                    per_photo["text"], strict=True)]


# --- annotator ----------------------------------------------------------------------------------------------------

@check("spammer", "annotator", "error")
def _spammer(q: QAInputs, c: Check) -> list[Finding]:
    a = q.annotators[q.annotators["status"] == "spammer"]
    return [found(c, r.annotator_id, round(float(r.spam_score), 4), 0.5, f"unrelated to the others on "
                  f"{r.spam_score:.0%} of {r.photos} photos") for r in a.itertuples()]


@check("swapper", "annotator", "warning")
def _swapper(q: QAInputs, c: Check) -> list[Finding]:
    a = q.annotators[q.annotators["status"] == "swapper"]
    return [found(c, r.annotator_id, int(r.swaps), "", f"left and right swapped on {r.swaps} of {r.photos} photos")
            for r in a.itertuples()]


@check("low_annotator_agreement", "annotator", "warning")
def _low_annotator(q: QAInputs, c: Check) -> list[Finding]:
    a = q.annotators[q.annotators["status"].isin(["ok", "low_agreement"])].dropna(subset=["agreement"])
    if a.empty:
        return []
    median = float(a["agreement"].median())
    floor = min(q.cfg.min_annotator_agreement, median - q.cfg.peer_gap)
    bad = a[a["agreement"] < floor]
    return [found(c, r.annotator_id, round(float(r.agreement), 4), round(floor, 4),
                  f"agreement {r.agreement:.2f} against a peer median of {median:.2f}") for r in bad.itertuples()]


@check("misses_classes", "annotator", "warning")
def _misses(q: QAInputs, c: Check) -> list[Finding]:
    rates = miss_rates(q)
    if rates.empty:
        return []
    peers = rates.groupby("class")["rate"].median()
    floor = np.maximum(q.cfg.max_miss_rate, rates["class"].map(peers) + q.cfg.peer_gap)
    bad = rates[(rates["photos"] >= MIN_MISS_PHOTOS) & (rates["rate"] > floor)].assign(floor=floor)
    return [found(c, a, round(float(g["rate"].max()), 4), round(float(g["floor"].min()), 4), "left out " + ", ".join(
        f"{r['class']} on {r.missed} of {r.photos} photos that have it (peers: {peers[r['class']]:.0%})"
        for _, r in g.iterrows())) for a, g in bad.groupby("annotator_id", sort=True)]


MIN_MISS_PHOTOS = 5  # an annotator's miss rate for a class counts from this many photos that have the class


def miss_rates(q: QAInputs) -> pd.DataFrame:
    """Per crowd annotator and class: photos whose merged mask has the class, and on how many the annotator drew no
    shape of it at all (a shape drawn too thin to count is a repair or rejection, not a miss).

    Annotators already flagged as spammers or banned are left out: their misses are not news.
    """
    px = q.photos[["photo_id", *pixel_columns(q.spec)]].set_index("photo_id")
    skip = set(q.annotators.loc[q.annotators["status"].isin(["spammer", "banned"]), "annotator_id"])
    rows = added_up((chunk_misses(a, px, skip, q.spec) for a in chunks(q.assignments)), ["annotator_id", "class"])
    return rows.assign(rate=rows["missed"] / rows["photos"])


def chunk_misses(a: pd.DataFrame, px: pd.DataFrame, skip: set[str], spec: Spec) -> pd.DataFrame:
    """``miss_rates``' counts over some assignment rows (``px``: the photos by id)."""
    photo = positions(a["photo_id"], px.index)  # read column by column, without copying the rows
    keep = (~a["golden"].astype(bool).to_numpy() & (photo >= 0)) & ~isin(a["annotator_id"], skip).to_numpy()
    photo = photo[keep]
    annotators, names = pd.factorize(a["annotator_id"], sort=True)  # names nobody kept has get no row below
    annotators = annotators[keep]
    sets, combos = pd.factorize(a["drawn"])  # few distinct sets of classes: split each once
    drawn_by_set = [set(str(c).split(",")) for c in combos] + [set()]  # code -1, a missing value: none
    sets = sets[keep]
    parts = [pd.DataFrame({"annotator_id": pd.Series(dtype=object), "class": pd.Series(dtype=object),
                           "photos": pd.Series(dtype=np.int64), "missed": pd.Series(dtype=np.int64)})]
    for k in spec.classes[1:]:
        has = px[f"px_{k.name}"].to_numpy()[photo] > 0
        missed = has & ~np.array([k.name in d for d in drawn_by_set], bool)[sets]
        photos = np.bincount(annotators[has], minlength=len(names))
        mine = photos > 0
        parts.append(pd.DataFrame({"annotator_id": np.asarray(names, dtype=object)[mine], "class": k.name,
                                   "photos": photos[mine],
                                   "missed": np.bincount(annotators[missed], minlength=len(names))[mine]}))
    return pd.concat(parts)


# --- dataset ------------------------------------------------------------------------------------------------------

def published(q: QAInputs, columns: list[str]) -> pd.DataFrame:
    """These columns of the photos in the dataset (QA also sees photos held back or rejected by a reviewer; they
    have no split). Only the columns a check reads: at 200k photos all of them come to ~100 MB."""
    return q.photos.loc[q.photos["split"] != "", columns]


def published_crowd(q: QAInputs, columns: list[str]) -> pd.DataFrame:
    """These columns of the crowd's photos in the dataset: those the split ratios and strata apply to (datasets'
    samples go to the splits their source allows)."""
    crowd = q.photos["origin_kind"] == CROWD if "origin_kind" in q.photos else True
    return q.photos.loc[(q.photos["split"] != "") & crowd, columns]


@check("class_absent", "dataset", "warning")
def _class_absent(q: QAInputs, c: Check) -> list[Finding]:
    photos = published(q, pixel_columns(q.spec))
    return [found(c, "dataset", 0, 1, f"no photo has any {k.name} pixel") for k in q.spec.classes[1:]
            if len(photos) and int(photos[f"px_{k.name}"].sum()) == 0]


@check("split_ratio", "dataset", "warning")
def _split_ratio(q: QAInputs, c: Check) -> list[Finding]:
    photos = published_crowd(q, ["split"])
    if photos.empty:
        return []
    share = photos["split"].value_counts(normalize=True)
    return [found(c, s, round(float(share.get(s, 0.0)), 4), r, f"{share.get(s, 0.0):.1%} of photos, target {r:.1%}")
            for s, r in q.ratios.items() if abs(float(share.get(s, 0.0)) - r) > q.cfg.max_ratio_error]


@check("class_presence_by_split", "dataset", "warning")
def _presence(q: QAInputs, c: Check) -> list[Finding]:
    photos = published_crowd(q, ["split", *pixel_columns(q.spec)])
    out = []
    for k in q.spec.classes[1:]:
        has = photos[f"px_{k.name}"] > 0
        overall = float(has.mean()) if len(has) else 0.0
        for s, part in has.groupby(photos["split"]):
            if len(part) >= 20 and abs(float(part.mean()) - overall) > q.cfg.max_presence_gap:
                out.append(found(c, f"{s}/{k.name}", round(float(part.mean()), 4), round(overall, 4),
                                 f"{k.name} is in {part.mean():.1%} of {s} photos against {overall:.1%} overall"))
    return out


@check("user_across_splits", "dataset", "error")
def _user_leak(q: QAInputs, c: Check) -> list[Finding]:
    photos = published(q, ["user_id", "split"])
    n = photos.groupby("user_id")["split"].nunique()
    return [found(c, u, int(v), 1, f"user's photos are in {v} splits") for u, v in n[n > 1].items()]


@check("duplicate_across_splits", "dataset", "error")
def _dup_leak(q: QAInputs, c: Check) -> list[Finding]:
    photos = published(q, ["photo_id", "split"])
    split = photos.set_index("photo_id")["split"]
    d = q.duplicates[isin(q.duplicates["photo_id"], split.index)]
    n = d.assign(split=d["photo_id"].map(split)).groupby("cluster")["split"].nunique()
    return [found(c, cl, int(v), 1, f"near-duplicate cluster spans {v} splits") for cl, v in n[n > 1].items()]


def pixel_columns(spec: Spec) -> list[str]:
    """The photo table's pixel count of each class but the background."""
    return [f"px_{k.name}" for k in spec.classes[1:]]


def run_checks(q: QAInputs) -> pd.DataFrame:
    """Every registered check, sorted by level, check and subject."""
    parts = [pd.DataFrame(c.run(q, c), columns=FINDING_COLUMNS, dtype=object) for c in REGISTRY]  # a check's
    # findings as rows, not dicts: at 200k photos ~100k findings took ~150 MB as dicts
    findings = pd.concat(parts, ignore_index=True).infer_objects()  # each column's type, as if made at once
    return findings.sort_values(["level", "check", "subject_id"], ignore_index=True)
