"""Dedup recall and precision: per duplicate kind on a simulated crowd, and on imagededup's real UKBench fixtures.

A simulated crowd (truth in truth/duplicates.csv) goes through ``read_manifest``, ``ingest`` and
``find_duplicates`` with default settings. A true duplicate is found when it lands in its original's cluster
with one of the two dropped; a predicted pair (a dropped photo and the one kept instead, or a grouped or flagged
photo and its cluster's best copy) is right when both show the same picture. The real-data part runs
imagededup's own test photos (resize, flip, rotation, greyscale, alpha, re-encode, the same bytes under wrong
extensions, a corrupt file) through the same stages, next to imagededup's PHash at its default threshold.

    python benchmarks/dedup_recall.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import REALDATA, imagededup, table

from pipeline.config import DedupConfig, IngestConfig
from pipeline.io.manifest import read_manifest
from pipeline.simulate import simulate
from pipeline.stages.dedup import find_duplicates
from pipeline.stages.ingest import ingest

KINDS = ("exact_cross_user", "recompressed", "resized", "cropped", "brightness", "mirrored")
TARGET = 0.99
UKBENCH = REALDATA / "imagededup" / "data"
# imagededup's fixtures as three users' uploads: (folder, file, user, picture it shows or "" if unique, variant)
REAL_FILES = [
    ("mixed_images", "ukbench00120.jpg", "u1", "00120", "original"),
    ("mixed_images", "ukbench00120_resize.jpg", "u1", "00120", "resized to 300x300"),
    ("mixed_images", "ukbench00120_hflip.jpg", "u1", "00120", "mirrored"),
    ("mixed_images", "ukbench00120_rotation.jpg", "u1", "00120", "rotated (a pHash is not expected to match)"),
    ("mixed_images", "ukbench09268.jpg", "u1", "09268", "original"),
    ("mixed_images", "ukbench09268_corrupt.jpg", "u1", "", "corrupt: must be rejected with a reason"),
    ("", "ukbench00120_gray.jpg", "u1", "00120", "greyscale"),
    ("", "alpha_channel_image.png", "u1", "00120", "PNG with an alpha channel"),
    ("base_images", "ukbench00120.jpg", "u2", "00120", "same bytes as u1's"),
    ("base_images", "ukbench09268.jpg", "u2", "09268", "same bytes as u1's"),
    ("base_images", "ukbench09380.jpg", "u2", "09380", "original"),
    *[("base_images", f"ukbench{k}.jpg", "u2", "", "distinct photo")
      for k in ("01380", "08976", "08996", "09012", "09040", "09060", "09348")],
    *[("formats_images", f"ukbench09380.{ext}", "u3", "09380", "u2's JPEG bytes, wrong extension")
      for ext in ("bmp", "jpeg", "png", "svg")],
    ("formats_images", "ukbench09380.webp", "u3", "09380", "WebP re-encode"),
]


def run_stages(manifest: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    """Photos, rejections and duplicates of a manifest, and the seconds ingest took."""
    photos, bad_rows = read_manifest(manifest)
    start = time.perf_counter()
    ingested, rejected = ingest(photos, IngestConfig(detect_faces=False))
    seconds = time.perf_counter() - start
    return ingested, pd.concat([bad_rows, rejected], ignore_index=True), find_duplicates(ingested, DedupConfig()), \
        seconds


def crowd_rows(out: Path, photos: int) -> tuple[list[list[str]], list[list[str]], str]:
    """Recall per true duplicate kind, precision per predicted kind, and a summary line."""
    simulate(out, photos=photos, users=max(1, photos // 3), annotators=1, seed=5)
    ingested, rejected, found, seconds = run_stages(out / "photos.csv")
    truth = pd.read_csv(out / "truth" / "duplicates.csv", dtype=str)
    picture = dict(zip(ingested["photo_id"], ingested["photo_id"], strict=True))
    picture.update(zip(truth["photo_id"], truth["original_photo_id"], strict=True))
    cluster = dict(zip(found["photo_id"], found["cluster"], strict=True))
    action = dict(zip(found["photo_id"], found["action"], strict=True))
    recall = []
    for kind in KINDS:
        pairs = truth[truth["kind"] == kind]
        hit = sum(cluster.get(a) is not None and cluster.get(a) == cluster.get(b) and "drop" in {action[a], action[b]}
                  for a, b in zip(pairs["photo_id"], pairs["original_photo_id"], strict=True))
        share = hit / len(pairs) if len(pairs) else float("nan")
        recall.append([kind, f"{hit}/{len(pairs)}", f"{share:.3f}", "met" if share >= TARGET else "MISSED"])
    # a dropped photo pairs with the photo kept instead; a grouped or flagged one with its cluster's best copy
    partner = found["kept_photo_id"].where(found["kept_photo_id"] != found["photo_id"], found["cluster"])
    members = found.assign(partner=partner)[partner != found["photo_id"]]
    members = members.assign(right=[picture[a] == picture[b]
                                    for a, b in zip(members["photo_id"], members["partner"], strict=True)])
    precision = []
    for kind, rows in [*members.groupby("kind"), ("all", members)]:
        share = rows["right"].mean() if len(rows) else float("nan")
        precision.append([kind, f"{int(rows['right'].sum())}/{len(rows)}", f"{share:.3f}",
                          "met" if share >= TARGET else "MISSED"])
    wrong_drops = int((~members["right"] & members["action"].eq("drop")).sum())
    summary = (f"{len(ingested) + len(rejected)} uploads ({len(truth)} true duplicates), {len(rejected)} rejected; "
               f"ingest {seconds / max(1, len(ingested)) * 1e3:.1f} ms/photo without face detection; "
               f"{wrong_drops} photos dropped that are not copies of their kept photo")
    return recall, precision, summary


def verdict(picture: str, partners: list[str], pictures: dict[str, str]) -> str:
    """Whether a file was matched with the files showing the same picture (and only with those)."""
    if any(pictures[p] != picture or not picture for p in partners):
        return "FALSE match"
    if not picture:
        return "ok: no match"
    return "found" if partners else "not found"


def peer_partners(folder: Path) -> dict[str, list[str]] | None:
    """imagededup PHash's duplicates per file name in ``folder`` at max distance 10 (its default), or None."""
    peer = imagededup()
    if peer is None:
        return None
    return peer(verbose=False).find_duplicates(image_dir=folder, max_distance_threshold=10)


def realdata_rows(out: Path) -> list[list[str]]:
    """Per fixture file: its variant, crowdseg's decision and verdict, imagededup PHash's verdict."""
    pictures = {f"{user}-{name}": picture for _, name, user, picture, _ in REAL_FILES}
    for folder, name, user, _, _ in REAL_FILES:
        shutil.copyfile(UKBENCH / folder / name, out / f"{user}-{name}")
    manifest = out.parent / "photos.csv"
    manifest.write_text("photo_id,user_id,path\n" + "".join(f"{p},{p.split('-')[0]},{out.name}/{p}\n"
                                                          for p in pictures))
    _, rejected, found, _ = run_stages(manifest)
    reasons = dict(zip(rejected["photo_id"], rejected["reason"], strict=True))
    peer = peer_partners(out)
    rows = []
    for photo_id, picture in pictures.items():
        variant = next(v for _, n, u, _, v in REAL_FILES if f"{u}-{n}" == photo_id)
        if photo_id in reasons:
            rows.append([photo_id, variant, f"rejected: {reasons[photo_id]}", "ok: rejected",
                         "skipped (not an image)" if peer is not None and photo_id not in peer else "-"])
            continue
        mine = found[found["photo_id"] == photo_id]
        if mine.empty:
            decision, partners = "no duplicate", []
        else:
            r = mine.iloc[0]
            decision = f"{r['action']} {r['kind']} d={r['distance']}" if r["kind"] else f"{r['action']} (best copy)"
            decision += f" of {r['kept_photo_id']}" if r["action"] == "drop" else ""
            partners = [p for p in found.loc[found["cluster"] == r["cluster"], "photo_id"] if p != photo_id]
        theirs = "-" if peer is None else verdict(picture, peer.get(photo_id, []), pictures)
        rows.append([photo_id, variant, decision, verdict(picture, partners, pictures), theirs])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a crowd of 150 photos (under a minute)")
    photos = 150 if parser.parse_args().quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        recall, precision, summary = crowd_rows(Path(tmp) / "crowd", photos)
        print(f"## Simulated crowd, {photos} original photos: {summary}\n")
        print(table(["true kind", "found", "recall", f">= {TARGET}"], recall))
        print()
        print(table(["predicted kind", "right", "precision", f">= {TARGET}"], precision))
        if not UKBENCH.is_dir():
            print(f"\nReal data skipped: {UKBENCH} is absent (set CROWDSEG_REALDATA).")
            return
        real = Path(tmp) / "real" / "photos"
        real.mkdir(parents=True)
        print("\n## imagededup's UKBench fixtures (u1: mixed_images, u2: base_images, u3: formats_images)\n")
        print(table(["photo", "variant", "crowdseg decision", "crowdseg", "imagededup PHash"], realdata_rows(real)))


if __name__ == "__main__":
    main()
