"""Dedup: exact duplicates by bytes and by decoded pixels, near duplicates of one user by mirror-aware pHash."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DedupConfig
from pipeline.tables import DUPLICATE_COLUMNS, frame


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving; the root of a set is its smallest member."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def hashes_to_uint64(hex_hashes: pd.Series) -> np.ndarray:
    """16-hex-digit hashes as uint64."""
    return np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two uint64 hash vectors."""
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int16)


def near_pairs(phash: np.ndarray, mirror: np.ndarray | None, max_distance: int) -> list[tuple[int, int, int, bool]]:
    """(i, j, distance, mirrored) for i < j within max_distance, comparing against mirrored hashes too."""
    d = hamming(phash, phash)
    flipped = np.zeros_like(d, dtype=bool)
    if mirror is not None:
        dm = hamming(phash, mirror)
        dm = np.minimum(dm, dm.T)
        flipped = dm < d
        d = np.minimum(d, dm)
    ii, jj = np.nonzero(np.triu(d <= max_distance, k=1))
    return [(int(i), int(j), int(d[i, j]), bool(flipped[i, j])) for i, j in zip(ii, jj, strict=True)]


def _best_first(photos: pd.DataFrame) -> pd.DataFrame:
    """Photos ordered so that the copy worth keeping comes first: most pixels, earliest upload, then id.

    A photo with no upload time counts as uploaded after every dated one.
    """
    order = photos.assign(_px=-(photos["width"] * photos["height"]), _undated=photos["submitted_at"].eq(""))
    return order.sort_values(["_px", "_undated", "submitted_at", "photo_id"], kind="stable").drop(
        columns=["_px", "_undated"])


def find_duplicates(photos: pd.DataFrame, cfg: DedupConfig) -> pd.DataFrame:
    """Duplicate clusters with a keep/drop decision per member; photos in no cluster are absent.

    Exact copies (same bytes, or same decoded pixels) are clustered across users; near duplicates (pHash
    within ``phash_max_distance``, mirrored or not) within one user. Each cluster keeps its best copy; every
    dropped row points at the kept one and says how it relates to it.
    """
    photos = _best_first(photos).reset_index(drop=True)
    uf = UnionFind(len(photos))
    for col in ("sha256", "pixel_hash"):
        for idx in photos.groupby(col, sort=False).indices.values():
            for j in idx[1:]:
                uf.union(int(idx[0]), int(j))
    ph = hashes_to_uint64(photos["phash"])
    pm = hashes_to_uint64(photos["phash_mirror"]) if cfg.mirror else None
    for idx in photos.groupby("user_id", sort=False).indices.values():
        if len(idx) > 1:
            for i, j, _, _ in near_pairs(ph[idx], None if pm is None else pm[idx], cfg.phash_max_distance):
                uf.union(int(idx[i]), int(idx[j]))
    roots = np.array([uf.find(i) for i in range(len(photos))])
    rows: list[dict[str, Any]] = []
    for root in sorted(set(roots[np.bincount(roots, minlength=len(photos))[roots] > 1].tolist())):
        kept = photos.iloc[root]
        for m in np.flatnonzero(roots == root):
            p = photos.iloc[m]
            kind, dist = _relation(p, kept, cfg.mirror)
            rows.append({"photo_id": p["photo_id"], "user_id": p["user_id"], "cluster": kept["photo_id"],
                         "action": "keep" if m == root else "drop", "kept_photo_id": kept["photo_id"],
                         "kind": kind if m != root else "", "distance": dist})
    return frame(rows, DUPLICATE_COLUMNS).sort_values(["cluster", "action", "photo_id"],
                                                       ascending=[True, False, True], ignore_index=True)


def _relation(p: pd.Series, kept: pd.Series, mirror: bool) -> tuple[str, int]:
    """How a cluster member relates to the kept copy: exact, pixel, near or mirrored, and the pHash distance."""
    if p["sha256"] == kept["sha256"]:
        return "exact", 0
    if p["pixel_hash"] == kept["pixel_hash"]:
        return "pixel", 0
    a = int(p["phash"], 16)
    d = (a ^ int(kept["phash"], 16)).bit_count()
    if mirror:
        dm = (a ^ int(kept["phash_mirror"], 16)).bit_count()
        if dm < d:
            return "mirrored", dm
    return "near", d
