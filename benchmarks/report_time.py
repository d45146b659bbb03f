"""QA report timing at 20,000 published photos: gallery selection, thumbnails (cold and cached), HTML rendering.

Tables have the row counts of a 20k-photo build (class_agreement 160k rows, assignments 100k, findings ~14k,
annotators 500). The gallery takes the ``--limit`` worst flagged photos; each has a real FullHD JPEG (simulated
portraits with sensor noise, so JPEG sizes are photo-like) and a class-index PNG mask. A handful of distinct files
are reused across photos to keep the setup short, but every photo has its own cache key, so a cold run makes every
thumbnail. Annotator masks (5 per photo) are precomputed: making them (rasterising polygons) is the caller's cost.
If Playwright and /usr/bin/chromium are present, the page is also opened in headless Chromium.

    python benchmarks/report_time.py [--quick] [--limit N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import table
from PIL import Image

from pipeline.report.gallery import flagged_photos, gallery_thumbs
from pipeline.report.html import render_report
from pipeline.simulate.portrait import render, truth_mask
from pipeline.spec import load_spec

SPEC = load_spec("easyportrait")
CLASSES = [c.name for c in SPEC.classes[1:]]
SIZES = [(1920, 1080), (1080, 1920), (1440, 1920)]
SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def files(folder: Path, n: int, rng: np.random.Generator) -> list[tuple[Path, Path, dict[str, np.ndarray]]]:
    """``n`` distinct FullHD photos with noise, their masks, and five annotators' masks each."""
    out = []
    for k in range(n):
        w, h = SIZES[k % len(SIZES)]
        portrait = render(rng, w, h)
        noisy = portrait.image + rng.normal(0, rng.uniform(2, 8), portrait.image.shape[:2] + (1,))
        mask = truth_mask(portrait, SPEC)
        photo, png = folder / f"photo{k}.jpg", folder / f"mask{k}.png"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(photo, "JPEG", quality=90)
        Image.fromarray(mask).save(png)
        annotators = {f"a{a:03d}": np.roll(mask, (3 * a, -2 * a), axis=(0, 1)) for a in range(5)}
        out.append((photo, png, annotators))
    return out


def tables(n: int, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Report tables of a build that published ``n`` photos, in the shapes of reports/*.csv."""
    photos = [f"p{k:06d}" for k in range(n)]
    users = [f"u{k:05d}" for k in rng.integers(0, n // 3, n)]
    annot = [f"a{k:03d}" for k in range(500)]
    agreement = rng.beta(12, 1, (n, len(CLASSES)))
    class_agreement = pd.DataFrame({
        "photo_id": np.repeat(photos, len(CLASSES)), "class": np.tile(CLASSES, n),
        "pixels": rng.integers(100, 10**6, n * len(CLASSES)), "drawn_by": 5,
        "agreement": agreement.ravel(), "pairwise_iou": agreement.ravel() * 0.97,
        "disputed": agreement.ravel() < 0.5})
    assignments = pd.DataFrame({
        "photo_id": np.repeat(photos, 5), "assignment": [f"annotations.jsonl:{k}" for k in range(5 * n)],
        "annotator_id": rng.choice(annot, 5 * n), "golden": False, "agreement": rng.beta(12, 1, 5 * n),
        "swapped": False, "excluded": "", "used": True, "mean_iou": rng.beta(12, 1, 5 * n)})
    return {
        "rejections": rejections(photos, rng), "rejected_photos": rejections(photos, rng).query("item == 'photo'"),
        "duplicates": duplicates(photos, users, rng), "agreement": pd.DataFrame({
            "photo_id": photos, "status": "accepted", "reasons": "", "source": "vote", "n_assignments": 5,
            "n_used": 5, "mean_iou": agreement.mean(axis=1)}),
        "class_agreement": class_agreement, "assignments": assignments,
        "annotators": pd.DataFrame({
            "annotator_id": annot, "photos": rng.zipf(1.6, 500).clip(1, 5000),
            "agreement": rng.beta(9, 1, 500), "mean_iou": rng.beta(9, 1, 500),
            "status": rng.choice(["ok", "ok", "ok", "ok", "ok", "ok", "swapper", "spammer"], 500)}),
        "findings": findings(photos, annot, rng),
        "classes": pd.DataFrame({"id": range(len(SPEC.classes)), "class": SPEC.names, "photos": n,
                                 "pixel_share": 1 / len(SPEC.classes)}),
        "thresholds": thresholds(agreement),
        "class_by_split": pd.DataFrame([{"split": s, "class": c, "photos": int(n * r), "presence": 0.9, "pixel_share":
                                         0.01} for s, r in SPLITS.items() for c in CLASSES]),
        "decisions": pd.DataFrame({"photo_id": photos[:50], "decision": "accept", "note": "", "status": "applied",
                                   "detail": "published despite disputed classes"}),
        "photo_map": pd.DataFrame({"photo_id": photos, "image_name": photos, "user_id": users, "split": "train"}),
    }


def findings(photos: list[str], annotators: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """About 14k findings: photo warnings on ~12% of photos, annotation-level info and warnings, annotators."""
    n = len(photos)
    parts = [("photo", "no_face", "warning", 0.06), ("photo", "blur", "warning", 0.04), ("photo", "dark", "error",
             0.005), ("annotation", "disputed_class", "warning", 0.03), ("annotation", "excluded_assignments",
             "info", 0.25), ("annotation", "polygon_repairs", "info", 0.3)]
    rows = [pd.DataFrame({"level": level, "subject_id": rng.choice(photos, int(n * share), replace=False),
                          "check": check, "severity": severity, "value": 1.0, "threshold": np.nan,
                          "message": f"{check}: simulated"}) for level, check, severity, share in parts]
    rows.append(pd.DataFrame({"level": "annotator", "subject_id": annotators[:40], "check": "low_annotator_agreement",
                              "severity": "warning", "value": 0.5, "threshold": 0.7, "message": "low agreement"}))
    return pd.concat(rows, ignore_index=True)


def thresholds(agreement: np.ndarray) -> pd.DataFrame:
    grid = np.round(np.arange(21) * 0.05, 2)
    return pd.DataFrame([{"class": c, "threshold": t, "photos": len(agreement),
                          "accepted_share": float((agreement[:, i] >= t).mean()), "gold_photos": 0,
                          "gold_iou": np.nan, "current": t == 0.5} for i, c in enumerate(CLASSES) for t in grid])


def rejections(photos: list[str], rng: np.random.Generator) -> pd.DataFrame:
    k = 3000
    return pd.DataFrame({"stage": "import", "item": rng.choice(["assignment", "photo"], k), "file": "annotations.jsonl",
                         "row": np.arange(k), "photo_id": rng.choice(photos, k), "annotator_id": "a001",
                         "reason": rng.choice(["photo_deduplicated", "corrupt_image", "bad_polygon"], k),
                         "message": "simulated"})


def duplicates(photos: list[str], users: list[str], rng: np.random.Generator) -> pd.DataFrame:
    k = 500
    kept = rng.choice(photos, k, replace=False)
    copies = [f"d{j:06d}" for j in range(k)]
    keep = pd.DataFrame({"cluster": kept, "photo_id": kept, "user_id": users[:k], "source": "new", "action": "keep",
                         "kept_photo_id": kept, "kind": None, "distance": 0, "reason": "best copy"})
    drop = keep.assign(photo_id=copies, action=rng.choice(["drop", "drop", "group"], k),
                       kind=rng.choice(["exact", "near", "mirror"], k), distance=rng.integers(0, 10, k),
                       reason="copy")
    return pd.concat([keep, drop], ignore_index=True)


def browser_timings(page_file: Path) -> list[list[str]]:
    """Load time and a filter change in headless Chromium, or nothing when it is not available."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return []
    if not Path("/usr/bin/chromium").exists():
        return []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.goto(page_file.as_uri(), wait_until="load")
        load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
        check = page.locator("#filter-check option").nth(1).get_attribute("value")
        change = page.evaluate("""check => {
            const t = performance.now(), sel = document.querySelector('#filter-check');
            sel.value = check; sel.dispatchEvent(new Event('change'));
            document.body.getBoundingClientRect();  // force the layout the filter causes
            return performance.now() - t; }""", check)
        browser.close()
    return [["Chromium: open the page (load event)", f"{load / 1000:.2f} s"],
            ["Chromium: filter by a check (script + layout)", f"{change:.0f} ms"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 photos and a 40-photo gallery")
    parser.add_argument("--limit", type=int, default=400, help="photos in the gallery (default 400)")
    parser.add_argument("--distinct", type=int, default=6, help="distinct photo files to reuse (default 6)")
    args = parser.parse_args()
    n, limit = (2_000, 40) if args.quick else (20_000, args.limit)
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup, (pictures, report) = timed(lambda: (files(root, args.distinct, rng), tables(n, rng)))
        t_flag, ids = timed(lambda: flagged_photos(report["findings"], limit))

        def thumbs() -> dict[str, list[tuple[str, str]]]:
            out = {}
            for k, pid in enumerate(ids):
                photo, png, masks = pictures[k % len(pictures)]
                out[pid] = gallery_thumbs(str(photo), str(png), lambda m=masks: m, SPEC, root / "cache", pid)
            return out

        cold, gallery = timed(thumbs)
        warm, _ = timed(thumbs)
        summary = {"spec": "easyportrait", "build_id": "bench", "config": {"qa": {"min_annotator_agreement": 0.7}},
                   "ledger": {"photos_in": n + 3500, "photos_rejected": 1000, "photos_deduplicated": 1500,
                              "photos_held_back": 1000, "photos_published": n, "assignments_in": 5 * n},
                   "splits": {s: {"photos": int(n * r), "users": int(n * r / 3), "target": r, "actual": r}
                              for s, r in SPLITS.items()}}
        paths = {p: str(pictures[k % len(pictures)][0]) for k, p in enumerate(report["duplicates"]["photo_id"])}
        t_render, html = timed(lambda: render_report(summary, report, paths, gallery))
        page = root / "qa.html"
        page.write_text(html, encoding="utf-8")
        rows = [["setup (not timed below)", f"{setup:.1f} s"],
                [f"flagged_photos ({len(report['findings']):,} findings)", f"{1000 * t_flag:.1f} ms"],
                [f"thumbnails, cold ({len(ids)} photos, 6 thumbs each)", f"{cold:.2f} s ({1000 * cold / len(ids):.1f}"
                 " ms/photo)"],
                ["thumbnails, warm (cache hit)", f"{warm:.3f} s ({1000 * warm / len(ids):.2f} ms/photo)"],
                ["render_report", f"{t_render:.2f} s"],
                ["HTML size", f"{len(html.encode()) / 1e6:.1f} MB"],
                *browser_timings(page)]
    print(f"QA report at {n:,} published photos, gallery of {len(ids)}\n")
    print(table(["step", "time"], rows))


if __name__ == "__main__":
    main()
