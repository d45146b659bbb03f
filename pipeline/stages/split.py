"""Split: user-disjoint train/val/test splits at the configured photo ratios, balanced over strata.

Users joined by links (cross-user near duplicates) form groups, and a group never straddles two splits. Each group
is a vector: its photo count and, per stratum value (``has_teeth=True``, ``orientation=portrait``, ...), its photos
with that value, each divided by the total of that count. The cost of an assignment is, summed over the splits with
a ratio above zero, ``|deficit|² / ratio``, where the deficit is the split's sum of group vectors minus ``ratio`` ×
the total vector: so the photo share and every value's share per split are pulled to the split's ratio, in the
units of the report's percentage points (the photo term weighted ``PHOTO_WEIGHT``). With two or more stratum columns
their joint label counts as one more column (weighted ``JOINT_WEIGHT``), so combinations are spread too. Groups
are placed largest first, each where the cost grows least; then the best single move of a group to another split is
applied while one lowers the cost, else the best swap of two groups, until neither does (or ``MAX_STEPS``).

A previous build's split table can be ``pinned``: its photos keep their split (a group goes where most of its pinned
photos are), and only groups without pinned photos are placed, so a rebuild with new users moves no old photo
unless a new link merged groups of different splits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.stages.dedup import UnionFind
from pipeline.tables import keyed_hash

SPLIT_COLUMNS = ["photo_id", "user_id", "group", "split"]
MIN_STRATUM_PHOTOS = 20
"""Stratum values with fewer photos are neither balanced nor reported: one photo would be over 5 pp of them."""
PHOTO_WEIGHT = 4.0
"""Weight of the photo-share term against each stratum value's term: the ratios come first."""
JOINT_WEIGHT = 0.1
"""Weight of each joint value's term: enough to spread combinations, not so much that the columns lose to them."""
MAX_STEPS = 200
"""Bound on the moves and swaps after the greedy placement (the benchmark's 20k photos stop after 1 to 60 steps)."""
TOLERANCE = 1e-12
"""Smallest cost decrease that counts as one."""
SWAP_CANDIDATES = 16
"""Groups per split and direction whose swaps with every group of the other split are tried."""


@dataclass(frozen=True)
class SplitReport:
    """How close a split assignment came to its ratios, overall and per stratum value, and what pinning kept."""

    splits: tuple[dict[str, Any], ...]
    max_ratio_error_pp: float
    worst_stratum: tuple[str, str, str] | None
    worst_stratum_deviation_pp: float
    worst_joint_deviation_pp: float
    strata: tuple[dict[str, Any], ...]
    pinned_photos: int
    moved_photos: int
    new_groups: int

    def as_dict(self) -> dict[str, Any]:
        """Plain lists, dicts, strings and numbers (for json.dumps)."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def user_groups(users: list[str], links: list[tuple[str, str]]) -> dict[str, str]:
    """User -> group id, joining users linked (e.g. by a cross-user duplicate); a group is named by its first user."""
    order = sorted(set(users) | {u for pair in links for u in pair})
    index = {u: i for i, u in enumerate(order)}
    uf = UnionFind()
    for a, b in links:
        uf.union(index[a], index[b])
    return {u: order[uf.find(i)] for u, i in index.items()}


def stratum_labels(photos: pd.DataFrame, strata: list[str]) -> pd.DataFrame:
    """The stratum columns as strings (a missing value as ``<NA>``), and with two or more their joint label."""
    missing = [c for c in strata if c not in photos]
    if missing:
        raise ValueError(f"photos lack the stratum column(s) {missing}")
    labels = pd.DataFrame({c: photos[c].astype("string").fillna("<NA>") for c in strata}, index=photos.index)
    if len(strata) > 1:
        labels[joint_name(strata)] = labels[strata[0]].str.cat([labels[c] for c in strata[1:]], sep="|")
    return labels


def joint_name(strata: list[str]) -> str:
    """The column name of the joint label of several stratum columns, e.g. ``has_teeth+orientation``."""
    return "+".join(strata)


def group_order(groups: pd.Series, seed: str) -> list[str]:
    """Groups largest first, ties in the order of a keyed hash of the group id."""
    sizes = groups.value_counts()
    return sorted(sizes.index, key=lambda g: (-int(sizes[g]), keyed_hash(seed, g)))


def group_vectors(gidx: np.ndarray, n_groups: int, labels: pd.DataFrame, strata: list[str]) -> np.ndarray:
    """Per group its photo count, then its photos with each stratum value that has enough photos, as weighted shares."""
    counts, weights = [np.bincount(gidx, minlength=n_groups)[:, None]], [PHOTO_WEIGHT]
    for column in labels:
        codes = pd.factorize(labels[column], sort=True)[0]
        kept = np.flatnonzero(np.bincount(codes) >= MIN_STRATUM_PHOTOS)
        index = np.full(codes.max(initial=-1) + 1, -1)
        index[kept] = np.arange(len(kept))
        value = index[codes]
        counted, width = value >= 0, len(kept)
        per_group = np.bincount(gidx[counted] * width + value[counted], minlength=n_groups * width)
        counts.append(per_group.reshape(n_groups, width))
        weights += [1.0 if column in strata else JOINT_WEIGHT] * width
    matrix = np.hstack(counts).astype(float)
    return matrix / np.maximum(matrix.sum(0), 1) * np.sqrt(weights)


def pinned_placement(photo_ids: pd.Series, gidx: np.ndarray, n_groups: int, pinned: pd.DataFrame | None,
                     names: list[str]) -> tuple[np.ndarray, pd.Series]:
    """Per group the index of the split holding most of its pinned photos (ties: ratio order) or -1; old splits."""
    fixed = np.full(n_groups, -1)
    if pinned is None:
        return fixed, pd.Series(pd.NA, index=photo_ids.index, dtype="string")
    old = photo_ids.map(pinned.set_index("photo_id")["split"]).astype("string")
    unknown = sorted(set(old.dropna()) - set(names))
    if unknown:
        raise ValueError(f"pinned split(s) {unknown} are not among the configured splits {names}")
    held = old.notna().to_numpy()
    votes = np.zeros((n_groups, len(names)), dtype=int)
    np.add.at(votes, (gidx[held], old[held].map(names.index).to_numpy(dtype=int)), 1)
    has = votes.sum(1) > 0
    fixed[has] = votes[has].argmax(1)
    return fixed, old


def move_costs(vectors: np.ndarray, deficit: np.ndarray, inverse: np.ndarray, where: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Cost change of moving each group from its split to each split (``inf`` to its own), and its linear part."""
    rows = np.arange(len(vectors))
    sq = (vectors**2).sum(1)
    dot = 2 * (vectors @ deficit.T) * inverse
    linear = dot - dot[rows, where][:, None]
    out = linear + sq[:, None] * (inverse + inverse[where][:, None])
    out[rows, where] = np.inf
    return out, linear


def candidates(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest values (all if there are fewer)."""
    return np.argpartition(values, k)[:k] if len(values) > k else np.arange(len(values))


def best_swap(vectors: np.ndarray, moves: np.ndarray, linear: np.ndarray, inverse: np.ndarray, where: np.ndarray
              ) -> tuple[float, int, int]:
    """The cheapest exchange of two groups between two splits: (cost change, group, group).

    From each split, the groups whose move to the other split costs least or whose linear part falls most (a large
    group that overshoots alone can be right with a partner going back) are paired with every group of the other.
    """
    best = (np.inf, -1, -1)
    members = [np.flatnonzero(where == s) for s in range(len(inverse))]
    for a, ga in enumerate(members):
        for b, gb in enumerate(members):
            if a == b or not len(ga) or not len(gb):
                continue
            ga = ga[np.union1d(candidates(moves[ga, b], SWAP_CANDIDATES), candidates(linear[ga, b], SWAP_CANDIDATES))]
            change = (moves[ga, b][:, None] + moves[gb, a][None, :]
                      - 2 * (inverse[a] + inverse[b]) * (vectors[ga] @ vectors[gb].T))
            i, j = np.unravel_index(np.argmin(change), change.shape)
            if change[i, j] < best[0]:
                best = (float(change[i, j]), int(ga[i]), int(gb[j]))
    return best


def improve(vectors: np.ndarray, deficit: np.ndarray, inverse: np.ndarray, where: np.ndarray) -> None:
    """Apply the best single move while one lowers the cost, else the best swap (``deficit``, ``where`` in place)."""
    for _ in range(MAX_STEPS):
        moves, linear = move_costs(vectors, deficit, inverse, where)
        g, s = np.unravel_index(np.argmin(moves), moves.shape)
        if moves[g, s] < -TOLERANCE:
            changes = [(g, s)]
        else:
            change, ga, gb = best_swap(vectors, moves, linear, inverse, where)
            if change >= -TOLERANCE:
                return
            changes = [(ga, where[gb]), (gb, where[ga])]
        for group, to in changes:
            deficit[where[group]] -= vectors[group]
            deficit[to] += vectors[group]
        for group, to in changes:
            where[group] = to


def place_groups(vectors: np.ndarray, ratios: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Split index per group: fixed ones kept, the others placed largest first, then improved by moves and swaps."""
    active = np.flatnonzero(ratios > 0)
    inverse = 1 / ratios[active]
    position = np.full(len(ratios) + 1, -1)
    position[active] = np.arange(len(active))
    local = position[fixed]  # -1 (the last entry) for free groups and those pinned to a split with ratio 0
    deficit = -np.outer(ratios[active], vectors.sum(0))
    for s in range(len(active)):
        deficit[s] += vectors[local == s].sum(0)
    free = np.flatnonzero(fixed < 0)
    sq = (vectors**2).sum(1)
    for g in free:
        s = int(np.argmin((sq[g] + 2 * (deficit @ vectors[g])) * inverse))
        deficit[s] += vectors[g]
        local[g] = s
    where = local[free]
    if len(free):
        improve(vectors[free], deficit, inverse, where)
    out = fixed.copy()
    out[free] = active[where]
    return out


def stratum_rows(split: pd.Series, labels: pd.DataFrame, ratios: dict[str, float]) -> list[dict[str, Any]]:
    """Per stratum value with enough photos and per split: its photos' share in the split, and how far off the ratio."""
    rows = []
    for column in labels:
        counts = pd.crosstab(labels[column], split).reindex(columns=list(ratios), fill_value=0)
        for value, row in counts[counts.sum(1) >= MIN_STRATUM_PHOTOS].sort_index().iterrows():
            total = int(row.sum())
            for s, r in ratios.items():
                share = int(row[s]) / total
                rows.append({"column": column, "value": str(value), "photos": total, "split": s,
                             "share": round(share, 6), "deviation_pp": round(abs(share - r) * 100, 4)})
    return rows


def split_report(out: pd.DataFrame, labels: pd.DataFrame, strata: list[str], ratios: dict[str, float],
                 old: pd.Series, new_groups: int) -> SplitReport:
    """The report of one assignment (``out`` and ``labels`` aligned on the input's index)."""
    photos = out["split"].value_counts().reindex(list(ratios), fill_value=0)
    users = out.groupby("split")["user_id"].nunique().reindex(list(ratios), fill_value=0)
    share = photos / max(len(out), 1)
    error = float((share - pd.Series(ratios)).abs().max()) * 100 if len(out) else 0.0
    splits = tuple({"split": s, "photos": int(photos[s]), "users": int(users[s]), "target": r,
                    "actual": round(float(share[s]), 6)} for s, r in ratios.items())
    rows = tuple(stratum_rows(out["split"], labels, ratios))
    worst = max((row for row in rows if row["column"] in strata), key=lambda row: row["deviation_pp"], default=None)
    held = old.notna()
    return SplitReport(
        splits=splits, max_ratio_error_pp=round(error, 4),
        worst_stratum=(worst["column"], worst["value"], worst["split"]) if worst else None,
        worst_stratum_deviation_pp=worst["deviation_pp"] if worst else 0.0,
        worst_joint_deviation_pp=max((row["deviation_pp"] for row in rows if row["column"] not in strata),
                                     default=0.0),
        strata=rows, pinned_photos=int(held.sum()),
        moved_photos=int((old[held] != out.loc[held, "split"]).sum()), new_groups=new_groups)


def assign_splits(photos: pd.DataFrame, ratios: dict[str, float], seed: str, links: list[tuple[str, str]] | None = None,
                  strata: list[str] | None = None, pinned: pd.DataFrame | None = None
                  ) -> tuple[pd.DataFrame, SplitReport]:
    """One split per photo such that every group of users lands in a single split, and a report of the balance.

    ``strata`` names columns of ``photos`` whose values should be spread over the splits at the ratios. ``pinned``
    is a previous split table (``photo_id``, ``split``): its photos that are still here keep their split unless a
    link merged their group with one of another split. The result depends on the inputs and ``seed`` only, not on
    row order; a split with ratio 0 receives no new group.
    """
    names = list(ratios)
    labels = stratum_labels(photos, strata or [])
    df = photos[["photo_id", "user_id"]].assign(group=photos["user_id"].map(user_groups(
        photos["user_id"].tolist(), links or [])))
    order = group_order(df["group"], seed)
    gidx = df["group"].map({g: i for i, g in enumerate(order)}).to_numpy(dtype=int)
    vectors = group_vectors(gidx, len(order), labels, strata or [])
    fixed, old = pinned_placement(df["photo_id"], gidx, len(order), pinned, names)
    where = place_groups(vectors, np.array([ratios[s] for s in names], dtype=float), fixed)
    df["split"] = np.array(names, dtype=object)[where[gidx]]
    report = split_report(df, labels, strata or [], ratios, old, int((fixed < 0).sum()))
    return df[SPLIT_COLUMNS].sort_values("photo_id", ignore_index=True), report
