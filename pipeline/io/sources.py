"""Annotation sources in any supported tool's format: sniff the format, read it, and match images to photos."""

from __future__ import annotations

import json
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

import pandas as pd

from pipeline.config import Config
from pipeline.errors import CrowdsegError
from pipeline.io.annotations import read_annotations
from pipeline.io.coco import read_coco
from pipeline.io.cvat import read_cvat
from pipeline.io.label_studio import read_label_studio
from pipeline.io.labelme import read_labelme
from pipeline.io.manifest import read_text
from pipeline.io.shapes import ASSIGNMENT_COLUMNS, SHAPE_COLUMNS, Sink, Tables
from pipeline.io.toloka import read_toloka
from pipeline.spec import Spec
from pipeline.tables import REJECTION_COLUMNS, frame, isin, rejection

READERS: dict[str, Callable[[Path, Spec, dict[str, str], str], Tables]] = {
    "cvat": read_cvat, "coco": read_coco, "labelme": read_labelme, "label_studio": read_label_studio,
    "toloka": read_toloka}
TOLOKA_PREFIXES = ("INPUT:", "OUTPUT:", "GOLDEN:", "HINT:", "ASSIGNMENT:")
LS_UPLOAD = re.compile(r"^[0-9a-f]{8}-(.+)$")  # Label Studio stores uploads as <8 hex digits>-<original name>


def detect_format(path: Path) -> str:
    """The export format of an annotation file or folder, sniffed from its content (never its name)."""
    if path.is_dir():
        first = next((p for p in sorted(path.glob("*.json")) if p.is_file()), None)
        if first is not None and _json_format(_json(read_text(first))) == "labelme":
            return "labelme"
        raise CrowdsegError("a folder source must hold LabelMe *.json files", file=str(path))
    text = read_text(path).lstrip()
    first_line = text.split("\n", 1)[0]
    if text.startswith("<"):
        root = re.search(r"<([A-Za-z_][\w.:-]*)", re.sub(r"<[?!][^>]*>", "", text[:65536]))
        if root and root.group(1) == "annotations":
            return "cvat"
    elif "\t" in first_line and any(c.strip().startswith(TOLOKA_PREFIXES) for c in first_line.split("\t")):
        return "toloka"
    else:
        found = _json_format(_json(text)) or _json_format(_json(first_line))
        if found:
            return found
    raise CrowdsegError("cannot tell the annotation format (CVAT XML, COCO, LabelMe, Label Studio, Toloka TSV or "
                        "crowdseg JSONL); set format in the source config", file=str(path))


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _json_format(obj: object) -> str | None:
    if isinstance(obj, dict):
        if all(isinstance(obj.get(k), list) for k in ("images", "annotations", "categories")):
            return "coco"
        if "shapes" in obj and "imagePath" in obj:
            return "labelme"
        if "photo_id" in obj:
            return "jsonl"
    if isinstance(obj, list) and obj and all(isinstance(t, dict) for t in obj) and any(
            isinstance(t.get("annotations"), list) and "data" in t for t in obj):
        return "label_studio"
    return None


def read_source(path: Path, fmt: str, spec: Spec, label_map: dict[str, str], annotator: str) -> Tables:
    """(assignments, shapes, rejections) of one source; ``fmt`` "auto" sniffs the format.

    ``photo_id`` holds each tool's raw image reference until :func:`resolve_photos` maps it to the manifest.
    """
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        return read_annotations(path, spec, label_map)
    if fmt not in READERS:
        raise CrowdsegError(f"unknown annotation format {fmt!r}; use one of auto, jsonl, {', '.join(READERS)}",
                            file=str(path))
    return READERS[fmt](path, spec, label_map, annotator)


class PhotoIndex:
    """The manifest's photos by id, by path relative to their manifest's folder, and by file name."""

    def __init__(self, manifest: pd.DataFrame):
        self.ids = set(manifest["photo_id"])
        self.paths: dict[str, set[str]] = defaultdict(set)
        self.names: dict[str, set[str]] = defaultdict(set)
        for photo_id, path, source in zip(manifest["photo_id"], manifest["path"], manifest["manifest"], strict=True):
            rel = posixpath.relpath(Path(path).as_posix(), Path(source).resolve().parent.as_posix())
            self.paths[_normal(rel)].add(photo_id)
            self.names[posixpath.basename(rel)].add(photo_id)

    def match(self, ref: str) -> tuple[str | None, str, str]:
        """(photo_id, "", "") for the photo a reference names, else (None, reason, message)."""
        if ref in self.ids:
            return ref, "", ""
        path, names = _reference(ref)
        steps = [("path", self.paths.get(path, set()) if path else set())]
        steps += [("file name", self.names.get(n, set())) for n in names]
        steps += [("file stem", {PurePosixPath(n).stem} & self.ids) for n in names]
        for how, found in steps:
            if len(found) == 1:
                return next(iter(found)), "", ""
            if found:
                some = ", ".join(sorted(found)[:3])
                return None, "ambiguous_photo", f"image {ref!r} matches {len(found)} photos by {how}: {some}..."
        return None, "unknown_photo", f"image {ref!r} matches no photo of the manifest by id, path, file name or stem"


def _normal(path: str) -> str:
    return posixpath.normpath(path) if path else ""


def _reference(ref: str) -> tuple[str, list[str]]:
    """A reference's normalised path ('' for URLs) and the file names it may stand for.

    URLs (``http(s)://...``, Label Studio's ``/data/...``) count only by their last path component, except
    Label Studio local files (``?d=<path>``); Label Studio's upload prefix is tried off as a fallback.
    """
    ref = ref.replace("\\", "/")
    parts = urlsplit(ref)
    local = parse_qs(parts.query).get("d", [""])[0]
    url = len(parts.scheme) > 1 or parts.netloc or ref.startswith("/data/")  # a one-letter scheme is a drive
    if local or not url:
        path = _normal(unquote(local) if local else ref)
        return path, [posixpath.basename(path)] if path else []
    name = posixpath.basename(unquote(parts.path))
    names = [name] if name else []
    upload = LS_UPLOAD.match(name) if "/upload/" in parts.path else None
    return "", names + ([upload.group(1)] if upload else [])


def resolve_photos(assignments: pd.DataFrame, shapes: pd.DataFrame, manifest: pd.DataFrame) -> Tables:
    """Map each assignment's raw image reference to a manifest ``photo_id``; reject those that name none or many.

    In order: the reference is a photo_id; its normalised path equals a photo's path relative to its manifest's
    folder; its file name is unique among the photos; its file stem is a photo_id. URLs match by their last path
    component. References are only compared with manifest strings and never opened, so a reference cannot reach
    a file outside the manifest (no path traversal, by construction). Shapes follow their assignment.
    """
    index = PhotoIndex(manifest)
    found = {ref: index.match(ref) for ref in assignments["photo_id"].unique()}
    photo = assignments["photo_id"].map(lambda ref: found[ref][0])
    ok = photo.notna()
    rejected = []
    for a in assignments[~ok].itertuples(index=False):
        _, reason, message = found[a.photo_id]
        rejected.append(rejection("import", "assignment", reason, f"{message} ({a.n_shapes} shape(s) go with it)",
                                  file=a.file, row=a.row, photo_id=a.photo_id, annotator_id=a.annotator_id))
    kept = assignments[ok].assign(photo_id=photo[ok])
    by_key = dict(zip(kept["assignment"], kept["photo_id"], strict=True))
    shapes = shapes[isin(shapes["assignment"], by_key)]
    shapes = shapes.assign(photo_id=shapes["assignment"].map(by_key))
    return kept.reset_index(drop=True), shapes.reset_index(drop=True), frame(rejected, REJECTION_COLUMNS)


def read_all_annotations(cfg: Config, spec: Spec, manifest: pd.DataFrame, sink: Sink | None = None
                         ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The native annotations file plus every configured tool export, with image references resolved.

    With a ``sink``, every shape row goes to it (the native file's as it is read) and the shapes table is empty.
    """
    native = read_annotations(cfg.path(cfg.inputs.annotations), spec, cfg.inputs.label_map, sink)
    return join_tables([native, read_tool_sources(cfg, spec, manifest, sink)])


def read_tool_sources(cfg: Config, spec: Spec, manifest: pd.DataFrame, sink: Sink | None = None) -> Tables:
    """Every configured tool export (``inputs.sources``), image references resolved; shapes to ``sink`` if given."""
    parts = []
    for i, src in enumerate(cfg.inputs.sources, start=1):
        a, s, r = read_source(cfg.path(src.path), src.format, spec, {**cfg.inputs.label_map, **src.label_map},
                              src.annotator)
        a, s, unresolved = resolve_photos(a, s, manifest)
        a["assignment"], s["assignment"] = f"source{i}/" + a["assignment"], f"source{i}/" + s["assignment"]
        if sink is not None:
            sink(list(s.itertuples(index=False, name=None)))
            s = s.iloc[:0]
        parts.append((a, s, pd.concat([r, unresolved], ignore_index=True)))
    return join_tables(parts)


def join_tables(parts: list[Tables]) -> Tables:
    """(assignments, shapes, rejections) of several reads as one, with the declared columns even when empty."""
    empty = (frame([], ASSIGNMENT_COLUMNS), frame([], SHAPE_COLUMNS), frame([], REJECTION_COLUMNS))
    return tuple(pd.concat([p[k] for p in parts if len(p[k])] or [e], ignore_index=True)  # type: ignore[return-value]
                 for k, e in enumerate(empty))
