"""Export: the published dataset tree in EasyPortrait's layout, written to staging and swapped in atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.spec import Spec
from pipeline.stages.ingest import load_oriented
from pipeline.tables import keyed_hash

META_COLUMNS = ["image_name", "user_id", "height", "width", "set", "brightness", "n_annotators", "agreement",
                "source"]


def image_name(photo_id: str, salt: str) -> str:
    """The public file stem of a photo: a keyed hash, so photo ids never leave the build."""
    return keyed_hash(salt, f"photo:{photo_id}", 32)


def public_user(user_id: str, salt: str) -> str:
    """The public pseudonym of a user."""
    return keyed_hash(salt, f"user:{user_id}", 16)


def export_photo(src: str, mask_path: str, root: Path, split: str, name: str, quality: int,
                 ignore: tuple[str, float, int] | None = None) -> None:
    """Write one oriented JPEG (metadata stripped) and its class-index PNG under ``root``.

    ``ignore`` = (agreement map path, minimum vote share, ignore index): pixels below the share get the index.
    """
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    load_oriented(src).save(img_dir / f"{name}.jpg", "JPEG", quality=quality)
    with Image.open(mask_path) as m:
        mask = np.array(m, dtype=np.uint8)
    if ignore is not None:
        agreement_path, share, index = ignore
        with Image.open(agreement_path) as a:
            mask[np.asarray(a) < round(share * 255)] = index
    Image.fromarray(mask, mode="L").save(ann_dir / f"{name}.png", optimize=False)


def meta_table(published: pd.DataFrame, salt: str) -> pd.DataFrame:
    """EasyPortrait's meta.csv columns, plus agreement and provenance, sorted by split and name."""
    meta = pd.DataFrame({
        "image_name": [image_name(p, salt) for p in published["photo_id"]],
        "user_id": [public_user(u, salt) for u in published["user_id"]],
        "height": published["height"].astype(int), "width": published["width"].astype(int),
        "set": published["split"], "brightness": published["brightness"].round(4),
        "n_annotators": published["n_assignments"].astype(int), "agreement": published["median_iou"].round(4),
        "source": published["source"],
    })
    return meta.sort_values(["set", "image_name"], ignore_index=True)[META_COLUMNS]


def dataset_card(meta: pd.DataFrame, classes: pd.DataFrame, spec: Spec, splits: list[str]) -> str:
    """The dataset's README.md: what it is, counts per split, and class presence and pixel share."""
    lines = [f"# {spec.name} dataset (built by crowdseg)", "",
             f"Segmentation masks with {len(spec.classes)} classes, merged from several crowd annotators per photo.",
             "Masks are single-channel PNGs of class indices, the same size as the image.", "",
             "## Splits", "", "| split | photos | users |", "|---|---:|---:|"]
    for s in splits:
        part = meta[meta["set"] == s]
        lines.append(f"| {s} | {len(part)} | {part['user_id'].nunique()} |")
    lines += ["", "No user appears in more than one split.", "", "## Classes", "",
              "| id | class | colour | photos with it | pixel share |", "|---:|---|---|---:|---:|"]
    for c, row in zip(spec.classes, classes.itertuples(index=False), strict=True):
        lines.append(f"| {c.id} | {c.name} | {list(c.color)} | {row.photos} | {row.pixel_share:.4f} |")
    flips = [f"{c.name} <-> {c.flip}" for c in spec.classes if c.flip and c.id < spec.by_name[c.flip].id]
    if flips:
        lines += ["", "Left and right are the person's own. Mirroring an image must swap "
                  + ", ".join(flips) + "."]
    lines += ["", "## Files", "", "- `images/{split}/<image_name>.jpg`", "- `annotations/{split}/<image_name>.png`",
              "- `meta.csv`: " + ", ".join(META_COLUMNS), ""]
    return "\n".join(lines)


def publish(staging: Path, final: Path) -> None:
    """Replace ``final`` with ``staging`` so that readers see the old tree or the new one, never a mix."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    if old.exists():
        shutil.rmtree(old)
