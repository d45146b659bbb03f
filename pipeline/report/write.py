"""Deterministic writers for the tables and summaries reviewers open."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from pipeline.rows import Rows, chunks
from pipeline.store import code_version, write_atomic

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralize(value: Any) -> Any:
    """Defuse a text cell a spreadsheet would run as a formula (CSV injection)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def write_csv(table: Rows, path: Path) -> None:
    """Write a table as UTF-8 CSV with stable float formatting and formula-safe text cells, a chunk at a time (a
    stored table's: ``pipeline.rows``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        for i, df in enumerate(chunks(table)):
            write_rows(defused(df), f, header=i == 0)


def defused(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every risky text cell ``neutralize``d. Only the columns that hold one are copied, so a large
    table is not doubled in memory."""
    out = df
    for col in df.columns:
        values = df[col]
        if isinstance(values.dtype, pd.CategoricalDtype):  # a risky category makes its rows risky
            bad = [isinstance(v, str) and v.startswith(FORMULA_START) for v in values.cat.categories]
            risky = np.flatnonzero(np.asarray(bad, bool)[values.cat.codes.to_numpy()] & (values.cat.codes >= 0))
        elif values.dtype == object:
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
    return out


def write_rows(df: pd.DataFrame, f: TextIO, header: bool) -> None:
    """``df`` as CSV rows into ``f`` (after a header line if ``header``), ``CSV_CELLS`` cells at a time."""
    floats = [c for c in df.columns if isinstance(df[c].dtype, np.dtype) and df[c].dtype.kind == "f"]
    step = max(1, CSV_CELLS // max(1, len(df.columns)))
    for at in range(0, max(len(df), 1), step):
        rows = df.iloc[at: at + step]
        rows = rows.assign(**{c: format_floats(rows[c].to_numpy()) for c in floats})
        rows.to_csv(f, index=False, header=header and at == 0, lineterminator="\n", float_format=FLOAT_FORMAT)


FLOAT_FORMAT = "%.6g"
CSV_CELLS = 100_000
"""Cells ``write_csv`` formats at a time (pandas' own ``to_csv`` chunk): their float cells are held as Python strings
meanwhile, ~60 bytes each."""


def format_floats(values: np.ndarray) -> list[str]:
    """Float cells as ``to_csv(float_format=FLOAT_FORMAT)`` writes them (empty for NaN), the same bytes sooner:
    pandas formats each value through a Python call that also tests it for NA. The report's CSVs of a 200k-photo
    build took 12.8-14.3 s that way and 9.0-10.5 s this way (20k: 1.27 and 0.93 s)."""
    return ["" if v != v else FLOAT_FORMAT % v for v in values.tolist()]


def write_tables(tables: Mapping[str, Rows], folder: Path, ledger: Path) -> None:
    """``write_csv`` each table to ``folder/<name>.csv``, except where that file already holds the same table.

    ``ledger`` keeps, per file written, a fingerprint of its table (columns, dtypes, every value, and this module's
    code) with the file's size and modification time; a file changed since, or a different table, is written
    again. A rebuild that changes only the splits leaves the large per-assignment tables as they were (~1.4 s of
    CSV formatting at 20k photos)."""
    try:
        seen = json.loads(ledger.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        seen = {}
    salt = code_version("pipeline.report.write")
    now = {}
    for name, df in tables.items():
        path = folder / f"{name}.csv"
        digest = fingerprint(df, salt)
        if not _holds(path, seen.get(name), digest):
            write_csv(df, path)
        st = path.stat()
        now[name] = [digest, st.st_size, st.st_mtime_ns]
    write_atomic(ledger, json.dumps(now, sort_keys=True).encode())


HASH_ROWS = 100_000
"""Rows ``fingerprint`` hashes at a time. pandas hashes a row from every column's values, and at once it held a
Python string per text cell: ~230 MB for merge's 925k assignment rows at 200k photos, the report's peak."""


def fingerprint(table: Rows, salt: str = "") -> str:
    """A digest of a table's columns, dtypes and values, in order (the same however a stored table is chunked)."""
    digest = hashlib.sha256(json.dumps([salt, list(map(str, table.columns)), dtypes(table)]).encode())
    for df in chunks(table):
        for at in range(0, len(df), HASH_ROWS):  # the same row hashes as all at once
            digest.update(pd.util.hash_pandas_object(df.iloc[at: at + HASH_ROWS], index=False).to_numpy().tobytes())
    return digest.hexdigest()


def dtypes(table: Rows) -> list[str]:
    """A table's column types, as text (a stored table's: its empty form's, which its chunks share)."""
    return list(map(str, (table if isinstance(table, pd.DataFrame) else table.empty).dtypes))


def _holds(path: Path, entry: list[Any] | None, digest: str) -> bool:
    if entry is None or entry[0] != digest:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return [st.st_size, st.st_mtime_ns] == entry[1:]


def write_json(obj: Any, path: Path) -> None:
    """Write JSON with sorted keys, so equal content gives equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n", encoding="utf-8")


def json_rows(df: pd.DataFrame) -> list[dict[str, object]]:
    """Table rows as JSON-ready dicts (missing values become null)."""
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in df.to_dict("records")]


JSON_CHUNK = 10_000
"""Rows ``write_json_rows`` turns into dicts at a time."""


def write_json_rows(df: pd.DataFrame, path: Path) -> None:
    """``write_json(json_rows(df), path)``, byte for byte, ``JSON_CHUNK`` rows at a time: a 200k-photo build's
    findings held as one list of dicts, then as one string, took ~200 MB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        if df.empty:
            f.write("[]\n")
            return
        for at in range(0, len(df), JSON_CHUNK):
            text = json.dumps(json_rows(df.iloc[at:at + JSON_CHUNK]), indent=2, sort_keys=True, default=_plain)
            f.write(("[\n" if at == 0 else ",\n") + text[2:-2])  # the list's items, without its brackets
        f.write("\n]\n")


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
