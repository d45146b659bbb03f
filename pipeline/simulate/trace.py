"""Annotators: profiles, and how each turns a portrait's class layers into labelled polygons.

Rings are in pixel coordinates where integer (x, y) is the centre of pixel column x, row y, so ``cv2.fillPoly`` of
an untouched trace (outer ring filled, holes cleared) gives back the region exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from pipeline.simulate.portrait import Layer
from pipeline.spec import Spec

DEFAULT_PROFILES = {"careful": 0.6, "sloppy": 0.15, "lazy": 0.1, "swapper": 0.1, "spammer": 0.05}
SMALL_PARTS = ("left_brow", "right_brow", "left_eye", "right_eye", "teeth", "lips")

Ring = np.ndarray  # (n, 2) float pixel coordinates


@dataclass(frozen=True)
class Annotator:
    """One crowd worker and the habits that shape their polygons."""

    annotator_id: str
    profile: str
    epsilon: float      # approxPolyDP tolerance, pixels
    jitter: float       # standard deviation of vertex noise, pixels
    grow: int           # pixels the traced boundary is grown (negative: shrunk)
    skip_prob: float    # chance of leaving out each small part (lips at half this rate)
    swap_prob: float    # chance, per photo, of labelling left as right
    alias_prob: float   # chance, per photo, of using other spellings of the labels

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def row(self) -> dict[str, object]:
        return asdict(self)


EXPERT = Annotator("expert", "expert", epsilon=0.5, jitter=0.0, grow=0, skip_prob=0.0, swap_prob=0.0, alias_prob=0.0)


def sample_annotator(annotator_id: str, profile: str, rng: np.random.Generator) -> Annotator:
    """Draw one annotator's habits for a profile."""
    careful = {"epsilon": rng.uniform(0.5, 0.8), "jitter": rng.uniform(0.08, 0.2), "grow": 0, "skip_prob": 0.02,
               "swap_prob": 0.0, "alias_prob": rng.uniform(0.05, 0.3)}
    if profile == "careful":
        habits = careful
    elif profile == "sloppy":
        grow = int(rng.integers(1, 4)) * (1 if rng.random() < 0.5 else -1)
        habits = careful | {"epsilon": rng.uniform(1.5, 3.0), "jitter": rng.uniform(0.8, 1.6), "grow": grow,
                            "skip_prob": 0.05}
    elif profile == "lazy":
        habits = careful | {"epsilon": rng.uniform(0.6, 1.0), "skip_prob": rng.uniform(0.4, 0.7)}
    elif profile == "swapper":
        habits = careful | {"swap_prob": rng.uniform(0.6, 0.9)}
    elif profile == "spammer":
        habits = {"epsilon": 0.0, "jitter": 0.0, "grow": 0, "skip_prob": 0.0, "swap_prob": 0.0, "alias_prob": 0.0}
    else:
        raise ValueError(f"unknown annotator profile {profile!r}; known: {', '.join(DEFAULT_PROFILES)}")
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in habits.items()}
    return Annotator(annotator_id, profile, **rounded)


def apportion(total: int, shares: dict[str, float]) -> list[str]:
    """``total`` profile names in proportion to ``shares`` (largest remainders), in the order of ``shares``."""
    weight = sum(shares.values())
    exact = {k: total * v / weight for k, v in shares.items()}
    counts = {k: math.floor(x) for k, x in exact.items()}
    by_remainder = sorted(shares, key=lambda k: (-(exact[k] - counts[k]), list(shares).index(k)))
    for k in by_remainder[:total - sum(counts.values())]:
        counts[k] += 1
    return [k for k in shares for _ in range(counts[k])]


def outlines(layer: Layer, epsilon: float, grow: int = 0) -> list[tuple[Ring, list[Ring]]]:
    """The region's polygons, as an annotator would draw them: (outer ring, holes) per connected part."""
    pad = 2 + abs(grow)
    m = cv2.copyMakeBorder(layer.mask.view(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    if grow:  # a tight outline still outlines something: a part the shrinking would erase is drawn as it is
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(grow) + 1,) * 2)
        grown = cv2.dilate(m, kernel) if grow > 0 else cv2.erode(m, kernel)
        m = grown if grown.any() else m
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0]
    offset = np.array([layer.x0 - pad, layer.y0 - pad], dtype=np.float64)
    out = []
    for i, contour in enumerate(contours):
        if links[i][3] != -1:
            continue
        outer = _simplify(contour, epsilon)
        if outer is None:
            continue
        holes, j = [], links[i][2]
        while j != -1:
            holes += [h for c in _hole_pixels(m, contours[j]) if (h := _simplify(c, epsilon)) is not None]
            j = links[j][0]
        out.append((outer + offset, [h + offset for h in holes]))
    return out


def _hole_pixels(mask: np.ndarray, contour: np.ndarray) -> list[np.ndarray]:
    """Rings through the centres of a hole's own pixels (cv2 traces holes along the surrounding object pixels)."""
    x, y, w, h = cv2.boundingRect(contour)
    inside = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(inside, [contour - (x, y)], 1)
    inside &= mask[y:y + h, x:x + w] == 0
    rings, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [r + (x, y) for r in rings]


def _simplify(contour: np.ndarray, epsilon: float) -> Ring | None:
    """The contour with ``epsilon`` px of slack; a part too thin for that gets a rough box, as a person would draw."""
    ring = cv2.approxPolyDP(contour, epsilon, True) if epsilon > 0 else contour
    if len(ring) < 3 and epsilon > 0 and len(contour) >= 2:
        return cv2.boxPoints(cv2.minAreaRect(contour)).astype(np.float64)
    return ring[:, 0, :].astype(np.float64) if len(ring) >= 3 else None


def spellings(spec: Spec, name: str) -> list[str]:
    """Ways a crowd tool may spell a class that the spec still accepts."""
    c = spec.by_name[name]
    words = [c.name, *c.aliases]
    return sorted({*words, c.name.replace("_", " ").capitalize(), c.name.upper()})


def annotate(annotator: Annotator, layers: dict[str, Layer], spec: Spec, size: tuple[int, int],
             rng: np.random.Generator) -> list[dict]:
    """One assignment's shapes, in the spec's draw order."""
    if annotator.profile == "spammer":
        return _spam(spec, size, rng)
    swap = rng.random() < annotator.swap_prob
    alias = rng.random() < annotator.alias_prob
    shapes = []
    for name in spec.draw_order:
        layer = layers.get(name)
        skip = annotator.skip_prob / (2 if name == "lips" else 1)
        if layer is None or (name in SMALL_PARTS and rng.random() < skip):
            continue
        cls = (spec.by_name[name].flip or name) if swap else name
        label = str(rng.choice(spellings(spec, cls))) if alias else cls
        for outer, holes in outlines(layer, annotator.epsilon, annotator.grow):
            shapes.append({"label": label, "points": _finish(outer, annotator.jitter, size, rng),
                           "holes": [_finish(h, annotator.jitter, size, rng) for h in holes]})
    return shapes


def _finish(ring: Ring, jitter: float, size: tuple[int, int], rng: np.random.Generator) -> list[list[float]]:
    """Add hand jitter, keep inside the image, round to 2 decimals."""
    if jitter > 0:
        ring = ring + rng.normal(0, jitter, ring.shape)
    ring = np.clip(ring, 0, [size[0] - 1, size[1] - 1])
    return np.round(ring, 2).tolist()


def _spam(spec: Spec, size: tuple[int, int], rng: np.random.Generator) -> list[dict]:
    """Nothing at all, or a few random blobs with random labels."""
    if rng.random() < 0.5:
        return []
    w, h = size
    shapes = []
    for _ in range(rng.integers(1, 6)):
        centre = rng.uniform([0, 0], [w - 1, h - 1])
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 9)))
        radius = rng.uniform(0.03, 0.3) * min(w, h) * rng.uniform(0.6, 1.0, angles.size)
        ring = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius[:, None]
        shapes.append({"label": str(rng.choice(spec.draw_order)), "points": _finish(ring, 0, size, rng), "holes": []})
    return shapes
