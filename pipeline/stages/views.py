"""Derived annotation views, like EasyPortrait v2's: other class sets over the same images, as extra PNG trees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.spec import Spec
from pipeline.stages.polygons import lookup

PERSON = "person"


@dataclass(frozen=True)
class View:
    """A re-labelling of the spec's masks: ``mapping[spec class id]`` is the view's class id."""

    name: str
    classes: tuple[str, ...]
    mapping: tuple[int, ...]

    def folded(self, spec: Spec) -> list[list[str]]:
        """Per view class, the spec classes that become it."""
        return [[c.name for c in spec.classes if self.mapping[c.id] == i] for i in range(len(self.classes))]


def face_parsing_view(spec: Spec) -> View | None:
    """Person folded into background; background 0, then the other classes in spec order. None without a person
    class or without any class besides background and person."""
    if PERSON not in spec.by_name or len(spec.classes) < 3:
        return None
    kept = [c.name for c in spec.classes if c.name != PERSON]
    mapping = tuple(0 if c.name == PERSON else kept.index(c.name) for c in spec.classes)
    return View("face_parsing", tuple(kept), mapping)


def portrait_view(spec: Spec) -> View | None:
    """Two classes: 0 background, 1 person (every non-background class). None when the spec has only two classes."""
    if len(spec.classes) < 3:
        return None
    return View("portrait", ("background", PERSON), tuple(0 if c.id == 0 else 1 for c in spec.classes))


def derived_views(spec: Spec) -> tuple[list[View], list[str]]:
    """The views this spec supports, and a note per view it cannot have."""
    views, notes = [], []
    face = face_parsing_view(spec)
    if face is None:
        notes.append(f"face_parsing: skipped, spec {spec.name!r} has no {PERSON!r} class plus face classes to keep")
    else:
        views.append(face)
    portrait = portrait_view(spec)
    if portrait is None:
        notes.append(f"portrait: skipped, spec {spec.name!r} already has two classes (the annotations are it)")
    else:
        views.append(portrait)
    return views, notes


def lookup_table(view: View, ignore_index: int) -> np.ndarray:
    """256-entry uint8 table: spec class id -> view id; every other value (ignore_index included) -> ignore_index."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    lut[: len(view.mapping)] = view.mapping
    return lut


def apply_view(mask: np.ndarray, view: View, ignore_index: int) -> np.ndarray:
    """A class-index mask in the view's classes; ignore_index pixels stay ignore_index."""
    return lookup(lookup_table(view, ignore_index), mask)


def view_classes(view: View, spec: Spec) -> dict[str, Any]:
    """The view's ``classes.json``: ids, names, the spec classes each folds in, and the ignore index."""
    return {"view": view.name, "spec": spec.name, "ignore_index": spec.ignore_index,
            "classes": [{"id": i, "name": n, "from": f}
                        for i, (n, f) in enumerate(zip(view.classes, view.folded(spec), strict=True))]}
