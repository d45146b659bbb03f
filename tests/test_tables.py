"""The table helpers shared by the stages."""

import numpy as np
import pandas as pd
import pytest

from pipeline.tables import isin


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
