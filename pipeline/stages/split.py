"""Split: user-disjoint train/val/test splits at the configured photo ratios."""

from __future__ import annotations

import pandas as pd

from pipeline.stages.dedup import UnionFind
from pipeline.tables import keyed_hash

SPLIT_COLUMNS = ["photo_id", "user_id", "group", "split"]


def user_groups(users: list[str], links: list[tuple[str, str]]) -> dict[str, str]:
    """User -> group id, joining users linked (e.g. by a cross-user duplicate); a group is named by its first user."""
    order = sorted(set(users) | {u for pair in links for u in pair})
    index = {u: i for i, u in enumerate(order)}
    uf = UnionFind(len(order))
    for a, b in links:
        uf.union(index[a], index[b])
    return {u: order[uf.find(i)] for u, i in index.items()}


def assign_splits(photos: pd.DataFrame, ratios: dict[str, float], seed: str,
                  links: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One split per photo such that every group of users lands in a single split.

    Groups are taken largest first (ties in the order of a keyed hash, so the result depends on ``seed`` and
    not on input order), each into the split furthest below its target photo count.
    """
    groups = user_groups(photos["user_id"].tolist(), links or [])
    df = photos[["photo_id", "user_id"]].assign(group=photos["user_id"].map(groups))
    sizes = df.groupby("group").size()
    order = sorted(sizes.index, key=lambda g: (-int(sizes[g]), keyed_hash(seed, g)))
    total = len(df)
    target = {s: r * total for s, r in ratios.items()}
    count = dict.fromkeys(ratios, 0)
    chosen: dict[str, str] = {}
    for g in order:
        best = max((s for s in ratios if ratios[s] > 0), key=lambda s: (target[s] - count[s]) / target[s])
        chosen[g] = best
        count[best] += int(sizes[g])
    return df.assign(split=df["group"].map(chosen))[SPLIT_COLUMNS].sort_values("photo_id", ignore_index=True)
