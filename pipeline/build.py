"""Pure glue between stages: batching and the joins that turn one stage's tables into the next one's inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.config import Config
from pipeline.spec import Spec, load_spec
from pipeline.stages.merge import SPAM_AGREEMENT, MergeResult


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
    def masks(self) -> Path:
        return self.out / "work" / "masks"

    @property
    def index(self) -> Path:
        """The hash index a later build can check its uploads against (``dedup.index``)."""
        return self.out / "work" / "index.parquet"


def resolve_spec(cfg: Config) -> Spec:
    """The spec the config names: a bundled name, or a path relative to the config file."""
    ref = cfg.inputs.spec
    return load_spec(cfg.path(ref) if ref.endswith((".yaml", ".yml")) else ref)


def read_all_annotations(cfg: Config, spec: Spec, manifest: pd.DataFrame
                         ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The native annotations file plus every configured tool export, with image references resolved."""
    from pipeline.io.annotations import read_annotations
    from pipeline.io.sources import read_source, resolve_photos

    parts = [read_annotations(cfg.path(cfg.inputs.annotations), spec, cfg.inputs.label_map)]
    for i, src in enumerate(cfg.inputs.sources, start=1):
        a, s, r = read_source(cfg.path(src.path), src.format, spec, {**cfg.inputs.label_map, **src.label_map},
                              src.annotator)
        a, s, unresolved = resolve_photos(a, s, manifest)
        a["assignment"], s["assignment"] = f"source{i}/" + a["assignment"], f"source{i}/" + s["assignment"]
        parts.append((a, s, pd.concat([r, unresolved], ignore_index=True)))
    return tuple(pd.concat([p[k] for p in parts], ignore_index=True) for k in range(3))  # type: ignore[return-value]


def batches(df: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    """Consecutive row batches of at most ``size`` rows (none for an empty table)."""
    return [df.iloc[i: i + size] for i in range(0, len(df), size)]


def kept_photos(photos: pd.DataFrame, duplicates: pd.DataFrame) -> pd.DataFrame:
    """Photos that survive dedup, sorted by id."""
    from pipeline.stages.dedup import dropped_ids

    return photos[~photos["photo_id"].isin(dropped_ids(duplicates))].sort_values("photo_id", ignore_index=True)


def published_table(photos: pd.DataFrame, merged: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """One row per published photo: ingest signals, merge results and split."""
    cols = ["photo_id", "user_id", "path", "width", "height", "brightness", "sharpness", "faces", "face_w", "thumb"]
    return (photos[cols].merge(merged, on="photo_id").merge(splits[["photo_id", "split"]], on="photo_id")
            .sort_values("photo_id", ignore_index=True))


def split_summary(published: pd.DataFrame, ratios: dict[str, float]) -> dict[str, dict[str, float]]:
    """Photos, users and achieved vs target ratio per split."""
    n = max(len(published), 1)
    return {s: {"photos": int((published["split"] == s).sum()),
                "users": int(published.loc[published["split"] == s, "user_id"].nunique()),
                "target": r, "actual": round(float((published["split"] == s).sum()) / n, 4)}
            for s, r in ratios.items()}


def class_summary(published: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """Per class: photos containing it and its share of all pixels."""
    total = sum(int(published[f"px_{c.name}"].sum()) for c in spec.classes) or 1
    return pd.DataFrame([{"id": c.id, "class": c.name, "photos": int((published[f"px_{c.name}"] > 0).sum()),
                          "pixel_share": round(float(published[f"px_{c.name}"].sum()) / total, 5)}
                         for c in spec.classes])


def merge_jobs(photos: pd.DataFrame, assignments: pd.DataFrame, shapes: pd.DataFrame, size: int
               ) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """Per batch of photos: the photos, their assignments and those assignments' shapes."""
    jobs = []
    for batch in batches(photos, size):
        ids = set(batch["photo_id"])
        a = assignments[assignments["photo_id"].isin(ids)]
        jobs.append((batch, a, shapes[shapes["assignment"].isin(set(a["assignment"]))]))
    return jobs


def combine(parts: list[MergeResult], spec: Spec) -> MergeResult:
    """One MergeResult from the batches' results (with every declared column, even when there are none)."""
    empty = MergeResult.of(spec, [], [], [], [], [], [])
    names = ("photos", "assignments", "scores", "classes", "rejections", "repairs")
    return MergeResult(*(pd.concat([getattr(empty, n)] + [getattr(p, n) for p in parts if len(getattr(p, n))],
                                   ignore_index=True) for n in names))


SWAPPER_RATE = 0.3  # share of an annotator's photos with left and right swapped that marks a habit


def annotator_table(m: MergeResult, skills: pd.DataFrame, rejections: pd.DataFrame, spec: Spec,
                    min_agreement: float, ban: list[str]) -> pd.DataFrame:
    """Per annotator: photos, agreement, pooled per-class skill, swaps, spam score, repairs, rejections, status."""
    crowd = m.assignments[~m.assignments["golden"].astype(bool)]
    if crowd.empty:
        return pd.DataFrame(columns=["annotator_id", "photos", "agreement", "mean_iou", "swaps", "excluded",
                                     "spam_score", "shapes_repaired", "shapes_rejected", "status"])
    table = crowd.groupby("annotator_id").agg(
        photos=("photo_id", "nunique"), agreement=("agreement", "mean"), mean_iou=("mean_iou", "mean"),
        swaps=("swapped", "sum"), excluded=("excluded", lambda e: int((e != "").sum())),
        spam_score=("agreement", lambda a: float((a.fillna(1.0) < SPAM_AGREEMENT).mean())))
    if len(skills):
        wide = skills.assign(name=skills["class_id"].map(lambda c: f"skill_{spec.classes[c].name}")).pivot(
            index="annotator_id", columns="name", values="skill")
        table = table.join(wide[[f"skill_{c.name}" for c in spec.classes[1:] if f"skill_{c.name}" in wide]])
    table["shapes_repaired"] = m.repairs.groupby("annotator_id").size().reindex(table.index, fill_value=0)
    shapes_rejected = rejections[rejections["item"] == "shape"].groupby("annotator_id").size()
    table["shapes_rejected"] = shapes_rejected.reindex(table.index, fill_value=0)
    table["status"] = [annotator_status(a, r, min_agreement, ban) for a, r in table.iterrows()]
    return table.round(4).reset_index().sort_values("annotator_id", ignore_index=True)


def annotator_status(annotator: str, row: pd.Series, min_agreement: float, ban: list[str]) -> str:
    """banned, spammer, swapper, low_agreement or ok."""
    if annotator in ban:
        return "banned"
    if row["spam_score"] >= 0.5:
        return "spammer"
    if row["swaps"] >= max(1.0, SWAPPER_RATE * row["photos"]):
        return "swapper"
    return "low_agreement" if row["agreement"] < min_agreement else "ok"


def reannotation_queue(agreement: pd.DataFrame, paths: dict[str, str]) -> list[dict[str, object]]:
    """Photos that need re-annotation, as crowd tasks: the image, the classes in dispute and why."""
    if agreement.empty:
        return []
    need = agreement[agreement["status"] == "needs_reannotation"].sort_values("photo_id")
    tasks = []
    for p in need.itertuples():
        reasons = p.reasons.split(";")
        disputed = [c for r in reasons if r.startswith("disputed:") for c in r.removeprefix("disputed:").split(",")]
        tasks.append({"photo_id": p.photo_id, "image": paths.get(p.photo_id, ""), "classes": disputed or "all",
                      "reasons": reasons})
    return tasks


def write_jsonl(rows: list[dict[str, object]], path: Path) -> None:
    """One JSON object per line, keys sorted."""
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


JSON_TABLES = ("duplicates", "rejected_photos", "findings")
"""Tables also written as JSON records, for tools that do not read CSV."""


def records(df: pd.DataFrame) -> list[dict[str, object]]:
    """Table rows as JSON-ready dicts (missing values become null)."""
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in df.to_dict("records")]


def report_tables(rejections: pd.DataFrame, duplicates: pd.DataFrame, m: MergeResult, skills: pd.DataFrame,
                  annotators: pd.DataFrame, findings: pd.DataFrame, classes: pd.DataFrame, published: pd.DataFrame,
                  cfg: Config) -> dict[str, pd.DataFrame]:
    """The tables written under ``reports/``; ``photo_map`` is private and never published."""
    from pipeline.stages.export import image_name

    photo_map = published[["photo_id", "user_id", "split"]].assign(
        image_name=[image_name(p, cfg.export.name_salt) for p in published["photo_id"]])
    rejections = rejections.sort_values(["stage", "item", "file", "row", "photo_id"], ignore_index=True)
    agreement = m.photos.drop(columns=["mask_path", "agreement_path"]).sort_values("photo_id", ignore_index=True)
    return {
        "rejections": rejections,
        "rejected_photos": rejections[rejections["item"] == "photo"].reset_index(drop=True),
        "duplicates": duplicates,
        "agreement": agreement,
        "class_agreement": m.classes.sort_values(["photo_id", "class"], ignore_index=True),
        "assignments": m.assignments.sort_values(["photo_id", "assignment"], ignore_index=True),
        "annotators": annotators,
        "skills": skills,
        "repairs": m.repairs.sort_values(["assignment", "index", "repair"], ignore_index=True),
        "findings": findings,
        "classes": classes,
        "photo_map": photo_map[["photo_id", "image_name", "user_id", "split"]],
    }


def summary(spec: Spec, cfg: Config, ledger: dict[str, int], published: pd.DataFrame,
            findings: pd.DataFrame) -> dict[str, object]:
    """The machine-readable QA summary (``reports/qa.json``)."""
    return {
        "spec": spec.name, "ledger": ledger, "splits": split_summary(published, cfg.split.ratios),
        "findings": {f"{lv}/{ck}": int(n) for (lv, ck), n in findings.groupby(["level", "check"]).size().items()},
        "config": cfg.model_dump(),
    }


def refused_ids(manifest_rejected: pd.DataFrame, ingest_rejected: pd.DataFrame, manifest: pd.DataFrame) -> set[str]:
    """Photo ids refused at ingest: failed photos, and manifest rows rejected under an id no valid row has."""
    photo_rows = manifest_rejected[manifest_rejected["item"] == "photo"]
    return set(ingest_rejected["photo_id"]) | (set(photo_rows["photo_id"]) - set(manifest["photo_id"]) - {""})


def load_index(cfg: Config) -> pd.DataFrame | None:
    """The earlier build's hash index named by ``dedup.index``, if any."""
    from pipeline.errors import CrowdsegError
    from pipeline.stages.dedup import INDEX_COLUMNS

    if not cfg.dedup.index:
        return None
    path = cfg.path(cfg.dedup.index)
    try:
        index = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise CrowdsegError(f"dedup.index: cannot read the hash index: {e}", file=str(path)) from None
    missing = sorted(set(INDEX_COLUMNS) - set(index.columns))
    if missing:
        raise CrowdsegError(f"dedup.index: not a crowdseg hash index (missing {', '.join(missing)})", file=str(path))
    return index.astype({"photo_id": str, "user_id": str, "submitted_at": str})


def preflight(cfg: Config) -> Spec:
    """Check everything a user can get wrong before the flow starts, so such errors come out as one line.

    Row-level problems are not errors: they become rejections during the build.
    """
    from pipeline.errors import CrowdsegError
    from pipeline.io.manifest import read_manifest, read_text
    from pipeline.io.sources import detect_format
    from pipeline.stages.merge import class_agreement, class_quorum

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
    read_manifest(cfg.path(cfg.inputs.photos))
    read_text(cfg.path(cfg.inputs.annotations))
    for i, src in enumerate(cfg.inputs.sources):
        if not cfg.path(src.path).exists():
            raise CrowdsegError(f"inputs.sources[{i}].path: no such file or folder: {src.path}", file=cfg.source)
        if src.format == "auto":
            detect_format(cfg.path(src.path))
    load_index(cfg)
    return spec
