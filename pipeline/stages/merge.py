"""Merge: fuse several annotators' layers into one mask per photo.

Per photo: every crowd assignment is compared with the consensus of the *others* (or with the golden answer);
assignments with left and right swapped are swapped back (or left out); assignments that agree too little are
left out; the rest vote per class, weighted by their pooled skill. A pixel belongs to class c when the weighted
share of remaining annotators who drew c there is at least ``quorum[c]`` (a share exactly at the quorum passes);
regions are painted in spec draw order. The photo is accepted, or needs re-annotation with its reasons.

A class's agreement on a photo is the used annotators' weighted IoU with the crowd's vote. On a photo with a golden
answer the vote is also compared with it (``gold_iou``), which tells what an agreement threshold buys in quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline.config import MergeConfig
from pipeline.spec import Spec
from pipeline.stages.anatomy import measure, measure_columns
from pipeline.stages.polygons import AssignmentLayers, Layer, assignment_layers, composite
from pipeline.stages.skill import SCORE_COLUMNS
from pipeline.tables import REJECTION_COLUMNS, frame, keyed_hash, rejection

MIN_WEIGHT = 0.01  # keeps a photo votable when every annotator's skill estimate is near zero
SPAM_AGREEMENT = 0.2  # agreement below this is indistinguishable from random shapes
MAX_CAMP_SEARCH = 12  # exact orientation search up to this many assignments, greedy above
REPAIR_COLUMNS = ["assignment", "photo_id", "annotator_id", "row", "index", "label", "repair"]


def class_quorum(spec: Spec, overrides: dict[str, float]) -> dict[int, float]:
    """Per-class quorum: the spec's default, overridden by the config's ``merge.quorum``."""
    return _per_class(spec, overrides, "quorum", "merge.quorum")


def class_agreement(spec: Spec, overrides: dict[str, float]) -> dict[int, float]:
    """Per-class agreement threshold: the spec's default, overridden by ``merge.class_agreement``."""
    return _per_class(spec, overrides, "agreement", "merge.class_agreement")


def _per_class(spec: Spec, overrides: dict[str, float], attr: str, key: str) -> dict[int, float]:
    unknown = sorted(set(overrides) - set(spec.names[1:]))
    if unknown:
        raise ValueError(f"{key}: {unknown[0]!r} is not a drawable class of spec {spec.name!r}")
    return {c.id: overrides.get(c.name, getattr(c, attr)) for c in spec.classes[1:]}


def area(layer: Layer | None) -> int:
    return 0 if layer is None else layer.area


def layer_iou(a: Layer | None, b: Layer | None) -> float:
    """IoU of two bbox-local regions; NaN when both are empty."""
    na, nb = area(a), area(b)
    if na + nb == 0:
        return math.nan
    if a is None or b is None:
        return 0.0
    y0, y1, x0, x1 = max(a.y0, b.y0), min(a.y1, b.y1), max(a.x0, b.x0), min(a.x1, b.x1)
    inter = 0 if y1 <= y0 or x1 <= x0 else int(np.count_nonzero(
        a.mask[y0 - a.y0: y1 - a.y0, x0 - a.x0: x1 - a.x0] & b.mask[y0 - b.y0: y1 - b.y0, x0 - b.x0: x1 - b.x0]))
    return inter / (na + nb - inter)


def weighted_region(layers: list[Layer | None], weights: list[float], quorum: float, skip: int = -1
                    ) -> Layer | None:
    """Pixels where the weighted share of voters who drew them reaches ``quorum`` (voter ``skip`` left out).

    A voter without a layer votes 'not this class'.
    """
    return weighted_regions(layers, weights, quorum, [skip])[0]


def weighted_regions(layers: list[Layer | None], weights: list[float], quorum: float, skips: list[int]
                     ) -> list[Layer | None]:
    """``weighted_region`` for each voter left out in turn (-1: nobody), from one pass of weighted counts."""
    drawn = [(k, la, w) for k, (la, w) in enumerate(zip(layers, weights, strict=True)) if la is not None]
    if not drawn:
        return [None] * len(skips)
    y0, x0 = min(la.y0 for _, la, _ in drawn), min(la.x0 for _, la, _ in drawn)
    h, w = max(la.y1 for _, la, _ in drawn) - y0, max(la.x1 for _, la, _ in drawn) - x0
    share = np.zeros((h, w), np.float32)
    for _, la, wt in drawn:
        share[la.y0 - y0: la.y1 - y0, la.x0 - x0: la.x1 - x0] += np.float32(wt) * la.mask
    out: list[Layer | None] = []
    for skip in skips:
        counts, total = share, sum(weights) - (weights[skip] if skip >= 0 else 0.0)
        own = layers[skip] if skip >= 0 else None
        if own is not None:
            counts = share.copy()
            counts[own.y0 - y0: own.y1 - y0, own.x0 - x0: own.x1 - x0] -= np.float32(weights[skip]) * own.mask
        region = (counts >= quorum * total * (1 - 1e-6)) & (counts > 0) if total > 0 else None
        out.append(Layer(y0, x0, region.astype(np.uint8)) if region is not None and region.any() else None)
    return out


def consensus_of_others(crowd: list[AssignmentLayers], classes: list[int], quorum: dict[int, float],
                        weights: dict[tuple[str, int], float]) -> list[dict[int, Layer | None]]:
    """For each crowd assignment, per class, the weighted vote of all the other crowd assignments."""
    per_class = {c: weighted_regions([a.layers.get(c) for a in crowd],
                                     [_w(weights, a.annotator_id, c) for a in crowd], quorum[c],
                                     list(range(len(crowd)))) for c in classes}
    return [{c: per_class[c][k] for c in classes} for k in range(len(crowd))]


def _w(weights: dict[tuple[str, int], float], annotator: str, c: int) -> float:
    return max(MIN_WEIGHT, weights.get((annotator, c), 1.0))


def swap_gain(own: AssignmentLayers, ref: dict[int, Layer | None], pairs: list[tuple[int, int]]) -> float:
    """How much better an assignment agrees with ``ref`` once its left/right classes are exchanged."""
    gain = 0.0
    for left, right in pairs:
        straight = [layer_iou(own.layers.get(left), ref[left]), layer_iou(own.layers.get(right), ref[right])]
        crossed = [layer_iou(own.layers.get(left), ref[right]), layer_iou(own.layers.get(right), ref[left])]
        gain += np.nansum(crossed) - np.nansum(straight)
    return float(gain)


def pair_gain(a: AssignmentLayers, b: AssignmentLayers, pairs: list[tuple[int, int]]) -> float:
    """How much better two assignments agree with one of them read left-for-right."""
    return swap_gain(a, {c: b.layers.get(c) for pair in pairs for c in pair}, pairs)


def swapped_by_reference(crowd: list[AssignmentLayers], ref: dict[int, Layer | None], pairs: list[tuple[int, int]],
                         margin: float) -> list[int]:
    """Assignments that agree better with a trusted reference (a golden answer) once swapped."""
    return [k for k, a in enumerate(crowd) if pairs and swap_gain(a, ref, pairs) > margin]


def swapped_by_camps(crowd: list[AssignmentLayers], pairs: list[tuple[int, int]], margin: float, spec: Spec
                     ) -> list[int]:
    """Split the assignments into two left/right readings and swap the smaller camp.

    Every pair of assignments votes 'same reading' or 'crossed' (when the gain is beyond ``margin``); the split
    that agrees with the most votes wins, weights playing no part. Between two camps of equal size, the one that
    puts the person's left eye on the image's right (an unmirrored photo) is taken as straight.
    """
    n = len(crowd)
    if not pairs or n < 2:
        return []
    votes = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            g = pair_gain(crowd[i], crowd[j], pairs)
            votes[i, j] = votes[j, i] = 1.0 if g > margin else -1.0 if g < -margin else 0.0
    if not (votes > 0).any():
        return []
    best = _best_split(votes)
    straight_votes = [k for k in range(n) if not best[k]]
    if len(straight_votes) * 2 == n and _left_on_image_left(crowd, straight_votes, spec):
        best = ~best
    return [int(k) for k in np.flatnonzero(best)]


def _best_split(votes: np.ndarray) -> np.ndarray:
    """Boolean 'swap' per assignment maximising agreement with the pairwise votes; the swapped camp is the smaller."""
    n = len(votes)

    def score(split: np.ndarray) -> float:
        crossed = split[:, None] != split[None, :]
        return float((votes * np.where(crossed, 1.0, -1.0)).sum())

    if n <= MAX_CAMP_SEARCH:
        splits = ((np.arange(1 << (n - 1))[:, None] >> np.arange(n)) & 1).astype(bool)
        scores = [score(s) for s in splits]
        best = splits[int(np.argmax(scores))]
    else:
        best = np.zeros(n, bool)
        for _ in range(n):
            gains = [score(np.where(np.arange(n) == k, ~best, best)) - score(best) for k in range(n)]
            if max(gains) <= 0:
                break
            best[int(np.argmax(gains))] ^= True
    return ~best if best.sum() * 2 > n else best


def _left_on_image_left(crowd: list[AssignmentLayers], members: list[int], spec: Spec) -> bool:
    """Whether these assignments put the person's left eye left of the right eye in the image."""
    left, right = spec.by_name.get("left_eye"), spec.by_name.get("right_eye")
    if left is None or right is None:
        return False
    xs = [(a.layers[left.id], a.layers[right.id]) for k in members if left.id in (a := crowd[k]).layers
          and right.id in a.layers]
    return bool(xs) and float(np.mean([_cx(lo) - _cx(ro) for lo, ro in xs])) < 0


def _cx(layer: Layer) -> float:
    return layer.x0 + float(np.nonzero(layer.mask)[1].mean())


def mean_iou(own: AssignmentLayers, ref: dict[int, Layer | None], classes: list[int]) -> tuple[float, list[float]]:
    """Mean IoU over the classes either side has, and the per-class IoUs (NaN where neither has it)."""
    ious = [layer_iou(own.layers.get(c), ref[c]) for c in classes]
    finite = [v for v in ious if not math.isnan(v)]
    return (float(np.mean(finite)) if finite else math.nan), ious


@dataclass
class Fusion:
    """The outcome of merging one photo."""

    mask: np.ndarray | None
    agreement: np.ndarray | None  # uint8 share (0-255) of used annotators whose label is the merged one
    source: str  # vote or golden
    status: str  # accepted or needs_reannotation
    reasons: list[str]
    assignments: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    classes: list[dict[str, Any]]
    unanimous: float = math.nan
    used: list[str] = field(default_factory=list)


def fuse_photo(photo_id: str, assignments: list[AssignmentLayers], spec: Spec, cfg: MergeConfig,
               weights: dict[tuple[str, int], float], height: int, width: int, final: bool = True) -> Fusion:
    """Merge one photo. With ``final`` False only the skill scores are computed (an EM pass)."""
    classes = spec.draw_ids
    quorum, needed = class_quorum(spec, cfg.quorum), class_agreement(spec, cfg.class_agreement)
    pairs = _flip_pairs(tuple(spec.flip_lut))
    gold = [a for a in assignments if a.golden]
    crowd = [a for a in assignments if not a.golden and a.annotator_id not in cfg.ban]
    rows = {a.assignment: {"photo_id": photo_id, "assignment": a.assignment, "annotator_id": a.annotator_id,
                           "golden": a.golden, "agreement": math.nan, "swapped": False,
                           "excluded": "banned" if a.annotator_id in cfg.ban else ""} for a in assignments}
    gold_ref = {c: gold[0].layers.get(c) for c in classes} if gold else None

    def references() -> list[dict[int, Layer | None]]:
        """Each crowd assignment's reference: the golden answer, or the vote of the others still counted."""
        if gold_ref is not None:
            return [gold_ref] * len(crowd)
        voters = [a for a in crowd if not rows[a.assignment]["excluded"]]
        others = consensus_of_others(voters, classes, quorum, weights)
        by_key = {a.assignment: ref for a, ref in zip(voters, others, strict=True)}
        if len(voters) < len(crowd):  # a left-out assignment is compared with the vote of all who still count
            everyone = {c: weighted_region([a.layers.get(c) for a in voters], [_w(weights, a.annotator_id, c)
                                                                               for a in voters], quorum[c])
                        for c in classes}
            return [by_key.get(x.assignment, everyone) for x in crowd]
        return others

    flips = (swapped_by_reference(crowd, gold_ref, pairs, cfg.swap_margin) if gold_ref is not None
             else swapped_by_camps(crowd, pairs, cfg.swap_margin, spec))
    for k in flips:
        rows[crowd[k].assignment]["swapped"] = True
        if cfg.swaps == "fix":
            crowd[k] = crowd[k].swapped(spec.flip_lut)
        else:
            rows[crowd[k].assignment]["excluded"] = "swapped"
    refs = references()
    scores = []
    for k, a in enumerate(crowd):
        agreement, ious = mean_iou(a, refs[k], classes)
        rows[a.assignment]["agreement"] = agreement
        scores += [{"photo_id": photo_id, "assignment": a.assignment, "annotator_id": a.annotator_id,
                    "class_id": c, "iou": v, "vs_gold": gold_ref is not None} for c, v in zip(classes, ious,
                                                                                                strict=True)]
    counted = [a for a in crowd if not rows[a.assignment]["excluded"]]
    support = {a.assignment: rows[a.assignment]["agreement"] for a in counted}
    if gold_ref is None and any(v < cfg.min_agreement for v in support.values()):
        # the others' vote can be empty when most of them are spam: a match with any single peer also counts
        for a in counted:
            peers = [mean_iou(a, {c: b.layers.get(c) for c in classes}, classes)[0] for b in counted if b is not a]
            support[a.assignment] = max([np.nan_to_num(support[a.assignment]), *np.nan_to_num(peers)])
    best = sorted(counted, key=lambda a: -np.nan_to_num(support[a.assignment], nan=1.0))
    keep = {a.assignment for a in best[: cfg.min_annotators]
            if np.nan_to_num(support[a.assignment], nan=1.0) >= SPAM_AGREEMENT}
    for a in counted if len(counted) > 1 else []:  # the best min_annotators stay unless they look like spam
        if support[a.assignment] < cfg.min_agreement and a.assignment not in keep:
            rows[a.assignment]["excluded"] = "low_agreement"
    used = [a for a in crowd if not rows[a.assignment]["excluded"]]
    if not final:
        return Fusion(None, None, "", "", [], list(rows.values()), scores, [])
    by_key = {a.assignment: a for a in assignments} | {a.assignment: a for a in crowd}
    return _vote(photo_id, used, gold, rows, scores, spec, cfg, quorum, needed, weights, height, width, by_key)


@cache
def _flip_pairs(flip_lut: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(c, f) for c, f in enumerate(flip_lut) if c < f]


def _vote(photo_id: str, used: list[AssignmentLayers], gold: list[AssignmentLayers], rows: dict[str, dict[str, Any]],
          scores: list[dict[str, Any]], spec: Spec, cfg: MergeConfig, quorum: dict[int, float],
          needed: dict[int, float], weights: dict[tuple[str, int], float], height: int, width: int,
          by_key: dict[str, AssignmentLayers]) -> Fusion:
    classes = spec.draw_ids
    reasons: list[str] = []
    vote = {c: weighted_region([a.layers.get(c) for a in used], [_w(weights, a.annotator_id, c) for a in used],
                               quorum[c]) for c in classes}
    golden = {c: gold[0].layers.get(c) for c in classes} if gold else None
    if cfg.use_golden and golden is not None:
        regions, source = golden, "golden"
    else:
        regions, source = vote, "vote"
        if len(used) < cfg.min_annotators:
            reasons.append(f"too_few_annotators:{len(used)}")
    mask = composite(regions, classes, height, width)
    share = np.ones((height, width), np.float32)  # outside every drawn layer, all agree on background
    every = [la for a in used for la in a.layers.values()]
    if every:
        y0, x0 = min(la.y0 for la in every), min(la.x0 for la in every)
        y1, x1 = max(la.y1 for la in every), max(la.x1 for la in every)
        window = mask[y0:y1, x0:x1]
        agree = np.zeros(window.shape, np.float32)
        for a in used:
            agree += composite(_shifted(a.layers, y0, x0), classes, y1 - y0, x1 - x0) == window
        share[y0:y1, x0:x1] = agree / len(used)
    class_rows, disputed = [], []
    for c in classes:
        ious = [layer_iou(a.layers.get(c), vote[c]) for a in used]
        ws = [_w(weights, a.annotator_id, c) for a in used]
        finite = [(v, w) for v, w in zip(ious, ws, strict=True) if not math.isnan(v)]
        agreement = sum(v * w for v, w in finite) / sum(w for _, w in finite) if finite else math.nan
        pairwise = [layer_iou(a.layers.get(c), b.layers.get(c)) for i, a in enumerate(used) for b in used[i + 1:]]
        pairwise = [v for v in pairwise if not math.isnan(v)]
        if source == "vote" and not math.isnan(agreement) and agreement < needed[c]:
            disputed.append(spec.classes[c].name)
        class_rows.append({"photo_id": photo_id, "class": spec.classes[c].name, "pixels": area(regions[c]),
                           "drawn_by": sum(c in a.layers for a in used), "agreement": agreement,
                           "pairwise_iou": float(np.mean(pairwise)) if pairwise else math.nan,
                           "disputed": spec.classes[c].name in disputed,
                           "gold_iou": layer_iou(vote[c], golden[c]) if golden is not None else math.nan})
    if disputed:
        reasons.append("disputed:" + ",".join(disputed))
    status = "needs_reannotation" if reasons else "accepted"
    unanimous = float(np.mean(share >= 1.0)) if used else math.nan
    for r in rows.values():
        own = by_key[r["assignment"]].layers
        ious = {c: layer_iou(own.get(c), regions[c]) for c in classes}
        finite = [v for v in ious.values() if not math.isnan(v)]
        r.update(used=r["assignment"] in {a.assignment for a in used},
                 mean_iou=float(np.mean(finite)) if finite else 1.0,
                 **{f"iou_{spec.classes[c].name}": v for c, v in ious.items()})
    return Fusion(mask, np.round(share * 255).astype(np.uint8), source, status, reasons, list(rows.values()),
                  scores, class_rows, unanimous, [a.assignment for a in used])


def _shifted(layers: dict[int, Layer], y0: int, x0: int) -> dict[int, Layer]:
    """Layers with their origin moved by (-y0, -x0)."""
    return {c: Layer(la.y0 - y0, la.x0 - x0, la.mask) for c, la in layers.items()}


PHOTO_COLUMNS = ["photo_id", "status", "reasons", "source", "n_assignments", "n_used", "n_golden", "n_swapped",
                 "mean_iou", "median_iou", "unanimous", "mask_path", "agreement_path"]
ASSIGNMENT_COLUMNS = ["photo_id", "assignment", "annotator_id", "golden", "agreement", "swapped", "excluded", "used",
                      "mean_iou", "drawn"]
CLASS_COLUMNS = ["photo_id", "class", "pixels", "drawn_by", "agreement", "pairwise_iou", "disputed", "gold_iou"]


@dataclass
class MergeResult:
    """Tables produced by merging a batch of photos; masks and agreement maps are written to disk.

    ``photos`` also holds each merged mask's anatomy measures (``pipeline.stages.anatomy``), for QA.
    """

    photos: pd.DataFrame
    assignments: pd.DataFrame
    scores: pd.DataFrame
    classes: pd.DataFrame
    rejections: pd.DataFrame
    repairs: pd.DataFrame

    @classmethod
    def of(cls, spec: Spec, photos: list[dict[str, Any]], assignments: list[dict[str, Any]],
           scores: list[dict[str, Any]], classes: list[dict[str, Any]], rejections: list[dict[str, Any]],
           repairs: list[dict[str, Any]]) -> MergeResult:
        """Tables with their declared columns, even when empty."""
        names = [c.name for c in spec.classes]
        return cls(pd.DataFrame(photos, columns=PHOTO_COLUMNS + [f"px_{n}" for n in names] + measure_columns(spec)),
                   pd.DataFrame(assignments, columns=ASSIGNMENT_COLUMNS + [f"iou_{n}" for n in names[1:]]),
                   pd.DataFrame(scores, columns=SCORE_COLUMNS), pd.DataFrame(classes, columns=CLASS_COLUMNS),
                   frame(rejections, REJECTION_COLUMNS), pd.DataFrame(repairs, columns=REPAIR_COLUMNS))


def rasterise_photo(photo: Any, todo: pd.DataFrame, shapes_by: dict[str, list[dict[str, Any]]], min_area: float
                    ) -> tuple[list[AssignmentLayers], list[dict[str, Any]], list[dict[str, Any]]]:
    """Every assignment of one photo as layers, with shape rejections and repairs."""
    layers, rejected, repairs = [], [], []
    for a in todo.itertuples(index=False):
        scale = ((photo.width / a.seen_width, photo.height / a.seen_height)
                 if a.seen_width and a.seen_height else (1.0, 1.0))
        lay, bad, fixed = assignment_layers(shapes_by.get(a.assignment, []), photo.height, photo.width, min_area,
                                            scale)
        layers.append(AssignmentLayers(a.assignment, a.annotator_id, bool(a.golden), lay))
        rejected += [rejection("merge", "shape", b["reason"], b["message"], file=a.file, row=a.row,
                               photo_id=photo.photo_id, annotator_id=a.annotator_id) for b in bad]
        repairs += fixed
    return layers, rejected, repairs


def merge_batch(photos: pd.DataFrame, assignments: pd.DataFrame, shapes: pd.DataFrame, spec: Spec,
                cfg: MergeConfig, weights: dict[tuple[str, int], float], out_dir: Path | None) -> MergeResult:
    """Merge a batch of photos. With ``out_dir`` None this is a scoring pass: only ``scores`` is filled.

    ``assignments`` and ``shapes`` hold only rows of these photos. Masks and agreement maps go to
    ``out_dir/<photo key>.png`` and ``out_dir/<photo key>.agreement.png``.
    """
    shapes_by = {k: g.to_dict("records") for k, g in shapes.groupby("assignment", sort=False)}
    assign_by = {k: g for k, g in assignments.groupby("photo_id", sort=False)}
    photo_rows, assign_rows, score_rows, class_rows, rejected, repairs = [], [], [], [], [], []
    for p in photos.itertuples(index=False):
        todo = assign_by.get(p.photo_id, assignments.iloc[:0]).sort_values("assignment")
        layers, bad, fixed = rasterise_photo(p, todo, shapes_by, cfg.min_shape_area_px)
        result = fuse_photo(p.photo_id, layers, spec, cfg, weights, p.height, p.width, final=out_dir is not None)
        score_rows += result.scores
        if out_dir is None:
            continue
        rejected += bad
        repairs += fixed
        assign_rows += [r | {"drawn": drawn_classes(shapes_by.get(r["assignment"], []), spec)}
                        for r in result.assignments]
        class_rows += result.classes
        key = work_key(p.photo_id)
        cv2.imwrite(str(out_dir / f"{key}.png"), result.mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        cv2.imwrite(str(out_dir / f"{key}.agreement.png"), result.agreement, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        counts = np.bincount(result.mask.ravel(), minlength=len(spec.classes))
        crowd = [r for r in result.assignments if not r["golden"] and r["used"]]
        photo_rows.append({
            "photo_id": p.photo_id, "status": result.status, "reasons": ";".join(result.reasons),
            "source": result.source, "n_assignments": int((~todo["golden"]).sum()), "n_used": len(result.used),
            "n_golden": int(todo["golden"].sum()),
            "n_swapped": sum(r["swapped"] for r in result.assignments),
            "mean_iou": float(np.mean([r["mean_iou"] for r in crowd])) if crowd else math.nan,
            "median_iou": float(np.median([r["mean_iou"] for r in crowd])) if crowd else math.nan,
            "unanimous": result.unanimous, "mask_path": str(out_dir / f"{key}.png"),
            "agreement_path": str(out_dir / f"{key}.agreement.png"),
            **{f"px_{c.name}": int(counts[c.id]) for c in spec.classes}, **measure(result.mask, spec)})
    return MergeResult.of(spec, photo_rows, assign_rows, score_rows, class_rows, rejected, repairs)


def drawn_classes(shapes: list[dict[str, Any]], spec: Spec) -> str:
    """The classes an assignment has shapes for, as submitted (before repairs and rejections), comma-separated."""
    ids = {int(s["class_id"]) for s in shapes}
    return ",".join(c.name for c in spec.classes if c.id in ids)


def held_back(photos: pd.DataFrame, assignments: pd.DataFrame, merged: pd.DataFrame, hold_disputed: bool
              ) -> pd.DataFrame:
    """Rejections for photos that need re-annotation (when held back) and for their assignments."""
    if merged.empty:
        return frame([], REJECTION_COLUMNS)
    need = merged[merged["status"] == "needs_reannotation"]
    if not hold_disputed:
        need = need[need["reasons"].str.startswith("too_few_annotators")]
    where = photos.set_index("photo_id")
    rows = [rejection("merge", "photo", "needs_reannotation", p.reasons, file=where.at[p.photo_id, "manifest"],
                      row=int(where.at[p.photo_id, "row"]), photo_id=p.photo_id) for p in need.itertuples()]
    held = assignments[assignments["photo_id"].isin(set(need["photo_id"]))]
    rows += [rejection("merge", "assignment", "photo_held_back", "its photo needs re-annotation", file=a.file,
                       row=a.row, photo_id=a.photo_id, annotator_id=a.annotator_id) for a in held.itertuples()]
    return frame(rows, REJECTION_COLUMNS)


def one_per_annotator(assignments: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one crowd assignment per (photo, annotator): the last one in the input; reject the earlier ones.

    Two answers from one person must not count as two votes.
    """
    order = assignments.reset_index(drop=True)
    crowd = order[~order["golden"].astype(bool)]
    repeated = crowd.duplicated(["photo_id", "annotator_id"], keep="last")
    later = crowd[~repeated].set_index(["photo_id", "annotator_id"])
    rows = [rejection("merge", "assignment", "duplicate_assignment",
                      f"{a.annotator_id} answered this photo again at {later.at[(a.photo_id, a.annotator_id), 'file']}"
                      f":{later.at[(a.photo_id, a.annotator_id), 'row']}; the later answer is used",
                      file=a.file, row=a.row, photo_id=a.photo_id, annotator_id=a.annotator_id)
            for a in crowd[repeated].itertuples()]
    return order.drop(index=crowd.index[repeated]), frame(rows, REJECTION_COLUMNS)


def work_key(photo_id: str) -> str:
    """A filesystem-safe name for a photo's files in the work directory."""
    return keyed_hash("work", photo_id, 24)
