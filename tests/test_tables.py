"""The table helpers shared by the stages."""

import numpy as np
import pandas as pd
import pytest

from pipeline.tables import isin, sorted_by


@pytest.mark.parametrize("values", [
    ["b", "d"], {"b", "d"}, ("b", "d"), pd.Series(["b", "d"]), pd.Index(["b", "d"]),
    pd.Series(["b", "d"], dtype=object), [], ["b", None], ["b", np.nan], [1, "b"],
])
def test_isin_matches_pandas_on_string_columns(values):
    column = pd.Series(["a", "b", None, "d", "b"], index=[5, 3, 9, 1, 0])
    got = isin(column, values)
    assert got.dtype == bool and got.index.equals(column.index)
    assert got.tolist() == column.isin(list(values)).tolist()


def test_isin_falls_back_to_pandas_for_other_columns():
    assert isin(pd.Series([1, 2, 3]), {2, 3}).tolist() == [False, True, True]
    assert isin(pd.Series(["a", 1], dtype=object), ["a"]).tolist() == [True, False]


def test_positions_find_each_value_through_arrow_like_get_indexer():
    from pipeline.tables import positions

    column = pd.Series(["b", "x", None, "a", "b"], dtype="str")
    values = pd.Index(["a", "b", "c"], dtype="str")
    assert positions(column, values).tolist() == [1, -1, -1, 0, 1]
    assert positions(column.astype(object), values.astype(object)).tolist() == [1, -1, -1, 0, 1]
    assert positions(pd.Series([], dtype=object), values).tolist() == []
    assert positions(pd.Series([None], dtype=object), values).tolist() == [-1]
    assert positions(column, pd.Index([], dtype=object)).tolist() == [-1] * 5


def test_is_sorted_needs_every_value_present_and_never_decreasing():
    from pipeline.tables import is_sorted

    assert is_sorted(pd.Series(["a", "a", "b"], dtype="str")) and is_sorted(pd.Series([], dtype="str"))
    assert not is_sorted(pd.Series(["b", "a"], dtype="str"))
    assert not is_sorted(pd.Series(["a", "b", None], dtype="str"))  # a missing value: sort it to be sure


def test_categorical_text_sorts_as_the_plain_text():
    from pipeline.tables import as_categories

    df = pd.DataFrame({"k": ["teeth", "lips", "skin", "lips"], "n": [1, 2, 3, 4]})
    compact = as_categories(df, ["k"])
    assert isinstance(compact["k"].dtype, pd.CategoricalDtype) and df["k"].dtype != compact["k"].dtype
    assert compact.sort_values(["k", "n"])["n"].tolist() == df.sort_values(["k", "n"])["n"].tolist() == [2, 4, 3, 1]


def test_sorted_by_sorts_as_sort_values_and_keeps_a_sorted_table_as_it_is():
    """Lexicographic over text, numbers and categoricals (by their codes); a table in order is not copied."""
    rng = np.random.default_rng(4)
    for _ in range(100):
        df = pd.DataFrame({"p": rng.choice(["a", "b", "c"], 8), "n": rng.integers(0, 3, 8),
                           "c": pd.Categorical(rng.choice(["x", "y"], 8), categories=["y", "x"])})
        for keys in (["p"], ["p", "n"], ["c", "p", "n"]):
            expected = df.sort_values(keys, kind="stable", ignore_index=True)
            pd.testing.assert_frame_equal(sorted_by(df, keys), expected)
            again = sorted_by(expected, keys)
            pd.testing.assert_frame_equal(again, expected)
            assert np.shares_memory(again["n"].to_numpy(), expected["n"].to_numpy())
    missing = pd.DataFrame({"c": pd.Categorical([None, "x"]), "n": [1, 2]})  # pandas sorts missing values last
    pd.testing.assert_frame_equal(sorted_by(missing, ["c"]), missing.sort_values("c", ignore_index=True))
