"""Derived samples: SINet-style portrait crops of a person-segmentation source, written as real files.

Each source sample (an image and its mask, listed by ``pipeline.io.datasets``) is decoded like an upload, its mask
read and checked like a trusted mask, and each face found gives a head-and-shoulders crop (and jittered extras,
``pipeline.stages.portrait_crops``). Crops go to a folder as PNGs (lossless: export makes the only new JPEG
generation) with their masks, and ``crops.csv``, the manifest of the crops, which later stages name in their
messages. Faces that give no crop are rejections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline.config import DatasetConfig, IngestConfig
from pipeline.io.datasets import SAMPLE_COLUMNS
from pipeline.io.png import write_mask
from pipeline.report.write import write_csv
from pipeline.spec import Spec
from pipeline.stages.ingest import Unusable, decode, read_photo
from pipeline.stages.portrait_crops import portrait_crops
from pipeline.stages.trusted import load_trusted
from pipeline.tables import REJECTION_COLUMNS, frame, rejection

INDEX_COLUMNS = ["photo_id", "derived_from", "face_x", "face_y", "face_w", "face_h", "crop_x", "crop_y", "crop_w",
                 "crop_h", "extra"]


def crop_id(sample_id: str, face: int, index: int) -> str:
    """A crop's photo id: its source sample's, the face (0 = largest) and the crop (0 = main, then extras)."""
    return f"{sample_id}~{face}.{index}"


def derive(samples: pd.DataFrame, ds: DatasetConfig, spec: Spec, ingest: IngestConfig, out: Path
           ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """(per source sample id, its crops as manifest rows; rejections) of a batch of samples; files go to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    index = out / "crops.csv"
    identity = json.dumps({str(c.id): c.id for c in spec.classes}, sort_keys=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    lines: list[list[Any]] = []
    rejected: list[dict[str, Any]] = []
    for s in samples.itertuples(index=False):
        try:
            image = decode(read_photo(s.path, Path(s.manifest).parent), ingest).pixels
            mask = load_trusted(s.mask, json.loads(s.mask_values), image.shape[0], image.shape[1], spec)
        except Unusable as e:
            rejected.append(_rejection(s, e.code, str(e)))
            continue
        crops, refused = portrait_crops(image, mask, ds.crop, s.photo_id)
        mine = rows.setdefault(s.photo_id, [])
        rejected += [_rejection(s, r.code, f"face {r.face} crop {r.index}: {r.message}" if r.face else r.message)
                     for r in refused]
        for c in crops:
            pid = crop_id(s.photo_id, c.face_index, c.index)
            name = pid.replace("/", "_").replace("~", "_")
            (out / f"{name}.png").write_bytes(crop_bytes(c.image))
            write_mask(c.mask, out / f"{name}.mask.png")
            lines.append([pid, s.photo_id, *c.face, *c.box, c.index])
            attrs = json.loads(s.attrs) | {"derived_from": s.photo_id}
            mine.append({"photo_id": pid, "user_id": s.user_id, "path": str(out / f"{name}.png"), "submitted_at": "",
                         "manifest": str(index), "row": len(lines) + 1, "attrs": json.dumps(attrs, sort_keys=True),
                         "origin": ds.name, "origin_kind": "derived", "mask": str(out / f"{name}.mask.png"),
                         "mask_values": identity})
    write_csv(pd.DataFrame(lines, columns=INDEX_COLUMNS), index)  # formula-safe: reviewers open it
    return ({p: frame(rows.get(p, []), SAMPLE_COLUMNS) for p in samples["photo_id"]},
            frame(rejected, REJECTION_COLUMNS))


def _rejection(sample: Any, code: str, message: str) -> dict[str, Any]:
    return rejection("derive", "photo", code, f"{sample.path}: {message}", file=sample.manifest, row=sample.row,
                     photo_id=sample.photo_id)


def crop_bytes(crop: np.ndarray) -> bytes:
    """A crop as the PNG bytes ``derive`` writes (RGB, compression 1)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("cannot encode a crop")
    return png.tobytes()
