"""All pairs of 64-bit hashes within a Hamming radius: blocked brute force for small sets, multi-index hashing
(Norouzi et al.) for large ones. Both return the same pairs; MIH touches far fewer of them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from pipeline.tuning import release_memory

BRUTE_MAX = 2_000  # below this many hashes the brute force is as fast (measured in benchmarks/pair_search.py)


@dataclass
class Pairs:
    """Index pairs (i into the queries, j into the base) and their distances, sorted by (i, j)."""

    i: np.ndarray
    j: np.ndarray
    d: np.ndarray
    checked: int = 0  # candidate pairs whose full distance was computed: the work done

    def __len__(self) -> int:
        return len(self.i)


def popcount64(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).astype(np.uint8)


def _finish(i: list[np.ndarray], j: list[np.ndarray], d: list[np.ndarray], n_base: int, checked: int) -> Pairs:
    if not i:
        empty = np.zeros(0, np.int64)
        return Pairs(empty, empty, np.zeros(0, np.uint8), checked)
    ii, jj, dd = np.concatenate(i), np.concatenate(j), np.concatenate(d)
    key, first = np.unique(ii.astype(np.int64) * n_base + jj, return_index=True)
    return Pairs(key // n_base, key % n_base, dd[first], checked)


def brute_pairs(queries: np.ndarray, radius: int, base: np.ndarray | None = None, block: int = 2048) -> Pairs:
    """Compare every query with every base hash in blocks (with base None: each unordered pair once, i < j)."""
    self_join = base is None
    base = queries if base is None else base
    out_i, out_j, out_d, checked = [], [], [], 0
    for s in range(0, len(queries), block):
        q = queries[s: s + block]
        lo = s if self_join else 0
        d = popcount64(q[:, None] ^ base[None, lo:])
        checked += d.size
        hit = d <= radius
        if self_join:
            hit &= np.arange(lo, len(base))[None, :] > np.arange(s, s + len(q))[:, None]
        qi, bj = np.nonzero(hit)
        out_i.append(qi + s)
        out_j.append(bj + lo)
        out_d.append(d[qi, bj])
    return _finish(out_i, out_j, out_d, len(base), checked)


def block_plan(n_base: int, radius: int, bits: int = 64) -> list[tuple[int, int, int]]:
    """(shift, width, search radius) per block: about log2(n) bits a block, radii by the generalised pigeonhole.

    With m blocks and r = m * s + a - 1, two hashes within r agree within s bits on one of the first a blocks,
    or within s - 1 bits on one of the others.
    """
    m = max(1, min(bits // 8, round(bits / max(np.log2(max(n_base, 2)), 1.0))))
    widths = [bits // m + (1 if k < bits % m else 0) for k in range(m)]
    s, a = radius // m, radius - m * (radius // m) + 1
    plan, shift = [], bits
    for k, w in enumerate(widths):
        shift -= w
        plan.append((shift, w, s if k < a else s - 1))
    return [p for p in plan if p[2] >= 0]


def probe_masks(width: int, radius: int) -> np.ndarray:
    """Every mask of at most ``radius`` set bits within ``width`` bits."""
    masks = [sum(1 << b for b in bits) for r in range(radius + 1) for bits in combinations(range(width), r)]
    return np.array(masks, dtype=np.int64)


@dataclass
class BlockIndex:
    """Base hashes bucketed by the value of one block: ``order[offsets[k]: offsets[k] + counts[k]]`` hold key k."""

    shift: int
    width: int
    order: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, base: np.ndarray, shift: int, width: int) -> BlockIndex:
        keys = block_keys(base, shift, width)
        counts = np.bincount(keys, minlength=1 << width).astype(np.int32)
        offsets = (np.cumsum(counts, dtype=np.int64) - counts).astype(np.int64)
        return cls(shift, width, np.argsort(keys, kind="stable"), counts, offsets)


def block_keys(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    return ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int32)


def _verify_probes(queries: np.ndarray, base: np.ndarray, index: BlockIndex, masks: np.ndarray, radius: int,
                   self_join: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int]:
    """For each mask: candidates whose block keys differ by exactly that mask, kept when within ``radius``.

    Queries and base are walked in block-key order, so table lookups and hash gathers stay nearly sequential.
    In a self-join each unordered pair is generated once: from the smaller key, or, within a bucket, i < j.
    """
    q_keys = block_keys(queries, index.shift, index.width)
    q_order = np.argsort(q_keys, kind="stable")
    q_sorted, q_hash = q_keys[q_order], queries[q_order]
    b_hash = base[index.order]
    out_i, out_j, out_d, work = [], [], [], 0
    for p in masks.astype(np.int32):
        partner = q_sorted ^ p
        c = index.counts[partner]
        sel = np.flatnonzero(c if not (self_join and p) else c * (q_sorted < partner))
        if not len(sel):
            continue
        n = c[sel].astype(np.int64)
        qpos = np.repeat(sel, n)
        bpos = np.repeat(index.offsets[partner[sel]] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        d = popcount64(q_hash[qpos] ^ b_hash[bpos])
        work += len(d)
        ok = d <= radius
        ii, jj = q_order[qpos[ok]], index.order[bpos[ok]]
        if self_join and not p:
            keep = ii < jj
            ii, jj, ok_d = ii[keep], jj[keep], d[ok][keep]
        else:
            ok_d = d[ok]
        if self_join and p:
            ii, jj = np.minimum(ii, jj), np.maximum(ii, jj)
        out_i.append(ii)
        out_j.append(jj)
        out_d.append(ok_d)
    return out_i, out_j, out_d, work


def mih_pairs(queries: np.ndarray, radius: int, base: np.ndarray | None = None, workers: int = 2) -> Pairs:
    """Multi-index hashing: index the base by each block, probe each query's block within its radius, verify.

    The probes run on ``workers`` threads. glibc keeps what a thread frees in that thread's own arena, where the
    calling thread cannot reuse it, so the freed pages go back to the system at the end (at 200k photos dedup held
    ~120 MB more without)."""
    self_join = base is None
    base = queries if base is None else base
    out_i, out_j, out_d, checked = [], [], [], 0
    with ThreadPoolExecutor(workers) as pool:
        for shift, width, r_block in block_plan(len(base), radius):
            index = BlockIndex.build(base, shift, width)
            chunks = np.array_split(probe_masks(width, r_block), workers)
            for ii, jj, dd, work in pool.map(
                    lambda masks, index=index: _verify_probes(queries, base, index, masks, radius, self_join),
                    chunks):
                out_i += ii
                out_j += jj
                out_d += dd
                checked += work
    release_memory()
    return _finish(out_i, out_j, out_d, len(base), checked)


def near_pairs(queries: np.ndarray, radius: int, base: np.ndarray | None = None) -> Pairs:
    """All pairs within ``radius``: brute force below BRUTE_MAX hashes, multi-index hashing above."""
    n = len(queries) if base is None else max(len(queries), len(base))
    return brute_pairs(queries, radius, base) if n <= BRUTE_MAX else mih_pairs(queries, radius, base)
