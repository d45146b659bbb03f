"""Dedup: exact copies by bytes or decoded pixels, near copies by mirror-aware pHash, decided per cluster.

Within one user a cluster keeps its best copy. Across users, exact copies collapse to one, and near copies follow
``cross_user_policy``. New uploads can be checked against the hash index of an earlier build, whose photos rank
first (they are already published) and are never re-hashed.

Samples of external or derived sources (``origin_kind``) are compared with every photo: they rank before crowd
uploads, and a crowd photo that copies one is dropped or flagged (``cross_source_policy``): a "user" uploading a
photo that sits in a public set is fraud, and a leak into val or test. Crops derived from one image are not
duplicates of each other (extra jittered crops are meant to be alike).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DedupConfig
from pipeline.stages.hamming import near_pairs
from pipeline.stages.ingest import THUMB_SIDE
from pipeline.tables import CROWD, DUPLICATE_COLUMNS, frame, isin, sorted_by

INDEX_COLUMNS = ["photo_id", "user_id", "submitted_at", "width", "height", "sharpness", "brightness", "sha256",
                 "pixel_hash", "phash", "phash_mirror", "thumb", "origin", "origin_kind"]


def with_origin(photos: pd.DataFrame) -> pd.DataFrame:
    """The photos with ``origin`` and ``origin_kind`` (crowd where absent: tables and indexes from before sources)."""
    return photos.assign(**{c: photos.get(c, CROWD) for c in ("origin", "origin_kind")})


class UnionFind:
    """Disjoint sets of ints with path halving; the root of a set is its smallest member. Sparse: an int never
    joined is its own set and costs nothing, so a union-find per small cluster of a big table is cheap."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        parent = self.parent
        while (p := parent.get(i, i)) != i:
            parent[i] = i = parent.get(p, p)
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def groups(self, members: list[int]) -> list[list[int]]:
        """Members split into their sets, each in the given order, sets ordered by first member."""
        out: dict[int, list[int]] = {}
        for m in members:
            out.setdefault(self.find(m), []).append(m)
        return list(out.values())


def hashes_to_uint64(hex_hashes: pd.Series) -> np.ndarray:
    """16-hex-digit hashes as uint64."""
    return np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)


def rank(photos: pd.DataFrame) -> pd.DataFrame:
    """Photos best-first: already-published index photos, then most pixels, best exposed (mean brightness nearest
    mid-grey, in steps of 0.05), sharpest, earliest upload, id."""
    photos = with_origin(photos)
    exposure = photos["brightness"].astype(float).fillna(0.5)
    order = photos.assign(_old=photos["source"].ne("index"), _crowd=photos["origin_kind"].eq(CROWD),
                          _px=-(photos["width"] * photos["height"]),
                          _exposure=((exposure - 0.5).abs() * 20).round(), _sharp=-photos["sharpness"],
                          _undated=photos["submitted_at"].eq(""))
    keys = ["_old", "_crowd", "_px", "_exposure", "_sharp", "_undated", "submitted_at", "photo_id"]
    return order.sort_values(keys, kind="stable").drop(columns=keys[:6]).reset_index(drop=True)


def within_group_pairs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j), i < j, of rows that share a group label, for labels sorted so equal ones are adjacent."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    sizes = np.diff(np.r_[starts, len(groups)])
    pos = np.arange(len(groups)) - np.repeat(starts, sizes)  # position of each row inside its group
    later = np.repeat(sizes, sizes) - pos - 1  # partners after it
    i = np.repeat(np.arange(len(groups)), later)
    j = i + 1 + (np.arange(len(i)) - np.repeat(np.cumsum(later) - later, later))
    return i, j


LARGE_GROUP = 256  # a user with more photos than this is searched by hash distance, not paired exhaustively


def same_user_pairs(users: np.ndarray, ph: np.ndarray, mirror: np.ndarray | None, radius: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i, j) of photos of one user: every pair of a small user's photos, and of a large user's
    those within ``radius`` (plain or, with ``mirror``, mirrored), so a user with 10^4 photos costs neither 10^8
    pairs of memory nor a quadratic pass over them."""
    order = np.argsort(users, kind="stable")
    grouped = users[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    sizes = np.diff(np.r_[starts, len(grouped)])
    small = np.repeat(sizes <= LARGE_GROUP, sizes)
    ui, uj = within_group_pairs(grouped[small])
    rows = order[small]
    found_i, found_j = [rows[ui]], [rows[uj]]
    for start, size in zip(starts[sizes > LARGE_GROUP], sizes[sizes > LARGE_GROUP], strict=True):
        mine = order[start: start + size]
        for p in [near_pairs(ph[mine], radius)] + ([near_pairs(ph[mine], radius, mirror[mine])]
                                                    if mirror is not None else []):
            found_i.append(mine[p.i])
            found_j.append(mine[p.j])
    return np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)


def hash_edges(table: pd.DataFrame, n_new: int, cfg: DedupConfig,
               thumbs: Callable[[np.ndarray], np.ndarray] | None = None) -> pd.DataFrame:
    """Near-duplicate edges (i, j, distance, mirrored, correlation), each within its threshold and confirmed.

    Rows ``< n_new`` are new uploads and only pairs touching one are kept. Pairs within a user are compared
    exhaustively (most users have few photos; see ``same_user_pairs``); pairs across users come from one
    multi-index search of all hashes. Each search's candidates are cut to those within their threshold before they
    are joined (a 200k-photo crowd's users make ~10^6 candidate pairs, a few thousand of them close). ``thumbs``
    gives some rows' hex thumbnails (by default the table's ``thumb`` column).
    """
    ph = hashes_to_uint64(table["phash"])
    mirror = hashes_to_uint64(table["phash_mirror"]) if cfg.mirror else None
    users = table["user_id"].to_numpy()
    derived = with_origin(table)["origin_kind"].to_numpy() == "derived"

    def close(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Candidates as (low, high) rows: touching a new upload, not two crops of one image, within threshold."""
        i, j = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
        keep = (i != j) & (i < n_new)
        i, j = i[keep], j[keep]
        same = users[i] == users[j]
        limit = np.where(same, cfg.within_user_distance, cfg.cross_user_distance)
        keep = ~(derived[i] & derived[j] & same) & (np.minimum(*distances(ph, mirror, i, j)) <= limit)
        return np.stack([i[keep], j[keep]], axis=1)

    r, new = cfg.cross_user_distance, ph[:n_new]
    bases = [(None, 0), (ph[n_new:], n_new)] + ([(mirror[:n_new], 0), (mirror[n_new:], n_new)] if cfg.mirror else [])
    found = [close(p.i, p.j + off) for base, off in bases for p in [near_pairs(new, r, base)]]
    found.append(close(*same_user_pairs(users, ph, mirror, cfg.within_user_distance)))
    pairs = np.unique(np.concatenate(found), axis=0)
    i, j = pairs[:, 0], pairs[:, 1]
    plain, flip = distances(ph, mirror, i, j)
    edges = pd.DataFrame({"i": i, "j": j, "distance": np.minimum(plain, flip), "mirrored": flip < plain})
    rows, pos = np.unique(pairs.ravel(order="F"), return_inverse=True)
    hexes = table["thumb"].to_numpy()[rows] if thumbs is None else thumbs(rows)
    edges["correlation"] = thumb_correlation(hexes, pos[: len(i)], pos[len(i):], edges["mirrored"].to_numpy(bool))
    return edges[edges["correlation"] >= cfg.min_color_correlation].reset_index(drop=True)


def distances(ph: np.ndarray, mirror: np.ndarray | None, i: np.ndarray, j: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Plain and mirrored pHash distances of pairs (i, j); the mirrored one is 99 without ``mirror``."""
    plain = np.bitwise_count(ph[i] ^ ph[j]).astype(int)
    if mirror is None:
        return plain, np.full(len(i), 99)
    return plain, np.minimum(np.bitwise_count(ph[i] ^ mirror[j]), np.bitwise_count(mirror[i] ^ ph[j])).astype(int)


GREY_CHROMA = 4.0  # mean |R-G| + |G-B| of a thumbnail below which the photo counts as greyscale
PAIR_CHUNK = 100_000  # candidate pairs compared at a time, so memory stays flat however many there are


def thumb_correlation(thumbs: pd.Series | np.ndarray, i: np.ndarray, j: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Pearson correlation of the photos' colour thumbnails, j's mirrored where the pair is a mirror pair.

    Each channel is centred on its own mean and the three are scaled together, so brightness, contrast and
    white-balance shifts do not count, and a nearly flat channel does not amplify its noise. Where either photo
    is greyscale, the thumbnails are compared in grey, so a greyscale copy of a colour photo still matches.
    """
    if not len(i):
        return np.zeros(0)
    rows, pos = np.unique(np.concatenate([i, j]), return_inverse=True)
    side = THUMB_SIDE
    hexes = np.asarray(thumbs, dtype=object)[rows]
    cube = np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8).reshape(len(rows), side, side, 3)
    cube = cube.astype(np.float32)
    grey = np.abs(np.diff(cube, axis=3)).mean(axis=(1, 2, 3)) < GREY_CHROMA
    pi, pj = pos[: len(i)], pos[len(i):]
    out = np.empty(len(i))
    for s in range(0, len(i), PAIR_CHUNK):
        ci, cj, flip = pi[s: s + PAIR_CHUNK], pj[s: s + PAIR_CHUNK], mirrored[s: s + PAIR_CHUNK]
        a, b = cube[ci].copy(), cube[cj].copy()
        b[flip] = b[flip][:, :, ::-1]
        either_grey = grey[ci] | grey[cj]
        a[either_grey] = a[either_grey].mean(axis=3, keepdims=True)
        b[either_grey] = b[either_grey].mean(axis=3, keepdims=True)
        a -= a.mean(axis=(1, 2), keepdims=True)
        b -= b.mean(axis=(1, 2), keepdims=True)
        dot = (a * b).sum(axis=(1, 2, 3))
        out[s: s + PAIR_CHUNK] = dot / np.sqrt((a * a).sum(axis=(1, 2, 3)) * (b * b).sum(axis=(1, 2, 3)) + 1e-9)
    return out


def relation(a: dict[str, Any], b: dict[str, Any], mirror: bool) -> tuple[str, int]:
    """How photo a relates to photo b: exact (bytes), pixel (decoded pixels), near or mirror, and the distance."""
    if a["sha256"] == b["sha256"]:
        return "exact", 0
    if a["pixel_hash"] == b["pixel_hash"]:
        return "pixel", 0
    x = int(a["phash"], 16)
    d = (x ^ int(b["phash"], 16)).bit_count()
    dm = (x ^ int(b["phash_mirror"], 16)).bit_count() if mirror else 99
    return ("mirror", dm) if dm < d else ("near", d)


RELATION_COLUMNS = ["photo_id", "user_id", "origin", "origin_kind", "source", "sha256", "pixel_hash", "phash",
                    "phash_mirror"]
"""What ``decide`` reads of each photo."""


def find_duplicates(photos: pd.DataFrame, cfg: DedupConfig, index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every duplicate cluster with a decision per member; photos in no cluster are absent.

    ``action`` is keep, drop (with ``kept_photo_id``), group (kept; users share a split) or flag (kept, reported).
    Index photos appear with ``source`` index and action keep, as the reference their duplicates point to.
    """
    new = with_origin(photos)[INDEX_COLUMNS].assign(source="new")
    old = with_origin(index if index is not None else pd.DataFrame(columns=INDEX_COLUMNS[:-2]))[INDEX_COLUMNS]
    old = old[~isin(old["photo_id"], new["photo_id"])].assign(source="index")
    # new uploads ranked, then index photos ranked; thumbnails stay in new and old (``_at``: a row's position there)
    ranked = [rank(f.drop(columns="thumb").assign(_at=np.arange(len(f)))) for f in (new, old) if len(f) or f is new]
    table = pd.concat(ranked, ignore_index=True) if len(ranked) > 1 else ranked[0]
    n_new = len(new)

    def thumbs(rows: np.ndarray) -> np.ndarray:
        at, fresh = table["_at"].to_numpy()[rows], rows < n_new
        out = np.empty(len(rows), object)
        out[fresh] = new["thumb"].take(at[fresh]).to_numpy(dtype=object)
        out[~fresh] = old["thumb"].take(at[~fresh]).to_numpy(dtype=object)
        return out

    uf = UnionFind()
    for col in ("sha256", "pixel_hash"):  # exact copies
        shared = np.flatnonzero(table[col].duplicated(keep=False).to_numpy())
        values = table[col].take(shared).reset_index(drop=True)
        for idx in values.groupby(values, sort=False).indices.values():
            first, *rest = shared[idx].tolist()
            for j in rest:
                uf.union(first, j)
    edges = hash_edges(table, n_new, cfg, thumbs)
    pairs = edges[["i", "j"]].to_numpy(np.int64)
    for i, j in pairs.tolist():
        uf.union(i, j)
    roots = np.array([uf.find(i) for i in pairs[:, 0].tolist()], np.int64)
    by_root = pd.Series(np.arange(len(pairs))).groupby(roots).indices if len(pairs) else {}
    joined = set(uf.parent) | {uf.find(i) for i in uf.parent}  # the rows of clusters of two or more
    best = [*range(n_new, len(table)), *range(n_new)]  # rank's order: index photos first
    members = sorted(joined)
    columns = {c: dict(zip(members, table[c].take(members).tolist(), strict=True)) for c in RELATION_COLUMNS}
    rows: list[dict[str, Any]] = []
    for cluster in uf.groups([m for m in best if m in joined]):
        inside = pairs[by_root.get(uf.find(cluster[0]), [])].tolist()
        rows += decide(columns, cluster, inside, cfg)
    out = frame(rows, DUPLICATE_COLUMNS)
    return out.sort_values(["cluster", "photo_id"], ignore_index=True)


def decide(table: dict[str, dict[int, Any]], members: list[int], inside: list[list[int]], cfg: DedupConfig
           ) -> list[dict[str, Any]]:
    """Decisions for one cluster whose members (row positions; ``table`` holds their ``RELATION_COLUMNS`` values
    by position) are given best-first; ``inside`` holds the cluster's near-duplicate edges."""
    users, origin, kinds, ids, source = (table[c] for c in ("user_id", "origin", "origin_kind", "photo_id", "source"))
    same_user = UnionFind()
    exact = UnionFind()
    for col in ("sha256", "pixel_hash"):
        first: dict[str, int] = {}
        for m in members:
            f = first.setdefault(table[col][m], m)
            if f != m:
                exact.union(f, m)
                if users[f] == users[m]:
                    same_user.union(f, m)
    for i, j in inside:
        if users[i] == users[j]:
            same_user.union(i, j)
    decision: dict[int, tuple[str, int, str]] = {}
    for group in same_user.groups(members):
        for m in group[1:]:
            decision[m] = ("drop", group[0], "a better copy by the same user is kept")
    keeper = {m: decision[m][1] if m in decision else m for m in members}
    for group in exact.groups(members):  # identical copies across users: one survives, whoever's copy was dropped
        kept = [m for m in group if m not in decision]
        first = min((keeper[m] for m in group), key=members.index)
        for m in kept:  # a crowd copy of a dataset's sample is left to cross_source_policy, below
            if m != first and users[m] != users[first] and not (kinds[m] == CROWD and kinds[first] != CROWD):
                decision[m] = ("drop", first, "an identical copy uploaded by another user is kept")
    survivors = [m for m in members if m not in decision]
    head = survivors[0]
    cross = {users[m] for m in survivors}
    for m in survivors:
        if len(cross) == 1 or m == head:
            decision[m] = ("keep", m, "best copy")
        elif kinds[m] == CROWD and kinds[head] != CROWD:
            decision[m] = (("drop", head, f"copy of a sample of source {origin[head]} (cross_source_policy = drop)")
                           if cfg.cross_source_policy == "drop" else
                           ("flag", m, f"copy of a sample of source {origin[head]}, kept for review "
                            "(cross_source_policy = flag)"))
        elif cfg.cross_user_policy == "drop":
            decision[m] = ("drop", head, "near copy of another user's photo (cross_user_policy = drop)")
        elif cfg.cross_user_policy == "group":
            decision[m] = ("group", m, "near copy of another user's photo; the users share a split")
        else:
            decision[m] = ("flag", m, "near copy of another user's photo, kept for review")
    if cfg.cross_user_policy == "group" and any(decision[m][0] == "group" for m in survivors if m != head):
        decision[head] = ("group", head, "best copy; near copies by other users share its split")
    cluster = ids[head]

    def row(m: int) -> dict[str, Any]:
        return {c: table[c][m] for c in ("sha256", "pixel_hash", "phash", "phash_mirror")}

    rows = []
    for m in members:
        action, ref, reason = decision[m]
        if source[m] == "index" and action == "drop":
            action, ref, reason = "keep", m, "published by an earlier build"
        kind, distance = relation(row(m), row(ref), cfg.mirror) if ref != m else ("", 0)
        if action in ("group", "flag") and m != head:
            kind, distance = relation(row(m), row(head), cfg.mirror)
        rows.append({"cluster": cluster, "photo_id": ids[m], "user_id": users[m], "source": source[m],
                     "action": action, "kept_photo_id": ids[ref], "kind": kind, "distance": distance,
                     "reason": reason})
    return rows


def user_links(duplicates: pd.DataFrame, policy: str) -> list[tuple[str, str]]:
    """Pairs of users that must share a split: with policy 'group', every cross-user cluster binds its users."""
    if policy != "group" or duplicates.empty:
        return []
    links = set()
    for _, members in duplicates.groupby("cluster"):
        users = sorted(set(members["user_id"]))
        links.update((users[0], u) for u in users[1:])
    return sorted(links)


def dropped_ids(duplicates: pd.DataFrame) -> set[str]:
    """Photos a dedup decision removed."""
    return set(duplicates.loc[duplicates["action"] == "drop", "photo_id"])


def index_table(photos: pd.DataFrame, duplicates: pd.DataFrame, previous: pd.DataFrame | None) -> pd.DataFrame:
    """The hash index a later build checks its uploads against: the previous index plus this build's keepers."""
    dropped = dropped_ids(duplicates)
    index = with_origin(photos).loc[~isin(photos["photo_id"], dropped).to_numpy(), INDEX_COLUMNS]
    if previous is not None and len(previous):
        index = pd.concat([index, with_origin(previous).loc[~isin(previous["photo_id"], photos["photo_id"]).to_numpy(),
                                                            INDEX_COLUMNS]], ignore_index=True)
    return sorted_by(index, ["photo_id"])  # one copy of the rows at most (a build's photos come sorted already)
