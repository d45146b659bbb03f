"""Dedup: each duplicate kind, the keep decision, cross-user policies, the incremental index, real variants."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageOps

from pipeline.config import DedupConfig, IngestConfig
from pipeline.io.manifest import read_manifest
from pipeline.simulate import simulate
from pipeline.stages import dedup
from pipeline.stages.dedup import (
    find_duplicates,
    index_table,
    rank,
    thumb_correlation,
    user_links,
    within_group_pairs,
)
from pipeline.stages.ingest import ingest
from tests.conftest import realdata, write_jpeg

CFG = IngestConfig(min_side=32)


def _ingest(folder: Path, rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    lines = ["photo_id,user_id,path,submitted_at"] + [",".join((p, u, f, "")) for p, u, f in rows]
    (folder / "photos.csv").write_text("\n".join(lines) + "\n")
    kept, rejected = ingest(read_manifest(folder / "photos.csv")[0], CFG)
    assert rejected.empty, rejected
    return kept


@pytest.fixture
def variants(tmp_path) -> Path:
    """One photo and every kind of copy of it (lossy ones a little smaller, so the original is the best copy)."""
    base = Image.open(write_jpeg(tmp_path / "base.jpg", 5, size=(640, 480)))
    smaller = base.resize((632, 474))
    smaller.save(tmp_path / "recompressed.jpg", quality=60)
    base.resize((320, 240)).save(tmp_path / "resized.jpg", quality=90)
    base.crop((12, 9, 628, 471)).save(tmp_path / "cropped.jpg", quality=90)  # ~4% off the sides
    ImageEnhance.Brightness(smaller).enhance(1.25).save(tmp_path / "brighter.jpg", quality=90)
    ImageOps.mirror(smaller).save(tmp_path / "mirrored.jpg", quality=90)
    base.save(tmp_path / "lossless.png")  # same decoded pixels, other bytes
    (tmp_path / "copy.jpg").write_bytes((tmp_path / "base.jpg").read_bytes())
    write_jpeg(tmp_path / "other.jpg", 99, size=(640, 480))
    return tmp_path


KINDS = {"recompressed": "near", "resized": "near", "cropped": "near", "brighter": "near", "mirrored": "mirror",
         "lossless": "pixel", "copy": "exact"}


def test_every_kind_of_copy_by_one_user_is_dropped_for_the_best(variants):
    photos = _ingest(variants, [("base", "u1", "base.jpg"), ("other", "u1", "other.jpg")]
                     + [(k, "u1", f"{k}.{'png' if k == 'lossless' else 'jpg'}") for k in KINDS])
    found = find_duplicates(photos, DedupConfig()).set_index("photo_id")
    assert "other" not in found.index
    kept = found[found["action"] == "keep"]
    assert kept.index.tolist() == ["base"]  # largest, then sharpest, then earliest, then first id
    for name, kind in KINDS.items():
        row = found.loc[name]
        assert row["action"] == "drop" and row["kept_photo_id"] == "base"
        assert row["kind"] == kind and row["distance"] <= 10, (name, row["kind"], row["distance"])


def test_a_large_photo_and_its_lossless_copy_in_another_format_are_near_copies_at_distance_zero(tmp_path):
    base = Image.open(write_jpeg(tmp_path / "base.jpg", 5, size=(1600, 1200)))  # hashed at half scale: 1280 px+
    base.save(tmp_path / "lossless.png")
    photos = _ingest(tmp_path, [("base", "u1", "base.jpg"), ("lossless", "u1", "lossless.png")])
    found = find_duplicates(photos, DedupConfig())
    assert sorted(found["action"]) == ["drop", "keep"]
    assert found.loc[found["action"] == "drop", ["kind", "distance"]].values.tolist() == [["near", 0]]


def test_mirror_copies_are_missed_without_the_mirror_hash(variants):
    photos = _ingest(variants, [("base", "u1", "base.jpg"), ("mirrored", "u1", "mirrored.jpg")])
    assert len(find_duplicates(photos, DedupConfig())) == 2
    assert find_duplicates(photos, DedupConfig(mirror=False)).empty


def test_best_copy_is_largest_then_sharpest(variants):
    Image.open(variants / "base.jpg").resize((40, 30)).resize((640, 480)).save(variants / "blurred.jpg")
    photos = _ingest(variants, [("a_small", "u1", "resized.jpg"), ("b_blurred", "u1", "blurred.jpg"),
                                ("c_base", "u1", "base.jpg")])
    found = find_duplicates(photos, DedupConfig(within_user_distance=16)).set_index("photo_id")
    assert found.loc["c_base", "action"] == "keep"
    assert (found.drop("c_base")["kept_photo_id"] == "c_base").all()


@pytest.mark.parametrize("policy,action", [("group", "group"), ("flag", "flag"), ("drop", "drop")])
def test_cross_user_near_copies_follow_the_policy(variants, policy, action):
    photos = _ingest(variants, [("p1", "u1", "base.jpg"), ("p2", "u2", "resized.jpg"), ("p3", "u3", "copy.jpg")])
    found = find_duplicates(photos, DedupConfig(cross_user_policy=policy)).set_index("photo_id")
    assert found.loc["p3", "action"] == "drop" and found.loc["p3", "kind"] == "exact"  # identical: always one
    assert found.loc["p2", "action"] == action
    links = user_links(found.reset_index(), policy)
    assert links == ([("u1", "u2"), ("u1", "u3")] if policy == "group" else [])


def test_cross_user_threshold_is_separate(variants):
    photos = _ingest(variants, [("p1", "u1", "base.jpg"), ("p2", "u2", "brighter.jpg")])
    assert len(find_duplicates(photos, DedupConfig(cross_user_distance=10))) == 2
    assert find_duplicates(photos, DedupConfig(cross_user_distance=0)).empty


def test_new_uploads_are_checked_against_an_earlier_index(variants):
    first = _ingest(variants, [("p1", "u1", "base.jpg"), ("p9", "u9", "other.jpg")])
    index = index_table(first, find_duplicates(first, DedupConfig()), None)
    new = _ingest(variants, [("p2", "u1", "cropped.jpg"), ("p3", "u2", "mirrored.jpg")])
    found = find_duplicates(new, DedupConfig(), index).set_index("photo_id")
    assert found.loc["p1", "source"] == "index" and found.loc["p1", "action"] == "group"
    assert found.loc["p2", "action"] == "drop" and found.loc["p2", "kept_photo_id"] == "p1"
    assert found.loc["p3", "action"] == "group" and found.loc["p3", "kind"] == "mirror"
    assert "p9" not in found.index
    merged = index_table(new, found.reset_index(), index)
    assert merged["photo_id"].tolist() == ["p1", "p3", "p9"]


def test_imagededup_variants_resize_and_flip_are_found_rotation_is_not():
    folder = realdata("imagededup", "data", "mixed_images")
    names = ["ukbench00120", "ukbench00120_resize", "ukbench00120_hflip", "ukbench00120_rotation", "ukbench09268"]
    photos = _ingest(folder, [(n, "u1", f"{n}.jpg") for n in names])
    found = find_duplicates(photos, DedupConfig()).set_index("photo_id")
    assert found.loc["ukbench00120", "action"] == "keep"
    assert found.loc["ukbench00120_resize", "kind"] == "near"
    assert found.loc["ukbench00120_hflip", "kind"] == "mirror"
    assert "ukbench00120_rotation" not in found.index  # a 90-degree turn is beyond a perceptual hash
    assert "ukbench09268" not in found.index


def test_within_group_pairs_enumerates_each_pair_once():
    i, j = within_group_pairs(np.array(["a", "a", "a", "b", "c", "c"]))
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2), (4, 5)]


def test_colour_check_rejects_a_hash_collision_and_accepts_a_brightness_shift():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    brighter = np.clip(base.astype(int) * 1.2 + 10, 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    thumbs = pd.Series([x.tobytes().hex() for x in (base, brighter, other, base[:, ::-1])])
    corr = thumb_correlation(thumbs, np.array([0, 0, 0, 0]), np.array([1, 2, 3, 3]),
                             np.array([False, False, False, True]))
    assert corr[0] > 0.97 and corr[1] < 0.5 and corr[3] > 0.999 and corr[2] < corr[3]


def test_simulated_crowd_duplicates_are_found_per_kind_with_no_false_drops(tmp_path):
    simulate(tmp_path, photos=150, users=50, annotators=1, seed=11, size=(240, 320))
    photos, _ = ingest(read_manifest(tmp_path / "photos.csv")[0], IngestConfig(detect_faces=False))
    found = find_duplicates(photos, DedupConfig())
    truth = pd.read_csv(tmp_path / "truth" / "duplicates.csv", dtype=str)
    assert set(truth["kind"]) == {"exact_cross_user", "recompressed", "resized", "cropped", "brightness", "mirrored"}
    drops = found[found["action"] == "drop"]
    pairs = {frozenset(p) for p in zip(drops["photo_id"], drops["kept_photo_id"], strict=True)}
    expected = {frozenset(p) for p in zip(truth["photo_id"], truth["original_photo_id"], strict=True)}
    assert pairs == expected
    assert set(found["action"]) == {"keep", "drop"}  # no unrelated users were grouped
    cross = truth[truth["kind"] == "exact_cross_user"]
    assert len(user_links(found, "group")) == cross["photo_id"].nunique()


def test_greyscale_copy_of_a_colour_photo_is_found():
    folder = realdata("imagededup", "data")
    photos = _ingest(folder, [("colour", "u1", "base_images/ukbench00120.jpg"),
                              ("grey", "u1", "ukbench00120_gray.jpg")])
    found = find_duplicates(photos, DedupConfig()).set_index("photo_id")
    assert found.loc["grey", "action"] == "drop" and found.loc["grey", "kept_photo_id"] == "colour"


def test_identical_copy_under_another_account_drops_even_if_its_twin_was_dropped(variants):
    photos = _ingest(variants, [("a_png", "u1", "lossless.png"), ("b_jpg", "u1", "recompressed.jpg"),
                                ("c_copy", "u2", "recompressed.jpg")])
    found = find_duplicates(photos, DedupConfig()).set_index("photo_id")
    assert found.loc["c_copy", "action"] == "drop"
    assert found.loc["c_copy", "kept_photo_id"] == found.loc["b_jpg", "kept_photo_id"] == "a_png"


def test_the_best_copy_is_the_well_exposed_one_before_the_sharpest():
    copies = pd.DataFrame({"photo_id": ["dark", "plain", "small"], "source": "new", "width": [720, 720, 360],
                           "height": 960, "brightness": [0.12, 0.45, 0.5], "sharpness": [300.0, 150.0, 900.0],
                           "submitted_at": ""})
    assert list(rank(copies)["photo_id"]) == ["plain", "dark", "small"]


def test_a_large_users_pairs_are_searched_by_distance_and_give_the_exhaustive_edges(monkeypatch):
    """A user with many photos is not paired exhaustively (10^4 photos would be 5x10^7 pairs); the edges found
    are the same as pairing every two of their photos."""
    rng = np.random.default_rng(5)
    n = 600
    base = rng.integers(0, 2**63, 60, dtype=np.uint64)
    ph = base[rng.integers(0, 60, n)] ^ (np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64))  # clusters
    mirror = ph[::-1].copy()
    thumb = np.tile(rng.integers(0, 256, (1, 8 * 8 * 3)), (n, 1)).astype(np.uint8)
    table = pd.DataFrame({"phash": [f"{h:016x}" for h in ph], "phash_mirror": [f"{h:016x}" for h in mirror],
                          "user_id": np.where(np.arange(n) < 500, "heavy", [f"u{k % 40}" for k in range(n)]),
                          "thumb": [t.tobytes().hex() for t in thumb]})
    cfg = DedupConfig()
    monkeypatch.setattr(dedup, "LARGE_GROUP", 10**9)
    exhaustive = dedup.hash_edges(table, n, cfg)
    monkeypatch.setattr(dedup, "LARGE_GROUP", 64)
    searched = dedup.hash_edges(table, n, cfg)
    assert len(exhaustive) > 1000
    pd.testing.assert_frame_equal(searched, exhaustive)
    i, _ = dedup.same_user_pairs(table["user_id"].to_numpy(), ph, mirror, cfg.within_user_distance)
    assert len(i) < 500 * 499 / 2 / 4  # far fewer candidates than every pair of the heavy user's photos


@pytest.mark.parametrize("policy", ["drop", "flag"])
def test_a_crowd_copy_of_a_dataset_sample_follows_the_cross_source_policy(variants, policy):
    """The sample wins even over a better crowd copy; derived crops of one image are never each other's copies."""
    Image.open(variants / "other.jpg").resize((600, 450)).save(variants / "other_small.jpg", quality=90)
    photos = _ingest(variants, [("base", "u1", "base.jpg"), ("ext", "eg", "recompressed.jpg"),
                                ("exact", "u2", "copy.jpg"), ("crop_a", "voc/1", "other.jpg"),
                                ("crop_b", "voc/1", "other_small.jpg")])
    kind = {"ext": "external", "crop_a": "derived", "crop_b": "derived"}
    photos = photos.assign(origin=photos["photo_id"].map({"ext": "eg", "crop_a": "voc", "crop_b": "voc"}).fillna(
        "crowd"), origin_kind=photos["photo_id"].map(kind).fillna("crowd"))
    found = find_duplicates(photos, DedupConfig(cross_source_policy=policy)).set_index("photo_id")
    assert found.at["ext", "action"] == "keep"
    assert found.at["base", "action"] == policy and "source eg" in found.at["base", "reason"]
    assert found.at["base", "kept_photo_id"] == ("ext" if policy == "drop" else "base")
    assert found.at["exact", "action"] == "drop"  # an identical copy of base by another crowd user
    assert "crop_a" not in found.index and "crop_b" not in found.index
    as_crowd = find_duplicates(photos.assign(origin_kind="crowd"), DedupConfig()).set_index("photo_id")
    assert as_crowd.at["crop_b", "action"] == "drop"  # the same pair, by one crowd user: a duplicate


def test_union_find_is_sparse_so_each_cluster_costs_its_own_size():
    """find_duplicates builds two union-finds per cluster: one sized to the whole table made dedup quadratic."""
    uf = dedup.UnionFind()
    uf.union(10**9, 7)
    uf.union(7, 10**6)
    assert uf.find(10**9) == uf.find(10**6) == 7 and uf.find(3) == 3
    assert len(uf.parent) == 2  # only the joined members are stored
    assert uf.groups([10**6, 3, 7, 10**9]) == [[10**6, 7, 10**9], [3]]


def test_only_candidates_within_their_threshold_reach_the_thumbnail_check():
    """One user's 200 photos make 19,900 candidate pairs; the thumbnails of the three close pairs alone are read."""
    rng = np.random.default_rng(3)
    n = 200
    ph = rng.integers(0, 2**63, n, dtype=np.uint64)
    thumb = rng.integers(0, 256, (n, 8 * 8 * 3)).astype(np.uint8)
    for a, b in ((0, 1), (50, 120), (7, 199)):
        ph[b], thumb[b] = ph[a] ^ np.uint64(0b101), thumb[a]  # 2 bits off, the same colours
    table = pd.DataFrame({"phash": [f"{h:016x}" for h in ph], "phash_mirror": [f"{h:016x}" for h in ~ph],
                          "user_id": "u", "thumb": [t.tobytes().hex() for t in thumb]})
    read: list[int] = []

    def thumbs(rows: np.ndarray) -> np.ndarray:
        read.extend(rows.tolist())
        return table["thumb"].to_numpy()[rows]

    edges = dedup.hash_edges(table, n, DedupConfig(), thumbs)
    assert sorted(read) == [0, 1, 7, 50, 120, 199]
    assert edges[["i", "j", "distance"]].values.tolist() == [[0, 1, 2], [7, 199, 2], [50, 120, 2]]
