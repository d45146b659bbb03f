"""Row tables stored in chunks (``pipeline.rows``): read back in order, and read alike by the stages that take
them, however they are chunked."""

import numpy as np
import pandas as pd
import pytest

from pipeline.build import annotator_table, threshold_table
from pipeline.report.write import fingerprint, write_csv
from pipeline.rows import ChunkWriter, added_up, chunks, count, ordered, select, where
from pipeline.spec import load_spec
from pipeline.stages.skill import SKILL_COLUMNS
from pipeline.tables import REJECTION_COLUMNS, frame

SPEC = load_spec("easyportrait")
KEYS = ["photo_id", "assignment"]


def assignment_rows(photos: int, seed: int = 0) -> pd.DataFrame:
    """Merge-like assignment rows: three per photo, with missing agreements, swaps, exclusions and gold."""
    rng = np.random.default_rng(seed)
    n = 3 * photos
    agreement = rng.random(n)
    agreement[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({
        "photo_id": [f"p{i // 3:05d}" for i in range(n)], "assignment": [f"a{i:06d}" for i in range(n)][::-1],
        "annotator_id": [f"w{k}" for k in rng.integers(0, 7, n)], "golden": rng.random(n) < 0.05,
        "agreement": agreement, "swapped": rng.random(n) < 0.1,
        "excluded": pd.Categorical(np.where(rng.random(n) < 0.1, "low_agreement", "")),
        "mean_iou": rng.random(n), "drawn": pd.Categorical(rng.choice(["skin", "skin,lips", "=cmd"], n))})


def stored(df: pd.DataFrame, folder, cuts: list[int], keys: list[str] = KEYS):
    """``df`` saved as chunks cut at these row positions, in the order given (cuts may interleave photos)."""
    writer = ChunkWriter(folder, tuple(keys))
    for lo, hi in zip([0, *cuts], [*cuts, len(df)], strict=True):
        writer.add(df.iloc[lo:hi])
    return writer.table(df.iloc[:0])


def test_a_stored_table_reads_back_in_key_order_even_when_its_chunks_interleave(tmp_path):
    df = assignment_rows(40)
    whole = df.sort_values(KEYS, ignore_index=True)
    shuffled = df.sample(frac=1.0, random_state=1, ignore_index=True)  # every chunk spans nearly every photo
    for name, table in {"in order": stored(whole, tmp_path / "a", [30, 31, 90]),
                        "interleaved": stored(shuffled, tmp_path / "b", [20, 50, 51, 100])}.items():
        back = pd.concat(list(table), ignore_index=True)
        pd.testing.assert_frame_equal(back.astype({"excluded": str, "drawn": str}),
                                      whole.astype({"excluded": str, "drawn": str}), obj=name)
        assert len(table) == len(df)
        assert len(list(table)) <= 5  # a chunk's worth at a time, not a row at a time


def test_chunks_in_order_are_read_once_each(tmp_path, monkeypatch):
    from pipeline import store

    table = stored(assignment_rows(40).sort_values(KEYS, ignore_index=True), tmp_path, [30, 60, 90])
    loads = []
    real = store.load
    monkeypatch.setattr(store, "load", lambda p: loads.append(p) or real(p))
    assert sum(map(len, table)) == 120
    assert len(loads) == 4


def test_an_empty_stored_table_reads_as_its_columns(tmp_path):
    table = stored(assignment_rows(3).iloc[:0], tmp_path, [])
    assert len(table) == 0
    assert [list(c.columns) for c in table] == [list(assignment_rows(1).columns)]
    assert select(table, ["photo_id"]).empty and count(table, lambda a: a["golden"]) == 0


def test_readers_take_a_stored_table_or_a_dataframe_alike(tmp_path):
    df = assignment_rows(30).sort_values(KEYS, ignore_index=True)
    table = stored(df, tmp_path, [7, 40])
    for rows in (df, table):
        assert count(rows, lambda a: a["swapped"]) == int(df["swapped"].sum())
        pd.testing.assert_frame_equal(where(rows, lambda a: a["golden"], ["photo_id", "annotator_id"]),
                                      df.loc[df["golden"], ["photo_id", "annotator_id"]].reset_index(drop=True))
        assert select(rows, ["mean_iou"])["mean_iou"].tolist() == df["mean_iou"].tolist()
        assert isinstance(select(rows, ["drawn"])["drawn"].dtype, pd.CategoricalDtype)  # kept across chunks
    assert ordered(table, KEYS) is table
    with pytest.raises(ValueError, match="order"):
        ordered(table, ["photo_id"])


def test_partial_sums_add_up_to_the_sums_of_the_whole():
    rng = np.random.default_rng(3)
    parts = [pd.DataFrame({"k": rng.choice(list("abcde"), 50), "n": rng.integers(0, 9, 50)}) for _ in range(20)]
    whole = pd.concat(parts).groupby("k", sort=True).sum().reset_index()
    pd.testing.assert_frame_equal(added_up(iter(parts), ["k"], every=3), whole)


def test_a_stored_table_is_written_and_fingerprinted_as_the_whole_table(tmp_path):
    df = assignment_rows(50).sort_values(KEYS, ignore_index=True)
    table = stored(df, tmp_path / "rows", [1, 2, 80])
    write_csv(df, tmp_path / "whole.csv")
    write_csv(table, tmp_path / "stored.csv")
    assert (tmp_path / "stored.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert b"'=cmd" in (tmp_path / "stored.csv").read_bytes()  # formula cells defused in every chunk
    assert fingerprint(table) == fingerprint(df)
    assert fingerprint(stored(df, tmp_path / "other", [60])) == fingerprint(df)


def test_the_annotator_and_threshold_tables_do_not_depend_on_the_chunking(tmp_path):
    df = assignment_rows(200, seed=5).sort_values(KEYS, ignore_index=True)
    skills, none = frame([], SKILL_COLUMNS), frame([], REJECTION_COLUMNS)
    repairs = pd.DataFrame(columns=["annotator_id"])
    whole = annotator_table(df, repairs, skills, none, SPEC, 0.5, [])
    pieces = annotator_table(stored(df, tmp_path / "a", [3, 99, 300, 301]), repairs, skills, none, SPEC, 0.5, [])
    pd.testing.assert_frame_equal(pieces, whole)
    crowd = df[~df["golden"]]
    first = crowd.groupby("annotator_id")["agreement"].mean().round(4)  # what pandas makes of the whole table
    assert whole.set_index("annotator_id")["agreement"].to_dict() == pytest.approx(first.to_dict(), abs=1e-4)
    assert whole["photos"].sum() == crowd.groupby("annotator_id")["photo_id"].nunique().sum()

    rng = np.random.default_rng(2)
    classes = pd.DataFrame({"photo_id": [f"p{i // 4:05d}" for i in range(800)],
                            "class": pd.Categorical(np.tile(["lips", "skin", "teeth", "left_eye"], 200)),
                            "agreement": np.where(rng.random(800) < 0.1, np.nan, rng.random(800)),
                            "gold_iou": np.where(rng.random(800) < 0.7, np.nan, rng.random(800))})
    current = {c.id: 0.5 for c in SPEC.classes}
    table = threshold_table(classes, SPEC, current)
    assert table.equals(threshold_table(stored(classes, tmp_path / "c", [5, 401], ["photo_id", "class"]), SPEC,
                                        current))
    lips = classes[(classes["class"] == "lips") & classes["agreement"].notna()]
    row = table[(table["class"] == "lips") & (table["threshold"] == 0.5)].iloc[0]
    assert row["photos"] == len(lips)
    assert row["accepted_share"] == round(float((lips["agreement"] >= 0.5 - 1e-9).mean()), 4)
    gold = lips[lips["gold_iou"].notna() & (lips["agreement"] >= 0.5 - 1e-9)]
    assert row["gold_photos"] == len(gold) and row["gold_iou"] == pytest.approx(gold["gold_iou"].mean(), abs=1e-4)


def test_chunks_of_a_dataframe_is_the_dataframe():
    df = assignment_rows(2)
    assert [c is df for c in chunks(df)] == [True]
