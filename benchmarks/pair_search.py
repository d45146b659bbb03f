"""All pairs of 64-bit hashes within Hamming distance 10: crowdseg's ``near_pairs`` against imagededup's search.

Two kinds of data, each with 1% planted near copies (0-12 bits flipped):
- uniform: independent random bits, the easy case for multi-index hashing;
- photo-like: pHashes sampled from a Gaussian model of the 8x8 DCT low band of simulated photos, so that bits are
  biased and correlated as real pHash bits are (many more chance pairs, fuller buckets).

Every method runs in a subprocess of its own on the same hashes, with a time budget; it reports seconds, peak
resident memory (the worker's interpreter and numpy included) and its pairs, which are checked against crowdseg's
``brute_pairs`` where that ran, else against exact neighbour lists of 1,000 sampled hashes.

    python benchmarks/pair_search.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import imagededup, peak_rss_mb, simulated_pictures, table

from pipeline.stages.hamming import brute_pairs, near_pairs, popcount64

RADIUS = 10
CROWDSEG, BRUTE = "crowdseg near_pairs", "crowdseg brute_pairs"
PEERS = {"imagededup bktree": "bktree", "imagededup brute_force_cython": "brute_force_cython"}
SAMPLE = 1_000


@dataclass
class Plan:
    """What one run measures."""

    sizes: tuple[int, ...]
    brute_max: int     # crowdseg's brute force runs up to this many hashes, as the exact reference
    peer_max: int      # imagededup is tried up to this many hashes (uniform data only)
    budget: float      # seconds a method may take before it is stopped
    model_photos: int  # simulated photos behind the photo-like model


FULL = Plan((1_000, 2_000, 10_000, 100_000, 1_000_000), 100_000, 1_000_000, 120.0, 300)
QUICK = Plan((500, 1_000, 10_000, 50_000), 10_000, 1_000, 20.0, 60)


def run_method(method: str, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs (i < j) within RADIUS found by one method, and how many candidate distances it computed (crowdseg)."""
    if method in (CROWDSEG, BRUTE):
        found = (near_pairs if method == CROWDSEG else brute_pairs)(hashes, RADIUS)
        return found.i, found.j, found.checked
    peer = imagededup()
    assert peer is not None
    encodings = {str(k): f"{int(h):016x}" for k, h in enumerate(hashes)}
    result = peer(verbose=False).find_duplicates(encoding_map=encodings, max_distance_threshold=RADIUS,
                                                 search_method=PEERS[method])
    pairs = {(min(int(a), int(b)), max(int(a), int(b))) for a, dups in result.items() for b in dups}
    ij = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return ij[:, 0], ij[:, 1], 0


def worker(method: str, hashes_file: str, out_file: str) -> None:
    """Subprocess entry: time one method on the saved hashes (best of 3 when a run takes under 2 s), save its
    pairs, print seconds, peak memory and candidates checked."""
    hashes = np.load(hashes_file)
    idle = peak_rss_mb()
    times: list[tuple[float, float]] = []
    while len(times) < (1 if times and times[0][0] >= 2 else 3):
        start, cpu = time.perf_counter(), cpu_seconds()
        i, j, checked = run_method(method, hashes)
        times.append((time.perf_counter() - start, cpu_seconds() - cpu))
    np.savez(out_file, i=i, j=j)
    seconds, cpu = min(times)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rss_mb": peak_rss_mb(), "idle_mb": idle, "checked": checked}))


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its finished children (imagededup's pool)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Outcome:
    seconds: float | None = None  # None: stopped at the budget, or not run
    cpu: float = 0.0
    rss_mb: float = 0.0
    idle_mb: float = 0.0  # the worker before the method ran: interpreter, imports, hashes
    checked: int = 0
    i: np.ndarray | None = None
    j: np.ndarray | None = None
    note: str = ""


def measure(method: str, hashes_file: Path, budget: float) -> Outcome:
    """Run one method in a fresh process (its own session, so a stopped pool's workers stop too)."""
    out_file = hashes_file.with_suffix(".pairs.npz")
    proc = subprocess.Popen([sys.executable, __file__, "--worker", method, str(hashes_file), str(out_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Outcome(note=f"did not finish in {budget:.0f} s")
    if proc.returncode != 0:
        return Outcome(note="failed: " + (stderr.strip().splitlines() or ["?"])[-1])
    report = json.loads(stdout.strip().splitlines()[-1])
    with np.load(out_file) as pairs:
        return Outcome(report["seconds"], report["cpu"], report["rss_mb"], report["idle_mb"], report["checked"],
                       pairs["i"], pairs["j"])


def plant(hashes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overwrite 1% of the hashes with copies of others, 0-12 bits flipped; return (source, copy, bits flipped)."""
    m = len(hashes) // 100
    order = rng.permutation(len(hashes))
    src, dst = order[:m], order[m: 2 * m]
    flips = rng.integers(0, 13, m)
    masks = np.zeros(m, np.uint64)
    for k, f in enumerate(flips):
        for bit in rng.choice(64, f, replace=False):
            masks[k] |= np.uint64(1) << np.uint64(bit)
    hashes[dst] = hashes[src] ^ masks
    return src, dst, flips


def photo_model(out: Path, photos: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Cholesky factor of the 64 low-band DCT coefficients of simulated photos."""
    from pipeline.stages.phash import draft_grey, low_band  # here, so that the workers stay lean

    bands = np.array([low_band(draft_grey(p)).ravel() for p in simulated_pictures(out, photos, seed)])
    cov = np.cov(bands, rowvar=False)
    return bands.mean(axis=0), np.linalg.cholesky(cov + 1e-9 * np.trace(cov) * np.eye(64))


def photo_like(n: int, model: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """n pHashes of sampled low bands, each thresholded at its median as pHash does."""
    mean, chol = model
    parts = []
    for start in range(0, n, 100_000):
        bands = rng.standard_normal((min(100_000, n - start), 64)) @ chol.T + mean
        bits = bands > np.median(bands, axis=1, keepdims=True)
        parts.append((bits.astype(np.uint64) << np.arange(63, -1, -1, dtype=np.uint64)).sum(axis=1, dtype=np.uint64))
    return np.concatenate(parts)


def check(hashes: np.ndarray, found: Outcome, reference: Outcome | None, planted: tuple[np.ndarray, ...],
          rng: np.random.Generator) -> str:
    """Whether a method's pairs are right: equal to the brute force's, or else exact on sampled hashes."""
    assert found.i is not None and found.j is not None
    key = np.unique(found.i * len(hashes) + found.j)
    if len(key) != len(found.i) or np.any(found.i >= found.j) or np.any(
            popcount64(hashes[found.i] ^ hashes[found.j]) > RADIUS):
        return "WRONG pairs"
    src, dst, flips = planted
    lo, hi = np.minimum(src, dst)[flips <= RADIUS], np.maximum(src, dst)[flips <= RADIUS]
    if not np.isin(lo * len(hashes) + hi, key).all():
        return "MISSED planted pairs"
    if reference is not None and reference.i is not None and reference.j is not None:
        same = np.array_equal(key, np.unique(reference.i * len(hashes) + reference.j))
        return "= brute force" if same else "DIFFERS from brute force"
    sample = rng.choice(len(hashes), min(SAMPLE, len(hashes)), replace=False)
    near = np.isin(found.i, sample) | np.isin(found.j, sample)
    i, j = found.i[near], found.j[near]
    for s in sample:
        exact = np.flatnonzero(popcount64(hashes ^ hashes[s]) <= RADIUS)
        mine = np.concatenate([j[i == s], i[j == s], [s]])
        if not np.array_equal(exact, np.sort(mine)):
            return f"DIFFERS at hash {s}"
    return f"exact on {len(sample)} sampled"


def extrapolate(history: list[tuple[int, float]], n: int) -> float | None:
    """Seconds at n from the finished sizes, or None: a power law through the last two, at least quadratic, as all
    three extrapolated methods compare (nearly) every pair (a BK-tree at radius 10 of 64 bits visits most nodes)."""
    if not history:
        return None
    n2, t2 = history[-1]
    power = 2.0
    if len(history) > 1:
        n1, t1 = history[-2]
        power = max(power, math.log(max(t2, 1e-6) / max(t1, 1e-6)) / math.log(n2 / n1))
    return t2 * (n / n2) ** power


def bench(data: str, make: Callable[[int, np.random.Generator], np.ndarray], plan: Plan, tmp: Path,
          peers: list[str]) -> list[list[str]]:
    """Rows of the results table for one kind of data.

    A method is not run beyond its size limit, after it did not finish at a smaller size, or when extrapolated
    beyond 4x the budget.
    """
    rows: list[list[str]] = []
    history: dict[str, list[tuple[int, float]]] = {m: [] for m in [CROWDSEG, BRUTE, *peers]}
    stopped: set[str] = set()
    for n in plan.sizes:
        rng = np.random.default_rng(n)
        hashes = make(n, rng)
        planted = plant(hashes, rng)
        hashes_file = tmp / f"{data}-{n}.npy"
        np.save(hashes_file, hashes)
        limits = {CROWDSEG: n, BRUTE: plan.brute_max} | dict.fromkeys(peers, plan.peer_max)
        results: dict[str, Outcome] = {}
        for method, limit in limits.items():
            guess = extrapolate(history[method], n)
            about = "" if guess is None else f" (~{guess:,.0f} s extrapolated)"
            if n > limit or method in stopped or (guess is not None and guess > 4 * plan.budget):
                results[method] = Outcome(note="not run" + about)
                continue
            results[method] = measure(method, hashes_file, plan.budget)
            seconds = results[method].seconds
            if seconds is not None:
                history[method].append((n, seconds))
            else:
                stopped.add(method)
                results[method].note += about
        for method, out in results.items():
            if out.seconds is None:
                rows.append([data, f"{n:,}", method, out.note, "", "", "", "", ""])
                continue
            verdict = check(hashes, out, results.get(BRUTE) if method != BRUTE else None, planted, rng)
            rows.append([data, f"{n:,}", method, f"{out.seconds:.3f}", f"{out.cpu:.2f}", f"{len(out.i):,}",
                         f"{out.checked:,}" if out.checked else "", f"{out.rss_mb:.0f} ({out.idle_mb:.0f})",
                         verdict])
    return rows


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="up to 50k hashes, 20 s budget (under a minute)")
    plan = QUICK if parser.parse_args().quick else FULL
    peers = list(PEERS) if imagededup() is not None else []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model = photo_model(Path(tmp) / "crowd", plan.model_photos, seed=3)
        rows = bench("uniform", lambda n, rng: rng.integers(0, 2**64, n, dtype=np.uint64), plan, Path(tmp), peers)
        rows += bench("photo-like", lambda n, rng: photo_like(n, model, rng), plan, Path(tmp), [])
    print(f"## All pairs within Hamming distance {RADIUS}: seconds, pairs, peak memory (budget {plan.budget:.0f} s "
          f"per run; imagededup on uniform data only)\n")
    print(table(["data", "hashes", "method", "seconds", "CPU s", "pairs", "distances computed", "peak MB (idle)",
                 "pairs check"], rows))
    print(f"\nLoad average (1 min) at the start and end: {load[0]:.2f}, {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores; seconds are wall-clock, best of 3 below 2 s; CPU s adds up all threads.")
    if not peers:
        print("\nimagededup is not installed (make bench installs it); its rows are left out.")


if __name__ == "__main__":
    main()
