"""One synthetic selfie: an RGB image and, per class, the region an annotator would draw.

Shapes are implicit functions in a face frame (u across the face, v down it, both -1..1 over the face oval), evaluated
on pixel grids that only cover each part's bounding box. Regions are kept as ``Layer`` crops, never full images.
The person's own left is on the image's right (u > 0) in an unmirrored photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.spec import Spec

LAYER_NAMES = ("person", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "lips", "teeth")

SKIN_TONES = [(255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 102), (160, 105, 75), (112, 72, 50),
              (84, 56, 40)]
HAIR_COLOURS = [(28, 24, 22), (58, 40, 30), (98, 68, 44), (186, 154, 104), (140, 68, 38), (150, 148, 146)]
IRIS_COLOURS = [(86, 56, 34), (70, 104, 146), (84, 116, 76), (112, 116, 120)]
SELFIE_FACE = (0.25, 0.45)  # face width as a share of the shorter side: a selfie at arm's length
FAR_FACE = (0.05, 0.1)      # the subject a few metres from the camera


@dataclass(frozen=True)
class Layer:
    """A boolean region stored as its bounding-box crop: pixel (x, y) is ``mask[y - y0, x - x0]``."""

    mask: np.ndarray
    x0: int
    y0: int

    @classmethod
    def of(cls, mask: np.ndarray, x0: int = 0, y0: int = 0) -> Layer | None:
        """The region trimmed to its bounding box, or None when it is empty."""
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(mask.any(axis=0))
        crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        return cls(np.ascontiguousarray(crop, dtype=bool), x0 + int(cols[0]), y0 + int(rows[0]))

    @property
    def box(self) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 with exclusive ends."""
        h, w = self.mask.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    def on(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The region as a boolean array over ``box``, False outside the layer."""
        bx0, by0, bx1, by1 = box
        out = np.zeros((by1 - by0, bx1 - bx0), dtype=bool)
        x0, y0, x1, y1 = self.box
        ix0, iy0, ix1, iy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        if ix0 < ix1 and iy0 < iy1:
            out[iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0] = self.mask[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
        return out

    def paste(self, canvas: np.ndarray, value: object) -> None:
        """Set the region's pixels of ``canvas`` (H x W or H x W x C) to ``value``."""
        x0, y0, x1, y1 = self.box
        crop = canvas[y0:y1, x0:x1]
        cv2.copyTo(np.full_like(crop, value), self.mask.view(np.uint8), crop)

    def flipped(self, width: int) -> Layer:
        """The region mirrored left-right in an image ``width`` pixels wide."""
        return Layer(np.ascontiguousarray(self.mask[:, ::-1]), width - self.box[2], self.y0)

    def resized(self, sx: float, sy: float) -> Layer | None:
        """Nearest-neighbour rescale: new pixel x takes old pixel floor((x + 0.5) / sx)."""
        x0, y0, x1, y1 = self.box
        xs, src_x = _nearest(x0, x1, sx)
        ys, src_y = _nearest(y0, y1, sy)
        if xs.size == 0 or ys.size == 0:
            return None
        return Layer.of(self.mask[np.ix_(src_y - y0, src_x - x0)], int(xs[0]), int(ys[0]))

    def cropped(self, box: tuple[int, int, int, int]) -> Layer | None:
        """The part inside ``box``, in the coordinates of the cropped image."""
        return Layer.of(self.on(box))


def _nearest(lo: int, hi: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """New pixel indices whose nearest source pixel lies in [lo, hi), and those source pixels."""
    new = np.arange(math.floor(lo * scale), math.ceil(hi * scale))
    src = np.floor((new + 0.5) / scale).astype(int)
    keep = (src >= lo) & (src < hi)
    return new[keep], src[keep]


def union(*layers: Layer | None) -> Layer | None:
    """The union of some layers (None ones are skipped)."""
    present = [la for la in layers if la is not None]
    if not present:
        return None
    boxes = np.array([la.box for la in present])
    box = (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max()))
    mask = np.zeros((box[3] - box[1], box[2] - box[0]), dtype=bool)
    for la in present:
        mask |= la.on(box)
    return Layer.of(mask, box[0], box[1])


def minus(base: Layer | None, *cut: Layer | None) -> Layer | None:
    """``base`` with the other layers removed."""
    if base is None:
        return None
    mask = base.mask.copy()
    for la in cut:
        if la is not None:
            mask &= ~la.on(base.box)
    return Layer.of(mask, base.x0, base.y0)


@dataclass(frozen=True)
class Portrait:
    """An oriented RGB photo, its class regions and a few facts about it for truth tables."""

    image: np.ndarray
    layers: dict[str, Layer]
    facts: dict[str, object]

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    def for_spec(self, spec: Spec) -> Portrait:
        """Keep only the layers the spec has classes for."""
        return Portrait(self.image, {k: v for k, v in self.layers.items() if k in spec.by_name}, self.facts)

    def mirrored(self, partner: dict[str, str]) -> Portrait:
        """Flip left-right; each layer named in ``partner`` becomes its partner (left eye <-> right eye)."""
        w = self.size[0]
        layers = {partner.get(k, k): v.flipped(w) for k, v in self.layers.items()}
        return Portrait(np.ascontiguousarray(self.image[:, ::-1]), layers, self.facts)

    def resized(self, width: int, height: int) -> Portrait:
        sx, sy = width / self.size[0], height / self.size[1]
        image = cv2.resize(self.image, (width, height), interpolation=cv2.INTER_AREA)
        facts = self.facts | {"face_width": round(float(self.facts["face_width"]) * sx)}
        return Portrait(image, _present({k: v.resized(sx, sy) for k, v in self.layers.items()}), facts)

    def cropped(self, box: tuple[int, int, int, int]) -> Portrait:
        x0, y0, x1, y1 = box
        layers = _present({k: v.cropped(box) for k, v in self.layers.items()})
        return Portrait(np.ascontiguousarray(self.image[y0:y1, x0:x1]), layers, self.facts)

    def with_image(self, image: np.ndarray) -> Portrait:
        return Portrait(image, self.layers, self.facts)


def _present(layers: dict[str, Layer | None]) -> dict[str, Layer]:
    return {k: v for k, v in layers.items() if v is not None}


def truth_mask(portrait: Portrait, spec: Spec) -> np.ndarray:
    """The class-index mask: each class's layer painted bottom to top in the spec's draw order."""
    w, h = portrait.size
    mask = np.zeros((h, w), dtype=np.uint8)
    for cid in spec.draw_ids:
        layer = portrait.layers.get(spec.classes[cid].name)
        if layer is not None:
            layer.paste(mask, cid)
    return mask


@dataclass(frozen=True)
class Grid:
    """Face-frame coordinates (u, v) of every pixel centre in a crop whose top-left pixel is (x0, y0)."""

    x0: int
    y0: int
    u: np.ndarray
    v: np.ndarray

    def layer(self, mask: np.ndarray) -> Layer | None:
        return Layer.of(mask, self.x0, self.y0)


@dataclass(frozen=True)
class Frame:
    """The face frame: centre (cx, cy) in pixels, half-width a and half-height b in pixels, roll in radians."""

    cx: float
    cy: float
    a: float
    b: float
    roll: float

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        c, s = math.cos(self.roll), math.sin(self.roll)
        return self.cx + self.a * u * c - self.b * v * s, self.cy + self.a * u * s + self.b * v * c

    def grid(self, u0: float, u1: float, v0: float, v1: float, width: int, height: int) -> Grid | None:
        """A grid over the pixels covering the face-frame box [u0, u1] x [v0, v1], clipped to the image."""
        corners = [self.to_image(u, v) for u in (u0, u1) for v in (v0, v1)]
        xs, ys = [p[0] for p in corners], [p[1] for p in corners]
        x0, x1 = max(0, math.floor(min(xs))), min(width, math.ceil(max(xs)) + 1)
        y0, y1 = max(0, math.floor(min(ys))), min(height, math.ceil(max(ys)) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(self.cx)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(self.cy)
        c, s = np.float32(math.cos(self.roll)), np.float32(math.sin(self.roll))
        return Grid(x0, y0, (dx * c + dy * s) / np.float32(self.a), (dy * c - dx * s) / np.float32(self.b))


@dataclass(frozen=True)
class Face:
    """Random shape parameters of one person, in face-frame units unless noted."""

    frame: Frame
    jaw: float                 # chin narrowing
    hair: tuple[float, float, float]        # half-width, height above the face, length down the sides
    hairline: tuple[float, float]           # forehead top at the centre, rise towards the temples
    beard: tuple[float, float] | None       # top at the sideburns, extra height at the centre
    eye: tuple[float, float, float, float, float, float]  # x, y, half-width, upper and lower lid, gaze
    brow: tuple[float, float, float, float, float]        # x, y, half-width, thickness, arch
    nose: tuple[float, float, float, float]               # nostril y, x, half-width, half-height
    mouth: tuple[float, float, float, float, float]       # y, half-width, upper lip, lower lip, opening
    teeth: bool
    neck: float
    shoulders: float           # half-width in units of a


def sample_face(rng: np.random.Generator, width: int, height: int,
                share: tuple[float, float] = SELFIE_FACE) -> Face:
    """Draw a face whose width is a ``share`` of the shorter side, somewhere near the upper middle."""
    a = rng.uniform(*share) * min(width, height) / 2
    b = a * rng.uniform(1.25, 1.4)
    cx = float(np.clip(width / 2 + rng.uniform(-0.15, 0.15) * width, 1.2 * a, width - 1.2 * a))
    cy = float(max(height * rng.uniform(0.36, 0.48), 1.05 * b))
    frame = Frame(cx, cy, a, b, math.radians(rng.uniform(-12, 12)))
    ey, eh = rng.uniform(-0.16, -0.08), rng.uniform(0.05, 0.075)
    ex, ew = rng.uniform(0.33, 0.4), rng.uniform(0.15, 0.19)
    open_h = 0.0 if rng.random() < 0.55 else rng.uniform(0.03, 0.07)
    return Face(
        frame=frame,
        jaw=rng.uniform(0.1, 0.25),
        hair=(rng.uniform(1.08, 1.25), rng.uniform(0.12, 0.3), rng.uniform(-0.1, 1.5)),
        hairline=(rng.uniform(0.52, 0.66), rng.uniform(0.1, 0.2)),
        beard=(rng.uniform(-0.05, 0.15), rng.uniform(0.2, 0.3)) if rng.random() < 0.2 else None,
        eye=(ex, ey, ew, eh * (0.35 if rng.random() < 0.05 else 1.0), eh * 0.7, rng.uniform(-0.3, 0.3) * ew),
        brow=(ex + rng.uniform(0.0, 0.04), ey - rng.uniform(0.15, 0.2), ew * rng.uniform(1.15, 1.35),
              rng.uniform(0.04, 0.07), rng.uniform(0.015, 0.05)),
        nose=(rng.uniform(0.26, 0.3), rng.uniform(0.08, 0.1), rng.uniform(0.04, 0.055), rng.uniform(0.02, 0.028)),
        mouth=(rng.uniform(0.5, 0.56), rng.uniform(0.25, 0.34), rng.uniform(0.05, 0.075), rng.uniform(0.065, 0.09),
               open_h),
        teeth=open_h > 0 and rng.random() < 0.85,
        neck=rng.uniform(0.5, 0.62),
        shoulders=rng.uniform(1.7, 2.4),
    )


def _face_oval(g: Grid, jaw: float, stretch: float = 1.0) -> np.ndarray:
    w = 1 - jaw * np.clip(g.v, 0, 1) ** 2
    return (g.u / w) ** 2 + (g.v / stretch) ** 2 <= 1


def _head_parts(face: Face, g: Grid) -> dict[str, np.ndarray]:
    """Masks on the head grid: hair, face oval, fringe (hair over the forehead) and beard."""
    u, v = g.u, g.v
    oval = _face_oval(g, face.jaw)
    hx, hy, length = face.hair
    top = ((u / hx) ** 2 + ((v + 0.05) / (1 + hy)) ** 2 <= 1) & (v <= 0)
    hair = top | ((np.abs(u) <= hx * 0.97) & (v > 0) & (v <= length))
    h0, h1 = face.hairline
    fringe = oval & (v < -h0 + h1 * u**2)
    parts = {"hair": hair, "oval": oval, "fringe": fringe}
    if face.beard is not None:
        t0, t1 = face.beard
        my, mw, hu, hl, oh = face.mouth
        mouth_zone = (u / (mw * 1.15)) ** 2 + ((v - my - (hl + oh - hu) / 2) / ((hu + hl + oh) * 0.8)) ** 2 <= 1
        parts["beard"] = _face_oval(g, face.jaw, 1.08) & (v > t0 + t1 * (1 - u**2)) & ~mouth_zone
    return parts


def _eye_parts(face: Face, g: Grid, side: int) -> dict[str, np.ndarray]:
    """The almond (the class region, whites included), iris and pupil of one eye; side +1 = image right."""
    ex, ey, ew, up, lo, gaze = face.eye
    du, dv = g.u - side * ex, g.v - ey
    s = np.clip(du / ew, -1, 1)
    almond = (np.abs(du) < ew) & (dv >= -up * (1 - s**2)) & (dv <= lo * (1 - s**2))
    a, b = face.frame.a, face.frame.b
    r2 = (((du - gaze) * a) ** 2 + (dv * b) ** 2) / (up * b) ** 2
    return {"almond": almond, "iris": almond & (r2 <= 1.0), "pupil": almond & (r2 <= 0.2),
            "lashes": almond & (dv < -up * (1 - s**2) + 0.015)}


def _brow(face: Face, g: Grid, side: int) -> np.ndarray:
    bx, by, bw, th, arch = face.brow
    s = (g.u - side * bx) * side / bw
    centre = -arch * (1 - s**2)
    thick = th * (1 - 0.25 * (s + 1))
    return (np.abs(s) <= 1) & (np.abs(g.v - by - centre) <= thick / 2)


def _nostrils(face: Face, g: Grid) -> np.ndarray:
    ny, nx, rw, rh = face.nose
    return ((np.abs(g.u) - nx) / rw) ** 2 + ((g.v - ny) / rh) ** 2 <= 1


def _mouth_parts(face: Face, g: Grid) -> dict[str, np.ndarray]:
    """Lips (a ring when the mouth is open), teeth, and the dark mouth interior (skin in the truth)."""
    my, mw, hu, hl, oh = face.mouth
    du, dv = g.u, g.v - my
    s = np.clip(du / mw, -1, 1)
    bow = 1 - 0.2 * np.exp(-((s / 0.15) ** 2))
    outer = (np.abs(du) < mw) & (dv >= -hu * np.sqrt(1 - s**2) * bow) & (dv <= (hl + oh) * (1 - s**2) ** 0.7)
    si = np.clip(du / (mw * 0.8), -1, 1)
    top, bottom = -0.35 * oh * (1 - si**2), oh * (1 - si**2)
    opening = (np.abs(du) < mw * 0.8) & (dv >= top) & (dv <= bottom) & (oh > 0)
    teeth = opening & (dv <= top + 0.6 * (bottom - top)) if face.teeth else np.zeros_like(opening)
    return {"lips": outer & ~opening, "teeth": teeth, "interior": opening & ~teeth}


def _body(face: Face, width: int, height: int) -> Layer | None:
    """Shoulders and torso: an upright rounded trapezoid under the neck, with a round neckline."""
    a = face.frame.a
    nx, ny = face.frame.to_image(0, 1.35)
    sw, ys = face.shoulders * a, ny + 0.25 * a
    half = [(sw * 1.05, height + 2), (sw, ys + 0.9 * a), (sw * 0.97, ys + 0.45 * a), (sw * 0.88, ys + 0.15 * a),
            (sw * 0.7, ys), (face.neck * a * 1.2, ys - 0.1 * a), (face.neck * a * 0.9, ny + 0.2 * a)]
    dip = [(nx + face.neck * a * 0.5 * x, ny + a * (0.35 + 0.25 * (1 - x * x))) for x in np.linspace(-0.8, 0.8, 9)]
    pts = np.array([(nx - dx, y) for dx, y in half] + dip + [(nx + dx, y) for dx, y in reversed(half)])
    x0, y0 = max(0, math.floor(pts[:, 0].min())), max(0, math.floor(pts[:, 1].min()))
    x1, y1 = min(width, math.ceil(pts[:, 0].max()) + 1), height
    if x0 >= x1 or y0 >= y1:
        return None
    crop = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(crop, [np.round(pts - (x0, y0)).astype(np.int32)], 1)
    return Layer.of(crop.astype(bool), x0, y0)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A soft, out-of-focus room: a colour gradient and some furniture, drawn at quarter size and upscaled."""
    sw, sh = max(8, width // 4), max(8, height // 4)
    c0, c1 = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = (np.cos(angle) * np.linspace(-0.5, 0.5, sw)[None, :] + np.sin(angle) * np.linspace(-0.5, 0.5, sh)[:, None])
    small = (c0 + (t[..., None] + 0.5) * (c1 - c0)).astype(np.uint8)
    for _ in range(rng.integers(2, 9)):
        colour = tuple(int(c) for c in rng.uniform(20, 240, 3))
        x, y = int(rng.integers(0, sw)), int(rng.integers(0, sh))
        if rng.random() < 0.7:
            cv2.rectangle(small, (x, y), (x + int(rng.integers(4, sw // 2 + 5)), y + int(rng.integers(4, sh // 2 + 5))),
                          colour, -1)
        else:
            cv2.circle(small, (x, y), int(rng.integers(3, max(4, sw // 6))), colour, -1, cv2.LINE_AA)
    small = cv2.GaussianBlur(small, (0, 0), 1.2)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _tone(base: tuple[int, int, int], rng: np.random.Generator, spread: float = 10) -> np.ndarray:
    return np.clip(np.asarray(base, dtype=np.float32) + rng.normal(0, spread, 3), 0, 255)


def _shade_head(image: np.ndarray, g: Grid, parts: dict[str, np.ndarray], light: float) -> None:
    """Round the head: darker towards the rim, lit from one side, a highlight down the nose, streaks in the hair."""
    u, v = g.u, g.v
    shade = 1.0 + 0.1 * light * u - 0.16 * np.clip(u * u + 0.6 * v * v - 0.3, 0, None)
    shade += 0.06 * np.exp(-((u / 0.07) ** 2)) * ((v > -0.15) & (v < 0.25))
    hairy = (parts["hair"] & ~parts["oval"]) | parts["fringe"] | parts.get("beard", False)
    shade += 0.07 * hairy * np.sin(u * 60 + 4 * np.sin(v * 9))
    h, w = u.shape
    crop = image[g.y0:g.y0 + h, g.x0:g.x0 + w]
    shade8 = cv2.merge([np.clip(shade * 128, 0, 255).astype(np.uint8)] * 3)
    cv2.copyTo(cv2.multiply(crop, shade8, scale=1 / 128), (parts["hair"] | parts["oval"]).view(np.uint8), crop)


def _light(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure, contrast and colour cast (one lookup table), uneven light, sensor noise and a little lens blur."""
    h, w = image.shape[:2]
    levels = np.arange(256, dtype=np.float32)[:, None]
    gain = rng.uniform(0.7, 1.2) * rng.uniform(0.9, 1.1, 3)
    lut = np.clip(((levels - 128) * rng.uniform(0.8, 1.15) + 128) * gain, 0, 255).astype(np.uint8)
    out = cv2.LUT(image, lut.reshape(256, 1, 3))
    field = np.repeat(rng.uniform(0.82, 1.15, (3, 3, 1)) * 128, 3, axis=2).astype(np.uint8)
    out = cv2.multiply(out, cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC), scale=1 / 128)
    noise = np.round(rng.normal(0, rng.uniform(2, 6), (64, 64, 3))).astype(np.int16)
    out = cv2.add(out, cv2.repeat(noise, h // 64 + 1, w // 64 + 1)[:h, :w], dtype=cv2.CV_8U)
    return cv2.GaussianBlur(out, (3, 3), 0.6)


def _detail(image: np.ndarray, rng: np.random.Generator, skin: Layer | None) -> np.ndarray:
    """Fine scene texture (walls, fabric, hair; fainter on skin): three octaves of noise whose finest grain is
    tied to the frame, not the pixel, so a photo is as detailed at 640 px whatever its resolution."""
    h, w = image.shape[:2]
    field = np.zeros((h, w), dtype=np.float32)
    step = max(1.0, max(w, h) / 850)
    for _ in range(3):
        grain = rng.normal(0, 1, (max(2, round(h / step)), max(2, round(w / step)))).astype(np.float32)
        field += cv2.resize(grain, (w, h), interpolation=cv2.INTER_LINEAR)
        step *= 2
    field *= np.float32(rng.uniform(0.04, 0.06))
    if skin is not None:
        x0, y0, x1, y1 = skin.box
        field[y0:y1, x0:x1][skin.mask] *= 0.4
    return np.clip(np.rint(image * (1 + field[..., None])), 0, 255).astype(np.uint8)


def _paint(image: np.ndarray, layer: Layer | None, colour: np.ndarray | tuple[float, ...]) -> Layer | None:
    """Fill a region with a flat colour (light and noise come later); return the region."""
    if layer is not None:
        layer.paste(image, np.asarray(colour, dtype=np.float32).astype(np.uint8))
    return layer


def _draw_head(image: np.ndarray, face: Face, colours: dict[str, np.ndarray], light: float) -> dict[str, Layer | None]:
    """Hair, neck, face, beard, nostrils and body; returns the person and skin layers and the beard."""
    fr, (w, h) = face.frame, (image.shape[1], image.shape[0])
    head = fr.grid(-1.4, 1.4, -1.4, 1.6, w, h)
    assert head is not None, "the face centre is always inside the image"
    hp = _head_parts(face, head)
    skin, hair_rgb = colours["skin"], colours["hair"]
    neck_grid = fr.grid(-face.neck, face.neck, 0.3, 2.0, w, h)
    hair = _paint(image, head.layer(hp["hair"]), hair_rgb)
    neck = _paint(image, neck_grid.layer(np.abs(neck_grid.u) <= face.neck) if neck_grid else None, skin * 0.78)
    oval = _paint(image, head.layer(hp["oval"]), skin)
    fringe = _paint(image, head.layer(hp["fringe"]), hair_rgb)
    beard = _paint(image, head.layer(hp["beard"]) if "beard" in hp else None, hair_rgb * 0.8)
    _shade_head(image, head, hp, light)
    body = _paint(image, _body(face, w, h), colours["clothes"])
    nose = fr.grid(-0.2, 0.2, face.nose[0] - 0.05, face.nose[0] + 0.05, w, h)
    nostrils = _paint(image, nose.layer(_nostrils(face, nose)) if nose else None, skin * 0.3)
    return {"person": union(hair, neck, body, oval, beard), "skin": minus(oval, fringe, beard, nostrils),
            "beard": beard}


def _draw_eyes(image: np.ndarray, face: Face, colours: dict[str, np.ndarray]) -> dict[str, Layer | None]:
    """Both eyes (whites, iris, pupil, lash line) and brows; the person's left ones on the image's right."""
    fr, (w, h) = face.frame, (image.shape[1], image.shape[0])
    ex, ey, ew = face.eye[:3]
    bx, by, bw, th, arch = face.brow
    layers = {}
    for side, eye_name, brow_name in ((1, "left_eye", "left_brow"), (-1, "right_eye", "right_brow")):
        g = fr.grid(side * ex - ew, side * ex + ew, ey - 0.1, ey + 0.1, w, h)
        if g is not None:
            eye = _eye_parts(face, g, side)
            layers[eye_name] = _paint(image, g.layer(eye["almond"]), (232, 230, 226))
            for part, colour in (("iris", colours["iris"]), ("pupil", (20, 16, 16)), ("lashes", colours["hair"] * 0.5)):
                _paint(image, g.layer(eye[part]), colour)
        g = fr.grid(side * bx - bw, side * bx + bw, by - th - arch, by + th, w, h)
        if g is not None:
            layers[brow_name] = _paint(image, g.layer(_brow(face, g, side)), colours["hair"] * 0.7)
    return layers


def _draw_mouth(image: np.ndarray, face: Face, colours: dict[str, np.ndarray]) -> dict[str, Layer | None]:
    """Lips, and when open the teeth and the dark interior (which stays skin in the truth)."""
    my, mw, hu, hl, oh = face.mouth
    g = face.frame.grid(-mw, mw, my - hu, my + hl + oh, image.shape[1], image.shape[0])
    if g is None:
        return {}
    mouth = _mouth_parts(face, g)
    _paint(image, g.layer(mouth["interior"]), (58, 18, 24))
    return {"lips": _paint(image, g.layer(mouth["lips"]), colours["skin"] * np.array([0.85, 0.55, 0.58])),
            "teeth": _paint(image, g.layer(mouth["teeth"]), (236, 230, 214))}


def render(rng: np.random.Generator, width: int, height: int, share: tuple[float, float] = SELFIE_FACE) -> Portrait:
    """Draw one photo of ``width`` x ``height`` pixels with every layer of LAYER_NAMES; ``share`` as in sample_face."""
    face = sample_face(rng, width, height, share)
    image = _background(rng, width, height)
    colours = {"skin": _tone(SKIN_TONES[rng.integers(len(SKIN_TONES))], rng),
               "hair": _tone(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], rng, 6),
               "iris": _tone(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], rng, 8),
               "clothes": rng.uniform(20, 235, 3)}
    layers = _draw_head(image, face, colours, rng.uniform(-1, 1)) | _draw_eyes(image, face, colours)
    layers |= _draw_mouth(image, face, colours)
    facts = {"has_teeth": layers.get("teeth") is not None, "has_beard": layers.pop("beard") is not None,
             "face_width": round(2 * face.frame.a), "roll_deg": round(math.degrees(face.frame.roll), 1)}
    return Portrait(_detail(_light(image, rng), rng, layers.get("skin")), _present(layers), facts)


def blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An unusable photo: out of focus (a Gaussian 0.6-1.2% of the shorter side wide) or shaken (a streak 3-6% of it
    long, softened as a hand never moves in a straight line), with the sensor's noise on top."""
    side = min(image.shape[:2])
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(image, (0, 0), side * rng.uniform(0.006, 0.012))
    else:
        streak = _streak(side * rng.uniform(0.03, 0.06), rng.uniform(0, math.pi))
        out = cv2.GaussianBlur(cv2.filter2D(image, -1, streak, borderType=cv2.BORDER_REFLECT), (0, 0), side * 0.003)
    return _sensor_noise(out, rng, rng.uniform(0.5, 1))


def _streak(length: float, angle: float) -> np.ndarray:
    """A motion-blur kernel: an anti-aliased line through the centre, summing to 1."""
    k = 2 * math.ceil(length / 2) + 1
    c, dx, dy = k // 2, length / 2 * math.cos(angle), length / 2 * math.sin(angle)
    line = np.zeros((k, k), dtype=np.uint8)
    cv2.line(line, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 255, 1, cv2.LINE_AA)
    return line.astype(np.float32) / float(line.sum())


def underexpose(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An under-exposed photo: mean brightness cut to 5-12%, with the grain of a phone pushing its ISO."""
    target = rng.uniform(0.05, 0.12) * 255
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return _sensor_noise(image * np.float32(target / max(float(grey.mean()), 1.0)), rng, rng.uniform(2.5, 5))


def _sensor_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Per-pixel noise, mostly in luminance, with half as much in colour; back to 8 bits."""
    h, w = image.shape[:2]
    noise = rng.normal(0, sigma, (h, w, 1)) + rng.normal(0, sigma / 2, (h, w, 3))
    return np.clip(np.rint(image + noise.astype(np.float32)), 0, 255).astype(np.uint8)
