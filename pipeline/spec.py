"""Annotation specs: the class list, palette, draw order and per-class thresholds, as data."""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import CrowdsegError

SPEC_DIR = Path(__file__).resolve().parent.parent / "annotation_specs"


@lru_cache(maxsize=4096)  # called for every shape read; a crowd uses a handful of labels
def normalize_label(label: str) -> str:
    """Fold case, spaces and dashes so that 'Left eye', 'left-eye' and 'left_eye' match."""
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


class ClassDef(BaseModel):
    """One class of a spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0, le=254)
    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    color: tuple[int, int, int]
    aliases: list[str] = Field(default_factory=list)
    flip: str | None = Field(None, description="the class this one becomes when the image is mirrored")
    quorum: float = Field(0.5, gt=0, le=1, description="share of a photo's annotators that must draw a pixel")
    min_area_px: int = Field(0, ge=0, description="smaller merged regions are flagged by QA")
    agreement: float = Field(0.5, ge=0, le=1, description="a photo whose annotators agree less on this class "
                             "(their mean IoU with the merged region) needs re-annotation")
    max_components: int | None = Field(None, ge=1, description="the most separate regions (8-connected) the merged "
                                       "class may have; None is unbounded. Only regions of at least "
                                       "max(4, min_area_px // 4) pixels and 2% of the class's largest region count")


RULE_ID = r"^[a-z][a-z0-9_]*$"


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=RULE_ID, description="unique snake_case name; also the rule's measure column")

    @property
    def classes(self) -> list[str]:
        """Every class the rule names."""
        raise NotImplementedError


class InsideRule(_Rule):
    """The parts lie inside the person's silhouette: the largest 8-connected region of non-background pixels,
    holes filled. Value: the least share, over the parts, of a part's pixels inside it."""

    kind: Literal["inside"]
    parts: list[str] = Field(min_length=1, description="classes that must lie inside the silhouette; absent ones "
                             "are skipped. Their union also defines the face box (face_width_px)")
    min_share: float = Field(0.98, ge=0, le=1, description="a part with a smaller share inside is a violation")

    @property
    def classes(self) -> list[str]:
        return list(self.parts)


class AboveRule(_Rule):
    """``upper``'s centroid is above ``lower``'s. Value: lower's centroid row minus upper's, in px (image y grows
    downward, so positive is right)."""

    kind: Literal["above"]
    upper: str
    lower: str
    min_gap_px: float = Field(0, ge=0, description="a value of this or less is a violation")

    @property
    def classes(self) -> list[str]:
        return [self.upper, self.lower]


class NearRule(_Rule):
    """``part`` lies within or next to ``to``. Value: the share of part's pixels within the convex hull of ``to``
    grown by the gap, which is max(max_gap_px, max_gap_face x face_width_px)."""

    kind: Literal["near"]
    part: str
    to: str
    max_gap_px: int = Field(3, ge=0, le=100, description="the least gap allowed outside the hull of `to`, in px")
    max_gap_face: float = Field(0.02, ge=0, le=0.5, description="the gap as a share of the face width, so that it "
                                "scales with the photo")
    min_share: float = Field(0.9, ge=0, le=1, description="a smaller share near `to` is a violation")

    @property
    def classes(self) -> list[str]:
        return [self.part, self.to]


class SideRule(_Rule):
    """The person's ``left`` part appears on the image's right of their ``right`` part (an unmirrored photo).
    Value: centroid x of left minus centroid x of right, in px; zero or less is a violation."""

    kind: Literal["side"]
    left: str
    right: str

    @property
    def classes(self) -> list[str]:
        return [self.left, self.right]


class TouchesRule(_Rule):
    """Every counted region of each of ``parts`` lies within ``max_gap_px`` of ``part``. Value: the share of those
    regions that do."""

    kind: Literal["touches"]
    part: str
    parts: list[str] = Field(min_length=1, description="classes whose regions must touch `part`; absent ones are "
                             "skipped")
    max_gap_px: int = Field(2, ge=0, le=100, description="regions this close count as touching, in px")
    min_share: float = Field(1.0, ge=0, le=1, description="a smaller share of touching regions is a violation")

    @property
    def classes(self) -> list[str]:
        return [self.part, *self.parts]


Rule = Annotated[InsideRule | AboveRule | NearRule | SideRule | TouchesRule, Field(discriminator="kind")]
RESERVED_COLUMNS = ("face_width_px",)


class Spec(BaseModel):
    """A validated annotation spec; class 0 is background and is never drawn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = 1
    ignore_index: int = Field(255, ge=0, le=255)
    classes: list[ClassDef] = Field(min_length=2)
    draw_order: list[str] = Field(description="classes painted bottom to top; every class but background")
    rules: list[Rule] = Field(default_factory=list, description="anatomy rules measured on each merged mask "
                              "(pipeline.stages.anatomy); left/right are the person's own")

    @model_validator(mode="after")
    def _check(self) -> Spec:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} in order, got {ids}")
        if self.classes[0].name != "background":
            raise ValueError(f"class 0 must be 'background', got {self.classes[0].name!r}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        if self.ignore_index in ids:
            raise ValueError(f"ignore_index {self.ignore_index} collides with a class id")
        if sorted(self.draw_order) != sorted(names[1:]):
            raise ValueError(f"draw_order must list every class except background exactly once, got {self.draw_order}")
        for c in self.classes:
            if c.flip is not None:
                if c.flip not in names:
                    raise ValueError(f"class {c.name!r}: flip partner {c.flip!r} is not a class")
                if self.by_name[c.flip].flip != c.name:
                    raise ValueError(f"class {c.name!r}: flip partner {c.flip!r} does not flip back")
        seen: dict[str, str] = {}
        for c in self.classes:
            for key in [c.name, *c.aliases]:
                k = normalize_label(key)
                if k in seen and seen[k] != c.name:
                    raise ValueError(f"label {key!r} names both {seen[k]!r} and {c.name!r}")
                seen[k] = c.name
        self._check_rules(names)
        return self

    def _check_rules(self, names: list[str]) -> None:
        ids: set[str] = set()
        for r in self.rules:
            if r.id in ids:
                raise ValueError(f"rule id {r.id!r} is used twice")
            if r.id in RESERVED_COLUMNS or r.id.startswith("components_"):
                raise ValueError(f"rule id {r.id!r} is reserved for a measure column")
            ids.add(r.id)
            for name in r.classes:
                if name not in names:
                    raise ValueError(f"rule {r.id!r}: {name!r} is not a class")
                if name == "background":
                    raise ValueError(f"rule {r.id!r}: background cannot be a part")
            if len(set(r.classes)) != len(r.classes):
                raise ValueError(f"rule {r.id!r}: a class is named twice")

    @cached_property
    def by_name(self) -> dict[str, ClassDef]:
        return {c.name: c for c in self.classes}

    @cached_property
    def label_map(self) -> dict[str, int]:
        """Normalised label or alias -> class id."""
        return {normalize_label(k): c.id for c in self.classes for k in [c.name, *c.aliases]}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def draw_ids(self) -> list[int]:
        """Class ids bottom to top."""
        return [self.by_name[n].id for n in self.draw_order]

    @property
    def flip_lut(self) -> list[int]:
        """Class id -> class id after a horizontal mirror."""
        return [self.by_name[c.flip].id if c.flip else c.id for c in self.classes]

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [c.color for c in self.classes]

    def class_id(self, label: str, extra: dict[str, str] | None = None) -> int | None:
        """The class a label names (through aliases and an optional source label map), or None."""
        if extra:
            label = extra.get(label, extra.get(normalize_label(label), label))
        return self.label_map.get(normalize_label(label))


def load_spec(ref: str | Path) -> Spec:
    """Load a spec from a YAML path, or by name from the bundled ``annotation_specs/``."""
    path = Path(ref)
    if not path.suffix and not path.exists():
        path = SPEC_DIR / f"{ref}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CrowdsegError(f"cannot read spec: {e.strerror or e}", file=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise CrowdsegError(f"invalid YAML: {getattr(e, 'problem', e)}", file=str(path),
                            where=None if mark is None else mark.line + 1) from None
    if not isinstance(data, dict):
        raise CrowdsegError("a spec must be a YAML mapping", file=str(path))
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        raise CrowdsegError(validation_reason(e), file=str(path)) from None


def validation_reason(e: ValidationError) -> str:
    """The first pydantic error as 'dotted.key: message'."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
