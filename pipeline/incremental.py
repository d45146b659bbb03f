"""What each stage's content key is made of, and the batches that make reruns incremental.

A stage's result is reused when its key is unchanged. Keys cover the inputs' content, the config a stage reads
and the code version (``store.key_of``); they leave out what only later stages read, so that changing the split
ratios, or a class's agreement threshold, does not invalidate the ingest or the merge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config, DatasetConfig
from pipeline.io.shapes import ASSIGNMENT_COLUMNS, SHAPE_COLUMNS, Tables
from pipeline.io.shapestore import LOCATION_COLUMNS, SPAN_COLUMNS, Record, ShapeStore, records_of
from pipeline.spec import Spec
from pipeline.store import code_version, key_of, known_items, load, rows_key
from pipeline.tables import REJECTION_COLUMNS, frame, isin

MERGE_INDEPENDENT = {"class_agreement", "hold_disputed", "ignore_below", "pin_skills"}
"""Merge settings that do not change a photo's vote directly (they decide status or export, or the weights, which
merge keys hold themselves), so are not in merge keys."""


@dataclass(frozen=True)
class Batch:
    """One task's worth of items to compute: their row positions, keys, the batch key and its result's file."""

    rows: list[int]
    items: list[str]
    key: str
    part: str


@dataclass(frozen=True)
class Batching:
    """How a stage's items still to compute become tasks: at most ``size`` per batch, and at least ``spread``
    batches when there are that many items, so that a small stage still gives every worker some."""

    size: int
    spread: int = 1

    def length(self, items: int) -> int:
        """Items per batch for ``items`` items."""
        return max(1, min(self.size, -(-items // self.spread)))


@dataclass(frozen=True)
class Plan:
    """A stage's items: those reused from earlier results (by result file) and the batches still to compute."""

    reused: dict[str, list[int]]
    todo: list[Batch]

    def parts(self, done: list[str]) -> dict[str, list[int]]:
        """Every result file this stage reads, with the row positions it holds, once ``todo`` ran into ``done``."""
        out = {p: list(rows) for p, rows in self.reused.items()}
        for bt, part in zip(self.todo, done, strict=True):
            out.setdefault(part, []).extend(bt.rows)
        return out

    @classmethod
    def joined(cls, plans: list[Plan]) -> Plan:
        """One plan of several planned over consecutive chunks of a stage's items."""
        reused: dict[str, list[int]] = {}
        for p in plans:
            for part, rows in p.reused.items():
                reused.setdefault(part, []).extend(rows)
        return cls(reused, [bt for p in plans for bt in p.todo])

    @property
    def computed(self) -> int:
        return sum(len(bt.rows) for bt in self.todo)

    @property
    def reused_items(self) -> int:
        return sum(len(r) for r in self.reused.values())


def plan(item_keys: list[str], stage: str, folder: Path, batching: Batching, first: int = 0,
         known: dict[str, str] | None = None) -> Plan:
    """Reuse every item whose key an earlier (even interrupted) build saved in ``folder``; batch the rest.

    ``first`` is the row position of the first key (a stage planned a chunk at a time); ``known`` is
    ``known_items(folder)`` when the caller read it already."""
    known = known_items(folder) if known is None else known
    reused: dict[str, list[int]] = {}
    missing = []
    for i, k in enumerate(item_keys, start=first):
        if k in known:
            reused.setdefault(known[k], []).append(i)
        else:
            missing.append(i)
    todo = []
    size = batching.length(len(missing))
    for start in range(0, len(missing), size):
        rows = missing[start: start + size]
        items = [item_keys[i - first] for i in rows]
        key = key_of(stage, items)
        todo.append(Batch(rows, items, key, str(folder / f"{key}.pkl")))
    return Plan(reused, todo)


def take(result: Any, ids: set[str]) -> Any:
    """The part of a saved batch result that belongs to the photos ``ids``: rows of tables with a photo_id,
    entries of dicts by photo id; tuples and dataclasses of those, field by field."""
    if isinstance(result, pd.DataFrame):
        mine = isin(result["photo_id"], ids)
        return result if mine.all() else result[mine]  # a whole batch (a cold build's) as it was loaded
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if k in ids}
    if isinstance(result, tuple):
        return tuple(take(r, ids) for r in result)
    return replace(result, **{f.name: take(getattr(result, f.name), ids) for f in fields(result)})


def shares(parts: dict[str, list[int]], ids: list[str]) -> Iterator[tuple[str, Any]]:
    """Each result file with its share of a stage's items (``ids`` by row position), loading each file once, in the
    order of the first item each holds (so shares of a cold build come in item order)."""
    for part, rows in sorted(parts.items(), key=lambda kv: (min(kv[1], default=-1), kv[0])):
        yield part, take(load(part), {ids[i] for i in rows})


JOIN_EVERY = 32
"""Shares ``gather`` joins into one at a time, when asked to."""


def gather(parts: dict[str, list[int]], ids: list[str], each: Callable[[Any], Any] = lambda share: share,
           join: Callable[[list[Any]], Any] | None = None) -> list[Any]:
    """The ``shares`` of a stage's items, each reduced by ``each`` as soon as it is loaded, so only the reduced
    shares are held together; with ``join``, every ``JOIN_EVERY`` reduced shares are joined into one as they come
    (a merge pass of 200k photos' batches holds one table per 32 batches, not per batch)."""
    done: list[Any] = []
    pending: list[Any] = []
    for _, share in shares(parts, ids):
        pending.append(each(share))
        if join is not None and len(pending) == JOIN_EVERY:
            done.append(join(pending))
            pending = []
    return done + ([join(pending)] if join is not None and pending else pending)


def spec_key(spec: Spec) -> str:
    return key_of("spec", spec.model_dump(mode="json"))


def input_files(cfg: Config) -> list[Path]:
    """Every input file the read-inputs stage parses (folders of tool exports file by file)."""
    paths = [cfg.path(cfg.inputs.photos).resolve(), cfg.path(cfg.inputs.annotations).resolve()]
    for src in cfg.inputs.sources:
        p = cfg.path(src.path).resolve()
        paths += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return paths


def inputs_key(cfg: Config, spec: Spec, digests: list[str]) -> str:
    """The input files (by resolved path and content), ``[inputs]`` with its paths resolved, and the spec."""
    settings = cfg.inputs.model_dump(mode="json")
    for name in ("photos", "annotations"):
        settings[name] = str(cfg.path(settings[name]).resolve())
    for src in settings["sources"]:
        src["path"] = str(cfg.path(src["path"]).resolve())
    return key_of("inputs", code_version("pipeline.io.sources"), code_version("pipeline.io.manifest"),
                  code_version("pipeline.io.shapestore"), code_version("pipeline.incremental"),
                  [str(p) for p in input_files(cfg)], digests, settings, spec_key(spec))


@dataclass(frozen=True)
class Prefix:
    """The complete lines of the native annotations file that a read-inputs result parsed: the file, the key of
    the reading (reader code, spec, label map), their length in bytes and lines, and their sha256."""

    path: str
    key: str
    size: int
    lines: int
    sha256: str


BLOCK = 1 << 24


def native_key(cfg: Config, spec: Spec) -> str:
    """What parsing the native annotations file depends on besides its bytes."""
    return key_of("native", code_version("pipeline.io.annotations"), spec_key(spec), cfg.inputs.label_map)


def line_prefix(path: Path, key: str) -> Prefix:
    """The file's complete lines (up to its last newline) as a Prefix."""
    digest, size, lines, pending = hashlib.sha256(), 0, 0, b""
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            cut = block.rfind(b"\n")
            if cut < 0:
                pending += block
                continue
            done, pending = pending + block[: cut + 1], block[cut + 1:]
            digest.update(done)
            size, lines = size + len(done), lines + done.count(b"\n")
    return Prefix(str(path.resolve()), key, size, lines, digest.hexdigest())


def starts_with(path: Path, prefix: Prefix) -> bool:
    """Whether the file at ``path`` still begins with the lines ``prefix`` describes (it only grew since)."""
    if str(path.resolve()) != prefix.path or path.stat().st_size < prefix.size:
        return False
    digest, left = hashlib.sha256(), prefix.size
    with path.open("rb") as f:
        while left and (block := f.read(min(BLOCK, left))):
            digest.update(block)
            left -= len(block)
    return digest.hexdigest() == prefix.sha256


def earlier_prefix(folder: Path, path: Path, key: str) -> tuple[Path, Prefix] | None:
    """The complete read-inputs result in ``folder`` whose parsed lines the file at ``path`` still begins with,
    the longest such; None when there is none."""
    found = []
    for sidecar in folder.glob("*.prefix.json") if folder.is_dir() else []:
        part = sidecar.with_name(sidecar.name.split(".")[0] + ".pkl")
        prefix = Prefix(**json.loads(sidecar.read_text()))
        if prefix.key == key and part.with_suffix(".keys").exists():
            found.append((prefix.size, str(part), prefix))
    for _, part, prefix in sorted(found, reverse=True):
        if starts_with(path, prefix):
            return Path(part), prefix
    return None


def reuse_prefix(earlier: tuple[Path, Prefix] | None, shapes_path: Path
                 ) -> tuple[Tables, ShapeStore, dict[str, Record], tuple[int, int]]:
    """What an earlier read-inputs result parsed of the native file's lines ``earlier`` describes: its assignments
    (without ``LOCATION_COLUMNS``) and rejections of those lines, a shape store at ``shapes_path`` holding their
    shapes (the earlier store's file, hard-linked: it is append-only, so the earlier result stays valid), their
    shape records, and where to read on from (byte offset, lines). With no earlier result: nothing, an empty store,
    and the file's start."""
    empty = (frame([], ASSIGNMENT_COLUMNS), frame([], SHAPE_COLUMNS), frame([], REJECTION_COLUMNS))
    if earlier is None:
        return empty, ShapeStore.create(shapes_path), {}, (0, 0)
    part, prefix = earlier
    _, assignments, rejected, shapes, lines = load(part)
    a = assignments.iloc[: lines["native_assignments"]]
    r = rejected.iloc[slice(*lines["native_rejections"])]
    a, r = a[a["row"] <= prefix.lines], r[r["row"] <= prefix.lines]  # a last line with no newline is read again
    shapes_path.unlink(missing_ok=True)
    try:
        os.link(shapes.path, shapes_path)
    except OSError:
        shutil.copyfile(shapes.path, shapes_path)
    return ((a.drop(columns=LOCATION_COLUMNS), empty[1], r), ShapeStore(str(shapes_path)), records_of(a),
            (prefix.size, prefix.lines))


def ingest_keys(manifest: pd.DataFrame, digests: list[str], cfg: Config) -> list[str]:
    """Per manifest row: its columns, the photo root and the file's digest, and ``[ingest]``. Not the manifest's
    name nor the row number: results reused from an earlier manifest get today's (``build.restamp``)."""
    salt = key_of("ingest", code_version("pipeline.stages.ingest"), cfg.ingest.model_dump(mode="json"))
    roots = [str(Path(m).parent) for m in manifest["manifest"]]
    rows = rows_key(manifest.drop(columns=["row", "manifest"]).assign(_root=roots, _digest=digests))
    return [_hash(salt, r) for r in rows]


def dedup_key(photos: pd.DataFrame, cfg: Config, index_digest: str) -> str:
    cols = [c for c in photos.columns if c not in {"row"}]
    return key_of("dedup", code_version("pipeline.stages.dedup"), rows_key(photos[cols]),
                  cfg.dedup.model_dump(mode="json"), index_digest)


def photo_contents(photos: pd.DataFrame, assignments: pd.DataFrame) -> list[str]:
    """Per photo, a digest of its size and content and of its assignments with their shapes' digests
    (``assignments`` as read-inputs gives them): the part of its merge and ballot keys that is costly to make."""
    own = assignments.sort_values("assignment")
    rows = rows_key(own.drop(columns=SPAN_COLUMNS))
    per_photo = pd.Series(rows, index=own.index, dtype=object).groupby(own["photo_id"]).agg("".join)
    fields = rows_key(photos[["photo_id", "sha256", "width", "height"]])
    return [_hash(f, per_photo.get(p, "")) for p, f in zip(photos["photo_id"], fields, strict=True)]


def merge_keys(photos: pd.DataFrame, assignments: pd.DataFrame, weights: dict[tuple[str, int], float], spec: Spec,
               cfg: Config, final: bool, contents: list[str] | None = None) -> list[str]:
    """Per photo: its ``photo_contents`` (``contents``, when the caller has them), the vote weights of its
    annotators, the vote settings of ``[merge]``, whether agreement maps are written, and the spec."""
    if contents is None:
        contents = photo_contents(photos, assignments)
    settings = cfg.merge.model_dump(mode="json", exclude=MERGE_INDEPENDENT)
    salt = key_of("merge", code_version("pipeline.stages.merge"), final, settings, spec_key(spec),
                  final and cfg.agreement_maps)
    mine: dict[str, list[str]] = {}
    for (a, c), w in sorted(weights.items()):
        mine.setdefault(a, []).append(repr((c, w)))
    people = {a: _hash(a, *v) for a, v in mine.items()}  # annotators with no weight weigh 1: nothing to key
    weighed: dict[str, list[str]] = {}  # per photo, its annotators with their weights, in any order
    pairs = zip(assignments["photo_id"].tolist(), assignments["annotator_id"].tolist(), strict=True)
    for p, a in pairs if people else ():
        if a in people:
            weighed.setdefault(p, []).append(people[a])
    return [_hash(salt, c, *sorted(weighed.get(p, []))) for p, c in zip(photos["photo_id"], contents, strict=True)]


BALLOT_SETTINGS = {"min_shape_area_px", "swaps", "swap_margin", "ban"}
"""The merge settings a prepared photo (``merge.prepare_photo``: rasterised, swaps decided, tallied) depends on."""


def ballot_keys(contents: list[str], spec: Spec, cfg: Config) -> list[str]:
    """Per photo (its ``photo_contents``), the key of its prepared photo (``pipeline.io.ballots``): without the
    weights and with only ``BALLOT_SETTINGS``, so new weights or a new quorum re-vote without rasterising again."""
    salt = key_of("ballot", code_version("pipeline.stages.merge"),
                  cfg.merge.model_dump(mode="json", include=BALLOT_SETTINGS), spec_key(spec))
    return [_hash(salt, c) for c in contents]


def export_keys(published: pd.DataFrame, merge_keys_by_photo: dict[str, str], spec: Spec, cfg: Config,
                pseudonym: bytes) -> list[str]:
    """Per photo: its content, its merge key (which decides the mask), the export options, the spec and the
    pseudonym key (which decides the names); not its split, as exported files are placed in splits when published."""
    salt = key_of("export", code_version("pipeline.stages.export"), cfg.export.model_dump(mode="json"),
                  cfg.merge.ignore_below, spec_key(spec),
                  hashlib.sha256(b"crowdseg-export\0" + pseudonym).hexdigest())
    fields = rows_key(published[["photo_id", "user_id", "sha256", "path"]])
    return [_hash(salt, f, merge_keys_by_photo[p]) for p, f in zip(published["photo_id"], fields, strict=True)]


def face_keys(photo_ids: list[str], ingest_keys: dict[str, str]) -> list[str]:
    """Per photo: its ingest key, which covers its bytes, ``[ingest]`` and the detector's code."""
    return [_hash("faces", ingest_keys[p]) for p in photo_ids]


def _hash(*parts: Any) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:32]


def derive_keys(samples: pd.DataFrame, digests: list[str], ds: DatasetConfig, spec: Spec, cfg: Config
                ) -> list[str]:
    """Per source sample of a derived dataset: its row, image and mask (``digests``: both, joined), the crop
    settings and class map, ``[ingest]`` (which decodes the image) and the spec."""
    salt = key_of("derive", *(code_version(f"pipeline.{m}") for m in ("stages.derive", "stages.portrait_crops",
                                                                      "stages.trusted", "io.datasets")),
                  ds.model_dump(mode="json", include={"crop", "class_map", "layout"}),
                  cfg.ingest.model_dump(mode="json"), spec_key(spec))
    rows = rows_key(samples.drop(columns=["row", "manifest"]).assign(_digest=digests))
    return [_hash(salt, r) for r in rows]


def trusted_keys(photos: pd.DataFrame, digests: list[str], spec: Spec) -> list[str]:
    """Per sample with a trusted mask: its content and size, its mask (by digest) and class map, and the spec."""
    salt = key_of("trusted", *(code_version(f"pipeline.{m}") for m in ("stages.trusted", "stages.merge",
                                                                       "stages.anatomy", "io.datasets")),
                  spec_key(spec))
    fields = rows_key(photos[["photo_id", "sha256", "width", "height", "mask", "mask_values"]])
    return [_hash(salt, f, d) for f, d in zip(fields, digests, strict=True)]
