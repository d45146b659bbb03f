"""Read the photos manifest (CSV, JSONL or Parquet) into the photos table and its rejected rows."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from pipeline.errors import CrowdsegError
from pipeline.io.formats import PhotoRecord
from pipeline.spec import validation_reason
from pipeline.tables import REJECTION_COLUMNS, frame, rejection

PHOTO_COLUMNS = ["photo_id", "user_id", "path", "submitted_at", "manifest", "row", "attrs"]
REQUIRED = ("photo_id", "user_id", "path")


def read_text(path: Path) -> str:
    """A UTF-8 text file, or a one-line error naming the line with the bad bytes."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CrowdsegError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CrowdsegError(f"not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8", file=str(path),
                            where=line) from None


def read_lines(path: Path, start: tuple[int, int] = (0, 0)) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file's lines, read one at a time, so a large file is never held whole; a
    line with bad bytes is a one-line error naming it. ``start`` = (byte offset of a line's start, lines before
    it) reads from there on."""
    offset, before = start
    try:
        f = path.open("rb")
    except OSError as e:
        raise CrowdsegError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    with f:
        f.seek(offset)
        for number, raw in enumerate(f, start=before + 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise CrowdsegError(f"not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8", file=str(path),
                                    where=number) from None
            yield number, text.rstrip("\r\n")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.reader(read_text(path).splitlines())
    header = next(reader, None)
    if not header:
        raise CrowdsegError("empty manifest: no header row", file=str(path), where=1)
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CrowdsegError(f"missing required column(s) {', '.join(missing)}; header is {header}",
                            file=str(path), where=1)
    for fields in reader:
        row = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            yield row, f"expected {len(header)} fields, found {len(fields)}"
            continue
        yield row, {k: v for k, v in zip(header, fields, strict=True) if v != "" or k in REQUIRED}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for row, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield row, f"invalid JSON: {e.msg} at column {e.colno}"
            continue
        except RecursionError:
            yield row, "invalid JSON: nested too deeply"
            continue
        yield row, obj if isinstance(obj, dict) else f"expected a JSON object, found {type(obj).__name__}"


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for a bad file
        raise CrowdsegError(f"cannot read Parquet: {e}", file=str(path)) from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise CrowdsegError(f"missing required column(s) {', '.join(missing)}", file=str(path))
    for i, rec in enumerate(df.to_dict("records"), start=1):
        yield i, {k: v for k, v in rec.items() if not (v is None or (isinstance(v, float) and v != v))}


READERS = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".ndjson": _jsonl_rows, ".parquet": _parquet_rows}


def read_manifest(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The photos table (``path`` resolved to an absolute path) and the rejected rows, with reasons."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise CrowdsegError(f"unknown manifest type {path.suffix!r}; use .csv, .jsonl or .parquet", file=str(path))
    root = path.resolve().parent
    photos: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    first_row: dict[str, int] = {}
    for row, raw in reader(path):
        def reject(reason: str, message: str, photo_id: str = "", row: int = row) -> None:
            rejected.append(rejection("ingest", "photo", reason, message, file=str(path), row=row, photo_id=photo_id))

        if isinstance(raw, str):
            reject("bad_row", raw)
            continue
        try:
            rec = PhotoRecord.model_validate(raw)
        except ValidationError as e:
            reject("bad_row", validation_reason(e), str(raw.get("photo_id", "")))
            continue
        if rec.photo_id in first_row:
            reject("duplicate_photo_id", f"photo_id {rec.photo_id!r} already used at row {first_row[rec.photo_id]}",
                   rec.photo_id)
            continue
        first_row[rec.photo_id] = row
        attrs = {k: v for k, v in (rec.model_extra or {}).items()}
        photos.append({"photo_id": rec.photo_id, "user_id": rec.user_id, "path": str(root / rec.path),
                       "submitted_at": rec.submitted_at or "", "manifest": str(path), "row": row,
                       "attrs": json.dumps(attrs, sort_keys=True, default=str)})
    return frame(photos, PHOTO_COLUMNS), frame(rejected, REJECTION_COLUMNS)
