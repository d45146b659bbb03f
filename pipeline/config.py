"""The build config: every threshold with its documented default, loaded from TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from pipeline.errors import CrowdsegError
from pipeline.spec import validation_reason


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SourceConfig(Section):
    """One more annotation file, in any supported tool's export format."""

    path: str = Field(description="the export file (or folder, for LabelMe)")
    format: Literal["auto", "jsonl", "cvat", "coco", "labelme", "label_studio", "toloka"] = Field(
        "auto", description="export format; auto detects it from the content")
    annotator: str = Field("", description="annotator id for formats that do not record one (CVAT, COCO, LabelMe)")
    label_map: dict[str, str] = Field(default_factory=dict, description="source label -> spec class name")


class CropConfig(Section):
    """SINet-style portrait crops made from a person-segmentation source (a dataset of kind "derived")."""

    face_width_share: float = Field(0.3, gt=0, le=1, description="the face's width as a share of the crop's width "
                                    "(head and shoulders at 0.3)")
    aspect: float = Field(4 / 3, gt=0, description="crop height / width (EG1800's 600x800 is 4/3)")
    face_center_y: float = Field(0.4, gt=0, lt=1, description="the face's centre sits this share of the crop's "
                                 "height below its top")
    min_face_px: int = Field(24, ge=1, description="faces narrower than this are rejected (face_too_small)")
    compete_share: float = Field(0.5, gt=0, le=1, description="another face at least this share of the face's "
                                 "width inside the crop rejects it (several_faces)")
    min_person_share: float = Field(0.3, ge=0, le=1, description="share of the face box the person mask must cover "
                                    "(else face_not_on_person)")
    jitter: int = Field(0, ge=0, le=16, description="extra crops per face, each shifted and scaled at random "
                        "(seeded by the image, so builds repeat)")
    jitter_scale: float = Field(0.1, ge=0, lt=1, description="largest relative change of an extra crop's size")
    jitter_shift: float = Field(0.05, ge=0, lt=1, description="largest shift of an extra crop, as a share of its "
                                "size")


class DatasetConfig(Section):
    """A labelled dataset from elsewhere, imported as a source of samples with one trusted mask each."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="short source name, e.g. eg1800 (photo ids "
                      "become <name>/<file stem>)")
    kind: Literal["external", "derived"] = Field(description="external: samples used as they are; derived: "
                                                 "SINet-style portrait crops made from them (see crop)")
    layout: Literal["eg1800", "easyportrait", "folders", "labelme"] = Field(
        description="eg1800: images_data_crop/ + GT_png/*_mask.png + train.txt/val.txt; easyportrait: "
        "images/<split>/ + annotations/<split>/ (+ meta.csv); folders: images/ + masks/ of the same stems; "
        "labelme: LabelMe JSON files with their images (polygons rasterised)")
    path: str = Field(description="the dataset's folder (relative to the config file)")
    licence: str = Field(min_length=1, description="licence of the samples, shown on the dataset card")
    splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1,
                              description="splits its samples may go to (default train only, so val and test "
                              "stay crowd-only and comparable across versions)")
    class_map: dict[str, str] = Field(default_factory=dict, description="mask value (or LabelMe label) -> spec "
                                      "class name; defaults: eg1800 {0: background, 255: person}, easyportrait "
                                      "value = class id, labelme {person: person}")
    crop: CropConfig = Field(default_factory=CropConfig)


class InputsConfig(Section):
    """Where the raw material is. Relative paths are relative to the config file."""

    photos: str = Field("photos.csv", description="photos manifest: CSV, JSONL or Parquet")
    annotations: str = Field("annotations.jsonl", description="annotations, native JSONL (one line per assignment)")
    spec: str = Field("easyportrait", description="annotation spec: a bundled name or a YAML path")
    label_map: dict[str, str] = Field(default_factory=dict, description="source label -> spec class name")
    sources: list[SourceConfig] = Field(default_factory=list, description="more annotation files from other tools")
    datasets: list[DatasetConfig] = Field(default_factory=list, description="labelled datasets from elsewhere "
                                          "(external samples, or derived portrait crops)")


class OutputConfig(Section):
    """Where the build writes."""

    out: str = Field("build", description="build folder: dataset/, reports/ and work/ go under it")


class IngestConfig(Section):
    """Checks on every uploaded photo."""

    min_side: int = Field(64, ge=1, description="photos whose shorter side is smaller are rejected")
    max_pixels: int = Field(100_000_000, ge=1, description="decompression-bomb guard: larger photos are rejected")
    formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "HEIF"],
                               description="accepted formats, sniffed from the content (MPO counts as JPEG)")
    detect_faces: bool = Field(True, description="run the offline face detector (OpenCV Haar cascade) on photos "
                               "whose merged mask has no face")


class DedupConfig(Section):
    """Duplicate detection: exact copies by bytes or pixels, near copies by mirror-aware 64-bit pHash."""

    within_user_distance: int = Field(14, ge=0, le=32, description="max pHash Hamming distance of near duplicates "
                                      "uploaded by one user")
    cross_user_distance: int = Field(10, ge=0, le=32, description="max pHash Hamming distance of near duplicates "
                                     "uploaded by different users")
    min_color_correlation: float = Field(
        0.9, ge=-1, le=1, description="a pHash candidate is confirmed when the photos' 8x8 colour thumbnails "
        "correlate at least this much (brightness-invariant; -1 confirms every candidate)")
    mirror: bool = Field(True, description="also compare against the mirrored photo's hash (selfie cameras mirror)")
    cross_user_policy: Literal["group", "flag", "drop"] = Field(
        "group", description="near duplicates across users: 'group' keeps both and puts the users in one split, "
        "'flag' keeps both and reports them, 'drop' keeps the best copy only")
    cross_source_policy: Literal["drop", "flag"] = Field(
        "drop", description="a crowd photo that copies an external or derived sample: 'drop' it (the sample is "
        "kept), or 'flag' it (both kept and reported; the copy may then sit in val or test)")
    index: str = Field("", description="hash index of an earlier build (its work/index.parquet): new uploads are "
                       "checked against it without re-hashing the old photos")


class MergeConfig(Section):
    """Fusing several annotators' polygons into one mask per photo."""

    quorum: dict[str, float] = Field(
        default_factory=dict, description="per-class weighted share of annotators that must draw a pixel; "
        "overrides the spec")
    class_agreement: dict[str, float] = Field(
        default_factory=dict, description="per-class agreement below which a photo needs re-annotation; "
        "overrides the spec")
    min_agreement: float = Field(0.5, ge=0, le=1, description="on a photo, an assignment whose mean IoU with the "
                                 "other annotators' consensus is lower is left out of the vote")
    min_annotators: int = Field(2, ge=1, description="a photo needs this many crowd assignments left after "
                                "exclusions (or a golden answer), else it needs re-annotation")
    swaps: Literal["fix", "exclude"] = Field("fix", description="an assignment with left and right swapped is "
                                             "swapped back ('fix') or left out ('exclude')")
    swap_margin: float = Field(0.3, ge=0, description="how much better (summed IoU over left/right pairs) the "
                               "swapped reading must agree before an assignment counts as swapped")
    em_iterations: int = Field(1, ge=0, le=10, description="skill-estimation passes before the final vote "
                               "(0: every annotator weighs the same)")
    skill_prior_photos: float = Field(2.0, ge=0, description="pseudo-photos of population-average skill mixed "
                                      "into each annotator's estimate")
    gold_weight: float = Field(3.0, gt=0, description="how much more a score against a golden answer counts")
    ban: list[str] = Field(default_factory=list, description="annotator ids whose work is never used")
    ignore_below: float = Field(0.0, ge=0, le=1, description="pixels whose winning vote share is lower get the "
                                "spec's ignore_index in the published mask (0: off)")
    hold_disputed: bool = Field(True, description="photos that need re-annotation are held back from the dataset")
    min_shape_area_px: float = Field(2.0, ge=0, description="shapes smaller than this after repair are dropped")
    use_golden: bool = Field(True, description="a golden (expert) assignment, when present, is the photo's mask")
    pin_skills: str = Field("", description="vote weights from an earlier build (its work/weights.csv): the "
                            "annotators listed keep those weights, so a rebuild with new uploads leaves earlier "
                            "photos' masks unchanged and merges only the new ones; empty: estimate every weight")

    @field_validator("quorum", "class_agreement")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        for k, q in v.items():
            if not 0 <= q <= 1:
                raise ValueError(f"the value for {k!r} must be in [0, 1], got {q}")
        return v


class QAConfig(Section):
    """Thresholds of the QA checks; findings flag, they do not drop."""

    min_side: int = Field(512, ge=1, description="flag photos whose shorter side is smaller")
    min_sharpness: float = Field(20.0, ge=0, description="flag photos whose Laplacian variance (at 640 px) is lower")
    dark_below: float = Field(0.2, ge=0, le=1, description="flag photos whose mean brightness is lower")
    bright_above: float = Field(0.85, ge=0, le=1, description="flag photos whose mean brightness is higher")
    face_checks: bool = Field(True, description="flag photos with no detected face, or a face too small")
    min_face_share: float = Field(0.15, ge=0, le=1, description="flag faces narrower than this share of the "
                                  "photo's shorter side")
    grey_below: float = Field(3.0, ge=0, description="flag photos whose colour spread is lower (greyscale)")
    min_annotators_per_photo: int = Field(3, ge=1, description="flag photos merged from fewer assignments")
    min_annotator_agreement: float = Field(0.7, ge=0, le=1, description="flag annotators whose mean agreement is "
                                           "lower and also far below their peers")
    peer_gap: float = Field(0.15, ge=0, le=1, description="how far below the peer median an annotator must be")
    max_ratio_error: float = Field(0.01, ge=0, le=1, description="flag splits further than this from their ratio")
    max_presence_gap: float = Field(0.1, ge=0, le=1, description="flag a class whose share of photos in a split "
                                    "differs more from its share overall")
    max_miss_rate: float = Field(0.25, ge=0, le=1, description="flag annotators who leave out a class the merged "
                                 "mask has on more than this share of such photos (and far more than their peers)")
    gallery_limit: int = Field(400, ge=0, description="at most this many flagged photos get thumbnails in the report")


class SplitConfig(Section):
    """User-disjoint splits."""

    ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2},
                                     description="share of photos per split; groups of users never straddle splits")
    seed: str = Field("crowdseg", description="key of the hash that orders groups")
    stratify: list[Literal["classes", "brightness", "orientation"]] = Field(
        default_factory=lambda: ["classes", "brightness", "orientation"],
        description="what each split should hold in proportion: 'classes' (presence of every class that is neither "
        "rare nor everywhere: teeth, brows, ...), 'brightness' (four buckets), 'orientation' (portrait/landscape)")
    attributes: list[str] = Field(default_factory=list, description="manifest attributes (extra columns) to "
                                  "stratify on too, e.g. device")
    previous: str = Field("", description="an earlier build's work/splits.csv: its photos keep their split and only "
                          "new user groups are assigned (empty: assign all)")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(r < 0 for r in v.values()) or abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(f"ratios must be non-negative and sum to 1, got {v}")
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"split name {name!r} must be a plain identifier")
        return v


class ExportConfig(Section):
    """The published dataset."""

    throwaway_key: bool = Field(False, description="without CROWDSEG_PSEUDONYM_KEY in the environment, pseudonymise "
                                "with a random one-off key (names then change every build) instead of stopping")
    agreement_maps: bool = Field(False, description="also publish per-pixel agreement maps under extras/agreement/")
    ignore_masks: bool = Field(False, description="also publish ignore-label masks under extras/ignore/")
    jpeg_quality: int = Field(95, ge=50, le=100, description="quality of published JPEGs")


class ReviewConfig(Section):
    """Reviewers' decisions from an earlier QA report, applied by the next build."""

    decisions: str = Field("", description="decisions file downloaded from the QA report (CSV: photo_id, decision, "
                           "note; decision is accept, reject or reannotate); empty: none")


class BuildConfig(Section):
    """How the Prefect flow runs."""

    batch_size: int = Field(0, ge=0, description="photos per Prefect task (0: by runner, at most 128, 256 on "
                            "Dask, and smaller when a stage has fewer than 4 batches per worker)")
    runner: Literal["auto", "local", "threads", "processes", "dask"] = Field(
        "auto", description="Prefect task runner: auto (a thread pool, and a process pool for merge passes and "
        "exports of 1,000 photos or more, which hold Python's GIL), one task at a time, a thread pool, a process "
        "pool, or a Dask cluster")
    workers: int = Field(0, ge=0, description="threads, processes or local Dask workers (0: one per core)")
    dask_address: str = Field("", description="scheduler address of a running Dask cluster (runner dask); empty: "
                              "start a local cluster for the build")


class Config(Section):
    """A whole build config. Every key has a default, so an empty file is valid."""

    inputs: InputsConfig = Field(default_factory=InputsConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    qa: QAConfig = Field(default_factory=QAConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr("<defaults>")

    @property
    def source(self) -> str:
        """The file this config came from, for error messages."""
        return self._source

    def path(self, p: str) -> Path:
        """Resolve a config path against the config file's folder."""
        return (self._base_dir / p).resolve()

    @property
    def agreement_maps(self) -> bool:
        """Whether export reads merge's agreement maps: to publish them, or to give low-agreement pixels
        ignore_index. Otherwise merge does not write them (an encode per photo saved)."""
        return self.export.agreement_maps or self.merge.ignore_below > 0


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML config (or defaults when path is None) and apply dotted-key overrides."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise CrowdsegError(f"cannot read config: {e.strerror or e}", file=str(path)) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise CrowdsegError(f"invalid TOML: {e}", file=str(path)) from None
        base = path.resolve().parent
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = value
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise CrowdsegError(validation_reason(e), file=str(path or "<defaults>")) from None
    cfg._base_dir = base
    cfg._source = str(path or "<defaults>")
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, BaseModel):
        v = v.model_dump()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def render_toml(cfg: Config, comments: bool = True) -> str:
    """A full config as TOML, each key preceded by its documentation."""
    lines = ["# crowdseg build config. Every key is optional; these are the defaults.", ""]
    for section, _field in Config.model_fields.items():
        model = getattr(cfg, section)
        if comments and type(model).__doc__:
            lines.append(f"# {type(model).__doc__.strip()}")
        lines.append(f"[{section}]")
        for name, f in type(model).model_fields.items():
            if comments and f.description:
                lines.append(f"# {f.description}")
            lines.append(f"{name} = {_toml_value(getattr(model, name))}")
        lines.append("")
    return "\n".join(lines)
