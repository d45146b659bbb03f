"""Shared by the merge benchmarks: a simulated crowd rasterised once, and each method's fused mask from it.

Every method sees the same inputs: each assignment's shapes rasterised once by crowdseg (``rasterise_photo``, i.e.
``assignment_layers``), as bbox-local 0/1 layers per class. crowd-kit gets one binary mask per class and annotator
(the annotator's drawn region for the class; person includes the face), and its per-class answers are composed in
spec draw order by crowdseg's ``composite``; SimpleITK gets each annotator's composed class-index mask.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from pipeline.config import IngestConfig, MergeConfig
from pipeline.io.annotations import read_annotations
from pipeline.io.manifest import read_manifest
from pipeline.simulate import simulate
from pipeline.spec import load_spec
from pipeline.stages.ingest import ingest
from pipeline.stages.merge import MIN_WEIGHT, class_quorum, fuse_photo, rasterise_photo, todo_rows, weighted_region
from pipeline.stages.polygons import AssignmentLayers, Layer, composite
from pipeline.stages.skill import SCORE_COLUMNS, PooledSkill

SPEC = load_spec("easyportrait")
CLASSES = SPEC.draw_ids
TIE = 255  # MultiLabelSTAPLE's label for pixels whose best classes tie; they then become background

Weights = dict[tuple[str, int], float]
Window = tuple[int, int, int, int]  # y0, x0, height, width


@dataclass
class Photo:
    """One photo: its size, its assignments and their shapes (the merge stage's inputs), and their layers."""

    photo_id: str
    height: int
    width: int
    todo: pd.DataFrame
    shapes: dict[str, list[dict[str, Any]]]
    layers: list[AssignmentLayers] = field(default_factory=list)

    def rasterise(self) -> list[AssignmentLayers]:
        """Every assignment's layers, as the merge stage rasterises them."""
        return rasterise_photo(self, todo_rows(self.todo), self.shapes, MergeConfig().min_shape_area_px)[0]


def crowd(out: Path, photos: int, seed: int, size: tuple[int, int], profiles: dict[str, float],
          annotators: int = 5, pool: int = 25) -> list[Photo]:
    """Simulate a crowd without golden answers into ``out``, ingest it and rasterise every assignment once."""
    simulate(out, photos=photos, users=max(1, photos // 3), annotators=annotators, pool=pool, seed=seed, size=size,
             profiles=profiles, gold_share=0.0)
    manifest, _ = ingest(read_manifest(out / "photos.csv")[0], IngestConfig(detect_faces=False))
    assignments, shapes, _ = read_annotations(out / "annotations.jsonl", SPEC)
    shapes_by = {k: g.to_dict("records") for k, g in shapes.groupby("assignment", sort=False)}
    by_photo = dict(list(assignments.groupby("photo_id", sort=False)))
    out_photos = []
    for p in manifest.itertuples(index=False):
        todo = by_photo[p.photo_id].sort_values("assignment")
        photo = Photo(p.photo_id, p.height, p.width, todo, {a: shapes_by.get(a, []) for a in todo["assignment"]})
        photo.layers = photo.rasterise()
        out_photos.append(photo)
    return out_photos


def skill_weights(photos: list[Photo], cfg: MergeConfig) -> Weights:
    """The pooled skills after ``cfg.em_iterations`` scoring passes, as the flow's merge stage computes them."""
    weights: Weights = {}
    for _ in range(cfg.em_iterations):
        scores = [s for p in photos
                  for s in fuse_photo(p.photo_id, p.layers, SPEC, cfg, weights, p.height, p.width, final=False).scores]
        weights = PooledSkill(cfg.skill_prior_photos, cfg.gold_weight).fit(pd.DataFrame(scores, columns=SCORE_COLUMNS)
                                                                           ).weights()
    return weights


def crowdseg_mask(photo: Photo, cfg: MergeConfig, weights: Weights) -> np.ndarray:
    """crowdseg's final merge of one photo."""
    return fuse_photo(photo.photo_id, photo.layers, SPEC, cfg, weights, photo.height, photo.width).mask


def vote_mask(photo: Photo, weights: Weights) -> np.ndarray:
    """crowdseg's per-class weighted vote alone, at the spec's quorum: no swap fixing, no exclusion, no statistics.

    With no weights, this is a plain per-class majority.
    """
    quorum = class_quorum(SPEC, {})
    regions = {c: weighted_region([a.layers.get(c) for a in photo.layers],
                                  [max(MIN_WEIGHT, weights.get((a.annotator_id, c), 1.0)) for a in photo.layers],
                                  quorum[c]) for c in CLASSES}
    return composite(regions, CLASSES, photo.height, photo.width)


def class_window(layers: list[Layer], photo: Photo, crop: bool) -> Window:
    """The union bounding box of a class's layers, or the whole photo."""
    if not crop:
        return 0, 0, photo.height, photo.width
    y0, x0 = min(la.y0 for la in layers), min(la.x0 for la in layers)
    return y0, x0, max(la.y1 for la in layers) - y0, max(la.x1 for la in layers) - x0


def crowdkit_input(photo: Photo, crop: bool) -> tuple[pd.DataFrame, dict[int, Window]]:
    """crowd-kit's input for one photo: task = class id, one bool mask per (class, annotator), and each class's window.

    Classes nobody drew are left out (every crowd-kit method gives them an empty answer). With ``crop`` each mask
    covers only the union bounding box of the class's layers; outside it every annotator says 0.
    """
    rows, windows = [], {}
    for c in CLASSES:
        drawn = [a.layers[c] for a in photo.layers if c in a.layers]
        if not drawn:
            continue
        windows[c] = win = class_window(drawn, photo, crop)
        rows += [(c, a.annotator_id, a.layers[c].within(*win).astype(bool) if c in a.layers
                  else np.zeros(win[2:], bool)) for a in photo.layers]
    return pd.DataFrame(rows, columns=["task", "worker", "segmentation"]), windows


def crowdkit_mask(data: pd.DataFrame, windows: dict[int, Window], aggregator: Any, photo: Photo) -> np.ndarray:
    """One-vs-rest answers of a crowd-kit aggregator for every class, composed in spec draw order."""
    if data.empty:
        return np.zeros((photo.height, photo.width), np.uint8)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # RASA divides by an empty union for annotators who skipped a class
        answers = aggregator.fit_predict(data)
    regions = {int(c): Layer(windows[c][0], windows[c][1], np.asarray(m, np.uint8)) for c, m in answers.items()}
    return composite(regions, CLASSES, photo.height, photo.width)


def index_masks(photo: Photo) -> list[np.ndarray]:
    """Each annotator's layers composed into a class-index mask, as crowdseg composes."""
    return [composite(a.layers, CLASSES, photo.height, photo.width) for a in photo.layers]


def staple_mask(masks: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """SimpleITK's MultiLabelSTAPLE over the annotators' index masks, and how many pixels tied.

    Tied ("undecided") pixels become background, which is also what crowdseg gives a pixel no class wins.
    """
    staple = sitk.MultiLabelSTAPLEImageFilter()
    staple.SetLabelForUndecidedPixels(TIE)
    out = sitk.GetArrayFromImage(staple.Execute([sitk.GetImageFromArray(m) for m in masks]))
    ties = out == TIE
    out[ties] = 0
    return out, int(np.count_nonzero(ties))
