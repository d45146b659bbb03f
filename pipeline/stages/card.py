"""The dataset card (README.md) of a published tree, and its SHA256SUMS."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config
from pipeline.spec import Spec
from pipeline.stages.export import KEY_ENV, META_COLUMNS, REENCODE_REASONS, Exported, ExportOptions, tree_files
from pipeline.stages.merge import class_agreement, class_quorum
from pipeline.stages.views import derived_views

SUMS = "SHA256SUMS"
KNOWN_LIMITS = [
    "Merge and QA thresholds were calibrated on simulated crowds (`pipeline.simulate`), not on a study of real "
    "annotators.",
    "Face checks use OpenCV's Haar frontal-face detector: it misses profile, tilted and occluded faces, so face "
    "findings are approximate.",
    "Anatomy rules (left/right sides) assume unmirrored photos: a mirrored selfie is flagged as having its sides "
    "swapped, and photos carry no reliable mirroring flag.",
    "Masks are a weighted vote over crowd polygons (or a golden answer where one exists): thin parts (brows, teeth) "
    "carry more label noise than large regions.",
    "Near-duplicates are found by perceptual hash; heavily edited or cropped copies can be missed.",
    "Pseudonyms hide ids, not people: the photos show identifiable faces.",
    "No ICC profile is kept, so wide-gamut (e.g. Display P3) photos look slightly desaturated in colour-managed "
    "viewers; pixel values are as captured.",
]


@dataclass(frozen=True)
class Source:
    """Where photos come from, e.g. Source("crowd", "crowdsourced uploads", "...")."""

    name: str
    kind: str
    licence: str


@dataclass(frozen=True)
class CardFacts:
    """Everything the card states. ``source_counts`` is source name -> split -> photos; ``ledger`` is the build's
    accounting ledger (photos_in, photos_published, photos_rejected, photos_deduplicated, photos_held_back);
    ``findings`` has QA findings' check and severity columns."""

    spec: Spec
    splits: Sequence[str]
    exported: Sequence[Exported]
    options: ExportOptions
    sources: Sequence[Source]
    source_counts: Mapping[str, Mapping[str, int]]
    config_hash: str
    thresholds: Mapping[str, Any]
    findings: pd.DataFrame
    ledger: Mapping[str, int]
    throwaway_key: bool
    split_report: Mapping[str, Any] = field(default_factory=dict)


def photos_per_split(exported: Sequence[Exported]) -> dict[str, int]:
    """Published photos per split (the count table of a single source)."""
    return dict(sorted(Counter(e.split for e in exported).items()))


def source_counts(exported: Sequence[Exported], origin: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """Published photos per source and split; ``origin`` maps an image name to its source."""
    by: dict[str, list[Exported]] = {}
    for e in exported:
        by.setdefault(origin[e.name], []).append(e)
    return {name: photos_per_split(es) for name, es in sorted(by.items())}


def card_thresholds(cfg: Config, spec: Spec) -> dict[str, Any]:
    """The merge and QA thresholds a build used, per-class ones by class name; banned annotator ids are left out."""
    names = dict(enumerate(spec.names))
    merge = cfg.merge.model_dump(mode="json", exclude={"ban", "quorum", "class_agreement", "pin_skills"})
    merge["quorum"] = {names[i]: q for i, q in class_quorum(spec, cfg.merge.quorum).items()}
    merge["class_agreement"] = {names[i]: a for i, a in class_agreement(spec, cfg.merge.class_agreement).items()}
    return {"merge": merge, "banned_annotators": len(cfg.merge.ban), "qa": cfg.qa.model_dump(mode="json")}


def config_hash(config: Mapping[str, Any]) -> str:
    """The first 16 hex digits of sha256 over the canonical JSON of a config dump."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(str(v) for v in row) + " |" for row in rows)]


def _settings(values: Mapping[str, Any]) -> list[str]:
    """``- `section.key` = value`` lines, values as compact JSON."""
    flat = [(f"{k}.{sub}", v[sub]) for k, v in values.items() if isinstance(v, Mapping) for sub in v]
    flat += [(k, v) for k, v in values.items() if not isinstance(v, Mapping)]
    return [f"- `{k}` = {json.dumps(v, sort_keys=True, default=str)}" for k, v in sorted(flat)]


def _splits(f: CardFacts) -> list[str]:
    by = {s: [e for e in f.exported if e.split == s] for s in f.splits}
    rows = [[s, len(by[s]), len({e.user for e in by[s]})] for s in f.splits]
    rows.append(["all", len(f.exported), len({e.user for e in f.exported})])
    return ["## Splits", "", *_table(["split", "photos", "users"], rows), "",
            "Splits are user-disjoint: no user appears in more than one split, and users who uploaded near copies "
            "of one photo share a split.", "", *_split_quality(f.split_report)]


def _split_quality(r: Mapping[str, Any]) -> list[str]:
    """How close the splits came to their ratios and strata, and what the previous version pinned."""
    if not r:
        return []
    lines = [f"- Largest split ratio error: {r['max_ratio_error_pp']:.2f} percentage points of photos."]
    if r.get("worst_stratum"):
        column, value, split = r["worst_stratum"]
        lines.append(f"- Worst stratum: {column} = {value} in {split}, {r['worst_stratum_deviation_pp']:.2f} pp "
                     "from the split's ratio.")
    if r.get("pinned_photos"):
        lines.append(f"- {r['pinned_photos']} photos kept their split from the previous version; "
                     f"{r['moved_photos']} moved (only when their user groups merged); {r['new_groups']} new user "
                     "groups were assigned.")
    return [*lines, ""]


def _sources(f: CardFacts) -> list[str]:
    rows = []
    for s in f.sources:
        counts = f.source_counts.get(s.name, {})
        rows.append([s.name, s.kind, s.licence, *(counts.get(sp, 0) for sp in f.splits), sum(counts.values())])
    return ["## Sources", "", *_table(["source", "kind", "licence", *f.splits, "all"], rows, 3), ""]


def _classes(f: CardFacts) -> list[str]:
    spec = f.spec
    total = sum(sum(e.pixels) for e in f.exported) or 1
    rows = []
    for c in spec.classes:
        per_split = [sum(1 for e in f.exported if e.split == s and e.pixels[c.id]) for s in f.splits]
        share = sum(e.pixels[c.id] for e in f.exported) / total
        rows.append([c.id, c.name, list(c.color), *per_split, f"{share:.4f}"])
    lines = ["## Classes", "", "Photos containing each class per split, and the class's share of labelled pixels.",
             "", *_table(["id", "class", "colour", *(f"photos ({s})" for s in f.splits), "pixel share"], rows, 3)]
    ignored = sum(e.ignored for e in f.exported)
    every = ignored + sum(sum(e.pixels) for e in f.exported)
    lines += ["", f"Pixels with ignore_index {spec.ignore_index} (no class): {ignored} "
              f"({ignored / max(every, 1):.4f} of all pixels)."]
    flips = [f"{c.name} <-> {c.flip}" for c in spec.classes if c.flip and c.id < spec.by_name[c.flip].id]
    if flips:
        lines += ["", f"Left and right are the person's own. Mirroring an image must swap {', '.join(flips)}."]
    return [*lines, ""]


def _views(f: CardFacts) -> list[str]:
    views, notes = derived_views(f.spec)
    lines = ["## Derived views", "",
             "Extra annotation trees over the same `images/` (no image copies), like EasyPortrait v2's. Each has a "
             f"`classes.json`; ignore_index {f.spec.ignore_index} stays {f.spec.ignore_index}.", ""]
    for v in views:
        rows = [[i, n, ", ".join(src)] for i, (n, src) in enumerate(zip(v.classes, v.folded(f.spec), strict=True))]
        lines += [f"### `views/{v.name}/{{split}}/<image_name>.png`", "",
                  *_table(["id", "class", "from spec classes"], rows, 3), ""]
    return lines + [f"- {n}" for n in notes] + ([""] if notes else [])


def _privacy(f: CardFacts) -> list[str]:
    if f.throwaway_key:
        key = ("Image names and user ids are HMAC-SHA256 pseudonyms under a **throwaway key** drawn for this build "
               "only: they are not stable across builds and cannot be linked to any later build.")
    else:
        key = (f"Image names and user ids are HMAC-SHA256 pseudonyms under a secret key (from `{KEY_ENV}`), "
               "stable across builds made with the same key. Names are never derived from original filenames.")
    reasons = Counter(e.reencoded for e in f.exported if e.reencoded is not None)
    stripped = sum(e.reencoded is None for e in f.exported)
    rows = [[code, REENCODE_REASONS.get(code, code), n] for code, n in sorted(reasons.items())]
    lines = ["## Privacy", "", key, "",
             "Published images carry no EXIF, GPS, XMP, ICC profile, maker notes or comments. "
             f"{stripped} JPEGs were copied with their metadata segments removed and their coded pixels untouched "
             f"(lossless); {sum(reasons.values())} were decoded, turned upright and re-encoded at JPEG quality "
             f"{f.options.quality}:", ""]
    return lines + (_table(["reason", "meaning", "photos"], rows, 2) if rows else ["(none re-encoded)"]) + [""]


def _quality(f: CardFacts) -> list[str]:
    ledger = f.ledger
    lines = ["## Build and QA", "", f"Config hash: `{f.config_hash}` (sha256 of the canonical config JSON).", "",
             f"Photos in: {ledger.get('photos_in', 0)}; published: {ledger.get('photos_published', 0)}; "
             f"rejected: {ledger.get('photos_rejected', 0)}; removed as duplicates: "
             f"{ledger.get('photos_deduplicated', 0)}; held back for re-annotation or review: "
             f"{ledger.get('photos_held_back', 0)}.", "", "Thresholds used:", ""]
    lines += _settings(f.thresholds)
    counts = f.findings.groupby(["check", "severity"]).size() if len(f.findings) else pd.Series(dtype=int)
    rows = [[check, severity, int(n)] for (check, severity), n in sorted(counts.items())]
    lines += ["", "QA findings (they flag, they do not drop):", ""]
    return lines + (_table(["check", "severity", "findings"], rows, 2) if rows else ["No findings."]) + [""]


def _files(f: CardFacts) -> list[str]:
    lines = ["## Files", "", "- `images/{split}/<image_name>.jpg`",
             "- `annotations/{split}/<image_name>.png`: uint8 class ids, the image's size",
             "- `meta.csv`: " + ", ".join(META_COLUMNS),
             "- `coco/{split}.json`: COCO instances, one compressed-RLE annotation (iscrowd 1) per class present "
             "per image; category ids are the class ids; `file_name` is relative to this folder",
             "- `views/<view>/{split}/<image_name>.png` and `views/<view>/classes.json`"]
    if f.options.agreement_maps:
        lines.append("- `extras/agreement/{split}/<image_name>.png`: winning vote share per pixel x 255")
    if f.options.ignore_masks:
        lines.append(f"- `extras/ignore/{{split}}/<image_name>.png`: 255 where the mask has ignore_index "
                     f"{f.spec.ignore_index}, else 0")
    return [*lines, f"- `{SUMS}`: checksums of every other file; verify with `sha256sum -c {SUMS}`", ""]


def dataset_card(f: CardFacts) -> str:
    """The dataset's README.md."""
    spec = f.spec
    head = [f"# {spec.name} dataset (built by crowdseg)", "",
            f"Segmentation masks with {len(spec.classes)} classes (spec `{spec.name}` v{spec.version}), merged from "
            "several crowd annotators per photo. Masks are single-channel PNGs of class indices, the same size as "
            "the image; the layout loads with mmsegmentation's EasyPortrait dataset class.", ""]
    body = [*_splits(f), *_sources(f), *_classes(f), *_views(f), *_privacy(f), *_quality(f), *_files(f)]
    return "\n".join([*head, *body, "## Known limits", "", *(f"- {x}" for x in KNOWN_LIMITS), ""])


def sha256sums(root: Path, known: Mapping[str, str] | None = None) -> str:
    """Write ``root/SHA256SUMS`` over every other file (sorted relative POSIX paths, ``sha256sum -c`` format).

    ``known`` digests (by relative path) are trusted instead of reading those files again."""
    known = known or {}
    lines = []
    for rel in tree_files(root):
        if rel == SUMS:
            continue
        if "\n" in rel or "\\" in rel:
            raise ValueError(f"file name {rel!r} would need escaping in {SUMS}")
        if rel in known:
            lines.append(f"{known[rel]}  {rel}\n")
            continue
        with (root / rel).open("rb") as fh:
            lines.append(f"{hashlib.file_digest(fh, 'sha256').hexdigest()}  {rel}\n")
    text = "".join(lines)
    (root / SUMS).write_text(text, encoding="utf-8")
    return text
