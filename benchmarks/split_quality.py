"""Split quality on ~20,000 photos of Zipf users: crowdseg assign_splits against scikit-learn StratifiedGroupKFold.

Users have Zipf(2) photo counts capped at 60 (5,900 users give ~20k photos). Photo strata: ``has_teeth`` (~30%, each
user with their own rate), ``brightness_bucket`` (4 values) and ``orientation`` (the user's own 90% of the time).
The second scenario adds ``device``, a user attribute (every photo of a user has it) from 40 models with Zipf
popularity, so rare models belong to a few users. StratifiedGroupKFold (shuffled, 10 folds, groups = users) is
stratified on the joint label of all stratum columns; folds 0-6 are train, 7 val, 8-9 test. Both are scored by
``split_report``: the ratio error and, over values with at least 20 photos, the worst |share of the value's photos in
a split - ratio| per column and for the joint label. "bound" is a lower bound for the worst column value of any
user-disjoint split: the largest, over values of at most 300 photos, of the best that value alone allows. The
incremental case adds 20% new users and counts the old photos whose split changed.

    python benchmarks/split_quality.py [--users 5900] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from common import table

from pipeline.stages.split import MIN_STRATUM_PHOTOS, SplitReport, assign_splits, split_report, stratum_labels

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}
FOLDS = ["train"] * 7 + ["val"] + ["test"] * 2
PHOTO_STRATA = ["has_teeth", "brightness_bucket", "orientation"]
SCENARIOS = {"3 photo strata": PHOTO_STRATA, "+ device (user attribute, 40 values)": [*PHOTO_STRATA, "device"]}
Splitter = Callable[[pd.DataFrame, list[str]], pd.Series]


def zipf_photos(n_users: int, seed: int, prefix: str = "") -> pd.DataFrame:
    """Photos of users with Zipf(2) photo counts (at most 60) and the stratum columns described above."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.zipf(2.0, n_users), 60)
    user = np.repeat(np.arange(n_users), counts)
    photo = np.concatenate([np.arange(c) for c in counts])
    n = len(user)
    portrait = (rng.random(n_users) < 0.7)[user]
    return pd.DataFrame({
        "photo_id": [f"{prefix}p{u}_{k}" for u, k in zip(user, photo, strict=True)],
        "user_id": [f"{prefix}u{u}" for u in user],
        "has_teeth": rng.random(n) < 0.6 * rng.random(n_users)[user],
        "brightness_bucket": rng.choice(["dark", "dim", "normal", "bright"], n, p=[0.1, 0.2, 0.5, 0.2]),
        "orientation": np.where(np.where(rng.random(n) < 0.9, portrait, ~portrait), "portrait", "landscape"),
        "device": [f"d{d}" for d in np.minimum(rng.zipf(1.6, n_users), 40)[user]],
    })


def crowdseg(photos: pd.DataFrame, strata: list[str], pinned: pd.DataFrame | None = None) -> pd.Series:
    """crowdseg's split per photo, on the input's index."""
    out = assign_splits(photos, RATIOS, "bench", strata=strata, pinned=pinned)[0]
    return photos["photo_id"].map(out.set_index("photo_id")["split"])


def sgkf(photos: pd.DataFrame, strata: list[str]) -> pd.Series:
    """StratifiedGroupKFold's split per photo: 10 folds on the joint stratum label, grouped by user."""
    from sklearn.model_selection import StratifiedGroupKFold

    label = photos[strata].astype(str).agg("|".join, axis=1)
    fold = np.empty(len(photos), dtype=int)
    with warnings.catch_warnings():  # "the least populated class has only 1 member": rare joint labels
        warnings.simplefilter("ignore", UserWarning)
        folds = StratifiedGroupKFold(n_splits=len(FOLDS), shuffle=True, random_state=0)
        for k, (_, held) in enumerate(folds.split(photos, label, photos["user_id"])):
            fold[held] = k
    return pd.Series(np.array(FOLDS)[fold], index=photos.index)


def score(photos: pd.DataFrame, split: pd.Series, strata: list[str]) -> SplitReport:
    """The crowdseg report of any per-photo split."""
    none = pd.Series(pd.NA, index=photos.index, dtype="string")
    return split_report(photos[["photo_id", "user_id"]].assign(split=split), stratum_labels(photos, strata), strata,
                        RATIOS, none, 0)


def value_bound(counts: np.ndarray) -> float:
    """The smallest worst deviation (pp) that one value allows when its users hold ``counts`` photos of it."""
    n = int(counts.sum())
    reach = np.zeros((n + 1, n + 1), dtype=bool)  # photos of the value in train, in val
    reach[0, 0] = True
    for c in counts:
        grown = reach.copy()
        grown[c:, :] |= reach[:n + 1 - c, :]
        grown[:, c:] |= reach[:, :n + 1 - c]
        reach = grown
    train, val = np.nonzero(reach)
    worst = np.maximum.reduce([abs(train / n - RATIOS["train"]), abs(val / n - RATIOS["val"]),
                               abs((n - train - val) / n - RATIOS["test"])])
    return float(worst.min()) * 100


def lower_bound(photos: pd.DataFrame, strata: list[str], largest: int = 300) -> float:
    """A lower bound of the worst column-value deviation over values of 20 to ``largest`` photos."""
    bounds = [0.0]
    for column in strata:
        per_user = photos.groupby([column, "user_id"]).size()
        for _, counts in per_user.groupby(level=0):
            if MIN_STRATUM_PHOTOS <= counts.sum() <= largest:
                bounds.append(value_bound(counts.to_numpy()))
    return max(bounds)


def quality_rows(methods: dict[str, Splitter], users: int, seeds: list[int]) -> list[list[str]]:
    """One row per scenario and method: ratio error, worst column value, worst joint value, seconds, bound.

    The mean (max) figures are over the crowds, one per seed.
    """
    rows = []
    for scenario, strata in SCENARIOS.items():
        data = [zipf_photos(users, seed) for seed in seeds]
        bounds = [lower_bound(photos, strata) for photos in data]
        for name, method in methods.items():
            reports, seconds = [], []
            for photos in data:
                start = time.perf_counter()
                split = method(photos, strata)
                seconds.append(time.perf_counter() - start)
                reports.append(score(photos, split, strata))
            column = [r.worst_stratum_deviation_pp for r in reports]
            joint = [r.worst_joint_deviation_pp for r in reports]
            rows.append([scenario, name, f"{max(r.max_ratio_error_pp for r in reports):.3f}",
                         f"{statistics.mean(column):.3f} ({max(column):.3f})",
                         f"{statistics.mean(joint):.3f} ({max(joint):.3f})", f"{statistics.mean(seconds):.2f}",
                         f"{statistics.mean(bounds):.3f} ({max(bounds):.3f})"])
    return rows


def incremental_rows(methods: dict[str, Splitter], users: int, seed: int) -> list[list[str]]:
    """20% new users: old photos whose split changed, and the quality of the new split."""
    old = zipf_photos(users, seed)
    photos = pd.concat([old, zipf_photos(users // 5, seed + 1000, prefix="n")], ignore_index=True)
    first = crowdseg(old, PHOTO_STRATA)
    runs = {"crowdseg, pinned to the first build": (first, crowdseg(photos, PHOTO_STRATA, old.assign(split=first)))}
    runs |= {f"{name}, run again": (method(old, PHOTO_STRATA), method(photos, PHOTO_STRATA))
             for name, method in methods.items()}
    rows = []
    for name, (before, after) in runs.items():
        report = score(photos, after, PHOTO_STRATA)
        moved = int((after.iloc[:len(old)].to_numpy() != before.to_numpy()).sum())
        rows.append([name, f"{moved:,} of {len(old):,}", f"{report.max_ratio_error_pp:.3f}",
                     f"{report.worst_stratum_deviation_pp:.3f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=5900, help="users (x ~3.4 photos)")
    ap.add_argument("--seeds", type=int, default=3, help="crowds per scenario")
    ap.add_argument("--quick", action="store_true", help="1,500 users, one crowd")
    args = ap.parse_args()
    users, seeds = (1500, [1]) if args.quick else (args.users, list(range(1, args.seeds + 1)))
    methods: dict[str, Splitter] = {"crowdseg": crowdseg}
    if importlib.util.find_spec("sklearn") is None:
        print("scikit-learn is not installed (make bench installs it): crowdseg only.\n")
    else:
        methods["sklearn StratifiedGroupKFold"] = sgkf
    n = len(zipf_photos(users, seeds[0]))
    print(f"## Split quality: {users:,} Zipf users (~{n:,} photos), ratios 70/10/20, {len(seeds)} crowd(s)\n")
    headers = ["scenario", "method", "max ratio error pp", "worst column value pp, mean (max)",
               "worst joint value pp, mean (max)", "seconds", "bound pp, mean (max)"]
    print(table(headers, quality_rows(methods, users, seeds)))
    print(f"\n## Incremental: {users // 5:,} new users join (3 photo strata)\n")
    print(table(["method", "old photos moved", "ratio error pp", "worst column value pp"],
                incremental_rows(methods, users, seeds[0])))


if __name__ == "__main__":
    main()
