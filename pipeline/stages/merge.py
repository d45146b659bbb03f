"""Merge: fuse several annotators' layers into one mask per photo.

Per photo: every crowd assignment is compared with the consensus of the *others* (or with the golden answer);
assignments with left and right swapped are swapped back (or left out); assignments that agree too little are
left out; the rest vote per class, weighted by their pooled skill. A pixel belongs to class c when the weighted
share of remaining annotators who drew c there is at least ``quorum[c]`` (a share exactly at the quorum passes);
regions are painted in spec draw order. The photo is accepted, or needs re-annotation with its reasons.

A class's agreement on a photo is the used annotators' weighted IoU with the crowd's vote. On a photo with a golden
answer the vote is also compared with it (``gold_iou``), which tells what an agreement threshold buys in quality.

A photo is merged in two steps. ``prepare_photo`` does what the vote weights do not change: it decides the swaps
and tallies the crowd; a build keeps its ``Prepared`` result (``pipeline.io.ballots``), so the final vote after the
scoring pass, and a re-vote with a new quorum, do not rasterise again. ``vote_photo`` then weighs and votes.

Votes and IoUs among the crowd come from one ``Tally`` per class: pixels drawn by the same set of assignments share a
label, so a leave-one-out vote or an IoU is a sum over labels (32 for five assignments) rather than a pass over pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline.config import MergeConfig
from pipeline.io.ballots import Ballots
from pipeline.io.png import write_mask
from pipeline.spec import Spec
from pipeline.stages.anatomy import measure, measure_columns
from pipeline.stages.polygons import (
    AssignmentLayers,
    Layer,
    assignment_layers,
    composite,
    lookup,
    paint_ranks,
    sound_polygons,
    value_counts,
)
from pipeline.stages.skill import SCORE_COLUMNS, score_sums
from pipeline.tables import REJECTION_COLUMNS, frame, isin, keyed_hash, records, rejection

MIN_WEIGHT = 0.01  # keeps a photo votable when every annotator's skill estimate is near zero
SPAM_AGREEMENT = 0.2  # agreement below this is indistinguishable from random shapes
MAX_CAMP_SEARCH = 12  # exact orientation search up to this many assignments, greedy above
Bounds = tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive) of a part of a mask
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


def iou(na: int, nb: int, inter: int) -> float:
    """IoU of two regions from their areas and intersection; NaN when both are empty."""
    return math.nan if na + nb == 0 else inter / (na + nb - inter)


def layer_iou(a: Layer | None, b: Layer | None) -> float:
    """IoU of two bbox-local regions; NaN when both are empty."""
    if a is None or b is None:
        return iou(area(a), area(b), 0)
    y0, y1, x0, x1 = max(a.y0, b.y0), min(a.y1, b.y1), max(a.x0, b.x0), min(a.x1, b.x1)
    inter = 0 if y1 <= y0 or x1 <= x0 else int(np.count_nonzero(
        a.mask[y0 - a.y0: y1 - a.y0, x0 - a.x0: x1 - a.x0] & b.mask[y0 - b.y0: y1 - b.y0, x0 - b.x0: x1 - b.x0]))
    return iou(a.area, b.area, inter)


@dataclass
class Tally:
    """Which of a list of layers cover each pixel of their union window.

    Pixels covered by the same layers share a label, so votes and IoUs among the layers are sums over labels.
    """

    y0: int
    x0: int
    labels: np.ndarray  # window-sized; uint8 while at most 256 sets of layers occur
    drawn: np.ndarray  # bool, labels x layers: the layers covering a label's pixels

    @classmethod
    def of(cls, layers: list[Layer | None]) -> Tally:
        """Each layer in turn splits the labels of the pixels it covers in two."""
        present = [la for la in layers if la is not None]
        y0, x0 = min((la.y0 for la in present), default=0), min((la.x0 for la in present), default=0)
        labels = np.zeros((max((la.y1 for la in present), default=0) - y0,
                           max((la.x1 for la in present), default=0) - x0), np.uint8)
        drawn = np.zeros((1, len(layers)), bool)
        room = 256  # labels the dtype holds
        for k, la in enumerate(layers):
            if la is None:
                continue
            if 2 * len(drawn) > room:
                labels, drawn = _renumbered(labels, drawn)
                room = np.iinfo(labels.dtype).max + 1
            labels[la.y0 - y0: la.y1 - y0, la.x0 - x0: la.x1 - x0] += la.mask * labels.dtype.type(len(drawn))
            drawn = np.concatenate([drawn, drawn])
            drawn[len(drawn) // 2:, k] = True
        return cls(y0, x0, labels, drawn)

    @cached_property
    def pixels(self) -> np.ndarray:
        """Pixels per label (int64)."""
        return value_counts(self.labels, len(self.drawn))

    @cached_property
    def overlaps(self) -> np.ndarray:
        """Pixels covered by both layer i and layer j (int64, layers x layers; the diagonal holds the areas)."""
        drawn = self.drawn.astype(np.int64)
        return drawn.T @ (drawn * self.pixels[:, None])

    def passes(self, weights: list[float], quorum: float, voters: list[int], skip: int = -1) -> np.ndarray:
        """Per label, whether the weighted share of ``voters`` (layer indices; ``skip`` left out) who drew it reaches
        ``quorum``, in float32 sums of the weights in voter order (a share exactly at the quorum passes)."""
        share = np.zeros(len(self.drawn), np.float32)
        for k in voters:
            share += np.float32(weights[k]) * self.drawn[:, k]
        total = sum([weights[k] for k in voters]) - (weights[skip] if skip >= 0 else 0.0)
        if skip >= 0:
            share -= np.float32(weights[skip]) * self.drawn[:, skip]
        if not total > 0:
            return np.zeros(len(share), bool)
        return (share >= quorum * total * (1 - 1e-6)) & (share > 0)

    def loo_ious(self, weights: list[float], quorum: float, voters: list[int]) -> list[float]:
        """Per layer ``k``, ``iou(k, passes(weights, quorum, voters, k))``: its IoU with the vote of the other
        voters (of all of them for a layer that is not a voter), every layer's vote at once (labels x layers)."""
        share = np.zeros(len(self.drawn), np.float32)
        for k in voters:  # summed in voter order, as ``passes`` does
            share += np.float32(weights[k]) * self.drawn[:, k]
        voting = np.zeros(self.drawn.shape[1], bool)
        voting[voters] = True
        own = np.where(voting, weights, 0.0)
        others = share[:, None] - own.astype(np.float32) * self.drawn
        total = sum([weights[k] for k in voters]) - own  # float64, as the weights' Python sums
        # compared in float32, as ``passes`` compares a float32 share with a Python float
        passing = (others >= (quorum * total * (1 - 1e-6)).astype(np.float32)) & (others > 0) & (total > 0)
        covered = self.pixels[:, None] * passing
        voted, inter = covered.sum(axis=0).tolist(), (covered * self.drawn).sum(axis=0).tolist()
        return [iou(int(self.overlaps[k, k]), n, v) for k, (n, v) in enumerate(zip(voted, inter, strict=True))]

    def region(self, passing: np.ndarray) -> Layer | None:
        """The pixels of the passing labels, cropped to their bounding box; None when there are none."""
        if not passing.any():
            return None
        mask = lookup(passing.astype(np.uint8), self.labels)
        x, y, w, h = cv2.boundingRect(mask)
        return Layer(self.y0 + y, self.x0 + x, mask[y: y + h, x: x + w]) if w else None

    def iou(self, k: int, passing: np.ndarray) -> float:
        """IoU of layer ``k`` with the region of the passing labels."""
        covered = self.pixels * passing
        return iou(int(self.overlaps[k, k]), int(covered.sum()), int(covered[self.drawn[:, k]].sum()))

    def ious(self, passing: np.ndarray) -> list[float]:
        """``iou(k, passing)`` of every layer ``k``, from one product."""
        covered = self.pixels * passing
        inter = (covered @ self.drawn).tolist()
        total = int(covered.sum())
        return [iou(int(self.overlaps[k, k]), total, int(v)) for k, v in enumerate(inter)]

    def pair_iou(self, i: int, j: int) -> float:
        """IoU of layers ``i`` and ``j``."""
        return iou(int(self.overlaps[i, i]), int(self.overlaps[j, j]), int(self.overlaps[i, j]))


def _renumbered(labels: np.ndarray, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered to the sets of layers that occur, in a dtype with room to double them."""
    used = np.flatnonzero(value_counts(labels, len(drawn)))
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if 2 * len(used) <= np.iinfo(t).max + 1)
    table = np.zeros(len(drawn), dtype)
    table[used] = np.arange(len(used))
    return table[labels], drawn[used]


def weighted_region(layers: list[Layer | None], weights: list[float], quorum: float, skip: int = -1
                    ) -> Layer | None:
    """Pixels where the weighted share of voters who drew them reaches ``quorum`` (voter ``skip`` left out).

    A voter without a layer votes 'not this class'.
    """
    tally = Tally.of(layers)
    return tally.region(tally.passes(weights, quorum, list(range(len(layers))), skip))


def _w(weights: dict[tuple[str, int], float], annotator: str, c: int) -> float:
    return max(MIN_WEIGHT, weights.get((annotator, c), 1.0))


def swap_gain(own: AssignmentLayers, ref: dict[int, Layer | None], pairs: list[tuple[int, int]]) -> float:
    """How much better an assignment agrees with ``ref`` once its left/right classes are exchanged."""
    gain = 0.0
    for left, right in pairs:
        straight = [layer_iou(own.layers.get(left), ref[left]), layer_iou(own.layers.get(right), ref[right])]
        crossed = [layer_iou(own.layers.get(left), ref[right]), layer_iou(own.layers.get(right), ref[left])]
        gain += _nansum(crossed) - _nansum(straight)
    return float(gain)


def _nansum(values: list[float]) -> float:
    return sum(v for v in values if not math.isnan(v))


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


def mean_iou(ious: list[float], empty: float = math.nan) -> float:
    """Mean of the per-class IoUs that are not NaN (classes neither side has); ``empty`` when there are none."""
    finite = [v for v in ious if not math.isnan(v)]
    return float(np.mean(finite)) if finite else empty


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
    box: Bounds | None = None  # holds every painted pixel of the mask; None: not known


@dataclass
class Ballot:
    """The crowd's layers of each class, tallied, with their vote weights and quorum (``Tally.passes``)."""

    tallies: dict[int, Tally]
    weights: dict[int, list[float]]
    quorum: dict[int, float]

    def passes(self, c: int, voters: list[int]) -> np.ndarray:
        """Per label of class ``c``, whether it wins the vote of ``voters`` (crowd indices)."""
        return self.tallies[c].passes(self.weights[c], self.quorum[c], voters)

    def split_pixels(self, voters: list[int], passing: dict[int, np.ndarray], classes: list[int]) -> int:
        """Pixels where the ``voters``' own composites are not all the vote's (``passing``: per class, the labels
        that win the vote of these voters; ``classes``: draw order).

        A pixel is unanimous when no voter drew anything there, or when every voter drew the topmost class any of
        them drew there and it wins; elsewhere voters who drew it and voters who did not differ on the pixel's
        class. So the topmost class drawn at a pixel decides it: classes are painted bottom to top, each with its
        verdict per label, and the pixels left split are counted.
        """
        tallies = [(self.tallies[c], passing[c]) for c in classes if self.tallies[c].labels.size]
        if not tallies or not voters:
            return 0
        y0, x0 = min(t.y0 for t, _ in tallies), min(t.x0 for t, _ in tallies)
        y1, x1 = max(t.y0 + t.labels.shape[0] for t, _ in tallies), max(t.x0 + t.labels.shape[1] for t, _ in tallies)
        verdict = np.zeros((y1 - y0, x1 - x0), np.uint8)  # 0 nobody drew, 1 unanimous, 2 split
        for tally, wins in tallies:
            drawn = tally.drawn[:, voters]
            some = drawn.any(axis=1)
            if some.any():
                mine = lookup(some.astype(np.uint8) + (some & ~(drawn.all(axis=1) & wins)), tally.labels)
                cv2.copyTo(mine, mine, verdict[tally.y0 - y0: tally.y0 - y0 + mine.shape[0],
                                               tally.x0 - x0: tally.x0 - x0 + mine.shape[1]])  # in place
        return int(np.count_nonzero(verdict == 2))


@dataclass
class Prepared:
    """The part of merging one photo that the vote weights do not change: its assignments rasterised, left/right
    swaps decided, the crowd's layers tallied per class, and what rasterising rejected or repaired.

    A build keeps it (``pipeline.io.ballots``), so the final vote after a scoring pass, and a re-vote after a
    quorum change, neither rasterise nor tally again. The crowd's own layers are not kept: ``crowd_layers`` cuts one
    out of its tallies, exactly as it was, when the agreement map or a golden answer needs it.
    """

    photo_id: str
    crowd: list[tuple[str, str]]  # (assignment, annotator) of the tallied crowd, in tally order
    boxes: dict[int, list[Bounds | None]]  # per class, each crowd layer's window (None: no layer)
    tallies: dict[int, Tally]
    aside: list[AssignmentLayers]  # golden and banned assignments, which are not tallied
    rows: dict[str, dict[str, Any]]  # per assignment, before the vote: swapped, and excluded when banned or swapped
    gold_ious: dict[int, list[float]] | None  # per class, each crowd layer's IoU with the golden answer
    rejections: list[dict[str, Any]] = field(default_factory=list)  # shapes rasterising rejected
    repairs: list[dict[str, Any]] = field(default_factory=list)
    drawn: dict[str, str] = field(default_factory=dict)  # per assignment, ``drawn_classes``

    @property
    def gold(self) -> list[AssignmentLayers]:
        return [a for a in self.aside if a.golden]

    def crowd_layers(self, k: int) -> dict[int, Layer]:
        """Crowd assignment ``k``'s layers (after any swap), cut out of the tallies in their own windows."""
        out = {}
        for c, tally in self.tallies.items():
            box = self.boxes[c][k]
            if box is not None:
                y0, x0, y1, x1 = box
                mine = lookup(tally.drawn[:, k].astype(np.uint8), tally.labels)
                out[c] = Layer(y0, x0, mine[y0 - tally.y0: y1 - tally.y0, x0 - tally.x0: x1 - tally.x0])
        return out


def prepare_photo(photo_id: str, assignments: list[AssignmentLayers], spec: Spec, cfg: MergeConfig) -> Prepared:
    """Swap left and right back where a golden answer or the crowd's camps say so, and tally the crowd."""
    classes = spec.draw_ids
    pairs = _flip_pairs(tuple(spec.flip_lut))
    gold = [a for a in assignments if a.golden]
    crowd = [a for a in assignments if not a.golden and a.annotator_id not in cfg.ban]
    rows = {a.assignment: {"photo_id": photo_id, "assignment": a.assignment, "annotator_id": a.annotator_id,
                           "golden": a.golden, "agreement": math.nan, "swapped": False,
                           "excluded": "banned" if a.annotator_id in cfg.ban else ""} for a in assignments}
    gold_ref = {c: gold[0].layers.get(c) for c in classes} if gold else None
    flips = (swapped_by_reference(crowd, gold_ref, pairs, cfg.swap_margin) if gold_ref is not None
             else swapped_by_camps(crowd, pairs, cfg.swap_margin, spec))
    for k in flips:
        rows[crowd[k].assignment]["swapped"] = True
        if cfg.swaps == "fix":
            crowd[k] = crowd[k].swapped(spec.flip_lut)
        else:
            rows[crowd[k].assignment]["excluded"] = "swapped"
    tallies = {c: Tally.of([a.layers.get(c) for a in crowd]) for c in classes}
    boxes = {c: [(la.y0, la.x0, la.y1, la.x1) if (la := a.layers.get(c)) is not None else None for a in crowd]
             for c in classes}
    gold_ious = ({c: [layer_iou(a.layers.get(c), gold_ref[c]) for a in crowd] for c in classes}
                 if gold_ref is not None else None)
    for tally in tallies.values():  # counted now, so that a kept prepared photo holds the counts
        tally.overlaps  # noqa: B018
    tallied = {a.assignment for a in crowd}
    return Prepared(photo_id, [(a.assignment, a.annotator_id) for a in crowd], boxes, tallies,
                    [a for a in assignments if a.assignment not in tallied], rows, gold_ious)


def fuse_photo(photo_id: str, assignments: list[AssignmentLayers], spec: Spec, cfg: MergeConfig,
               weights: dict[tuple[str, int], float], height: int, width: int, final: bool = True,
               agreement_map: bool = True) -> Fusion:
    """Merge one photo: ``vote_photo`` of ``prepare_photo``."""
    return vote_photo(prepare_photo(photo_id, assignments, spec, cfg), spec, cfg, weights, height, width, final,
                      agreement_map)


def vote_photo(prep: Prepared, spec: Spec, cfg: MergeConfig, weights: dict[tuple[str, int], float], height: int,
               width: int, final: bool = True, agreement_map: bool = True) -> Fusion:
    """Merge one prepared photo. With ``final`` False only the skill scores are computed (an EM pass); with
    ``agreement_map`` False the Fusion's agreement map is None (its ``unanimous`` share is still measured)."""
    classes = spec.draw_ids
    quorum, needed = class_quorum(spec, cfg.quorum), class_agreement(spec, cfg.class_agreement)
    rows = {key: dict(r) for key, r in prep.rows.items()}
    ballot = Ballot(prep.tallies, {c: [_w(weights, who, c) for _, who in prep.crowd] for c in classes}, quorum)
    counted = [k for k, (key, _) in enumerate(prep.crowd) if not rows[key]["excluded"]]

    # IoU with the reference: the golden answer, or the vote of the others still counted (of all who count, for an
    # assignment left out)
    reference = (prep.gold_ious if prep.gold_ious is not None else
                 {c: ballot.tallies[c].loo_ious(ballot.weights[c], ballot.quorum[c], counted) for c in classes})
    scores = []
    for k, (key, who) in enumerate(prep.crowd):
        ious = [reference[c][k] for c in classes]
        rows[key]["agreement"] = mean_iou(ious)
        scores += [{"photo_id": prep.photo_id, "assignment": key, "annotator_id": who, "class_id": c, "iou": v,
                    "vs_gold": prep.gold_ious is not None} for c, v in zip(classes, ious, strict=True)]
    if not final:
        return Fusion(None, None, "", "", [], list(rows.values()), scores, [])
    support = {k: rows[prep.crowd[k][0]]["agreement"] for k in counted}
    if prep.gold_ious is None and any(v < cfg.min_agreement for v in support.values()):
        # the others' vote can be empty when most of them are spam: a match with any single peer also counts
        for k in counted:
            peers = [mean_iou([ballot.tallies[c].pair_iou(k, j) for c in classes]) for j in counted if j != k]
            support[k] = max([np.nan_to_num(support[k]), *np.nan_to_num(peers)])
    best = sorted(counted, key=lambda k: -np.nan_to_num(support[k], nan=1.0))
    keep = {k for k in best[: cfg.min_annotators] if np.nan_to_num(support[k], nan=1.0) >= SPAM_AGREEMENT}
    for k in counted if len(counted) > 1 else []:  # the best min_annotators stay unless they look like spam
        if support[k] < cfg.min_agreement and k not in keep:
            rows[prep.crowd[k][0]]["excluded"] = "low_agreement"
    used = [k for k in counted if not rows[prep.crowd[k][0]]["excluded"]]
    return _vote(prep, used, rows, scores, spec, cfg, needed, ballot, height, width, agreement_map)


@cache
def _flip_pairs(flip_lut: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(c, f) for c, f in enumerate(flip_lut) if c < f]


def _vote(prep: Prepared, used: list[int], rows: dict[str, dict[str, Any]], scores: list[dict[str, Any]], spec: Spec,
          cfg: MergeConfig, needed: dict[int, float], ballot: Ballot, height: int, width: int, agreement_map: bool
          ) -> Fusion:
    """The final vote of the ``used`` crowd assignments (indices into ``prep.crowd``), its agreement and its
    tables."""
    classes = spec.draw_ids
    reasons: list[str] = []
    passing = {c: ballot.passes(c, used) for c in classes}
    vote = {c: ballot.tallies[c].region(passing[c]) for c in classes}
    gold = prep.gold
    golden = {c: gold[0].layers.get(c) for c in classes} if gold else None
    if cfg.use_golden and golden is not None:
        regions, source = golden, "golden"
    else:
        regions, source = vote, "vote"
        if len(used) < cfg.min_annotators:
            reasons.append(f"too_few_annotators:{len(used)}")
    mask = composite(regions, classes, height, width)
    if source == "vote" and not agreement_map and used:  # the share alone: from the tallies, without pixels
        shares, unanimous = None, (height * width - ballot.split_pixels(used, passing, classes)) / (height * width)
    else:
        shares, unanimous = _agreement(mask, [prep.crowd_layers(k) for k in used], classes, agreement_map)
    class_rows, disputed = [], []
    tallied_ious = {c: ballot.tallies[c].ious(passing[c]) for c in classes}
    for c in classes:
        tally = ballot.tallies[c]
        ious = [tallied_ious[c][k] for k in used]
        ws = [ballot.weights[c][k] for k in used]
        finite = [(v, w) for v, w in zip(ious, ws, strict=True) if not math.isnan(v)]
        agreement = sum(v * w for v, w in finite) / sum(w for _, w in finite) if finite else math.nan
        pairwise = [tally.pair_iou(i, j) for n, i in enumerate(used) for j in used[n + 1:]]
        pairwise = [v for v in pairwise if not math.isnan(v)]
        if source == "vote" and not math.isnan(agreement) and agreement < needed[c]:
            disputed.append(spec.classes[c].name)
        class_rows.append({"photo_id": prep.photo_id, "class": spec.classes[c].name, "pixels": area(regions[c]),
                           "drawn_by": sum(prep.boxes[c][k] is not None for k in used), "agreement": agreement,
                           "pairwise_iou": float(np.mean(pairwise)) if pairwise else math.nan,
                           "disputed": spec.classes[c].name in disputed,
                           "gold_iou": layer_iou(vote[c], golden[c]) if golden is not None else math.nan})
    if disputed:
        reasons.append("disputed:" + ",".join(disputed))
    status = "needs_reannotation" if reasons else "accepted"
    tallied = {key: k for k, (key, _) in enumerate(prep.crowd)}
    used_keys = {prep.crowd[k][0] for k in used}
    layers = {a.assignment: a.layers for a in prep.aside}
    for r in rows.values():
        k = tallied.get(r["assignment"])
        if source == "vote" and k is not None:
            ious = {c: tallied_ious[c][k] for c in classes}
        else:
            own = layers[r["assignment"]] if k is None else prep.crowd_layers(k)
            ious = {c: layer_iou(own.get(c), regions[c]) for c in classes}
        r.update(used=r["assignment"] in used_keys, mean_iou=mean_iou(list(ious.values()), 1.0),
                 **{f"iou_{spec.classes[c].name}": v for c, v in ious.items()})
    return Fusion(mask, shares, source, status, reasons, list(rows.values()), scores, class_rows, unanimous,
                  [prep.crowd[k][0] for k in used], painted_box(regions.values()))


def painted_box(layers: Iterable[Layer | None]) -> Bounds | None:
    """(y0, x0, y1, x1) of the union of the layers' boxes, None when there are none."""
    present = [la for la in layers if la is not None]
    if not present:
        return None
    return (min(la.y0 for la in present), min(la.x0 for la in present), max(la.y1 for la in present),
            max(la.x1 for la in present))


def window(mask: np.ndarray, box: Bounds | None) -> np.ndarray:
    """The part of ``mask`` inside ``box`` (a view), or the whole mask when ``box`` is None."""
    if box is None:
        return mask
    y0, x0, y1, x1 = box
    return mask[y0:y1, x0:x1]


def _agreement(mask: np.ndarray, used: list[dict[int, Layer]], classes: list[int], as_map: bool = True
               ) -> tuple[np.ndarray | None, float]:
    """Per pixel, the uint8 share (0-255) of the used assignments whose own composite gives it the merged class
    (None unless ``as_map``), and the share of pixels where they all do (NaN without assignments)."""
    every = [la for layers in used for la in layers.values()]
    if not every:
        return np.full(mask.shape, 255, np.uint8) if as_map else None, 1.0 if used else math.nan
    y0, x0 = min(la.y0 for la in every), min(la.x0 for la in every)
    y1, x1 = max(la.y1 for la in every), max(la.x1 for la in every)
    merged = mask[y0:y1, x0:x1]
    if classes != list(range(1, len(classes) + 1)):  # compare draw positions, which paint_ranks paints
        rank = np.zeros(256, np.uint8)
        rank[classes] = np.arange(1, len(classes) + 1)
        merged = lookup(rank, merged)
    agree = np.zeros(merged.shape, np.min_scalar_type(len(used)))
    own = np.empty_like(merged)
    for layers in used:
        own.fill(0)
        np.add(agree, np.equal(paint_ranks(layers, classes, own, y0, x0), merged), out=agree)
    unanimous = mask.size - merged.size + int(np.count_nonzero(agree == len(used)))  # share 1.0 only where all agree
    if not as_map:
        return None, unanimous / mask.size
    agreement = np.full(mask.shape, 255, np.uint8)  # outside every drawn layer, all agree on background
    share = np.arange(len(used) + 1, dtype=np.float32) / len(used)
    agreement[y0:y1, x0:x1] = lookup(np.round(share * 255).astype(np.uint8), agree)
    return agreement, unanimous / mask.size


PHOTO_COLUMNS = ["photo_id", "status", "reasons", "source", "n_assignments", "n_used", "n_golden", "n_swapped",
                 "mean_iou", "median_iou", "unanimous", "mask_path", "agreement_path"]
ASSIGNMENT_COLUMNS = ["photo_id", "assignment", "annotator_id", "golden", "agreement", "swapped", "excluded", "used",
                      "mean_iou", "drawn"]
CLASS_COLUMNS = ["photo_id", "class", "pixels", "drawn_by", "agreement", "pairwise_iou", "disputed", "gold_iou"]


@dataclass
class MergeResult:
    """Tables produced by merging a batch of photos; masks and agreement maps are written to disk.

    ``photos`` also holds each merged mask's anatomy measures (``pipeline.stages.anatomy``), for QA. ``scores``
    holds a batch's score rows (``SCORE_COLUMNS``), or only their ``skill.score_sums`` after ``summed``.
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

    def summed(self) -> MergeResult:
        """This result with its score rows reduced to per-(annotator, class) sums: all a build keeps of them."""
        return replace(self, scores=score_sums(self.scores))


TODO_COLUMNS = ("assignment", "annotator_id", "golden", "seen_width", "seen_height", "file", "row")


def todo_rows(assignments: pd.DataFrame) -> list[tuple[Any, ...]]:
    """The ``TODO_COLUMNS`` of each assignment, as plain tuples."""
    return list(zip(*(assignments[c].tolist() for c in TODO_COLUMNS), strict=True))


def rasterise_photo(photo: Any, rows: list[tuple[Any, ...]], shapes_by: dict[str, list[dict[str, Any]]],
                    min_area: float) -> tuple[list[AssignmentLayers], list[dict[str, Any]], list[dict[str, Any]]]:
    """Every assignment of one photo (``rows``: the ``todo_rows`` of its assignments) as layers, with shape
    rejections and repairs."""
    scales = [(photo.width / seen_width, photo.height / seen_height) if seen_width and seen_height else (1.0, 1.0)
              for _, _, _, seen_width, seen_height, _, _ in rows]
    mine = [shapes_by.get(key, []) for key, *_ in rows]
    sound = iter(sound_polygons([s for shapes in mine for s in shapes], photo.width, photo.height, min_area,
                                [sc for shapes, sc in zip(mine, scales, strict=True) for _ in shapes]))
    layers, rejected, repairs = [], [], []
    for (key, annotator, golden, _, _, file, row), shapes, scale in zip(rows, mine, scales, strict=True):
        lay, bad, fixed = assignment_layers(shapes, photo.height, photo.width, min_area, scale,
                                            [next(sound) for _ in shapes])
        layers.append(AssignmentLayers(key, annotator, bool(golden), lay))
        rejected += [rejection("merge", "shape", b["reason"], b["message"], file=file, row=row,
                               photo_id=photo.photo_id, annotator_id=annotator) for b in bad]
        repairs += fixed
    return layers, rejected, repairs


def prepare(photo: Any, rows: list[tuple[Any, ...]], shapes_by: dict[str, list[dict[str, Any]]], spec: Spec,
            cfg: MergeConfig) -> Prepared:
    """``prepare_photo`` of one photo's assignments (``rows``: their ``todo_rows``) as ``rasterise_photo`` makes
    them, with the shapes it rejected or repaired and the classes each assignment drew."""
    layers, rejected, repairs = rasterise_photo(photo, rows, shapes_by, cfg.min_shape_area_px)
    return replace(prepare_photo(photo.photo_id, layers, spec, cfg), rejections=rejected, repairs=repairs,
                   drawn={key: drawn_classes(shapes_by.get(key, []), spec) for key, *_ in rows})


def merge_batch(photos: pd.DataFrame, assignments: pd.DataFrame, shapes: pd.DataFrame, spec: Spec,
                cfg: MergeConfig, weights: dict[tuple[str, int], float], out_dir: Path | None,
                agreement_maps: bool = True, ballots: Ballots | None = None) -> MergeResult:
    """Merge a batch of photos. With ``out_dir`` None this is a scoring pass: only ``scores`` is filled.

    ``assignments`` and ``shapes`` hold only rows of these photos. Masks go to ``out_dir/<photo key>.png`` and,
    when ``agreement_maps``, agreement maps to ``out_dir/<photo key>.agreement.png`` (else agreement_path is "").
    With ``ballots``, a photo they found (``Ballots.found``) is read back from there (``shapes`` need not hold its
    shapes), and one prepared now is kept there.
    """
    shapes_by: dict[str, list[dict[str, Any]]] = {}
    for s in records(shapes):
        shapes_by.setdefault(s["assignment"], []).append(s)
    todo_by: dict[str, list[tuple[Any, ...]]] = {}
    for pid, row in zip(assignments["photo_id"].tolist(), todo_rows(assignments), strict=True):
        todo_by.setdefault(pid, []).append(row)
    photo_rows, assign_rows, score_rows, class_rows, rejected, repairs = [], [], [], [], [], []
    for p in photos.itertuples(index=False):
        todo = sorted(todo_by.get(p.photo_id, []), key=lambda r: r[0])  # by assignment key
        prep = None if ballots is None else ballots.load(p.photo_id)
        if prep is None:
            prep = prepare(p, todo, shapes_by, spec, cfg)
            if ballots is not None:
                ballots.save(p.photo_id, prep)
        result = vote_photo(prep, spec, cfg, weights, p.height, p.width, final=out_dir is not None,
                            agreement_map=agreement_maps)
        score_rows += result.scores
        if out_dir is None:
            continue
        rejected += prep.rejections
        repairs += prep.repairs
        assign_rows += [r | {"drawn": prep.drawn[r["assignment"]]} for r in result.assignments]
        class_rows += result.classes
        crowd = [r for r in result.assignments if not r["golden"] and r["used"]]
        photo_rows.append(photo_row(
            p.photo_id, result.mask, result.agreement, out_dir, spec, result.box, status=result.status,
            reasons=";".join(result.reasons), source=result.source, n_assignments=sum(not r[2] for r in todo),
            n_used=len(result.used), n_golden=sum(bool(r[2]) for r in todo),
            n_swapped=sum(r["swapped"] for r in result.assignments),
            mean_iou=float(np.mean([r["mean_iou"] for r in crowd])) if crowd else math.nan,
            median_iou=float(np.median([r["mean_iou"] for r in crowd])) if crowd else math.nan,
            unanimous=result.unanimous))
    return MergeResult.of(spec, photo_rows, assign_rows, score_rows, class_rows, rejected, repairs)


def photo_row(photo_id: str, mask: np.ndarray, agreement: np.ndarray | None, out_dir: Path, spec: Spec,
              box: Bounds | None = None, **fields: Any) -> dict[str, Any]:
    """Write a photo's mask and agreement map (unless None) to ``out_dir``; its row of ``MergeResult.photos``
    (``fields`` give the status and vote columns; pixel counts, paths and anatomy measures are added here).

    With ``box`` (``Fusion.box``), pixels are counted and measured only in its ``window``: the anatomy measures
    are relative positions, sizes and shares, which cropping blank pixels away leaves as they are (to 1e-9: the
    centroids are summed from another origin)."""
    key = work_key(photo_id)
    write_mask(mask, out_dir / f"{key}.png")
    if agreement is not None:
        write_mask(agreement, out_dir / f"{key}.agreement.png")
    painted = window(mask, box)
    counts = value_counts(painted, len(spec.classes))
    counts[0] += mask.size - painted.size
    return {"photo_id": photo_id, **fields, "mask_path": str(out_dir / f"{key}.png"),
            "agreement_path": "" if agreement is None else str(out_dir / f"{key}.agreement.png"),
            **{f"px_{c.name}": int(counts[c.id]) for c in spec.classes}, **measure(painted, spec)}


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
    held = assignments[isin(assignments["photo_id"], set(need["photo_id"]))]
    rows += [rejection("merge", "assignment", "photo_held_back", "its photo needs re-annotation", file=a.file,
                       row=a.row, photo_id=a.photo_id, annotator_id=a.annotator_id) for a in held.itertuples()]
    return frame(rows, REJECTION_COLUMNS)


def one_per_annotator(assignments: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one crowd assignment per (photo, annotator): the last one in the input; reject the earlier ones.

    Two answers from one person must not count as two votes.
    """
    order = assignments.reset_index(drop=True)
    crowd = order.loc[~order["golden"].astype(bool), ["photo_id", "annotator_id", "file", "row"]]
    repeated = crowd.duplicated(["photo_id", "annotator_id"], keep="last")
    again = crowd[repeated]
    if again.empty:  # the usual case: the table as it came, not a copy of it
        return order, frame([], REJECTION_COLUMNS)
    mine = crowd[isin(crowd["photo_id"], again["photo_id"])]  # the photos answered twice by someone: few
    later = mine[~repeated[mine.index]].set_index(["photo_id", "annotator_id"])
    rows = [rejection("merge", "assignment", "duplicate_assignment",
                      f"{a.annotator_id} answered this photo again at {later.at[(a.photo_id, a.annotator_id), 'file']}"
                      f":{later.at[(a.photo_id, a.annotator_id), 'row']}; the later answer is used",
                      file=a.file, row=a.row, photo_id=a.photo_id, annotator_id=a.annotator_id)
            for a in again.itertuples()]
    return order.drop(index=again.index), frame(rows, REJECTION_COLUMNS)


def work_key(photo_id: str) -> str:
    """A filesystem-safe name for a photo's files in the work directory."""
    return keyed_hash("work", photo_id, 24)
