"""Pure glue between stages: batching and the joins that turn one stage's tables into the next one's inputs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.config import Config, MergeConfig, SplitConfig
from pipeline.incremental import Batching
from pipeline.rows import ChunkWriter, Rows, added_up, chunks, joined, ordered
from pipeline.spec import Spec, load_spec
from pipeline.stages.merge import SPAM_AGREEMENT, MergeResult
from pipeline.stages.skill import IOU_ONE, add_sums
from pipeline.tables import (
    CROWD,
    REJECTION_COLUMNS,
    as_categories,
    concat,
    frame,
    is_sorted,
    isin,
    keyed_hash,
    rejection,
    sorted_by,
)


@dataclass(frozen=True)
class Layout:
    """Where a build writes: the published tree, the private reports and the work directory."""

    out: Path

    @property
    def dataset(self) -> Path:
        return self.out / "dataset"

    @property
    def staging(self) -> Path:
        return self.out / "dataset.staging"

    @property
    def reports(self) -> Path:
        return self.out / "reports"

    @property
    def work(self) -> Path:
        """Private state that makes reruns incremental; safe to delete (the next build recomputes it)."""
        return self.out / "work"

    @property
    def cache(self) -> Path:
        """Content-keyed results per stage (``store``), with the masks and exported files of each batch."""
        return self.out / "work" / "cache"

    @property
    def ballots(self) -> Path:
        """Every photo's prepared form for the vote (``pipeline.io.ballots``), pruned with the cache."""
        return self.cache / "ballots"

    @property
    def prefect(self) -> Path:
        """Prefect's records of cached task results (each a path into ``cache``)."""
        return self.out / "work" / "prefect"

    @property
    def routed(self) -> Path:
        """The assignment rows routed to the vote, put aside once it is done: only the report's thumbnails read them
        again, and only a few photos' rows (``routed_rows``)."""
        return self.out / "work" / "routed.parquet"

    @property
    def weights(self) -> Path:
        """The vote weights of this build's final vote, which a later build can pin (``merge.pin_skills``)."""
        return self.out / "work" / "weights.csv"

    @property
    def splits(self) -> Path:
        """This build's split table, which a later build can pin its photos to (``split.previous``)."""
        return self.out / "work" / "splits.csv"

    @property
    def thumbs(self) -> Path:
        """Cached report thumbnails of flagged photos, keyed by content."""
        return self.out / "work" / "thumbs"

    @property
    def figures(self) -> Path:
        """Cached report figures, keyed by content (``plots.FigureCache``)."""
        return self.out / "work" / "figures"

    @property
    def index(self) -> Path:
        """The hash index a later build can check its uploads against (``dedup.index``)."""
        return self.out / "work" / "index.parquet"

    @property
    def merged(self) -> Path:
        """This build's merge result's assignment and class rows (``MergeSpill``), while the build reads them."""
        return self.out / "work" / "merged"


def resolve_spec(cfg: Config) -> Spec:
    """The spec the config names: a bundled name, or a path relative to the config file."""
    ref = cfg.inputs.spec
    return load_spec(cfg.path(ref) if ref.endswith((".yaml", ".yml")) else ref)


RUNNER_BATCH = {"auto": 128, "local": 128, "threads": 128, "processes": 128, "dask": 256}
"""Most photos per task when ``build.batch_size`` is 0. Prefect's bookkeeping costs ~30 ms of CPU per task in a
build on threads and processes (``benchmarks/task_cost.py``: 2,000 photos in batches of 64, 128 and 256 used 92, 88
and 90 CPU-s) and ~100 ms on Dask, so tasks are large; a small stage's are smaller, so that each worker still gets
``BATCHES_PER_WORKER`` of them."""
BATCHES_PER_WORKER = 4


def workers(cfg: Config) -> int:
    """Threads, processes or local Dask workers the build uses."""
    return cfg.build.workers or os.cpu_count() or 1


def batching(cfg: Config, runner: str = "") -> Batching:
    """How many photos go to a task on the configured runner, or on ``runner`` (only photos with no cached result
    are batched): ``build.batch_size`` exactly, or the runner's default spread over the workers."""
    if cfg.build.batch_size:
        return Batching(cfg.build.batch_size)
    return Batching(RUNNER_BATCH[runner or cfg.build.runner], BATCHES_PER_WORKER * workers(cfg))


def restamp(table: pd.DataFrame, manifest: pd.DataFrame, column: str = "manifest") -> pd.DataFrame:
    """Rows reused from the cache carry the manifest file and row of the build that made them: use today's.

    ``column`` names the table's manifest file column (``file`` in rejections)."""
    if table.empty:
        return table
    where = manifest.set_index("photo_id")
    return table.assign(**{column: table["photo_id"].map(where["manifest"]),
                           "row": table["photo_id"].map(where["row"]).astype(table["row"].dtype)})


def routed_rows(path: Path, photo_ids: list[str]) -> pd.DataFrame:
    """The rows of these photos in the Parquet table at ``path`` (``Layout.routed``), read without the others."""
    if not photo_ids or not pq.read_metadata(path).num_rows:  # (an empty table's photo_id may not be text)
        return pq.read_schema(path).empty_table().to_pandas()
    return pd.read_parquet(path, filters=[("photo_id", "in", photo_ids)])


def batches(df: pd.DataFrame, batching: Batching) -> list[pd.DataFrame]:
    """Consecutive row batches of ``batching.length`` rows, the last maybe shorter (none for an empty table)."""
    size = batching.length(len(df))
    return [df.iloc[i: i + size] for i in range(0, len(df), size)]


def kept_photos(photos: pd.DataFrame, duplicates: pd.DataFrame) -> pd.DataFrame:
    """Photos that survive dedup, sorted by id, without the colour thumbnail only dedup reads (a third of a photo
    row's memory)."""
    from pipeline.stages.dedup import dropped_ids

    narrow = photos.drop(columns="thumb")  # first, so that only the kept columns are copied (at 200k, ~75 MB less)
    return sorted_by(narrow[~isin(narrow["photo_id"], dropped_ids(duplicates)).to_numpy()], ["photo_id"])


def by_origin(kept: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The crowd's photos (which the vote merges) and the datasets' samples (which bring their masks). A build of
    crowd photos only holds the one table, not a copy of it (at 200k photos, ~90 MB)."""
    crowd = kept["origin_kind"] == CROWD
    if crowd.all():
        return kept, kept.iloc[:0]
    return kept[crowd], kept[~crowd]


def faceless(photos: pd.DataFrame, merged: pd.DataFrame) -> pd.DataFrame:
    """The photos whose merged mask has no face (or that have no merged mask): those the face detector looks at."""
    from pipeline.stages.anatomy import FACE_WIDTH

    width = merged.set_index("photo_id")[FACE_WIDTH] if FACE_WIDTH in merged else pd.Series(dtype=float)
    has_face = photos["photo_id"].map(width).fillna(0) > 0
    return photos[~has_face.to_numpy()]


def with_faces(photos: pd.DataFrame, faces: pd.DataFrame) -> pd.DataFrame:
    """The photos with the detector's FACE_COLUMNS: its answer where it ran, zeros elsewhere."""
    from pipeline.stages.ingest import FACE_COLUMNS

    found = faces.set_index("photo_id")
    return photos.assign(**{c: photos["photo_id"].map(found[c]).fillna(0).astype(int) for c in FACE_COLUMNS})


def with_samples(manifest: pd.DataFrame, samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The crowd's manifest and the datasets' samples as one manifest, sorted by photo id, and rejections for
    samples whose id a crowd photo already has."""
    from pipeline.io.datasets import SAMPLE_COLUMNS

    crowd = manifest.assign(origin=CROWD, origin_kind=CROWD, mask="", mask_values="")
    clash = isin(samples["photo_id"], crowd["photo_id"])
    rows = [rejection("ingest", "photo", "duplicate_photo_id", f"photo_id {s.photo_id!r} is a crowd photo's too",
                      file=s.manifest, row=s.row, photo_id=s.photo_id) for s in samples[clash].itertuples()]
    both = concat([crowd, samples[~clash]], SAMPLE_COLUMNS)
    return both.sort_values("photo_id", kind="stable", ignore_index=True), frame(rows, REJECTION_COLUMNS)


def source_splits(photos: pd.DataFrame, merged: pd.DataFrame, cfg: Config, links: list[tuple[str, str]]
                  ) -> pd.DataFrame:
    """Splits of the datasets' merged samples: each dataset's go only to the splits it allows (``splits``, train
    alone by default), shared at the build's ratios among those; the crowd is split apart, so that val and test
    stay crowd-only and comparable across versions."""
    from pipeline.stages.split import SPLIT_COLUMNS, assign_splits

    parts = []
    for ds in cfg.inputs.datasets:
        mine = photos[(photos["origin"] == ds.name) & isin(photos["photo_id"], merged["photo_id"])]
        if len(mine):
            ratios = {s: cfg.split.ratios[s] for s in ds.splits}
            total = sum(ratios.values())
            ratios = {s: r / total for s, r in ratios.items()}
            parts.append(assign_splits(mine, ratios, f"{cfg.split.seed}:{ds.name}", links)[0])
    return concat(parts, SPLIT_COLUMNS)


def published_table(photos: pd.DataFrame, merged: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """One row per merged photo: ingest signals, merge results and split. The split is empty for photos held back
    or rejected by a reviewer; QA and reviewers see them all, the dataset only those with a split (``in_dataset``)."""
    cols = ["photo_id", "user_id", "path", "sha256", "width", "height", "brightness", "sharpness", "faces", "face_w",
            "chroma", "origin", "origin_kind"]
    table = photos[cols].merge(merged, on="photo_id").merge(splits[["photo_id", "split"]], on="photo_id", how="left")
    return table.fillna({"split": ""}).sort_values("photo_id", ignore_index=True)


def in_dataset(reviewed: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``published_table`` that are published: those with a split."""
    return reviewed[reviewed["split"] != ""].reset_index(drop=True)


BRIGHTNESS_EDGES = (0.25, 0.4, 0.55)  # mean-brightness buckets for stratified splits
PRESENCE_BAND = (0.02, 0.98)  # a class present in a share of photos outside this band is not worth stratifying


def split_strata(photos: pd.DataFrame, merged: pd.DataFrame, spec: Spec, cfg: SplitConfig
                 ) -> tuple[pd.DataFrame, list[str]]:
    """The photos to split, with one column per stratum the config asks for, and those columns' names.

    ``photos`` are the kept photos (ingest signals and manifest attributes), ``merged`` the published merge rows.
    """
    table = photos[isin(photos["photo_id"], merged["photo_id"])][["photo_id", "user_id"]].reset_index(drop=True)
    read = ["brightness", "height", "width"] + (["attrs"] if cfg.attributes else [])
    rows = photos.set_index("photo_id")[read].loc[table["photo_id"]]  # only the columns read: no copy of the rest
    strata: dict[str, list[object]] = {}
    if "classes" in cfg.stratify and len(table):
        px = merged.set_index("photo_id")[[f"px_{c.name}" for c in spec.classes[1:]]].loc[table["photo_id"]]
        for c in spec.classes[1:]:
            has = px[f"px_{c.name}"].to_numpy() > 0
            if PRESENCE_BAND[0] < has.mean() < PRESENCE_BAND[1]:
                strata[f"has_{c.name}"] = has.tolist()
    if "brightness" in cfg.stratify:
        strata["brightness"] = np.searchsorted(BRIGHTNESS_EDGES, rows["brightness"].to_numpy()).tolist()
    if "orientation" in cfg.stratify:
        strata["orientation"] = np.where(rows["height"].to_numpy() >= rows["width"].to_numpy(), "portrait",
                                         "landscape").tolist()
    attrs = [json.loads(a) if a else {} for a in rows["attrs"]] if cfg.attributes else []
    for name in cfg.attributes:
        strata[f"attr_{name}"] = [str(a.get(name, "")) for a in attrs]
    return table.assign(**strata), list(strata)


def split_summary(published: pd.DataFrame, ratios: dict[str, float]) -> dict[str, dict[str, float]]:
    """Photos, users and achieved vs target ratio per split."""
    n = max(len(published), 1)
    return {s: {"photos": int((published["split"] == s).sum()),
                "users": int(published.loc[published["split"] == s, "user_id"].nunique()),
                "target": r, "actual": round(float((published["split"] == s).sum()) / n, 4)}
            for s, r in ratios.items()}


def class_summary(published: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """Per class: photos containing it and its share of all pixels."""
    rows = _class_rows(published, spec)
    return pd.DataFrame([{"id": c.id, **row} for c, row in zip(spec.classes, rows, strict=True)]).drop(
        columns="presence")


def class_by_split(published: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """Per split and class: photos containing the class, their share of the split, and the class's pixel share."""
    counts = published[["split", *(f"px_{c.name}" for c in spec.classes)]]  # a split's rows, not all columns
    rows = [{"split": split, **row} for split, part in counts.groupby("split", sort=True)
            for row in _class_rows(part, spec)[1:]]
    return pd.DataFrame(rows, columns=["split", "class", "photos", "presence", "pixel_share"])


def _class_rows(photos: pd.DataFrame, spec: Spec) -> list[dict[str, object]]:
    """Per class of the spec (background first): photos containing it, their share, and its share of all pixels."""
    total = sum(int(photos[f"px_{c.name}"].sum()) for c in spec.classes) or 1
    return [{"class": c.name, "photos": int((photos[f"px_{c.name}"] > 0).sum()),
             "presence": round(float((photos[f"px_{c.name}"] > 0).mean()), 4) if len(photos) else 0.0,
             "pixel_share": round(float(photos[f"px_{c.name}"].sum()) / total, 5)} for c in spec.classes]


THRESHOLD_GRID = [round(0.05 * i, 2) for i in range(21)]


def threshold_table(classes: Rows, spec: Spec, current: dict[int, float]) -> pd.DataFrame:
    """The threshold explorer: per class and agreement threshold, the share of the photos drawing the class that
    would be accepted, and on gold photos the mean IoU of the crowd's vote with the gold answer among those.

    Counted a chunk of class rows at a time; gold IoUs are summed in fixed point (``IOU_ONE``), so the table does
    not depend on how the rows are chunked."""
    grid = {c.id: sorted({*THRESHOLD_GRID, current[c.id]}) for c in spec.classes[1:]}
    names = {c.name: c.id for c in spec.classes[1:]}
    sums = {c: np.zeros((len(ts), 3), np.int64) for c, ts in grid.items()}  # accepted, gold accepted, gold IoU
    photos = dict.fromkeys(grid, 0)
    for chunk in chunks(classes):
        rows = chunk.loc[chunk["agreement"].notna(), ["class", "agreement", "gold_iou"]]
        for name, own in rows.groupby("class", observed=True, sort=False):
            c = names.get(str(name))
            if c is None:
                continue
            agreement = own["agreement"].to_numpy(np.float64)
            gold_iou = own["gold_iou"].to_numpy(np.float64)
            gold = ~np.isnan(gold_iou)
            fixed = np.rint(np.where(gold, gold_iou, 0.0) * IOU_ONE).astype(np.int64)
            photos[c] += len(own)
            for i, t in enumerate(grid[c]):
                ok = agreement >= t - 1e-9
                sums[c][i] += [int(ok.sum()), int((ok & gold).sum()), int(fixed[ok & gold].sum())]
    rows = []
    for c, ts in grid.items():
        n = photos[c]
        for (accepted, gold_photos, gold_iou), t in zip(sums[c].tolist(), ts, strict=True):
            rows.append({"class": spec.classes[c].name, "threshold": t, "photos": n,
                         "accepted_share": round(accepted / n, 4) if n else float("nan"),
                         "gold_photos": gold_photos,
                         "gold_iou": round(gold_iou / IOU_ONE / gold_photos, 4) if gold_photos else float("nan"),
                         "current": t == current[c]})
    return pd.DataFrame(rows, columns=["class", "threshold", "photos", "accepted_share", "gold_photos", "gold_iou",
                                       "current"])


def annotator_masks(photo: pd.Series, assignments: pd.DataFrame, shapes: pd.DataFrame, outcome: pd.DataFrame,
                    spec: Spec, min_area: float) -> dict[str, np.ndarray]:
    """A flagged photo's annotators' masks as merge drew them, by caption; ``outcome`` (merge's assignment rows)
    tells how each was used."""
    from pipeline.stages.merge import rasterise_photo, todo_rows
    from pipeline.stages.polygons import composite

    todo = assignments.sort_values("assignment")
    own = shapes.sort_values(["assignment", "index"])
    notes = outcome.set_index("assignment") if len(outcome) else None
    by_assignment = {k: g.to_dict("records") for k, g in own.groupby("assignment")}
    layers, _, _ = rasterise_photo(photo, todo_rows(todo), by_assignment, min_area)
    return {_caption(a.annotator_id, a.golden, notes, a.assignment):
            composite(a.layers, spec.draw_ids, int(photo["height"]), int(photo["width"])) for a in layers}


def _caption(annotator: str, golden: bool, notes: pd.DataFrame | None, assignment: str) -> str:
    """An annotator thumbnail's caption: who, and how merge used their work."""
    if golden:
        return f"{annotator} (gold)"
    if notes is None or assignment not in notes.index:
        return annotator
    r = notes.loc[assignment]
    if r["excluded"]:
        return f"{annotator} (left out: {r['excluded']})"
    return f"{annotator} (agreement {r['agreement']:.2f}{', swapped' if r['swapped'] else ''})"


def outcome_settings(cfg: Config) -> dict[str, object]:
    """The config sections that decide what a build produces: not where it writes, nor how it runs."""
    return cfg.model_dump(mode="json", exclude={"output", "build"})


def build_id(cfg: Config, photos: pd.DataFrame, assignments: pd.DataFrame) -> str:
    """A short id of this build's inputs and config: the same inputs and config give the same id."""
    settings = outcome_settings(cfg)
    content = json.dumps([settings, sorted(photos.get("sha256", pd.Series(dtype=str))),
                          sorted(assignments["assignment"])], sort_keys=True)
    return keyed_hash("build", content, 12)


def merge_jobs(photos: pd.DataFrame, assignments: pd.DataFrame, rows: list[list[int]]
               ) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Per batch of photo row positions, made as they are read: the photos and their assignments (each task reads
    its own shapes)."""
    by_photo = assignments.groupby("photo_id", sort=False).indices
    for positions in rows:
        batch = photos.iloc[positions]
        yield batch, assignments.iloc[sorted(i for p in batch["photo_id"] for i in by_photo.get(p, []))]


def combine(parts: list[MergeResult], spec: Spec) -> MergeResult:
    """One MergeResult from the batches' ``summed`` results, rows by photo (with every declared column, even when
    empty), and the score sums added up.

    Empties ``parts``: each table's pieces are let go once joined, so the batches and the whole result are held
    together about once, not three times (pieces, joined, sorted). Batches are joined in photo order, so that the
    joined tables are usually in order already."""
    empty = MergeResult.of(spec, [], [], [], [], [], [])
    parts.sort(key=lambda p: p.photos["photo_id"].iloc[0] if len(p.photos) else "")
    names = ("photos", "assignments", "classes", "rejections", "repairs", "scores")
    pieces = {n: [getattr(empty, n)] + [getattr(p, n) for p in parts] for n in names}
    parts.clear()
    scores = add_sums(pieces.pop("scores"))
    return MergeResult(**{n: by_photo(pieces.pop(n)) for n in names[:-1]}, scores=scores)


@dataclass(frozen=True)
class Merged:
    """A build's whole merge result: ``MergeResult``'s tables, its per-assignment and per-class rows on disk."""

    photos: pd.DataFrame
    assignments: Rows
    scores: pd.DataFrame
    classes: Rows
    rejections: pd.DataFrame
    repairs: pd.DataFrame


class MergeSpill:
    """Puts the assignment and class rows of each settled part of a build's merge result in ``folder`` as the part
    comes (``settled``), so they are never held whole, and adds up the parts' score sums as they come (at 200k
    photos each part's come to ~30k rows, 72 MB over all parts); then joins the rest into one ``Merged``."""

    def __init__(self, folder: Path) -> None:
        self.assignments = ChunkWriter(folder / "assignments", ("photo_id", "assignment"))
        self.classes = ChunkWriter(folder / "classes", ("photo_id", "class"))
        self.scores: list[pd.DataFrame] = []

    def keep(self, m: MergeResult) -> MergeResult:
        """Save ``m``'s assignment and class rows and add its score sums; ``m`` without them."""
        self.assignments.add(m.assignments)
        self.classes.add(m.classes)
        self.scores = [add_sums([*self.scores, m.scores])]
        emptied = ("assignments", "classes", "scores")  # copied: a slice, even an empty one, keeps the rows' arrays
        return replace(m, **{n: getattr(m, n).iloc[:0].copy() for n in emptied})

    def merged(self, parts: list[MergeResult], spec: Spec) -> Merged:
        """The kept parts joined (``combine``: empties ``parts``), with every row saved and score added so far."""
        m = combine(parts, spec)
        return Merged(m.photos, self.assignments.table(m.assignments), add_sums([m.scores, *self.scores]),
                      self.classes.table(m.classes), m.rejections, m.repairs)


def settled(parts: list[MergeResult], spec: Spec, cfg: MergeConfig) -> MergeResult:
    """Merge batches' (``summed``) results joined as the build holds them: today's thresholds applied, compact, and
    the class rows in (photo, class) order, as the report writes them. A build settles its batches a few dozen at a
    time as it reads them, so the whole result is never held in a larger form, nor copied to be sorted (at 200k
    photos the merge stage peaked ~140 MB higher when the joined result was settled, the report ~70 MB when it
    sorted the class rows)."""
    m = compact(apply_thresholds(combine(parts, spec), spec, cfg))
    return replace(m, classes=sorted_by(m.classes, ["photo_id", "class"]))


def compact(m: MergeResult) -> MergeResult:
    """The few-valued text columns of a merge result's assignment and class rows as categoricals (at 200k photos,
    ~80 MB less); ``by_photo`` joins such tables with their categories merged."""
    return replace(m, assignments=as_categories(m.assignments, ["drawn", "excluded"]),
                   classes=as_categories(m.classes, ["class"]))


def by_photo(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Tables of one schema as one, ordered by photo id (a photo's rows keep their order), whichever batches and
    builds they came from; a column categorical in each stays categorical (with every table's categories)."""
    table = joined(tables)
    return table if is_sorted(table["photo_id"]) else table.sort_values("photo_id", kind="stable", ignore_index=True)


def apply_thresholds(m: MergeResult, spec: Spec, cfg: MergeConfig) -> MergeResult:
    """Each photo's disputed classes and status under today's ``merge.class_agreement``.

    Thresholds decide status, not the vote, so they stay out of merge keys and apply here, to cached results too.
    """
    from dataclasses import replace

    from pipeline.stages.merge import class_agreement

    needed = {spec.classes[c].name: t for c, t in class_agreement(spec, cfg.class_agreement).items()}
    voted = m.photos.loc[m.photos["source"] == "vote", "photo_id"]
    agreement = m.classes["agreement"].astype(float)
    below = agreement.notna() & (agreement < m.classes["class"].map(needed).astype(float).fillna(0.0))
    classes = m.classes.assign(disputed=below.to_numpy(bool) & isin(m.classes["photo_id"], voted).to_numpy())
    order = {c.name: c.id for c in spec.classes}
    disputed = (classes[classes["disputed"]].assign(o=lambda d: d["class"].map(order)).sort_values("o")
                .groupby("photo_id")["class"].agg(",".join))
    kept = [[r for r in str(x).split(";") if r and not r.startswith("disputed:")] for x in m.photos["reasons"]]
    reasons = [";".join(k + ([f"disputed:{disputed[p]}"] if p in disputed.index else []))
               for k, p in zip(kept, m.photos["photo_id"], strict=True)]
    photos = m.photos.assign(reasons=reasons, status=["needs_reannotation" if r else "accepted" for r in reasons])
    return replace(m, photos=photos, classes=classes)


def all_pinned(pinned: dict[tuple[str, int], float], annotators: set[str], classes: list[int]) -> bool:
    """Whether ``merge.pin_skills`` gives every annotator's weight for every class: then no skill is estimated, and
    the scoring passes, whose estimates the pinned weights would all override, are skipped."""
    return all((a, c) in pinned for a in annotators for c in classes)


def pinned_weights(cfg: Config) -> dict[tuple[str, int], float]:
    """The vote weights ``merge.pin_skills`` names (annotator_id, class_id, weight), or none."""
    from pipeline.errors import CrowdsegError

    if not cfg.merge.pin_skills:
        return {}
    path = cfg.path(cfg.merge.pin_skills)
    try:
        table = pd.read_csv(path, dtype={"annotator_id": str})
        return {(a, int(c)): float(w) for a, c, w in table[["annotator_id", "class_id", "weight"]].itertuples(
            index=False)}
    except (OSError, ValueError, KeyError) as e:
        raise CrowdsegError(f"merge.pin_skills: cannot read a weights table (annotator_id, class_id, weight): {e}",
                            file=str(path)) from None


def write_weights(weights: dict[tuple[str, int], float], path: Path) -> None:
    """The final vote's weights, in full precision, so pinning them reproduces the vote exactly."""
    rows = [{"annotator_id": a, "class_id": c, "weight": repr(w)} for (a, c), w in sorted(weights.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["annotator_id", "class_id", "weight"]).to_csv(path, index=False)


SWAPPER_RATE = 0.3  # share of an annotator's photos with left and right swapped that marks a habit


def annotator_table(assignments: Rows, repairs: pd.DataFrame, skills: pd.DataFrame, rejections: pd.DataFrame,
                    spec: Spec, min_agreement: float, ban: list[str]) -> pd.DataFrame:
    """Per annotator: photos, agreement, pooled per-class skill, swaps, spam score, repairs, rejections, status.

    Summed a chunk of merge's assignment rows at a time; agreements and IoUs in fixed point (``IOU_ONE``), so the
    table does not depend on how the rows are chunked."""
    sums = added_up(map(annotator_sums, chunks(assignments)), ["annotator_id"]).set_index("annotator_id")
    if sums.empty:
        return pd.DataFrame(columns=["annotator_id", "photos", "agreement", "mean_iou", "swaps", "excluded",
                                     "spam_score", "shapes_repaired", "shapes_rejected", "status"])
    table = pd.DataFrame({
        "photos": sums["photos"],
        "agreement": (sums["agreement"] / IOU_ONE / sums["agreement_n"]).where(sums["agreement_n"] > 0),
        "mean_iou": (sums["mean_iou"] / IOU_ONE / sums["mean_iou_n"]).where(sums["mean_iou_n"] > 0),
        "swaps": sums["swaps"], "excluded": sums["excluded"], "spam_score": sums["spam"] / sums["rows"]})
    table.index.name = "annotator_id"
    if len(skills):
        wide = skills.assign(name=skills["class_id"].map(lambda c: f"skill_{spec.classes[c].name}")).pivot(
            index="annotator_id", columns="name", values="skill")
        table = table.join(wide[[f"skill_{c.name}" for c in spec.classes[1:] if f"skill_{c.name}" in wide]])
    table["shapes_repaired"] = repairs.groupby("annotator_id").size().reindex(table.index, fill_value=0)
    shapes_rejected = rejections[rejections["item"] == "shape"].groupby("annotator_id").size()
    table["shapes_rejected"] = shapes_rejected.reindex(table.index, fill_value=0)
    table["status"] = [annotator_status(a, r, min_agreement, ban) for a, r in table.iterrows()]
    return table.round(4).reset_index().sort_values("annotator_id", ignore_index=True)


def annotator_sums(assignments: pd.DataFrame) -> pd.DataFrame:
    """Per crowd annotator of some of merge's assignment rows: the counts and fixed-point sums ``annotator_table``
    adds up (a photo's rows are never split between two chunks, so photos add up too)."""
    crowd = assignments.loc[~assignments["golden"].astype(bool).to_numpy()]
    agreement, mean_iou = crowd["agreement"].astype(float), crowd["mean_iou"].astype(float)
    columns = pd.DataFrame({
        "annotator_id": crowd["annotator_id"].astype(str).to_numpy(object), "photo_id": crowd["photo_id"].to_numpy(),
        "agreement": np.rint(agreement.fillna(0.0).to_numpy() * IOU_ONE).astype(np.int64),
        "agreement_n": agreement.notna().to_numpy(np.int64),
        "mean_iou": np.rint(mean_iou.fillna(0.0).to_numpy() * IOU_ONE).astype(np.int64),
        "mean_iou_n": mean_iou.notna().to_numpy(np.int64),
        "swaps": crowd["swapped"].astype(bool).to_numpy(np.int64),
        "excluded": (crowd["excluded"] != "").to_numpy(np.int64),
        "spam": (agreement.fillna(1.0) < SPAM_AGREEMENT).to_numpy(np.int64), "rows": 1})
    by = columns.groupby("annotator_id", sort=True)
    return by.sum(numeric_only=True).assign(photos=by["photo_id"].nunique()).reset_index()


def annotator_status(annotator: str, row: pd.Series, min_agreement: float, ban: list[str]) -> str:
    """banned, spammer, swapper, low_agreement or ok."""
    if annotator in ban:
        return "banned"
    if row["spam_score"] >= 0.5:
        return "spammer"
    if row["swaps"] >= max(1.0, SWAPPER_RATE * row["photos"]):
        return "swapper"
    return "low_agreement" if row["agreement"] < min_agreement else "ok"


def reannotation_queue(rejections: pd.DataFrame, agreement: pd.DataFrame, paths: dict[str, str]
                       ) -> list[dict[str, object]]:
    """Photos held back for re-annotation, as crowd tasks: the image, the classes in dispute and why."""
    from pipeline.stages.review import HELD_REASONS

    held = rejections[(rejections["item"] == "photo") & rejections["reason"].isin(HELD_REASONS)]
    merge_reasons = agreement.set_index("photo_id")["reasons"] if len(agreement) else pd.Series(dtype=str)
    tasks = []
    for p in held.sort_values("photo_id").itertuples():
        reasons = [r for r in str(merge_reasons.get(p.photo_id, "")).split(";") if r]
        if p.reason == "reviewer_reannotate":
            reasons.append(p.message)
        disputed = [c for r in reasons if r.startswith("disputed:") for c in r.removeprefix("disputed:").split(",")]
        tasks.append({"photo_id": p.photo_id, "image": paths.get(p.photo_id, ""), "classes": disputed or "all",
                      "reasons": reasons})
    return tasks


def write_jsonl(rows: list[dict[str, object]], path: Path) -> None:
    """One JSON object per line, keys sorted."""
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


JSON_TABLES = ("duplicates", "rejected_photos", "findings")
"""Tables also written as JSON records, for tools that do not read CSV."""


def report_tables(rejections: pd.DataFrame, duplicates: pd.DataFrame, m: MergeResult | Merged, skills: pd.DataFrame,
                  annotators: pd.DataFrame, findings: pd.DataFrame, classes: pd.DataFrame, published: pd.DataFrame,
                  decisions: pd.DataFrame, spec: Spec, cfg: Config, key: bytes) -> dict[str, Rows]:
    """The tables written under ``reports/``; ``photo_map`` is private and never published. Merge's assignment and
    class rows stay where they are (a build's on disk: ``Merged``)."""
    from pipeline.stages.export import image_name
    from pipeline.stages.merge import class_agreement

    photo_map = published[["photo_id", "user_id", "split"]].assign(
        image_name=[image_name(p, key) for p in published["photo_id"]])
    rejections = rejections.sort_values(["stage", "item", "file", "row", "photo_id"], ignore_index=True)
    agreement = sorted_by(m.photos.drop(columns=["mask_path", "agreement_path"]), ["photo_id"])
    class_rows = ordered(m.classes, ["photo_id", "class"])
    return {
        "rejections": rejections,
        "rejected_photos": rejections[rejections["item"] == "photo"].reset_index(drop=True),
        "duplicates": duplicates,
        "agreement": agreement,
        "class_agreement": class_rows,
        "assignments": ordered(m.assignments, ["photo_id", "assignment"]),
        "annotators": annotators,
        "skills": skills,
        "repairs": m.repairs.sort_values(["assignment", "index", "repair"], ignore_index=True),
        "findings": findings,
        "classes": classes,
        "class_by_split": class_by_split(published, spec),
        "thresholds": threshold_table(class_rows, spec, class_agreement(spec, cfg.merge.class_agreement)),
        "decisions": decisions,
        "photo_map": photo_map[["photo_id", "image_name", "user_id", "split"]],
    }


def summary(spec: Spec, cfg: Config, ledger: dict[str, int], published: pd.DataFrame, findings: pd.DataFrame,
            decisions: pd.DataFrame, build: str, split_quality: dict[str, object]) -> dict[str, object]:
    """The machine-readable QA summary (``reports/qa.json``)."""
    return {
        "spec": spec.name, "build_id": build, "ledger": ledger, "splits": split_summary(published, cfg.split.ratios),
        "split_quality": split_quality,
        "findings": {f"{lv}/{ck}": int(n) for (lv, ck), n in findings.groupby(["level", "check"]).size().items()},
        "decisions": {f"{d}/{st}": int(n) for (d, st), n in decisions.groupby(["decision", "status"]).size().items()},
        "config": cfg.model_dump(),
    }


def decisions(cfg: Config) -> pd.DataFrame:
    """The reviewers' decisions the config names (none when ``review.decisions`` is empty)."""
    from pipeline.stages.review import read_decisions

    path = cfg.review.decisions
    return read_decisions(cfg.path(path)) if path else pd.DataFrame(columns=["photo_id", "decision", "note", "row"])


def previous_splits(cfg: Config) -> pd.DataFrame | None:
    """The earlier build's split table named by ``split.previous`` (photo_id, user_id, split), if any."""
    from pipeline.errors import CrowdsegError

    if not cfg.split.previous:
        return None
    path = cfg.path(cfg.split.previous)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise CrowdsegError(f"split.previous: cannot read the split table: {e}", file=str(path)) from None
    missing = sorted({"photo_id", "user_id", "split"} - set(table.columns))
    if missing:
        raise CrowdsegError(f"split.previous: not a split table (missing {', '.join(missing)})", file=str(path))
    unknown = sorted(set(table["split"]) - set(cfg.split.ratios))
    if unknown:
        raise CrowdsegError(f"split.previous: split {unknown[0]!r} is not in split.ratios", file=str(path))
    return table[["photo_id", "user_id", "split"]]


def refused_ids(manifest_rejected: pd.DataFrame, ingest_rejected: pd.DataFrame, manifest: pd.DataFrame) -> set[str]:
    """Photo ids refused at ingest: failed photos, and manifest rows rejected under an id no valid row has."""
    photo_rows = manifest_rejected[manifest_rejected["item"] == "photo"]
    return set(ingest_rejected["photo_id"]) | (set(photo_rows["photo_id"]) - set(manifest["photo_id"]) - {""})


def load_index(cfg: Config) -> pd.DataFrame | None:
    """The earlier build's hash index named by ``dedup.index``, if any."""
    from pipeline.errors import CrowdsegError
    from pipeline.stages.dedup import INDEX_COLUMNS, with_origin

    if not cfg.dedup.index:
        return None
    path = cfg.path(cfg.dedup.index)
    try:
        index = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise CrowdsegError(f"dedup.index: cannot read the hash index: {e}", file=str(path)) from None
    if "brightness" not in index:  # indexes written before exposure counted towards the best copy
        index["brightness"] = float("nan")
    index = with_origin(index)  # indexes written before sources: every photo came from the crowd
    missing = sorted(set(INDEX_COLUMNS) - set(index.columns))
    if missing:
        raise CrowdsegError(f"dedup.index: not a crowdseg hash index (missing {', '.join(missing)})", file=str(path))
    return index.astype({"photo_id": str, "user_id": str, "submitted_at": str})


def preflight(cfg: Config) -> Spec:
    """Check everything a user can get wrong before the flow starts, so such errors come out as one line.

    Row-level problems are not errors: they become rejections during the build.
    """
    from pipeline.errors import CrowdsegError
    from pipeline.io.manifest import read_lines, read_manifest
    from pipeline.io.sources import detect_format
    from pipeline.stages.export import pseudonym_key
    from pipeline.stages.merge import class_agreement, class_quorum
    from pipeline.store import FileDigests

    spec = resolve_spec(cfg)
    try:
        class_quorum(spec, cfg.merge.quorum)
        class_agreement(spec, cfg.merge.class_agreement)
    except ValueError as e:
        raise CrowdsegError(str(e), file=cfg.source) from None
    unknown = sorted(set(cfg.inputs.label_map.values()) - set(spec.names))
    if unknown:
        raise CrowdsegError(f"inputs.label_map: {unknown[0]!r} is not a class of spec {spec.name!r}",
                            file=cfg.source)
    seen = FileDigests(Layout(cfg.path(cfg.output.out)).work / "digests.parquet")
    photos, annotations = cfg.path(cfg.inputs.photos), cfg.path(cfg.inputs.annotations)
    if not seen.unchanged(str(photos.resolve())):  # an input the last build read as it is now passed these checks
        read_manifest(photos)
    if not seen.unchanged(str(annotations.resolve())):
        for _ in read_lines(annotations):  # readable UTF-8, checked a line at a time
            pass
    for i, src in enumerate(cfg.inputs.sources):
        if not cfg.path(src.path).exists():
            raise CrowdsegError(f"inputs.sources[{i}].path: no such file or folder: {src.path}", file=cfg.source)
        if src.format == "auto":
            detect_format(cfg.path(src.path))
    check_datasets(cfg, spec)
    load_index(cfg)
    pseudonym_key(os.environ, cfg.export.throwaway_key)  # a missing key stops the build before it starts
    previous_splits(cfg)
    pinned_weights(cfg)
    decisions(cfg)
    return spec


def check_datasets(cfg: Config, spec: Spec) -> None:
    """Each ``inputs.datasets`` entry: a unique name other than crowd, an existing folder, splits the build has (at
    least one with a share), and a class map that covers the spec."""
    from pipeline.errors import CrowdsegError
    from pipeline.io.datasets import value_map

    seen: set[str] = set()
    for i, ds in enumerate(cfg.inputs.datasets):
        where = f"inputs.datasets[{i}]"
        if ds.name == CROWD or ds.name in seen:
            raise CrowdsegError(f"{where}.name: {ds.name!r} is " + ("reserved for the crowd's uploads"
                                if ds.name == CROWD else "used by another dataset"), file=cfg.source)
        seen.add(ds.name)
        if not cfg.path(ds.path).is_dir():
            raise CrowdsegError(f"{where}.path: no such folder: {ds.path}", file=cfg.source)
        unknown = sorted(set(ds.splits) - set(cfg.split.ratios))
        if unknown:
            raise CrowdsegError(f"{where}.splits: {unknown[0]!r} is not a split of split.ratios "
                                f"({', '.join(cfg.split.ratios)})", file=cfg.source)
        if not sum(cfg.split.ratios[s] for s in ds.splits) > 0:
            raise CrowdsegError(f"{where}.splits: every split it allows has ratio 0", file=cfg.source)
        value_map(ds, spec)
