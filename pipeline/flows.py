"""Prefect flows and tasks: wiring, batching and task runners. No logic of its own lives here."""

from __future__ import annotations

import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from prefect import Flow, Task, flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.settings import temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from prefect.utilities.callables import get_call_parameters

from pipeline import build as b
from pipeline import incremental as inc
from pipeline import rows, store
from pipeline.config import Config, DatasetConfig
from pipeline.errors import CrowdsegError
from pipeline.io.annotations import read_annotations
from pipeline.io.ballots import Ballots
from pipeline.io.datasets import SAMPLE_COLUMNS, read_dataset
from pipeline.io.manifest import read_manifest
from pipeline.io.shapes import SHAPE_COLUMNS
from pipeline.io.shapestore import ShapeStore, located
from pipeline.io.sources import join_tables, read_tool_sources
from pipeline.pool import ProcessPool
from pipeline.report.gallery import Thumb, flagged_photos, gallery_thumbs, thumb_file
from pipeline.report.html import render_report
from pipeline.report.markdown import summary_markdown
from pipeline.report.plots import FigureCache
from pipeline.report.write import json_rows, write_csv, write_json, write_json_rows, write_tables
from pipeline.run import Stopwatch, build_lock, prefect_server
from pipeline.spec import Spec
from pipeline.stages import accounting, card, dedup, derive, export, ingest, merge, qa, review, skill, split, trusted
from pipeline.tables import CROWD, DUPLICATE_COLUMNS, REJECTION_COLUMNS, as_categories, concat, frame, isin, keyed_hash
from pipeline.tuning import release_memory

STAGE = {"cache_policy": NO_CACHE, "persist_result": False}

Runnable = TypeVar("Runnable", Task, Flow)


def importable(obj: Runnable) -> Runnable:
    """A task or flow whose function pickle finds as ``<module>.<name>.fn``, and so pickles by reference.

    The module attribute is the Task or Flow, not the function, so cloudpickle pickled the function by value: its
    code and every global it reads. Every task run sent to a worker process carries its flow run's context, whose
    Flow holds ``build_flow``, which reads every task here: each submission pickled all of them again (80 kB; 4 ms
    in a warm process, ~9 ms a submission in a profiled 20k-photo build), and each worker rebuilt them."""
    obj.fn.__qualname__ += ".fn"
    return obj


def _key(context: Any, parameters: dict[str, Any]) -> str:
    """Cached tasks are keyed by the content key the flow computed (``store.key_of``), not by their arguments."""
    return parameters["key"]


CACHED = {"cache_key_fn": _key, "persist_result": True}
"""Tasks that save their result under the work directory and return its path; Prefect caches the path."""


@importable
@task(name="read-inputs", **CACHED)
def read_inputs(cfg: Config, spec: Spec, manifest: pd.DataFrame, rejected: pd.DataFrame, items: list[str], key: str,
                part: str) -> str:
    """The manifest (as the flow read it, with its ``rejected`` rows), assignments and rejections; shapes go to a
    file beside the result (``ShapeStore``).

    When the native annotations file only grew since an earlier result, that result's lines are taken as they
    were parsed and only the new lines are read.
    """
    out, native, nkey = Path(part), cfg.path(cfg.inputs.annotations), inc.native_key(cfg, spec)
    earlier = inc.earlier_prefix(out.parent, native, nkey)
    head, shapes, records, start = inc.reuse_prefix(earlier, out.with_suffix(".shapes"))

    def sink(rows: list[tuple[Any, ...]]) -> None:
        records.update(shapes.write(rows))

    own = join_tables([head, read_annotations(native, spec, cfg.inputs.label_map, sink, start)])
    others = read_tool_sources(cfg, spec, manifest, sink)
    own_a, own_r, assignments = own[0], own[2], as_categories(located(join_tables([own, others])[0], records),
                                                              ["file"])
    now = inc.line_prefix(native, nkey)
    store.write_atomic(out.with_suffix(".prefix.json"), json.dumps(asdict(now)).encode())
    lines = {"native_assignments": len(own_a), "native_rejections": (len(rejected), len(rejected) + len(own_r)),
             "reused": start[1], "parsed": now.lines - start[1]}
    get_run_logger().info("read %d photos (%d rows rejected), %d assignments (%d rejected); %d annotation lines "
                          "parsed, %d reused", len(manifest), len(rejected), len(assignments),
                          len(own_r) + len(others[2]), lines["parsed"], lines["reused"])
    return str(store.save_part((manifest, assignments, concat([rejected, own_r, others[2]], REJECTION_COLUMNS),
                                shapes, lines), items, out))


@importable
@task(name="ingest-batch", **CACHED)
def ingest_batch(batch: pd.DataFrame, cfg: Config, items: list[str], key: str, part: str) -> str:
    photos, rejected = ingest.ingest(batch, cfg.ingest)
    get_run_logger().info("ingested %d photos, rejected %d", len(photos), len(rejected))
    return str(store.save_part((photos, rejected), items, Path(part)))


@importable
@task(name="dedup", **CACHED)
def dedup_photos(photos: pd.DataFrame, cfg: Config, items: list[str], key: str, part: str) -> str:
    previous = b.load_index(cfg)
    found = dedup.find_duplicates(photos, cfg.dedup, previous)
    get_run_logger().info("%d duplicate clusters, %d photos dropped", found["cluster"].nunique(),
                          int((found["action"] == "drop").sum()))
    return str(store.save_part((found, dedup.index_table(photos, found, previous)), items, Path(part)))


@importable
@task(name="faces-batch", **CACHED)
def faces_batch(batch: pd.DataFrame, cfg: Config, items: list[str], key: str, part: str) -> str:
    faces = ingest.find_faces(batch, cfg.ingest)
    get_run_logger().info("face detector on %d photos whose mask has no face: %d found one",
                          len(faces), int((faces["faces"] > 0).sum()))
    return str(store.save_part(faces, items, Path(part)))


@importable
@task(name="score-batch", **CACHED)
def score_batch(photos: pd.DataFrame, assignments: pd.DataFrame, drawn: ShapeStore, ballots: Ballots, spec: Spec,
                cfg: Config, weights: dict[tuple[str, int], float], items: list[str], key: str, part: str) -> str:
    ballots, shapes = unprepared_shapes(assignments, drawn, ballots)
    scores = merge.merge_batch(photos, assignments, shapes, spec, cfg.merge, weights, None, ballots=ballots).scores
    get_run_logger().info("scored %d photos' %d assignments", len(photos), len(assignments))
    return str(store.save_part(scores, items, Path(part)))


@importable
@task(name="skills", **STAGE)
def estimate_skills(sums: pd.DataFrame, cfg: Config) -> skill.PooledSkill:
    model = skill.PooledSkill(cfg.merge.skill_prior_photos, cfg.merge.gold_weight).fit_sums(sums)
    get_run_logger().info("skills of %d annotators", model.skills_["annotator_id"].nunique())
    return model


@importable
@task(name="merge-batch", **CACHED)
def merge_batch(photos: pd.DataFrame, assignments: pd.DataFrame, drawn: ShapeStore, ballots: Ballots, spec: Spec,
                cfg: Config, weights: dict[tuple[str, int], float], items: list[str], key: str, part: str) -> str:
    """Merge a batch; its masks go to a folder named like its result, so both are reused or pruned together."""
    masks = Path(part).with_suffix("")
    masks.mkdir(parents=True, exist_ok=True)
    ballots, shapes = unprepared_shapes(assignments, drawn, ballots)
    result = merge.merge_batch(photos, assignments, shapes, spec, cfg.merge, weights, masks,
                               cfg.agreement_maps, ballots)
    get_run_logger().info("merged %d photos", len(result.photos))
    return str(store.save_part(result, items, Path(part)))


def unprepared_shapes(assignments: pd.DataFrame, drawn: ShapeStore, ballots: Ballots
                      ) -> tuple[Ballots, pd.DataFrame]:
    """A merge task's ballots as found now (``Ballots.found``), and the shapes of the photos they have no prepared
    form of: the only ones the task rasterises."""
    ballots = ballots.found()
    return ballots, drawn.read(assignments[~isin(assignments["photo_id"], ballots.present)])


@importable
@task(name="trusted-batch", **CACHED)
def trusted_batch(photos: pd.DataFrame, spec: Spec, items: list[str], key: str, part: str) -> str:
    """Take the trusted masks of a batch of external or derived samples; masks go beside the result, as merge's."""
    masks = Path(part).with_suffix("")
    masks.mkdir(parents=True, exist_ok=True)
    result = trusted.trusted_batch(photos, spec, masks)
    get_run_logger().info("took %d trusted masks, rejected %d", len(result.photos), len(result.rejections))
    return str(store.save_part(result, items, Path(part)))


@importable
@task(name="derive-batch", **CACHED)
def derive_batch(samples: pd.DataFrame, ds: DatasetConfig, spec: Spec, cfg: Config, items: list[str], key: str,
                 part: str) -> str:
    """Portrait crops of a batch of a derived dataset's samples, in a folder named like the result: per source
    sample, its crops (manifest rows); and the rejections."""
    crops, rejected = derive.derive(samples, ds, spec, cfg.ingest, Path(part).with_suffix(""))
    get_run_logger().info("%s: %d crops from %d samples, %d rejected", ds.name, sum(map(len, crops.values())),
                          len(samples), len(rejected))
    return str(store.save_part((crops, rejected), items, Path(part)))


def read_samples(cfg: Config, spec: Spec, files: store.FileDigests, layout: b.Layout, clock: Stopwatch,
                 used: set[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every dataset's samples as manifest rows (a derived dataset's crops, made or reused), the rejections of
    listing and deriving them, and the derived datasets' files read (whose digests the next build reuses)."""
    samples, rejected, files_read = [], [], []
    for ds in cfg.inputs.datasets:
        listed, refused = read_dataset(ds, cfg.path(ds.path), spec)
        rejected.append(refused)
        if ds.kind == "external":
            samples.append(listed)
            continue
        files_read += [*listed["path"], *listed["mask"]]
        digests = [i + m for i, m in zip(files.digests(listed["path"]), files.digests(listed["mask"]), strict=True)]
        plan = inc.plan(inc.derive_keys(listed, digests, ds, spec, cfg), "derive", layout.cache / "derive",
                        b.batching(cfg))
        parts = run_stage(derive_batch, plan, ((listed.iloc[bt.rows],) for bt in plan.todo), ds, spec, cfg,
                          stage="derive", clock=clock, used=used, ahead=in_flight(cfg))
        for crops, refused in inc.gather(parts, listed["photo_id"].tolist()):
            samples += list(crops.values())
            rejected.append(refused)
    return concat(samples, SAMPLE_COLUMNS), concat(rejected, REJECTION_COLUMNS), files_read


@importable
@task(name="qa", **STAGE)
def run_qa(inputs: qa.QAInputs) -> pd.DataFrame:
    findings = qa.run_checks(inputs)
    get_run_logger().info("%d findings", len(findings))
    return findings


@importable
@task(name="split", **STAGE)
def split_photos(photos: pd.DataFrame, strata: list[str], links: list[tuple[str, str]], samples: pd.DataFrame,
                 cfg: Config, layout: b.Layout) -> tuple[pd.DataFrame, split.SplitReport]:
    """The crowd's split, balanced and reported, then the datasets' samples' (``build.source_splits``)."""
    splits, report = split.assign_splits(photos, cfg.split.ratios, cfg.split.seed, links, strata,
                                         b.previous_splits(cfg))
    splits = concat([splits, samples], split.SPLIT_COLUMNS).sort_values("photo_id", ignore_index=True)
    write_csv(splits, layout.splits)
    get_run_logger().info("split %d photos: ratio error %.2f pp, worst stratum %.2f pp, %d pinned, %d moved",
                          len(splits), report.max_ratio_error_pp, report.worst_stratum_deviation_pp,
                          report.pinned_photos, report.moved_photos)
    return splits, report


@importable
@task(name="export-batch", **CACHED)
def export_batch(published: pd.DataFrame, spec: Spec, cfg: Config, pseudonym: bytes, items: list[str], key: str,
                 part: str) -> str:
    """Export a batch with no split yet (publish places the files in their splits): per photo id, what was
    exported and each of its files' digests."""
    root = Path(part).with_suffix("")
    shutil.rmtree(root, ignore_errors=True)
    exported, digests = export.export_photos(published.assign(split=""), root, spec, pseudonym,
                                             export.ExportOptions.from_config(cfg))
    get_run_logger().info("exported %d photos (%d files)", len(exported), len(digests))
    coco, spans = export.coco_snippets(exported)  # read back one image at a time when published
    store.write_atomic(Path(part).with_suffix(".coco"), coco)
    files: dict[str, dict[str, str]] = {}
    for rel, d in digests.items():  # <dir>/<name>.<ext>: each photo's files
        files.setdefault(rel.rpartition("/")[2].split(".")[0], {})[rel] = d
    by_name = {e.name: (replace(e, annotations=()), files.get(e.name, {}), spans[e.name]) for e in exported}
    result = {p: by_name[export.image_name(p, pseudonym)] for p in published["photo_id"]}
    return str(store.save_part(result, items, Path(part)))


@importable
@task(name="publish", **STAGE)
def publish(published: pd.DataFrame, parts: dict[str, list[int]], findings: pd.DataFrame, ledger: dict[str, int],
            split_report: dict[str, Any], spec: Spec, cfg: Config, layout: b.Layout, pseudonym: bytes,
            throwaway: bool) -> tuple[pd.DataFrame, Path | None]:
    """Write the dataset tree in staging, then swap it in; the class summary, and where the previous tree lies to be
    deleted (``export.publish``). An OS error on the way (a full disk, a permission) is a one-line error, and the
    previous dataset stays as it was: staging is never published half-written."""
    try:
        return publish_tree(published, parts, findings, ledger, split_report, spec, cfg, layout, pseudonym,
                            throwaway)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise CrowdsegError(f"cannot write the dataset: {e.strerror or e}{where}; the previous dataset is unchanged",
                            file=str(layout.dataset)) from None


def publish_tree(published: pd.DataFrame, parts: dict[str, list[int]], findings: pd.DataFrame,
                 ledger: dict[str, int], split_report: dict[str, Any], spec: Spec, cfg: Config, layout: b.Layout,
                 pseudonym: bytes, throwaway: bool) -> tuple[pd.DataFrame, Path | None]:
    root, splits = layout.staging, list(cfg.split.ratios)
    split_of = dict(zip([export.image_name(p, pseudonym) for p in published["photo_id"]], published["split"],
                        strict=True))
    exported: list[export.Exported] = []
    digests: dict[str, str] = {}
    coco: dict[str, tuple[str, int, int]] = {}
    for part, share in inc.shares(parts, published["photo_id"].tolist()):
        for e, _, (offset, length) in share.values():
            exported.append(replace(e, split=split_of[e.name]))
            coco[e.name] = (str(Path(part).with_suffix(".coco")), offset, length)
        digests |= export.place(Path(part).with_suffix(""), root, {rel: d for _, files, _ in share.values()
                                                                   for rel, d in files.items()}, split_of)
    write_csv(export.meta_table(published, pseudonym), root / "meta.csv")
    with store.Spans() as snippets:
        for s in splits:
            export.write_coco(root, s, spec, exported, lambda e: snippets.read(*coco[e.name]).decode())
    export.write_view_classes(root, spec)
    facts = card.CardFacts(
        spec=spec, splits=splits, exported=exported, options=export.ExportOptions.from_config(cfg),
        sources=[card.Source(CROWD, "crowdsourced uploads", "unspecified"),
                 *(card.Source(ds.name, ds.kind, ds.licence) for ds in cfg.inputs.datasets)],
        source_counts=card.source_counts(exported, dict(zip(split_of, published["origin"], strict=True))),
        config_hash=card.config_hash(b.outcome_settings(cfg)),
        thresholds=card.card_thresholds(cfg, spec), findings=findings, ledger=ledger, throwaway_key=throwaway,
        split_report=split_report)
    (root / "README.md").write_text(card.dataset_card(facts), encoding="utf-8")
    card.sha256sums(root, digests)
    return b.class_summary(published, spec), export.publish(root, layout.dataset)


@importable
@task(name="thumbnails", **STAGE)
def make_thumbnails(ids: list[str], keys: dict[str, str], reviewed: pd.DataFrame, assignments: pd.DataFrame,
                    drawn: ShapeStore, outcome: pd.DataFrame, spec: Spec, cfg: Config, layout: b.Layout
                    ) -> dict[str, list[Thumb]]:
    """Report thumbnails of flagged photos: made once per ``keys`` entry (see ``thumb_keys``), then read from the
    cache; shapes are read only when a thumbnail is made."""
    layout.thumbs.mkdir(parents=True, exist_ok=True)
    photo_rows = reviewed.set_index("photo_id", drop=False)
    mine = assignments[isin(assignments["photo_id"], ids)]
    own = {k: g for k, g in mine.groupby("photo_id")}
    used = {k: g for k, g in outcome[isin(outcome["photo_id"], ids)].groupby("photo_id")}

    @cache
    def drew() -> dict[str, pd.DataFrame]:
        shapes = drawn.read(mine)
        photo_of = dict(zip(mine["assignment"], mine["photo_id"], strict=True))
        return {k: g for k, g in shapes.groupby(shapes["assignment"].map(photo_of))}

    def masks(pid: str) -> Callable[[], dict[str, np.ndarray]]:
        return lambda: b.annotator_masks(photo_rows.loc[pid], own.get(pid, mine.iloc[:0]),
                                         drew().get(pid, frame([], SHAPE_COLUMNS)), used.get(pid, outcome.iloc[:0]),
                                         spec, cfg.merge.min_shape_area_px)

    return {pid: gallery_thumbs(photo_rows.at[pid, "path"], photo_rows.at[pid, "mask_path"], masks(pid), spec,
                                layout.thumbs, keys[pid]) for pid in ids}


def thumb_keys(photo_ids: list[str], merge_keys: dict[str, str]) -> dict[str, str]:
    """Per flagged photo, its thumbnails' cache key: its merge key, which covers the photo, every shape, the
    weights and how merge used each assignment, and the code that draws and captions the thumbnails."""
    code = store.code_version("pipeline.report.gallery") + store.code_version("pipeline.build")
    return {p: keyed_hash("thumb", merge_keys[p] + code, 24) for p in photo_ids}


@importable
@task(name="report", **STAGE)
def write_reports(summary: dict[str, Any], tables: dict[str, pd.DataFrame], paths: dict[str, str],
                  gallery: dict[str, list[Thumb]], timings: pd.DataFrame, layout: b.Layout) -> str:
    figures = FigureCache(layout.figures)
    markdown = write_report_files(summary, tables, paths, gallery, timings, layout.reports,
                                  layout.work / "report-tables.json", figures)
    store.prune([layout.figures], {name.split(".")[0] for name in figures.used})
    create_markdown_artifact(markdown, key="crowdseg-summary", description="build summary")
    create_table_artifact(json_rows(tables["findings"].head(1000)), key="crowdseg-findings",
                          description="QA findings (first 1,000)")
    return str(layout.reports / "qa.html")


def write_report_files(summary: dict[str, Any], tables: dict[str, pd.DataFrame], paths: dict[str, str],
                       gallery: dict[str, list[Thumb]], timings: pd.DataFrame | None, reports: Path, ledger: Path,
                       figures: FigureCache | None = None) -> str:
    """Every file of ``reports/``: the tables (CSV; JSON too for ``JSON_TABLES``), the re-annotation queue,
    ``qa.json``, ``summary.md`` and ``qa.html`` (its figures from ``figures``); returns the summary's Markdown."""
    write_tables(tables, reports, ledger)
    b.write_jsonl(b.reannotation_queue(tables["rejections"], tables["agreement"], paths),
                  reports / "reannotation.jsonl")
    for name in b.JSON_TABLES:
        write_json_rows(tables[name], reports / f"{name}.json")
    write_json(summary, reports / "qa.json")
    markdown = summary_markdown(summary, tables["findings"])
    (reports / "summary.md").write_text(markdown, encoding="utf-8")
    (reports / "qa.html").write_text(render_report(summary, tables, paths, gallery, timings, figures),
                                        encoding="utf-8")
    return markdown


IN_FLIGHT = 4
"""Batches per worker that ``run_stage`` keeps submitted and unfinished. A stage makes a batch's arguments only when
it submits the batch, so it holds a few batches' inputs at a time, not every batch's: at 200k photos a merge pass's
photo and assignment slices, which the process pool queues pickled with the pass's weight table, came to ~750 MB
(``benchmarks/scale.py``'s table-level run)."""


def in_flight(cfg: Config) -> int | None:
    """How many batches ``run_stage`` keeps submitted: ``IN_FLIGHT`` for each of the build's workers; no limit on a
    remote Dask cluster whose size ``build.workers`` does not give (the command's cores say nothing of it)."""
    if cfg.build.runner == "dask" and cfg.build.dask_address and not cfg.build.workers:
        return None
    return IN_FLIGHT * b.workers(cfg)


def run_stage(t: Task, plan: inc.Plan, per_batch: Iterable[tuple[Any, ...]], *shared: Any, stage: str,
              clock: Stopwatch, used: set[str], ahead: int | None, runner: TaskRunner | None = None
              ) -> dict[str, list[int]]:
    """Run a stage's batches still to compute, at most ``ahead`` of them (None: all) submitted and unfinished at a
    time, and return its parts (``collected``). ``per_batch`` yields each batch's own arguments, in ``plan.todo``
    order; it is read as batches are submitted."""
    jobs = zip(plan.todo, per_batch, strict=True)
    futures: list[PrefectFuture[str]] = []
    running: deque[PrefectFuture[str]] = deque()
    while True:
        for bt, args in islice(jobs, None if ahead is None else max(0, ahead - len(running))):
            futures.append(submit(t, bt, (*args, *shared), runner))
            running.append(futures[-1])
        if not running:
            return collected(plan, futures, stage, clock, used)
        running.popleft().wait()  # batches end roughly in the order they were submitted
        report_progress(stage, len(futures) - len(running), len(plan.todo))


def collected(plan: inc.Plan, futures: list[PrefectFuture[str]], stage: str, clock: Stopwatch, used: set[str]
              ) -> dict[str, list[int]]:
    """Every result file of a stage whose batches ended, with the row positions it holds (also added to ``used``);
    the stage's counts go to ``clock``. Raises the error of a failed batch."""
    clock.count(stage, plan.computed, plan.reused_items)
    parts = plan.parts([f.result() for f in futures])
    used.update(parts)
    return parts


@dataclass
class Started:
    """A stage whose batches still to compute were all submitted at once (``start``)."""

    plan: inc.Plan
    futures: list[PrefectFuture[str]]
    stage: str

    def parts(self, clock: Stopwatch, used: set[str]) -> dict[str, list[int]]:
        """Wait for the batches, then ``collected``."""
        for done, _ in enumerate(as_completed(self.futures), 1):
            report_progress(self.stage, done, len(self.futures))
        return collected(self.plan, self.futures, self.stage, clock, used)


def start(t: Task, plan: inc.Plan, per_batch: list[tuple[Any, ...]], *shared: Any, stage: str,
          runner: TaskRunner | None = None) -> Started:
    """Submit all of a stage's batches still to compute: for stages that run while the flow does other work (the
    annotation parse and ingest); the others use ``run_stage``."""
    return Started(plan, [submit(t, bt, (*args, *shared), runner)
                          for bt, args in zip(plan.todo, per_batch, strict=True)], stage)


def submit(t: Task, bt: inc.Batch, args: tuple[Any, ...], runner: TaskRunner | None) -> PrefectFuture[str]:
    """One batch as a task keyed by content and returning its result's path, on the flow's task runner or on
    ``runner``."""
    args = quoted(args, runner)
    if runner is None:
        return t.submit(*args, items=bt.items, key=bt.key, part=bt.part)
    return runner.submit(t, get_call_parameters(t.fn, args, {"items": bt.items, "key": bt.key, "part": bt.part}))


DIGEST_CHUNK = 2048
"""Photos whose files are digested at a time by ``start_ingest`` before their batches are submitted."""


def start_ingest(manifest: pd.DataFrame, files: store.FileDigests, cfg: Config, folder: Path,
                 batching: inc.Batching) -> tuple[list[str], Started]:
    """Each manifest row's ingest key, and the ingest batches of the photos still to compute, submitted.

    A key holds the photo file's digest, so a cold build reads every photo twice: for its digest, and to decode it.
    The digests are taken ``DIGEST_CHUNK`` photos at a time, each chunk's batches submitted before the next chunk is
    read, so that reading files for their digests overlaps ingesting the photos read before."""
    known = store.known_items(folder)
    keys: list[str] = []
    chunks: list[Started] = []
    for at in range(0, len(manifest), DIGEST_CHUNK):
        chunk = manifest.iloc[at: at + DIGEST_CHUNK]
        chunk_keys = inc.ingest_keys(chunk, files.digests(chunk["path"]), cfg)
        keys += chunk_keys
        plan = inc.plan(chunk_keys, "ingest", folder, batching, at, known)
        chunks.append(start(ingest_batch, plan, [(manifest.iloc[bt.rows],) for bt in plan.todo], cfg,
                            stage="ingest"))
    plan = inc.Plan.joined([c.plan for c in chunks])
    return keys, Started(plan, [f for c in chunks for f in c.futures], "ingest")


def call(t: Task, *args: Any) -> Any:
    """Run task ``t`` in the flow's thread, its arguments marked as holding no futures: Prefect would otherwise walk
    every entry of the build's configs, tables and dicts of 20k photos, twice (~1 s of a rebuild at 20k)."""
    return t(*(quote(a) for a in args))


def quoted(args: tuple[Any, ...], runner: TaskRunner | None) -> tuple[Any, ...]:
    """A task's arguments marked as holding no futures, so that Prefect does not walk every entry of configs,
    weight tables and shape indexes of every batch (~1 ms per photo of the flow's CPU at 20k). Prefect's thread and
    process runners unwrap the marks; the Dask runner does not, so its arguments stay as they are.

    The process runner takes off the mark before it pickles a task for a worker, whose task engine would then walk
    the arguments twice (for the task's inputs, and to resolve them; a weight table of 400 annotators costs ~70 ms,
    for every batch): there they carry a second mark, ``Sealed``, which the worker's engine takes off unwalked."""
    context = FlowRunContext.get()
    target = runner or (context.task_runner if context else None)
    if isinstance(target, ProcessPoolTaskRunner):
        return tuple(quote(Sealed(a)) for a in args)
    if isinstance(target, ThreadPoolTaskRunner):
        return tuple(quote(a) for a in args)
    return args


class Sealed(quote):
    """Prefect's ``quote`` that survives pickling (Prefect 3.8.8's annotations come back from pickle with their value
    wrapped in a tuple)."""

    def __reduce__(self) -> tuple[type[Sealed], tuple[Any]]:
        return Sealed, (self.unwrap(),)


POOL_MIN_PHOTOS = 1000
"""Runner ``auto`` sends a merge pass or the export to worker processes from this many photos to compute:
below it, starting them (~4 s on 2 cores) costs more than the thread pool loses to the GIL, which their
Python-level loops hold most of the time (on threads a merge pass uses ~1.2 of 2 cores, on processes both)."""


class WorkerPool:
    """Runner ``auto``'s process pool for the merge passes and export, started on first use and shut down with
    the build."""

    def __init__(self, cfg: Config):
        self.cfg, self.runner = cfg, None

    def take(self, photos: int) -> TaskRunner | None:
        """The pool, if a stage with this many photos to compute should run on it (None: the flow's threads)."""
        workers = b.workers(self.cfg)
        if self.cfg.build.runner != "auto" or photos < POOL_MIN_PHOTOS or workers < 2:
            return None
        if self.runner is None:
            self.runner = ProcessPool(workers).__enter__()
        return self.runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.__exit__(None, None, None)
            self.runner = None


def lap(clock: Stopwatch, stage: str) -> None:
    """Close a stage: its time on the stopwatch, its end to the progress bars, and its free memory to the system."""
    release_memory()
    clock.lap(stage)
    report_progress(stage, 0, 0)


def run_one(t: Task, key: str, folder: Path, *args: Any, stage: str, clock: Stopwatch, used: set[str]) -> Any:
    """A single content-keyed result (computed, or reused from ``folder``), loaded."""
    plan = inc.plan([key], stage, folder, inc.Batching(1))
    (part,) = run_stage(t, plan, [args] * len(plan.todo), stage=stage, clock=clock, used=used, ahead=1)
    return store.load(part)


@importable
@flow(name="crowdseg-build", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2),
      log_prints=False, validate_parameters=False)
def build_flow(cfg: Config, spec: Spec) -> dict[str, Any]:
    """ingest -> dedup -> merge -> qa -> split -> export -> report, batched over photos, every batch content-keyed
    so that a rerun computes only what changed."""
    layout = b.Layout(cfg.path(cfg.output.out))
    for d in (layout.cache, layout.reports):
        d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(layout.staging, ignore_errors=True)
    batching, ahead = b.batching(cfg), in_flight(cfg)
    pseudonym, throwaway = export.pseudonym_key(os.environ, cfg.export.throwaway_key)
    clock = Stopwatch()
    files = store.FileDigests(layout.work / "digests.parquet")
    used: set[str] = set()  # result files this build reads; the others are pruned at its end

    ikey = inc.inputs_key(cfg, spec, files.digests(str(p) for p in inc.input_files(cfg)))
    manifest, rejected = read_manifest(cfg.path(cfg.inputs.photos))
    # the annotations are parsed while the photos are ingested: on the worker pool, a process of its own (on the
    # flow's threads the two would share one interpreter lock)
    read_plan = inc.plan([ikey], "read inputs", layout.cache / "inputs", inc.Batching(1))
    reading = start(read_inputs, read_plan, [(cfg, spec, manifest, rejected)] * len(read_plan.todo),
                    stage="read inputs", runner=worker_pool(len(manifest)) if read_plan.todo else None)
    samples, sample_rejected, sample_files = read_samples(cfg, spec, files, layout, clock, used)
    manifest, samples_rejected = b.with_samples(manifest, samples)
    if cfg.inputs.datasets:
        lap(clock, "datasets")
    ingest_keys, ingesting = start_ingest(manifest, files, cfg, layout.cache / "ingest", batching)
    ingested = inc.gather(ingesting.parts(clock, used), manifest["photo_id"].tolist())
    photos = b.restamp(b.by_photo([ingest.ingest(manifest.iloc[:0], cfg.ingest)[0], *(p for p, _ in ingested)]),
                       manifest)
    ingest_rejected = b.restamp(b.by_photo([concat([], REJECTION_COLUMNS), *(r for _, r in ingested)]), manifest,
                                "file")
    del ingested  # the batches' tables, now copied into photos: a build holds each big table once
    lap(clock, "ingest")
    (part,) = reading.parts(clock, used)
    _, assignments, rejected, drawn, lines = store.load(part)
    rejected = concat([rejected, sample_rejected, samples_rejected], REJECTION_COLUMNS)
    if clock.work["read inputs"]["computed"]:  # lines parsed now, lines taken from an earlier result
        clock.count("annotation lines", lines["parsed"], lines["reused"])
    else:
        clock.count("annotation lines", 0, lines["parsed"] + lines["reused"])
    lap(clock, "read inputs")  # what the read took beyond ingest
    duplicates = concat([], DUPLICATE_COLUMNS)
    if len(photos):
        index_digest = files.digests([str(cfg.path(cfg.dedup.index))])[0] if cfg.dedup.index else ""
        duplicates, index = run_one(dedup_photos, inc.dedup_key(photos, cfg, index_digest), layout.cache / "dedup",
                                    photos, cfg, stage="dedup", clock=clock, used=used)
        index.to_parquet(layout.index, index=False)
        del index
    lap(clock, "dedup")

    kept = b.kept_photos(photos, duplicates)
    build_id = b.build_id(cfg, photos, assignments)
    del photos  # dedup alone reads every photo's thumbnail; later stages read kept
    release_memory()  # its pages, before routing copies the assignment rows (at 200k a peak ~150 MB lower)
    voted, takes = b.by_origin(kept)
    ids = voted["photo_id"].tolist()
    submitted = len(assignments)
    to_merge, orphans = accounting.route_orphans(
        assignments, set(manifest["photo_id"]), b.refused_ids(rejected, ingest_rejected, manifest),
        dedup.dropped_ids(duplicates), frozenset(takes["photo_id"]))
    del assignments  # to_merge holds the rows later stages read
    manifest = manifest[["photo_id", "path", "mask"]]  # what later stages read of it
    to_merge, repeated = merge.one_per_annotator(to_merge)
    release_memory()  # the whole assignment table's pages, before the merge passes (at 200k ~400 MB less held)
    pinned = b.pinned_weights(cfg)
    ballot_dir = layout.ballots  # the prepared photos (``pipeline.io.ballots``)

    def merge_pass(t: Task, final: bool, weights: dict[tuple[str, int], float], photos: pd.DataFrame,
                   assignments: pd.DataFrame) -> tuple[list[str], list[Any]]:
        """One pass over the voted photos; each batch's score rows reduced to sums as it is read, and the batches
        joined a few at a time (``inc.gather``)."""
        keys = inc.merge_keys(photos, assignments, weights, spec, cfg, final, contents)
        stage = "merge" if final else "score"
        plan, pool = pooled_plan(keys, stage, layout.cache / "merge", cfg)
        if plan.todo:  # photos these batches rasterise and tally, and photos whose prepared form they read back
            todo = {ids[r] for bt in plan.todo for r in bt.rows}
            ready = len(Ballots(ballot_dir, {i: ballot_of[i] for i in todo}).found().present)
            clock.count("rasterise", len(todo) - ready, ready)
        jobs = ((p, a, drawn, Ballots(ballot_dir, {i: ballot_of[i] for i in p["photo_id"]}))
                for p, a in b.merge_jobs(photos, assignments, [bt.rows for bt in plan.todo]))
        parts = run_stage(t, plan, jobs, spec, cfg, weights, stage=stage, clock=clock, used=used, ahead=ahead,
                          runner=pool)
        if final:
            return keys, inc.gather(parts, ids, merge.MergeResult.summed, settle)
        return keys, inc.gather(parts, ids, skill.score_sums, skill.add_sums)

    def settle(parts: list[merge.MergeResult]) -> merge.MergeResult:
        return spill.keep(b.settled(parts, spec, cfg.merge))

    spill = b.MergeSpill(layout.merged)  # the final vote's assignment and class rows go to disk as they come

    contents = inc.photo_contents(voted, to_merge)
    ballot_of = dict(zip(ids, inc.ballot_keys(contents, spec, cfg), strict=True))
    used.update(f"{ballot_dir}/{k}" for k in ballot_of.values())
    weights: dict[tuple[str, int], float] = {}  # the first scoring pass weighs everyone alike, pinned or not
    crowd = set(to_merge.loc[~to_merge["golden"].astype(bool), "annotator_id"])
    estimate = len(voted) and not b.all_pinned(pinned, crowd, spec.draw_ids)
    for _ in range(cfg.merge.em_iterations if estimate else 0):
        _, scores = merge_pass(score_batch, False, weights, voted, to_merge)
        weights = call(estimate_skills, skill.add_sums(scores), cfg).weights()
        weights |= pinned
    weights = weights | pinned
    merge_keys, merged_parts = merge_pass(merge_batch, True, weights, voted, to_merge)
    trusted_keys = inc.trusted_keys(takes, files.digests(takes["mask"]), spec)
    if trusted_keys:
        plan = inc.plan(trusted_keys, "trusted", layout.cache / "trusted", batching)
        parts = run_stage(trusted_batch, plan, ((takes.iloc[bt.rows],) for bt in plan.todo), spec, ahead=ahead,
                          stage="trusted masks", clock=clock, used=used)
        merged_parts += inc.gather(parts, takes["photo_id"].tolist(), merge.MergeResult.summed, settle)
    key_of = dict(zip(ids, merge_keys, strict=True)) | dict(zip(takes["photo_id"], trusted_keys, strict=True))
    m = spill.merged(merged_parts, spec)
    del merged_parts
    b.write_weights(weights, layout.weights)
    skills = call(estimate_skills, m.scores, cfg).skills_
    lap(clock, "merge")

    look = b.faceless(kept, m.photos) if cfg.ingest.detect_faces else kept.iloc[:0]
    face_ids = look["photo_id"].tolist()
    face_plan = inc.plan(inc.face_keys(face_ids, dict(zip(manifest["photo_id"], ingest_keys, strict=True))),
                         "faces", layout.cache / "faces", batching)
    parts = run_stage(faces_batch, face_plan, ((look.iloc[bt.rows],) for bt in face_plan.todo), cfg, ahead=ahead,
                      stage="faces", clock=clock, used=used)
    kept = b.with_faces(kept, b.by_photo([ingest.find_faces(kept.iloc[:0], cfg.ingest),
                                          *inc.gather(parts, face_ids)]))
    held = merge.held_back(kept, to_merge, m.photos, cfg.merge.hold_disputed)
    held, decisions = review.apply_decisions(b.decisions(cfg), m.photos, held, kept, to_merge)
    to_merge.to_parquet(layout.routed, index=False)
    del to_merge  # the vote's rows: the thumbnails read a few photos' back (at 200k photos ~130 MB held to the end)
    merged = m.photos[~isin(m.photos["photo_id"], held["photo_id"])]
    rejections = concat([rejected, ingest_rejected, orphans, repeated, m.rejections, held], REJECTION_COLUMNS)
    del ingest_rejected, orphans, repeated, held  # copied into rejections
    lap(clock, "faces")

    links = dedup.user_links(duplicates, cfg.dedup.cross_user_policy)
    splits, split_report = call(split_photos, *b.split_strata(voted, merged, spec, cfg.split), links,
                                b.source_splits(kept, merged, cfg, links), cfg, layout)
    del voted, merged  # copies of kept's and merge's rows that only merge and split read
    reviewed = b.published_table(kept, m.photos, splits)
    del kept  # reviewed holds what the later stages read of it
    published = b.in_dataset(reviewed)
    lap(clock, "split")
    annotators = b.annotator_table(m.assignments, m.repairs, skills, rejections, spec, cfg.merge.min_agreement,
                                   cfg.merge.ban)
    release_memory()  # the table's temporaries (at 200k photos, ~150 MB of heap) before QA makes its own
    findings = run_qa.submit(*quoted((qa.QAInputs(reviewed, m.assignments, m.classes, m.repairs, annotators,
                                                   duplicates, spec, cfg.qa, cfg.split.ratios),), None))
    used_assignments = rows.count(m.assignments, lambda a: isin(a["photo_id"], published["photo_id"]))
    ledger = accounting.balance(len(manifest) + int((rejected["item"] == "photo").sum()),
                                submitted + int((rejected["item"] == "assignment").sum()), published,
                                used_assignments, rejections, duplicates)  # before publishing: a lost input stops it
    export_plan, pool = pooled_plan(inc.export_keys(published, key_of, spec, cfg, pseudonym), "export",
                                    layout.cache / "export", cfg)
    exported = run_stage(export_batch, export_plan, ((published.iloc[bt.rows],) for bt in export_plan.todo), spec,
                         cfg, pseudonym, stage="export", clock=clock, used=used, ahead=ahead, runner=pool)
    findings = findings.result()
    lap(clock, "qa and export")
    classes, previous = call(publish, published, exported, findings, ledger, split_report.as_dict(), spec, cfg,
                             layout, pseudonym, throwaway)
    removing = store.remove_soon(previous)  # while thumbnails and the report are made
    lap(clock, "publish")
    shown = flagged_photos(findings, cfg.qa.gallery_limit)
    flagged = b.batches(pd.DataFrame({"photo_id": shown}), batching)
    shown_keys = thumb_keys(shown, key_of)
    outcome = rows.where(m.assignments, lambda a: isin(a["photo_id"], shown))  # merge's rows of those photos
    thumbs = make_thumbnails.map([f["photo_id"].tolist() for f in flagged],
                                 unmapped(shown_keys), unmapped(reviewed),
                                 unmapped(b.routed_rows(layout.routed, shown)),
                                 unmapped(drawn), unmapped(outcome), unmapped(spec), unmapped(cfg),
                                 unmapped(layout)).result()
    del outcome
    del reviewed  # the report does not read it
    lap(clock, "thumbnails")
    summary = b.summary(spec, cfg, ledger, published, findings, decisions, build_id, split_report.as_dict())
    tables = b.report_tables(rejections, duplicates, m, skills, annotators, findings, classes, published, decisions,
                             spec, cfg, pseudonym)
    del m  # the tables hold what the report reads of it
    paths = dict(zip(manifest["photo_id"], manifest["path"], strict=True))
    gallery = {k: v for part in thumbs for k, v in part.items()}
    report = call(write_reports, summary, tables, paths, gallery, clock.table(), layout)
    del tables
    shutil.rmtree(layout.merged, ignore_errors=True)
    store.prune([*layout.cache.iterdir(), layout.prefect], {Path(p).stem for p in used})
    store.prune([layout.thumbs], {thumb_file(layout.thumbs, k, spec).stem for k in shown_keys.values()})
    files.save([*map(str, inc.input_files(cfg)), *manifest["path"], *manifest["mask"], *sample_files])
    if removing is not None:
        removing.join()
    lap(clock, "report")
    write_csv(clock.table(), layout.reports / "timings.csv")
    return {"report": report, "dataset": str(layout.dataset), "timings": clock.laps, "work": clock.work, **ledger}


PROGRESS: ContextVar[Callable[[str, int, int], None] | None] = ContextVar("crowdseg_progress", default=None)
POOL: ContextVar[WorkerPool] = ContextVar("crowdseg_worker_pool")


def worker_pool(photos: int) -> TaskRunner | None:
    """Runner ``auto``'s process pool for a stage with this many photos to compute, or None (the flow's runner).
    Out of the flow's code, which Prefect pickles for process workers and which must then refer to no context
    variable."""
    pool = POOL.get(None)
    return None if pool is None else pool.take(photos)


def pooled_plan(keys: list[str], stage: str, folder: Path, cfg: Config) -> tuple[inc.Plan, TaskRunner | None]:
    """A stage's plan, and the runner its batches go to: ``worker_pool`` when the stage is big (in batches sized
    for processes), else None (the flow's runner)."""
    plan = inc.plan(keys, stage, folder, b.batching(cfg))
    runner = worker_pool(plan.computed)
    if runner is None:
        return plan, None
    pooled = b.batching(cfg, "processes")
    return (plan if pooled == b.batching(cfg) else inc.plan(keys, stage, folder, pooled)), runner


def report_progress(stage: str, done: int, total: int) -> None:
    """Tell the caller of run_build (the CLI's progress bars) that ``done`` of ``total`` batches of a stage ended."""
    callback = PROGRESS.get()
    if callback is not None:
        callback(stage, done, total)


@contextmanager
def results_in(folder: Path) -> Iterator[None]:
    """Prefect's cached task results (paths) go to ``folder``, in this process and in the worker processes of the
    process and Dask runners, which read the setting from the environment."""
    name, before = "PREFECT_RESULTS_LOCAL_STORAGE_PATH", os.environ.get("PREFECT_RESULTS_LOCAL_STORAGE_PATH")
    os.environ[name] = str(folder)
    try:
        with temporary_settings(updates={"results.local_storage_path": folder}):
            yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextmanager
def quiet_prefect() -> Iterator[None]:
    """Turn off the flow heartbeat, which otherwise holds every sync flow ~1 s at its end, and give the build's
    worker processes this process's server: the one PREFECT_API_URL names, or the embedded temporary server started
    here. Without a URL in their environment, each spawned worker would start a temporary server of its own
    (a process, a database and ~3 s of CPU each)."""
    updates: dict[str, Any] = {"flows.heartbeat_frequency": None}
    url = prefect_server()
    if url:
        updates["api.url"] = url
    with temporary_settings(updates=updates):
        yield


def task_runner(cfg: Config) -> TaskRunner:
    """The flow's task runner for ``build.runner`` (``auto``: threads, see WorkerPool); every runner gives
    byte-identical outputs."""
    workers = cfg.build.workers or os.cpu_count() or 2
    if cfg.build.runner == "local":
        return ThreadPoolTaskRunner(max_workers=1)
    if cfg.build.runner == "processes":
        return ProcessPool(workers)
    if cfg.build.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.build.dask_address:
            return DaskTaskRunner(address=cfg.build.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "dashboard_address": None, "preload": ["pipeline.tuning"]})
    return ThreadPoolTaskRunner(max_workers=workers)


def run_build(cfg: Config, spec: Spec, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run the build flow on the embedded local server (or the server PREFECT_API_URL names).

    ``progress(stage, done, total)`` is called as batches finish. Cached results go under the build's work folder.
    """
    layout = b.Layout(cfg.path(cfg.output.out))
    with build_lock(layout.out), quiet_prefect(), results_in(layout.prefect):
        pool = WorkerPool(cfg)
        tokens = PROGRESS.set(progress), POOL.set(pool)
        try:
            return build_flow.with_options(task_runner=task_runner(cfg))(cfg, spec)
        finally:
            pool.close()
            PROGRESS.reset(tokens[0])
            POOL.reset(tokens[1])
