"""Merge speed per photo at 1280x960 with 5 annotators: crowdseg against crowd-kit and SimpleITK, one process.

Each method is timed from its rasterised inputs (crowdseg's bbox-local layers; crowd-kit's DataFrame of one bool
mask per class and annotator; SimpleITK's per-annotator class-index masks, all built beforehand) to the final
class-index mask. crowd-kit's majority vote runs one-vs-rest for the 8 drawn classes and is composed in draw order,
on whole-frame masks (its usual input) and on each class's union bounding box (its best case). crowdseg's total adds
rasterising the polygons. Then a cProfile of ``fuse_photo`` shows where crowdseg's time goes.

    python benchmarks/merge_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import table
from crowdkit.aggregation import SegmentationMajorityVote
from merge_common import (
    SPEC,
    Photo,
    crowd,
    crowdkit_input,
    crowdkit_mask,
    crowdseg_mask,
    index_masks,
    skill_weights,
    staple_mask,
    vote_mask,
)

from pipeline.config import MergeConfig
from pipeline.stages.merge import fuse_photo

SIZE = (1280, 960)
PROFILES = {"careful": 0.6, "sloppy": 0.1, "lazy": 0.1, "swapper": 0.1, "spammer": 0.1}
TARGETS = {"crowd-kit MV, whole frame": 3.0, "SimpleITK MultiLabelSTAPLE": 20.0}


def timings(run: Callable[[], Any], repeats: int, photos: int) -> list[float]:
    """Milliseconds per photo of each of ``repeats`` runs over all photos."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        out.append(1000 * (time.perf_counter() - start) / photos)
    return out


def profile_rows(photos: list[Photo], cfg: MergeConfig, weights: dict[tuple[str, int], float], top: int
                 ) -> list[list[str]]:
    """The functions where ``fuse_photo`` spends its own time, most first."""
    profiler = cProfile.Profile()
    profiler.enable()
    for p in photos:
        crowdseg_mask(p, cfg, weights)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_, calls, own, cumulative, _) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}" if line else file
        rows.append([f"{name} ({where})", calls // len(photos), f"{1000 * own / len(photos):.2f}",
                     f"{100 * own / total:.0f}%", f"{1000 * cumulative / len(photos):.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and runs (< 90 s)")
    args = parser.parse_args()
    n_photos, repeats = (3, 3) if args.quick else (8, 5)

    with tempfile.TemporaryDirectory() as tmp:
        photos = [p for p in crowd(Path(tmp), n_photos, 7, SIZE, PROFILES, pool=10)
                  if (p.width, p.height) == SIZE]  # a resized or cropped duplicate has another size
    cfg = MergeConfig()
    weights = skill_weights(photos, cfg)
    whole = [crowdkit_input(p, crop=False) for p in photos]
    boxed = [crowdkit_input(p, crop=True) for p in photos]
    masks = [index_masks(p) for p in photos]

    methods: dict[str, Callable[[], Any]] = {
        "crowdseg fuse_photo": lambda: [crowdseg_mask(p, cfg, weights) for p in photos],
        "crowdseg vote only (weighted_region + composite)": lambda: [vote_mask(p, weights) for p in photos],
        "crowdseg rasterise + fuse_photo": lambda: [fuse_photo(p.photo_id, p.rasterise(), SPEC, cfg, weights,
                                                               p.height, p.width).mask for p in photos],
        "crowd-kit MV, whole frame": lambda: [crowdkit_mask(*x, SegmentationMajorityVote(), p)
                                              for x, p in zip(whole, photos, strict=True)],
        "crowd-kit MV, class boxes": lambda: [crowdkit_mask(*x, SegmentationMajorityVote(), p)
                                              for x, p in zip(boxed, photos, strict=True)],
        "SimpleITK MultiLabelSTAPLE": lambda: [staple_mask(m) for m in masks],
    }
    for run in methods.values():
        run()  # warm-up: imports, caches
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):  # interleaved, so that a slow spell of the machine hits every method alike
        for k, run in methods.items():
            times[k] += timings(run, 1, len(photos))
    ours = times["crowdseg fuse_photo"]
    rows = []
    for k, t in times.items():
        best, median = min(t), statistics.median(t)
        target = f">= {TARGETS[k]:.0f}x" if k in TARGETS else ""
        rows.append([k, f"{best:.1f}", f"{median:.1f}", f"{best / min(ours):.1f}x",
                     f"{median / statistics.median(ours):.1f}x", target])
    print(f"## Merge speed: {len(photos)} photos at {SIZE[0]}x{SIZE[1]}, 5 annotators, {repeats} runs\n")
    print(table(["method", "best ms/photo", "median ms/photo", "best vs fuse_photo", "median vs fuse_photo",
                 "target"], rows))
    print("\n## cProfile of crowdseg fuse_photo (final, with skill weights), per photo\n")
    print(table(["function", "calls", "own ms", "own share", "cumulative ms"], profile_rows(photos, cfg, weights, 15)))


if __name__ == "__main__":
    main()
