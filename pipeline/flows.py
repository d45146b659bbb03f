"""Prefect flows and tasks: wiring, batching and task runners. No logic of its own lives here."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.settings import temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from pipeline import build as b
from pipeline.config import Config
from pipeline.io.manifest import read_manifest
from pipeline.report.gallery import Thumb, flagged_photos, gallery_thumbs
from pipeline.report.html import render_report
from pipeline.report.markdown import summary_markdown
from pipeline.report.write import write_csv, write_json
from pipeline.spec import Spec
from pipeline.stages import accounting, card, dedup, export, ingest, merge, qa, review, skill, split
from pipeline.tables import DUPLICATE_COLUMNS, REJECTION_COLUMNS, concat

STAGE = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="read-inputs", **STAGE)
def read_inputs(cfg: Config, spec: Spec) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    manifest, rejected = read_manifest(cfg.path(cfg.inputs.photos))
    assignments, shapes, ann_rejected = b.read_all_annotations(cfg, spec, manifest)
    get_run_logger().info("read %d photos (%d rows rejected), %d assignments, %d shapes (%d rejected)",
                          len(manifest), len(rejected), len(assignments), len(shapes), len(ann_rejected))
    return manifest, assignments, shapes, concat([rejected, ann_rejected], REJECTION_COLUMNS)


@task(name="ingest-batch", **STAGE)
def ingest_batch(batch: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    photos, rejected = ingest.ingest(batch, cfg.ingest)
    get_run_logger().info("ingested %d photos, rejected %d", len(photos), len(rejected))
    return photos, rejected


@task(name="dedup", **STAGE)
def dedup_photos(photos: pd.DataFrame, cfg: Config, layout: b.Layout) -> pd.DataFrame:
    previous = b.load_index(cfg)
    found = dedup.find_duplicates(photos, cfg.dedup, previous)
    dedup.index_table(photos, found, previous).to_parquet(layout.index, index=False)
    get_run_logger().info("%d duplicate clusters, %d photos dropped", found["cluster"].nunique(),
                          int((found["action"] == "drop").sum()))
    return found


@task(name="score-batch", **STAGE)
def score_batch(photos: pd.DataFrame, assignments: pd.DataFrame, shapes: pd.DataFrame, spec: Spec, cfg: Config,
                weights: dict[tuple[str, int], float]) -> pd.DataFrame:
    return merge.merge_batch(photos, assignments, shapes, spec, cfg.merge, weights, None).scores


@task(name="skills", **STAGE)
def estimate_skills(scores: pd.DataFrame, cfg: Config) -> skill.PooledSkill:
    model = skill.PooledSkill(cfg.merge.skill_prior_photos, cfg.merge.gold_weight).fit(scores)
    get_run_logger().info("skills of %d annotators", model.skills_["annotator_id"].nunique())
    return model


@task(name="merge-batch", **STAGE)
def merge_batch(photos: pd.DataFrame, assignments: pd.DataFrame, shapes: pd.DataFrame, spec: Spec,
                cfg: Config, weights: dict[tuple[str, int], float], layout: b.Layout) -> merge.MergeResult:
    result = merge.merge_batch(photos, assignments, shapes, spec, cfg.merge, weights, layout.masks)
    get_run_logger().info("merged %d photos", len(result.photos))
    return result


@task(name="qa", **STAGE)
def run_qa(inputs: qa.QAInputs) -> pd.DataFrame:
    findings = qa.run_checks(inputs)
    get_run_logger().info("%d findings", len(findings))
    return findings


@task(name="split", **STAGE)
def split_photos(photos: pd.DataFrame, strata: list[str], links: list[tuple[str, str]], cfg: Config,
                 layout: b.Layout) -> tuple[pd.DataFrame, split.SplitReport]:
    splits, report = split.assign_splits(photos, cfg.split.ratios, cfg.split.seed, links, strata,
                                         b.previous_splits(cfg))
    write_csv(splits, layout.splits)
    get_run_logger().info("split %d photos: ratio error %.2f pp, worst stratum %.2f pp, %d pinned, %d moved",
                          len(splits), report.max_ratio_error_pp, report.worst_stratum_deviation_pp,
                          report.pinned_photos, report.moved_photos)
    return splits, report


@task(name="export-batch", **STAGE)
def export_batch(published: pd.DataFrame, spec: Spec, cfg: Config, layout: b.Layout, key: bytes
                 ) -> list[export.Exported]:
    return export.export_photos(published, layout.staging, spec, key, export.ExportOptions.from_config(cfg))


@task(name="publish", **STAGE)
def publish(published: pd.DataFrame, exported: list[export.Exported], findings: pd.DataFrame, ledger: dict[str, int],
            split_report: dict[str, Any], spec: Spec, cfg: Config, layout: b.Layout, key: bytes, throwaway: bool
            ) -> pd.DataFrame:
    root, splits = layout.staging, list(cfg.split.ratios)
    write_csv(export.meta_table(published, key), root / "meta.csv")
    for s in splits:
        export.write_coco(root, s, spec, exported)
    export.write_view_classes(root, spec)
    facts = card.CardFacts(
        spec=spec, splits=splits, exported=exported, options=export.ExportOptions.from_config(cfg),
        sources=[card.Source("crowd", "crowdsourced uploads", "unspecified")],
        source_counts={"crowd": card.photos_per_split(exported)},
        config_hash=card.config_hash(b.outcome_settings(cfg)),
        thresholds=card.card_thresholds(cfg, spec), findings=findings, ledger=ledger, throwaway_key=throwaway,
        split_report=split_report)
    (root / "README.md").write_text(card.dataset_card(facts), encoding="utf-8")
    card.sha256sums(root)
    export.publish(root, layout.dataset)
    return b.class_summary(published, spec)


@task(name="thumbnails", **STAGE)
def make_thumbnails(ids: list[str], reviewed: pd.DataFrame, assignments: pd.DataFrame, shapes: pd.DataFrame,
                    outcome: pd.DataFrame, spec: Spec, cfg: Config, layout: b.Layout) -> dict[str, list[Thumb]]:
    """Report thumbnails of flagged photos: made once per content, then read from the cache."""
    layout.thumbs.mkdir(parents=True, exist_ok=True)
    rows = reviewed.set_index("photo_id", drop=False)
    mine = assignments[assignments["photo_id"].isin(ids)]
    own = {k: g for k, g in mine.groupby("photo_id")}
    drawn = shapes[shapes["assignment"].isin(set(mine["assignment"]))]
    used = {k: g for k, g in outcome[outcome["photo_id"].isin(ids)].groupby("photo_id")}
    out = {}
    for pid in ids:
        photo = rows.loc[pid]
        key, masks = b.gallery_job(photo, photo["mask_path"], own.get(pid, mine.iloc[:0]), drawn,
                                   used.get(pid, outcome.iloc[:0]), spec, cfg.merge.min_shape_area_px)
        out[pid] = gallery_thumbs(photo["path"], photo["mask_path"], masks, spec, layout.thumbs, key)
    return out


@task(name="report", **STAGE)
def write_reports(summary: dict[str, Any], tables: dict[str, pd.DataFrame], paths: dict[str, str],
                  gallery: dict[str, list[Thumb]], layout: b.Layout) -> str:
    for name, df in tables.items():
        write_csv(df, layout.reports / f"{name}.csv")
    b.write_jsonl(b.reannotation_queue(tables["rejections"], tables["agreement"], paths),
                  layout.reports / "reannotation.jsonl")
    for name in b.JSON_TABLES:
        write_json(b.records(tables[name]), layout.reports / f"{name}.json")
    write_json(summary, layout.reports / "qa.json")
    markdown = summary_markdown(summary, tables["findings"])
    (layout.reports / "summary.md").write_text(markdown, encoding="utf-8")
    create_markdown_artifact(markdown, key="crowdseg-summary", description="build summary")
    create_table_artifact(b.records(tables["findings"].head(1000)), key="crowdseg-findings",
                          description="QA findings (first 1,000)")
    html = render_report(summary, tables, paths, gallery)
    path = layout.reports / "qa.html"
    path.write_text(html, encoding="utf-8")
    return str(path)


@flow(name="crowdseg-build", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2),
      log_prints=False, validate_parameters=False)
def build_flow(cfg: Config, spec: Spec) -> dict[str, Any]:
    """ingest -> dedup -> merge -> qa -> split -> export -> report, batched over photos."""
    layout = b.Layout(cfg.path(cfg.output.out))
    for d in (layout.masks, layout.reports):
        d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(layout.staging, ignore_errors=True)
    size = cfg.build.batch_size
    key, throwaway = export.pseudonym_key(os.environ, cfg.export.throwaway_key)
    clock = b.Stopwatch()

    manifest, assignments, shapes, rejected = read_inputs(cfg, spec)
    clock.lap("read inputs")
    ingested = ingest_batch.map(b.batches(manifest, size), unmapped(cfg)).result()
    photos = concat([p for p, _ in ingested], list(ingested[0][0].columns) if ingested else [])
    ingest_rejected = concat([r for _, r in ingested], REJECTION_COLUMNS)
    clock.lap("ingest")
    duplicates = dedup_photos(photos, cfg, layout) if len(photos) else concat([], DUPLICATE_COLUMNS)
    clock.lap("dedup")

    kept = b.kept_photos(photos, duplicates)
    to_merge, orphans = accounting.route_orphans(
        assignments, set(manifest["photo_id"]), b.refused_ids(rejected, ingest_rejected, manifest),
        dedup.dropped_ids(duplicates))
    to_merge, repeated = merge.one_per_annotator(to_merge)
    jobs = b.merge_jobs(kept, to_merge, shapes, size)
    columns = [[j[k] for j in jobs] for k in range(3)]
    weights: dict[tuple[str, int], float] = {}
    for _ in range(cfg.merge.em_iterations if jobs else 0):
        scores = score_batch.map(*columns, unmapped(spec), unmapped(cfg), unmapped(weights)).result()
        weights = estimate_skills(pd.concat(scores, ignore_index=True), cfg).weights()
    m = b.combine(merge_batch.map(*columns, unmapped(spec), unmapped(cfg), unmapped(weights),
                                  unmapped(layout)).result(), spec)
    skills = estimate_skills(m.scores, cfg).skills_
    held = merge.held_back(kept, to_merge, m.photos, cfg.merge.hold_disputed)
    held, decisions = review.apply_decisions(b.decisions(cfg), m.photos, held, kept, to_merge)
    merged = m.photos[~m.photos["photo_id"].isin(held["photo_id"])]
    rejections = concat([rejected, ingest_rejected, orphans, repeated, m.rejections, held], REJECTION_COLUMNS)
    clock.lap("merge")

    links = dedup.user_links(duplicates, cfg.dedup.cross_user_policy)
    splits, split_report = split_photos(*b.split_strata(kept, merged, spec, cfg.split), links, cfg, layout)
    reviewed = b.published_table(kept, m.photos, splits)
    published = b.in_dataset(reviewed)
    clock.lap("split")
    annotators = b.annotator_table(m, skills, rejections, spec, cfg.merge.min_agreement, cfg.merge.ban)
    findings = run_qa.submit(qa.QAInputs(reviewed, m.assignments, m.classes, m.repairs, annotators, duplicates,
                                         spec, cfg.qa, cfg.split.ratios))
    ledger = accounting.balance(len(manifest) + int((rejected["item"] == "photo").sum()),
                                len(assignments) + int((rejected["item"] == "assignment").sum()),
                                published, int(m.assignments["photo_id"].isin(published["photo_id"]).sum()),
                                rejections, duplicates)  # before publishing: a build that lost an input stops here
    parts = export_batch.map(b.batches(published, size), unmapped(spec), unmapped(cfg), unmapped(layout),
                             unmapped(key)).result()
    findings = findings.result()
    classes = publish(published, [e for part in parts for e in part], findings, ledger, split_report.as_dict(), spec,
                      cfg, layout, key, throwaway)
    clock.lap("qa, export and publish")
    flagged = b.batches(pd.DataFrame({"photo_id": flagged_photos(findings, cfg.qa.gallery_limit)}), size)
    thumbs = make_thumbnails.map([f["photo_id"].tolist() for f in flagged], unmapped(reviewed), unmapped(to_merge),
                                 unmapped(shapes), unmapped(m.assignments), unmapped(spec), unmapped(cfg),
                                 unmapped(layout)).result()
    clock.lap("thumbnails")
    summary = b.summary(spec, cfg, ledger, published, findings, decisions, b.build_id(cfg, photos, assignments),
                        split_report.as_dict())
    tables = b.report_tables(rejections, duplicates, m, skills, annotators, findings, classes, published, decisions,
                             spec, cfg, key)
    paths = dict(zip(photos["photo_id"], photos["path"], strict=True))
    gallery = {k: v for part in thumbs for k, v in part.items()}
    report = write_reports(summary, tables, paths, gallery, layout)
    clock.lap("report")
    write_csv(clock.table(), layout.reports / "timings.csv")
    return {"report": report, "dataset": str(layout.dataset), "timings": clock.laps, **ledger}


@contextmanager
def quiet_prefect() -> Iterator[None]:
    """Turn off the flow heartbeat, which otherwise holds every sync flow ~1 s at its end."""
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


def task_runner(cfg: Config) -> TaskRunner:
    """The task runner ``build.runner`` names; every runner gives byte-identical outputs."""
    workers = cfg.build.workers or os.cpu_count() or 2
    if cfg.build.runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if cfg.build.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.build.dask_address:
            return DaskTaskRunner(address=cfg.build.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=workers)


def run_build(cfg: Config, spec: Spec) -> dict[str, Any]:
    """Run the build flow on the embedded local server (or the server PREFECT_API_URL names)."""
    with b.build_lock(b.Layout(cfg.path(cfg.output.out)).out), quiet_prefect():
        return build_flow.with_options(task_runner=task_runner(cfg))(cfg, spec)
