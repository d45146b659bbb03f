"""Deterministic writers for the tables and summaries reviewers open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralize(value: Any) -> Any:
    """Defuse a text cell a spreadsheet would run as a formula (CSV injection)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write a table as UTF-8 CSV with stable float formatting and formula-safe text cells.

    Only the columns that hold a risky cell are copied, so writing a large table does not double it in memory."""
    out = df
    for col in df.columns:
        values = df[col]
        if values.dtype == object:
            text = values.to_numpy(dtype=object)
            risky = np.flatnonzero([isinstance(v, str) and v.startswith(FORMULA_START) for v in text])
        elif pd.api.types.is_string_dtype(values):
            risky = np.flatnonzero(values.str.startswith(FORMULA_START).fillna(False).to_numpy(bool))
        else:
            continue
        if len(risky):
            text = values.to_numpy(dtype=object, copy=True)
            text[risky] = [neutralize(v) for v in text[risky]]
            out = out.assign(**{col: text})
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, lineterminator="\n", float_format="%.6g")


def write_json(obj: Any, path: Path) -> None:
    """Write JSON with sorted keys, so equal content gives equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n", encoding="utf-8")


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
