"""SINet-style portrait crops: a head-and-shoulders window around each face of a person-segmentation sample, with
the mask cut the same way.

Every face found is judged on its own: too small, cut off by the border, not on the person mask, or sharing its
window with another face of comparable size, it is rejected. An accepted face gives a main crop and ``cfg.jitter``
extra ones, scaled and shifted at random from a seed of the sample's key, so a rebuild cuts the same windows; a
window that leaves the image is rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import CropConfig
from pipeline.stages.ingest import face_detector, shrink
from pipeline.tables import keyed_hash

Box = tuple[int, int, int, int]  # x, y, w, h in source pixels
SEARCH_SIDE = 640
"""Faces are sought with the shorter side at most this: the cascade's 24-px window then finds 4% of it."""


@dataclass(frozen=True)
class Crop:
    """One crop: its RGB pixels and class-id mask (copies), its window and face in the source image."""

    image: np.ndarray
    mask: np.ndarray
    box: Box
    face: Box
    index: int  # 0 = the face's main crop, 1..jitter = extra crops
    face_index: int  # which accepted face of the image, 0 = largest


@dataclass(frozen=True)
class CropRejection:
    """A face, or one crop of it, that gives no sample; ``code`` is the stable reason."""

    code: str
    message: str
    face: Box | None
    index: int


def find_faces(image: np.ndarray, min_width: int = 1) -> list[Box]:
    """Frontal faces of an RGB image at least ``min_width`` px wide, largest first (ties by y, x).

    Unlike ingest's ``detect_faces`` the search keeps small faces: it runs with the shorter side at most SEARCH_SIDE,
    in fine steps, on the equalised grey image.
    """
    small, s = shrink(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), SEARCH_SIDE, min)
    side = max(1, math.floor(min_width * s))
    found = face_detector().detectMultiScale(cv2.equalizeHist(small), scaleFactor=1.1, minNeighbors=4,
                                              minSize=(side, side))
    boxes = [(round(x / s), round(y / s), round(w / s), round(h / s)) for x, y, w, h in found]
    return sorted(boxes, key=_largest_first)


def crop_window(face: Box, cfg: CropConfig, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> Box:
    """The head-and-shoulders window of a face: ``cfg.face_width_share`` of its width is the face, its height is
    ``cfg.aspect`` times that, the face centre sits mid-width and ``cfg.face_center_y`` of the height down.

    ``scale`` multiplies the size, ``shift`` moves the window by that share of its width and height.
    """
    x, y, w, h = face
    width = w / cfg.face_width_share * scale
    height = width * cfg.aspect
    left = x + w / 2 - width / 2 + shift[0] * width
    top = y + h / 2 - cfg.face_center_y * height + shift[1] * height
    return round(left), round(top), round(width), round(height)


def portrait_crops(image: np.ndarray, mask: np.ndarray, cfg: CropConfig, key: str, faces: list[Box] | None = None
                   ) -> tuple[list[Crop], list[CropRejection]]:
    """(crops, rejections) of one sample: RGB ``image``, ``mask`` of class ids (person = above 0) of the same size.

    ``faces`` defaults to ``find_faces`` down to the narrowest face that could compete with an accepted one; ``key``
    (the sample's id) seeds the extra crops.
    """
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} differs from image {image.shape[1]}x{image.shape[0]}")
    if faces is None:
        faces = find_faces(image, math.floor(cfg.min_face_px * cfg.compete_share))
    faces = sorted((tuple(int(v) for v in f) for f in faces), key=_largest_first)
    height, width = image.shape[:2]
    if not faces:
        return [], [CropRejection("no_face", f"no face found in the {width}x{height} image", None, 0)]
    crops: list[Crop] = []
    rejected: list[CropRejection] = []
    accepted = 0
    for face in faces:
        main = crop_window(face, cfg)
        problem = _face_problem(face, mask, cfg) or _crowded(main, face, faces, cfg)
        if problem:
            rejected.append(CropRejection(*problem, face, 0))
            continue
        extras = [_jittered(face, cfg, f"{key}:{accepted}:{k}") for k in range(1, cfg.jitter + 1)]
        for k, (x, y, w, h) in enumerate([main, *extras]):
            crowded = _crowded((x, y, w, h), face, faces, cfg) if k else None  # the main window's was checked
            problem = crowded or _outside((x, y, w, h), width, height)
            if problem:
                rejected.append(CropRejection(*problem, face, k))
            else:
                crops.append(Crop(image[y:y + h, x:x + w].copy(), mask[y:y + h, x:x + w].copy(), (x, y, w, h), face,
                                  k, accepted))
        accepted += 1
    return crops, rejected


def _largest_first(box: Box) -> tuple[int, int, int]:
    return -box[2] * box[3], box[1], box[0]


def _face_problem(face: Box, mask: np.ndarray, cfg: CropConfig) -> tuple[str, str] | None:
    """(code, message) when the face itself gives no crop: too small, cut off, or not on the person."""
    x, y, w, h = face
    height, width = mask.shape[:2]
    if w < cfg.min_face_px:
        return "face_too_small", f"the face is {w} px wide, below crop.min_face_px={cfg.min_face_px}"
    if min(x, y, width - x - w, height - y - h) <= 1:
        return "face_cut_off", (f"the face {w}x{h} at ({x}, {y}) lies within 1 px of the border of the "
                                f"{width}x{height} image")
    share = float(np.count_nonzero(mask[y:y + h, x:x + w])) / (w * h)
    if share < cfg.min_person_share:
        return "face_not_on_person", (f"the person mask covers {share:.0%} of the face {w}x{h} at ({x}, {y}), below "
                                      f"crop.min_person_share={cfg.min_person_share:.0%}")
    return None


def _crowded(window: Box, face: Box, faces: list[Box], cfg: CropConfig) -> tuple[str, str] | None:
    """several_faces when another face at least ``cfg.compete_share`` as wide has its centre in the window."""
    x, y, w, h = window
    for other in faces:
        cx, cy = other[0] + other[2] / 2, other[1] + other[3] / 2
        if other != face and other[2] >= cfg.compete_share * face[2] and x <= cx < x + w and y <= cy < y + h:
            return "several_faces", (f"another face {other[2]} px wide at ({other[0]}, {other[1]}) lies in the "
                                     f"{w}x{h} window at ({x}, {y}) of the {face[2]}-px face (crop.compete_share="
                                     f"{cfg.compete_share})")
    return None


def _outside(window: Box, width: int, height: int) -> tuple[str, str] | None:
    """crop_outside_image when the window leaves the image, with the overshoot per side."""
    x, y, w, h = window
    sides = {"left": -x, "top": -y, "right": x + w - width, "bottom": y + h - height}
    out = [f"{v} px on the {side}" for side, v in sides.items() if v > 0]
    if out:
        return "crop_outside_image", (f"the {w}x{h} window at ({x}, {y}) leaves the {width}x{height} image by "
                                      f"{', '.join(out)}")
    return None


def _jittered(face: Box, cfg: CropConfig, seed: str) -> Box:
    """An extra window: scaled by up to ``cfg.jitter_scale`` and shifted by up to ``cfg.jitter_shift``, drawn from
    a generator seeded by ``seed`` alone (so independent of the order samples are processed in)."""
    rng = np.random.default_rng(int(keyed_hash("crop", seed, 16), 16))
    scale = rng.uniform(1 - cfg.jitter_scale, 1 + cfg.jitter_scale)
    dx, dy = rng.uniform(-cfg.jitter_shift, cfg.jitter_shift, 2)
    return crop_window(face, cfg, scale, (float(dx), float(dy)))
