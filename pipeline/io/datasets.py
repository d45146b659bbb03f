"""List the samples of a labelled dataset on disk (an image and a trusted mask each), in one of four layouts.

Nothing is decoded here: ingest checks the images and ``pipeline.stages.trusted`` the masks, in batches. Listing
only matches images to masks; a sample that cannot be matched is a rejection row with its reason:
``missing_image``, ``unlisted_image``, ``missing_mask``, ``duplicate_sample``, ``outside_root`` and, for LabelMe
files that cannot be read, ``bad_json``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DatasetConfig, MergeConfig
from pipeline.errors import CrowdsegError
from pipeline.io.labelme import read_labelme
from pipeline.io.manifest import PHOTO_COLUMNS, read_lines, read_text
from pipeline.io.shapes import load_json
from pipeline.spec import Spec, normalize_label
from pipeline.stages.ingest import Unusable
from pipeline.stages.polygons import assignment_layers, composite
from pipeline.tables import REJECTION_COLUMNS, frame, rejection

SAMPLE_COLUMNS = [*PHOTO_COLUMNS, "origin", "origin_kind", "mask", "mask_values"]
"""A sample as a manifest row: where it came from (``origin``: its dataset's name; ``origin_kind``: external or
derived; crowd uploads have ``crowd`` in both), its trusted mask, and the mask's value -> class id map."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".heic")
EG1800_LISTS = {f"{prefix}{split}.txt": split for prefix in ("", "eg1800_") for split in ("train", "val", "test")}
DEFAULT_MAPS = {"eg1800": {"0": "background", "255": "person"}, "labelme": {"person": "person"}}
LABELME_BACKGROUND = "__background__"  # LabelMe draws no background: this label stands for it in the value map
LABELME_ANNOTATOR = "dataset"  # read_labelme needs an annotator; a dataset's mask has none
MIN_SHAPE_AREA = MergeConfig.model_fields["min_shape_area_px"].default  # as crowd polygons by default


@dataclass
class _Listing:
    """The samples and rejections of one dataset as they are found; each stem is claimed once."""

    ds: DatasetConfig
    root: Path
    values: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    first: dict[str, str] = field(default_factory=dict)

    def photo_id(self, stem: str) -> str:
        return f"{self.ds.name}/{stem}"

    def reject(self, reason: str, message: str, file: Path, row: int, stem: str = "") -> None:
        self.rejected.append(rejection("ingest", "photo", reason, message, file=str(file), row=row,
                                       photo_id=self.photo_id(stem) if stem else ""))

    def claim(self, stem: str, file: Path, row: int) -> bool:
        """Whether the stem is new to the dataset; a second one is rejected (``duplicate_sample``)."""
        if stem in self.first:
            self.reject("duplicate_sample", f"{file}:{row}: sample {stem!r} is already listed at {self.first[stem]}",
                        file, row, stem)
            return False
        self.first[stem] = f"{file}:{row}"
        return True

    def inside(self, path: Path, file: Path, row: int, stem: str) -> bool:
        """Whether the path resolves inside the dataset's root (symlinks followed); else reject ``outside_root``."""
        resolved = path.resolve()
        if resolved.is_relative_to(self.root):
            return True
        self.reject("outside_root", f"{path}: resolves to {resolved}, outside the dataset folder {self.root}", file,
                    row, stem)
        return False

    def add(self, stem: str, image: Path, mask: Path, *, manifest: Path, row: int, at: Path, split: str = "",
            user: str = "") -> None:
        """One sample; ``at`` is the file its rejections name (with ``row``)."""
        if not (self.inside(image, at, row, stem) and self.inside(mask, at, row, stem)):
            return
        pid = self.photo_id(stem)
        self.samples.append({"photo_id": pid, "user_id": self.photo_id(user) if user else pid, "path": str(image),
                             "submitted_at": "", "manifest": str(manifest), "row": row,
                             "attrs": json.dumps({"listed_split": split}, sort_keys=True), "origin": self.ds.name,
                             "origin_kind": self.ds.kind,
                             "mask": str(mask), "mask_values": self.values})

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        samples = frame(self.samples, SAMPLE_COLUMNS).sort_values("photo_id", kind="stable", ignore_index=True)
        return samples, frame(self.rejected, REJECTION_COLUMNS)


def read_dataset(ds: DatasetConfig, root: Path, spec: Spec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples with SAMPLE_COLUMNS, rejections with REJECTION_COLUMNS) of one dataset; root = ds.path resolved."""
    values = json.dumps(value_map(ds, spec), sort_keys=True)
    if not root.is_dir():
        raise CrowdsegError(f"dataset {ds.name}: no such folder", file=str(root))
    listing = _Listing(ds, root.resolve(), values)
    LAYOUTS[ds.layout](listing)
    return listing.tables()


def value_map(ds: DatasetConfig, spec: Spec) -> dict[str, int]:
    """Mask value (for LabelMe: label) -> spec class id, from ``ds.class_map`` or the layout's default; every class
    of the spec must be among them."""
    where = f"inputs.datasets[{ds.name}]"
    if ds.layout == "folders" and not ds.class_map:
        raise CrowdsegError("class_map: the folders layout has no default; map each mask value to a class",
                            file=where)
    if ds.class_map:
        names = ds.class_map
    elif ds.layout == "easyportrait":
        names = {str(c.id): c.name for c in spec.classes}
    else:
        names = DEFAULT_MAPS[ds.layout]
    out: dict[str, int] = {}
    for key, name in names.items():
        if ds.layout != "labelme" and not key.strip().isdigit():
            raise CrowdsegError(f"class_map: {key!r} is not a mask value (a whole number)", file=where)
        class_id = spec.class_id(name)
        if class_id is None:
            raise CrowdsegError(f"class_map: {name!r} (for {key!r}) is not a class of spec {spec.name}", file=where)
        out[key if ds.layout == "labelme" else str(int(key))] = class_id
    if ds.layout == "labelme" and 0 not in out.values():
        out[LABELME_BACKGROUND] = 0
    missing = [c.name for c in spec.classes if c.id not in out.values()]
    if missing:
        raise CrowdsegError(f"source {ds.name} has no class {missing[0]} of spec {spec.name}; map it in class_map or "
                            "use a spec whose classes it has", file=where)
    return out


def labelme_mask(json_path: Path, spec: Spec, labels: dict[str, int], height: int, width: int) -> np.ndarray:
    """The class-index mask (uint8, spec class ids, painted in spec draw order) of one LabelMe file's shapes whose
    label is in ``labels`` (other labels are ignored), rasterised as crowd polygons are; raises Unusable when the
    file cannot be read."""
    names = {normalize_label(k): spec.classes[v].name for k, v in labels.items()}
    try:
        assignments, shapes, rejected = read_labelme(json_path, spec, names, LABELME_ANNOTATOR)
    except CrowdsegError as e:
        raise Unusable("missing_mask", e.reason) from None
    if assignments.empty:
        raise Unusable("corrupt_mask", rejected["message"].iloc[0])
    a = assignments.iloc[0]
    scale = (width / a.seen_width, height / a.seen_height) if a.seen_width and a.seen_height else (1.0, 1.0)
    mine = shapes[shapes["label"].map(normalize_label).isin(names)]
    layers = assignment_layers(mine.to_dict("records"), height, width, MIN_SHAPE_AREA, scale)[0]
    return composite(layers, spec.draw_ids, height, width)


def _folder(root: Path, name: str, layout: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise CrowdsegError(f"not a {layout} dataset: no {name}/ folder", file=str(root))
    return path


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files of a folder (none when it is absent) with one of the suffixes, in any case, sorted by name."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if os.path.splitext(e.name)[1].lower() in suffixes and e.is_file()]
    return [folder / n for n in sorted(names)]


def _stem(name: str) -> str:
    """A listed name without its image suffix (``00001.png`` and ``00001`` both name 00001)."""
    p = PurePosixPath(name)
    return p.stem if p.suffix.lower() in IMAGE_SUFFIXES else p.name


def _images(out: _Listing, folder: Path) -> dict[str, tuple[int, Path]]:
    """Stem -> (1-based position in the sorted listing, path) of a folder's images; a second image of a stem is
    rejected (``duplicate_sample``)."""
    found: dict[str, tuple[int, Path]] = {}
    for pos, path in enumerate(_files(folder, IMAGE_SUFFIXES), start=1):
        if path.stem in found:
            out.reject("duplicate_sample", f"{path}: a second image of sample {path.stem!r} (the first is "
                       f"{found[path.stem][1].name})", path, pos, path.stem)
        else:
            found[path.stem] = (pos, path)
    return found


def _masks(folder: Path) -> dict[str, tuple[int, Path]]:
    """Stem -> (1-based position in the sorted listing, path) of a folder's PNG masks."""
    return {p.stem: (pos, p) for pos, p in enumerate(_files(folder, (".png",)), start=1)}


def _mask_of(masks: dict[str, tuple[int, Path]], stem: str) -> Path | None:
    found = masks.get(stem) or masks.get(f"{stem}_mask")
    return found[1] if found else None


def _pair(out: _Listing, stem: str, image: Path, masks: dict[str, tuple[int, Path]], masks_dir: Path, *,
          manifest: Path, row: int, at: Path, split: str = "", user: str = "") -> None:
    """A sample of an image and its mask, or ``missing_mask``."""
    mask = _mask_of(masks, stem)
    if mask is None:
        out.reject("missing_mask", f"{image}: no mask {stem}.png or {stem}_mask.png in {masks_dir}", at, row, stem)
        return
    out.add(stem, image, mask, manifest=manifest, row=row, at=at, split=split, user=user)


def _orphans(out: _Listing, masks: dict[str, tuple[int, Path]], stems: set[str]) -> None:
    """Reject the masks of no known sample (``missing_image``)."""
    for name, (pos, mask) in masks.items():
        stem = name.removesuffix("_mask")
        if name not in stems and stem not in stems:
            out.reject("missing_image", f"{mask}: a mask without its image {stem}", mask, pos, stem)


def _eg1800(out: _Listing) -> None:
    """``images_data_crop/<stem>.jpg`` and ``GT_png/<stem>_mask.png``, listed by ``train.txt``, ``val.txt`` ..."""
    images_dir = _folder(out.root, "images_data_crop", "eg1800")
    masks_dir = _folder(out.root, "GT_png", "eg1800")
    lists = [(out.root / name, split) for name, split in EG1800_LISTS.items() if (out.root / name).is_file()]
    if not lists:
        raise CrowdsegError("not an eg1800 dataset: no train.txt or val.txt list", file=str(out.root))
    images, masks = _images(out, images_dir), _masks(masks_dir)
    listed: set[str] = set()
    for path, split in lists:
        for number, line in read_lines(path):
            name = PurePosixPath(line.strip().replace("\\", "/")).name
            if not name:
                continue
            stem = _stem(name)
            listed.add(stem)
            if not out.claim(stem, path, number):
                continue
            if stem not in images:
                out.reject("missing_image", f"{path}:{number}: no image {stem} in {images_dir}", path, number, stem)
                continue
            _pair(out, stem, images[stem][1], masks, masks_dir, manifest=path, row=number, at=path, split=split)
    for stem, (pos, image) in images.items():
        if stem not in listed:
            out.reject("unlisted_image", f"{image}: in no list ({', '.join(p.name for p, _ in lists)})", image, pos,
                       stem)
    _orphans(out, masks, listed | images.keys())


def _folder_samples(out: _Listing, images_dir: Path, masks_dir: Path, split: str, users: dict[str, str]) -> None:
    """The images of a folder, each with its mask in ``masks_dir``, in the order of the folder's listing."""
    images, masks = _images(out, images_dir), _masks(masks_dir)
    for stem, (pos, image) in images.items():
        if out.claim(stem, image, pos):
            _pair(out, stem, image, masks, masks_dir, manifest=images_dir, row=pos, at=image, split=split,
                  user=users.get(stem, ""))
    _orphans(out, masks, set(images))


def _easyportrait(out: _Listing) -> None:
    """``images/<split>/`` and ``annotations/<split>/<stem>.png``, with user ids from ``meta.csv`` when it has them."""
    images_dir = _folder(out.root, "images", "easyportrait")
    masks_dir = _folder(out.root, "annotations", "easyportrait")
    splits = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    if not splits:
        raise CrowdsegError("not an easyportrait dataset: images/ has no split folders (train, val, test)",
                            file=str(out.root))
    meta = out.root / "meta.csv"
    users = _meta_users(meta) if meta.is_file() else {}
    for split in splits:
        _folder_samples(out, images_dir / split, masks_dir / split, split, users)
    for split in sorted(p.name for p in masks_dir.iterdir() if p.is_dir() and p.name not in splits):
        _orphans(out, _masks(masks_dir / split), set())


def _meta_users(path: Path) -> dict[str, str]:
    """Image stem -> user id of EasyPortrait's ``meta.csv`` (empty without a user_id column)."""
    reader = csv.reader(read_text(path).splitlines())
    header = [h.strip() for h in next(reader, [])]
    if "image_name" not in header:
        raise CrowdsegError(f"no image_name column; header is {header}", file=str(path), where=1)
    if "user_id" not in header:
        return {}
    name, user = header.index("image_name"), header.index("user_id")
    users: dict[str, str] = {}
    for fields in reader:
        if len(fields) > max(name, user) and fields[user].strip():
            users.setdefault(_stem(PurePosixPath(fields[name].strip()).name), fields[user].strip())
    return users


def _folders(out: _Listing) -> None:
    """``images/`` and ``masks/`` of the same stems."""
    _folder_samples(out, _folder(out.root, "images", "folders"), _folder(out.root, "masks", "folders"), "", {})


def _labelme(out: _Listing) -> None:
    """LabelMe ``*.json`` files in the folder, each with the image its ``imagePath`` names."""
    files = _files(out.root, (".json",))
    if not files:
        raise CrowdsegError("not a labelme dataset: no *.json files in this folder", file=str(out.root))
    for file in files:
        try:
            doc = load_json(file)
        except CrowdsegError as e:
            out.reject("bad_json", f"{file}: {e.reason}", file, 1)
            continue
        ref = doc.get("imagePath") if isinstance(doc, dict) else None
        if not isinstance(ref, str) or not ref.strip() or not isinstance(doc.get("shapes"), list):
            out.reject("bad_json", f"{file}: not a LabelMe file (needs imagePath and a shapes list)", file, 1)
            continue
        image = Path(os.path.normpath(file.parent / ref.strip().replace("\\", "/")))
        stem = image.stem
        if not out.claim(stem, file, 1) or not out.inside(image, file, 1, stem):
            continue
        if not image.is_file():
            out.reject("missing_image", f"{file}: imagePath {ref!r}: no such image {image}", file, 1, stem)
            continue
        out.add(stem, image, file, manifest=file, row=1, at=file)


LAYOUTS = {"eg1800": _eg1800, "easyportrait": _easyportrait, "folders": _folders, "labelme": _labelme}
