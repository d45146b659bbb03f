"""Perceptual-hash throughput on FullHD JPEGs, and recall on near duplicates, crowdseg against its peers.

crowdseg's ``phash_file`` (reduced-scale decode, pHash and mirrored pHash) against ``imagehash.phash`` on a full
decode (alone, and with a second hash of the mirrored image for the same output) and imagededup's
``PHash.encode_image``, on the same files in one process. The photos are simulated 1920x1080 portraits with
sensor-like noise, so that their JPEG sizes and entropy-decoding costs are photo-like; each has five variants.

    python benchmarks/hash_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import imagehash
import numpy as np
from common import imagededup, simulated_pictures, table
from PIL import Image, ImageOps

from pipeline.stages.ingest import load_oriented
from pipeline.stages.phash import phash_file

SIZE = (1920, 1080)
RADIUS = 10
KINDS = ("recompressed", "resized", "cropped", "brightness", "mirrored")
Hasher = Callable[[Path], tuple[int, int | None]]  # (pHash, pHash of the mirrored picture or None)


def photo_like(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The picture with luma grain and some chroma noise of a random strength, as a camera sensor leaves."""
    sigma = rng.uniform(2.0, 8.0)
    noise = rng.normal(0.0, sigma, picture.shape[:2] + (1,)) + rng.normal(0.0, sigma / 2, picture.shape)
    return np.clip(picture + noise, 0, 255).astype(np.uint8)


def variant(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A near duplicate of ``pixels`` and the JPEG quality to store it at."""
    h, w = pixels.shape[:2]
    if kind == "recompressed":
        return pixels, int(rng.integers(60, 80))
    if kind == "resized":
        scale = rng.uniform(0.5, 0.85)
        return cv2.resize(pixels, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA), 90
    if kind == "cropped":
        cw, ch = w - round(w * rng.uniform(0.01, 0.05)), h - round(h * rng.uniform(0.01, 0.05))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return pixels[y0: y0 + ch, x0: x0 + cw], 90
    if kind == "brightness":
        delta = int(rng.integers(15, 41)) * (1 if rng.random() < 0.5 else -1)
        return cv2.LUT(pixels, np.clip(np.arange(256) + delta, 0, 255).astype(np.uint8)), 90
    return np.ascontiguousarray(pixels[:, ::-1]), 90


def make_corpus(out: Path, photos: int, seed: int) -> list[dict[str, Path]]:
    """Per photo, its FullHD original (key "original") and one file per variant kind, all upright JPEGs."""
    rng = np.random.default_rng(seed)
    corpus = []
    for n, src in enumerate(simulated_pictures(out / "crowd", photos, seed, SIZE)):
        pixels = photo_like(np.asarray(load_oriented(src)), rng)
        files = {"original": out / f"{n:04d}.jpg"}
        Image.fromarray(pixels).save(files["original"], quality=int(rng.integers(85, 96)))
        for kind in KINDS:
            files[kind] = out / f"{n:04d}_{kind}.jpg"
            copy, quality = variant(pixels, kind, rng)
            Image.fromarray(copy).save(files[kind], quality=quality)
        corpus.append(files)
    return corpus


def hashers() -> dict[str, Hasher]:
    """Each method as path -> (hash, mirrored hash or None); imagededup only when installed."""
    def with_imagehash(path: Path, mirror: bool) -> tuple[int, int | None]:
        with Image.open(path) as im:
            h = int(str(imagehash.phash(im)), 16)
            return h, int(str(imagehash.phash(ImageOps.mirror(im))), 16) if mirror else None

    methods: dict[str, Hasher] = {
        "crowdseg phash_file (+mirror)": phash_file,
        "imagehash.phash": lambda p: with_imagehash(p, False),
        "imagehash.phash (+mirror)": lambda p: with_imagehash(p, True),
    }
    peer = imagededup()
    if peer is not None:
        encoder = peer(verbose=False)
        methods["imagededup PHash"] = lambda p: (int(encoder.encode_image(image_file=p), 16), None)
    return methods


def distance(a: tuple[int, int | None], b: tuple[int, int | None]) -> int:
    """Hamming distance of two photos' hashes; with mirrored hashes, the smaller of plain and mirrored."""
    d = (a[0] ^ b[0]).bit_count()
    return d if b[1] is None else min(d, (a[0] ^ b[1]).bit_count())


def timings(methods: dict[str, Hasher], files: list[Path], repeats: int) -> dict[str, np.ndarray]:
    """Per method, each file's best-of-``repeats`` seconds; methods take turns so noise hits them alike."""
    best = {name: np.full(len(files), np.inf) for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            for k, path in enumerate(files):
                start = time.perf_counter()
                fn(path)
                best[name][k] = min(best[name][k], time.perf_counter() - start)
    return best


def recall_rows(methods: dict[str, Hasher], corpus: list[dict[str, Path]]) -> list[list[str]]:
    """Per variant kind, the share of (original, variant) pairs within RADIUS; then false matches of distinct
    originals, and how far each method's hash is from imagehash's on the same file."""
    hashes = {name: [{k: fn(p) for k, p in files.items()} for files in corpus] for name, fn in methods.items()}
    rows = []
    for kind in KINDS:
        cells = []
        for name in methods:
            found = sum(distance(h["original"], h[kind]) <= RADIUS for h in hashes[name])
            cells.append(f"{found}/{len(corpus)} ({found / len(corpus):.2f})")
        rows.append([kind, *cells])
    n = len(corpus)
    distinct = n * (n - 1) // 2
    false = [sum(distance(hs[i]["original"], hs[j]["original"]) <= RADIUS for i in range(n) for j in range(i + 1, n))
             for hs in hashes.values()]
    rows.append(["distinct photos (false)", *(f"{f}/{distinct}" for f in false)])
    ref = hashes["imagehash.phash"]
    rows.append(["bits off imagehash (mean)", *(
        f"{np.mean([(h[k][0] ^ r[k][0]).bit_count() for h, r in zip(hs, ref, strict=True) for k in h]):.2f}"
        for hs in hashes.values())])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 photos, 2 repeats (under a minute)")
    args = parser.parse_args()
    photos, repeats = (24, 2) if args.quick else (150, 3)
    methods = hashers()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp), photos, seed=7)
        originals = [files["original"] for files in corpus]
        kb = np.array([p.stat().st_size for p in originals]) / 1024
        best = timings(methods, originals, repeats)
        rows = recall_rows(methods, corpus)

    print(f"## Hash throughput: {len(originals)} FullHD JPEGs, {kb.min():.0f}-{kb.max():.0f} KB "
          f"(mean {kb.mean():.0f} KB), per-file best of {repeats}\n")
    ref = best["imagehash.phash"].mean()
    print(table(["method", "ms/photo", "imagehash ms / method ms"],
                [[name, f"{t.mean() * 1e3:.2f}", f"{ref / t.mean():.2f}x"] for name, t in best.items()]))
    crowdseg, plain = best["crowdseg phash_file (+mirror)"], best["imagehash.phash"]
    terciles = np.array_split(np.argsort(kb), 3)
    print("\nBy file size (crowdseg decodes at 1/8 scale, but still entropy-decodes every byte):\n")
    print(table(["JPEG size", "crowdseg ms", "imagehash ms", "ratio"],
                [[f"{kb[t].min():.0f}-{kb[t].max():.0f} KB", f"{crowdseg[t].mean() * 1e3:.2f}",
                  f"{plain[t].mean() * 1e3:.2f}", f"{plain[t].mean() / crowdseg[t].mean():.2f}x"]
                 for t in terciles]))
    print(f"\n## Recall at Hamming distance <= {RADIUS} ({len(corpus)} originals, one variant of each kind)\n")
    print(table(["variant", *methods], rows))
    if "imagededup PHash" not in methods:
        print("\nimagededup is not installed (make bench installs it); its column is left out.")


if __name__ == "__main__":
    main()
