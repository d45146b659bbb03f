import numpy as np
import pandas as pd

from pipeline.stages.split import assign_splits, user_groups

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _zipf_photos(n_users: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.zipf(2.0, n_users), 60)
    return pd.DataFrame([{"photo_id": f"p{u}_{k}", "user_id": f"u{u}"} for u in range(n_users)
                         for k in range(counts[u])])


def test_splits_are_user_disjoint_and_hit_the_ratios():
    photos = _zipf_photos(3000, 1)
    out = assign_splits(photos, RATIOS, "seed")
    assert out.groupby("user_id")["split"].nunique().max() == 1
    share = out["split"].value_counts(normalize=True)
    for s, r in RATIOS.items():
        assert abs(share[s] - r) < 0.005, (s, share[s])


def test_splits_do_not_depend_on_row_order_and_follow_the_seed():
    photos = _zipf_photos(300, 2)
    a = assign_splits(photos, RATIOS, "seed")
    b = assign_splits(photos.sample(frac=1, random_state=3), RATIOS, "seed")
    assert a.equals(b)
    assert not a.equals(assign_splits(photos, RATIOS, "other"))


def test_linked_users_share_a_split():
    photos = _zipf_photos(200, 4)
    links = [("u1", "u2"), ("u2", "u3"), ("u50", "u60")]
    out = assign_splits(photos, RATIOS, "s", links).set_index("user_id")["split"]
    assert out["u1"].iloc[0] == out["u2"].iloc[0] == out["u3"].iloc[0]
    assert user_groups(["u3", "u1"], [("u3", "u1")]) == {"u1": "u1", "u3": "u1"}


def test_zero_ratio_split_gets_nothing():
    out = assign_splits(_zipf_photos(50, 5), {"train": 0.8, "val": 0.0, "test": 0.2}, "s")
    assert set(out["split"]) == {"train", "test"}
