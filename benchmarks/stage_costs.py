"""Per-photo CPU of each stage's pure function, beside the floor's decode and encode of the same photos.

One process, one thread, no Prefect: where a cold build's time goes per photo, and how far each stage is from
the physical floor (decode each photo once, encode each mask once). Photos are the first N (by id) of a simulated
crowd with EasyPortrait's devices (FullHD landscape and portrait, 720x960), simulated once into ``--data``.

    python benchmarks/stage_costs.py                 # 100 photos
    python benchmarks/stage_costs.py --photos 300 --profile merge   # and cProfile's top functions of a stage
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from common import table

from pipeline import build as b
from pipeline.config import load_config
from pipeline.io.ballots import Ballots
from pipeline.io.manifest import read_manifest
from pipeline.io.png import encode_mask
from pipeline.io.sources import read_all_annotations
from pipeline.simulate import simulate
from pipeline.stages import export, ingest, merge
from pipeline.tables import CROWD
from pipeline.tuning import tune_process

DEVICES = {"laptop_webcam": 0.25, "phone_fhd": 0.25, "phone_vga": 0.5}


def crowd(data: Path, photos: int) -> Path:
    """A simulated crowd of ``photos`` photos under ``data`` (made once)."""
    folder = data / f"stage-costs-{photos}"
    if not (folder / "config.toml").exists():
        simulate(folder, photos=photos, users=max(1, photos * 8377 // 20000), annotators=5, seed=11,
                 devices=DEVICES)
    return folder


def timed(name: str, n: int, profile: str, f: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """f(*args) and its CPU milliseconds per photo; cProfile's top functions when ``profile`` names it
    (``merge:cumulative`` sorts them by cumulative time)."""
    profile, _, sort = profile.partition(":")
    sort = sort or "tottime"
    prof = cProfile.Profile() if profile == name else None
    start = time.process_time()
    if prof:
        prof.enable()
    out = f(*args)
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats(sort).print_stats(25)
    return out, 1000 * (time.process_time() - start) / max(n, 1)


def floor_ms(paths: list[str], masks: list[np.ndarray]) -> tuple[float, float, float]:
    """The floor's parts per photo: cv2.imdecode of each photo, cv2.imencode (PNG, compression 1) of each mask, and
    (the alternative) crowdseg's own ``encode_mask`` of each mask."""
    data = [np.fromfile(p, np.uint8) for p in paths]

    def ms(f: Callable[[Any], Any], items: list[Any]) -> float:
        start = time.process_time()
        for x in items:
            f(x)
        return 1000 * (time.process_time() - start) / max(len(items), 1)

    return (ms(lambda d: cv2.imdecode(d, cv2.IMREAD_COLOR), data),
            ms(lambda m: cv2.imencode(".png", m, [cv2.IMWRITE_PNG_COMPRESSION, 1]), masks), ms(encode_mask, masks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data"), help="where the crowd is simulated")
    ap.add_argument("--profile", default="", help="ingest, read, score, merge or export: print its cProfile")
    args = ap.parse_args()
    tune_process()  # as the crowdseg command does
    folder = crowd(args.data, args.photos)
    cfg = load_config(folder / "config.toml")
    spec = b.resolve_spec(cfg)
    manifest, _ = read_manifest(cfg.path(cfg.inputs.photos))
    manifest = manifest.sort_values("photo_id", ignore_index=True).assign(origin=CROWD, origin_kind=CROWD)
    n = len(manifest)
    rows = []
    photos, ms = timed("ingest", n, args.profile, lambda: ingest.ingest(manifest, cfg.ingest)[0])
    rows.append(["ingest (decode, hashes, signals)", ms])
    (assignments, shapes, _), ms = timed("read", n, args.profile, read_all_annotations, cfg, spec, manifest)
    rows.append(["read and validate annotations", ms])
    with tempfile.TemporaryDirectory() as tmp:
        ballots = Ballots(Path(tmp) / "ballots", dict(zip(photos["photo_id"], photos["photo_id"], strict=True)))
        _, ms = timed("score", n, args.profile, merge.merge_batch, photos, assignments, shapes, spec, cfg.merge, {},
                      None, True, ballots)
        rows.append(["merge: scoring pass (photos prepared and kept)", ms])
        m, ms = timed("merge", n, args.profile, merge.merge_batch, photos, assignments, shapes.iloc[:0], spec,
                      cfg.merge, {}, Path(tmp), cfg.agreement_maps, ballots.found())
        rows.append(["merge: final vote (prepared photos read back, masks written)", ms])
        kept = b.with_faces(photos, ingest.find_faces(photos.iloc[:0], cfg.ingest))
        published = b.published_table(kept, m.photos, pd.DataFrame({"photo_id": kept["photo_id"], "split": "train"}))
        _, ms = timed("export", len(published), args.profile, export.export_photos, published, Path(tmp) / "out",
                      spec, b"k" * 16, export.ExportOptions.from_config(cfg))
        rows.append(["export (JPEG strip, mask, views, COCO)", ms])
        masks = [cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in m.photos["mask_path"]]
    decode, encode, own = floor_ms(manifest["path"].tolist(), masks)
    total = sum(r[1] for r in rows)
    print(f"{n} photos of {folder}, CPU ms per photo (one process):\n")
    print(table(["step", "ms / photo", "x floor"],
                [[name, f"{v:.1f}", f"{v / (decode + encode):.2f}"] for name, v in rows]
                + [["**all steps**", f"**{total:.1f}**", f"**{total / (decode + encode):.1f}**"],
                   ["floor: decode each photo (cv2.imdecode)", f"{decode:.1f}", ""],
                   ["floor: encode each mask (cv2.imencode PNG, level 1)", f"{encode:.1f}", ""],
                   ["(alternative floor encode: crowdseg's encode_mask)", f"{own:.1f}",
                    f"all steps: {total / (decode + own):.1f}"]]))


if __name__ == "__main__":
    main()
