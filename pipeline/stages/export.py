"""Export: the published dataset tree in EasyPortrait's layout, written to staging and swapped in atomically.

Tree: ``images/{split}/<name>.jpg``, ``annotations/{split}/<name>.png`` (uint8 class ids), ``meta.csv``,
``coco/{split}.json`` (one compressed-RLE annotation per class present per image), ``views/<view>/{split}/<name>.png``
plus ``views/<view>/classes.json``, and optionally ``extras/agreement`` and ``extras/ignore`` trees.

Privacy: names are HMAC-SHA256 pseudonyms under a secret key (``CROWDSEG_PSEUDONYM_KEY``). Published JPEGs keep no
metadata: an upright RGB or grey JPEG is copied with every APPn and COM segment dropped (APP0 JFIF is kept without
its thumbnail; a standard 12-byte APP14 Adobe segment is kept, as it only tells the decoder the colour transform);
APP2 ICC profiles are dropped too, since a profile can name the device and its creation date. Everything else is
decoded, oriented and re-encoded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.config import Config
from pipeline.errors import CrowdsegError
from pipeline.io.png import decode_mask, encode_mask, read_mask
from pipeline.spec import Spec
from pipeline.stages.ingest import load_oriented
from pipeline.stages.views import apply_view, derived_views, view_classes
from pipeline.tables import CROWD

META_COLUMNS = ["image_name", "user_id", "height", "width", "set", "brightness", "n_annotators", "agreement",
                "mask_from", "source"]
"""EasyPortrait's columns, then how the mask was made (mask_from: vote or golden) and where the sample came from."""
KEY_ENV = "CROWDSEG_PSEUDONYM_KEY"
MIN_KEY_CHARS = 16
REENCODE_REASONS = {
    "not_jpeg": "PNG, WebP or HEIC upload",
    "rotated": "EXIF orientation applied to the pixels",
    "cmyk": "CMYK JPEG converted to RGB",
    "unusual_jpeg": "a JPEG stream the lossless stripper does not handle (e.g. arithmetic-coded, 12-bit, truncated)",
}
"""Why export_photo re-encodes a photo, by the code it returns."""


def pseudonym_key(env: Mapping[str, str], throwaway: bool) -> tuple[bytes, bool]:
    """The pseudonym key from ``CROWDSEG_PSEUDONYM_KEY``, and whether it is a throwaway one.

    Without the variable, a random key when ``throwaway`` (names then differ on every build), else CrowdsegError.
    """
    secret = env.get(KEY_ENV, "")
    if secret:
        if len(secret) < MIN_KEY_CHARS:
            raise CrowdsegError(f"{KEY_ENV} is shorter than {MIN_KEY_CHARS} characters; use a longer random secret")
        return secret.encode(), False
    if throwaway:
        return os.urandom(32), True
    raise CrowdsegError(f"set {KEY_ENV} to a secret of at least {MIN_KEY_CHARS} characters (it keys the public "
                        "image and user pseudonyms, so keep it out of the config), or set export.throwaway_key = true "
                        "for a throwaway key")


def _pseudonym(key: bytes, kind: str, value: str, n: int) -> str:
    return hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:n]


def image_name(photo_id: str, key: bytes) -> str:
    """The public file stem of a photo: HMAC-SHA256 of its id, so ids and original filenames never leave the build."""
    return _pseudonym(key, "photo", photo_id, 32)


def public_user(user_id: str, key: bytes) -> str:
    """The public pseudonym of a user: HMAC-SHA256 of the user id."""
    return _pseudonym(key, "user", user_id, 16)


class UnsafeJpeg(ValueError):
    """A JPEG stream that strip_jpeg_metadata will not copy; the caller re-encodes instead."""


_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential and progressive Huffman frames
_TABLES = {0xC4, 0xDB, 0xDD}  # DHT, DQT, DRI
_SOS, _EOI, _APP0, _APP14, _COM = 0xDA, 0xD9, 0xE0, 0xEE, 0xFE


def _marker(data: bytes, i: int) -> tuple[int, int]:
    """The marker code at ``i`` (after any 0xFF fill bytes) and the offset just past it."""
    if i >= len(data) or data[i] != 0xFF:
        raise UnsafeJpeg(f"expected a marker at byte {i}")
    while i < len(data) and data[i] == 0xFF:
        i += 1
    if i >= len(data) or data[i] == 0x00:
        raise UnsafeJpeg(f"bad marker at byte {i}")
    return data[i], i + 1


def _scan_end(data: bytes, i: int) -> int:
    """Where a scan's entropy-coded data starting at ``i`` ends: the 0xFF of the next marker other than RSTn."""
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            raise UnsafeJpeg("entropy-coded data runs past the end")
        nxt = data[i + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            i += 2
        elif nxt == 0xFF:
            i += 1
        else:
            return i


def _check_frame(payload: bytes) -> None:
    if len(payload) < 6 or payload[0] != 8 or payload[5] not in (1, 3):
        raise UnsafeJpeg("only 8-bit grey or 3-component frames are copied")
    if int.from_bytes(payload[1:3]) == 0 or int.from_bytes(payload[3:5]) == 0:
        raise UnsafeJpeg("frame without a height or width")


def _kept_app(code: int, payload: bytes) -> bytes | None:
    """The APP segment to keep for this payload (JFIF without thumbnail, standard Adobe), or None to drop it."""
    if code == _APP0 and payload.startswith(b"JFIF\x00"):
        if len(payload) < 14:
            raise UnsafeJpeg("short JFIF segment")
        return b"\xff\xe0\x00\x10" + payload[:12] + b"\x00\x00"
    if code == _APP14 and payload.startswith(b"Adobe"):
        if len(payload) != 12:
            raise UnsafeJpeg("non-standard Adobe segment")
        return b"\xff\xee\x00\x0e" + payload
    return None


def strip_jpeg_metadata(data: bytes) -> bytes:
    """The JPEG with every metadata segment removed and its coded pixel data copied byte for byte.

    Dropped: APP1-APP15 (EXIF, GPS, maker notes, XMP, ICC, MPF, Photoshop, ...) but a standard APP14 Adobe
    segment, non-JFIF APP0, the JFIF thumbnail, COM, and anything after EOI (motion-photo videos, MPO frames).
    Raises UnsafeJpeg on anything else than a well-formed 8-bit, 1- or 3-component Huffman JPEG.
    """
    if not data.startswith(b"\xff\xd8"):
        raise UnsafeJpeg("no SOI marker")
    out, i, frames, scans = [b"\xff\xd8"], 2, 0, 0
    while True:
        code, i = _marker(data, i)
        if code == _EOI:
            if not scans:
                raise UnsafeJpeg("no scan")
            out.append(b"\xff\xd9")
            return b"".join(out)
        length = int.from_bytes(data[i:i + 2])
        if length < 2 or i + length > len(data):
            raise UnsafeJpeg(f"segment 0xFF{code:02X} at byte {i} overruns the file")
        payload, segment, i = data[i + 2:i + length], bytes((0xFF, code)) + data[i:i + length], i + length
        if code in _SOF:
            if frames:
                raise UnsafeJpeg("more than one frame")
            _check_frame(payload)
            frames += 1
            out.append(segment)
        elif code in _TABLES:
            out.append(segment)
        elif code == _SOS:
            if not frames:
                raise UnsafeJpeg("a scan before the frame header")
            end = _scan_end(data, i)
            out += [segment, data[i:end].rstrip(b"\xff")]
            scans, i = scans + 1, end
        elif 0xE0 <= code <= 0xEF:
            kept = _kept_app(code, payload)
            if kept is not None:
                out.append(kept)
        elif code != _COM:
            raise UnsafeJpeg(f"unsupported marker 0xFF{code:02X}")


def reencode_reason(src: str | Path) -> str | None:
    """Why a photo cannot be published by stripping its JPEG stream (a REENCODE_REASONS code), from its header."""
    with Image.open(src) as im:
        if im.format not in ("JPEG", "MPO"):
            return "not_jpeg"
        if im.mode == "CMYK":
            return "cmyk"
        if im.getexif().get(0x0112, 1) in range(2, 9):  # what ImageOps.exif_transpose acts on (EXIF, else XMP)
            return "rotated"
    return None


def reencode_jpeg(src: str | Path, quality: int) -> bytes:
    """Decode and orient a photo: an RGB JPEG with no metadata."""
    rgb = load_oriented(src)
    rgb.info.clear()  # PIL would copy a source comment into the JPEG
    buf = BytesIO()
    rgb.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def export_photo(src: str | Path, quality: int) -> tuple[bytes, str | None]:
    """One photo as a JPEG without metadata, and None when its own JPEG stream was kept with the metadata removed
    (pixels untouched), else the reason it was re-encoded at ``quality`` (a REENCODE_REASONS code)."""
    reason = reencode_reason(src)
    if reason is None:
        try:
            return strip_jpeg_metadata(Path(src).read_bytes()), None
        except UnsafeJpeg:
            reason = "unusual_jpeg"
    return reencode_jpeg(src, quality), reason


def publish_mask(mask_path: str | Path, agreement_path: str | Path, min_share: float, ignore_index: int
                 ) -> tuple[np.ndarray, bytes]:
    """The merged mask, with ``ignore_index`` where the winning vote share is below ``min_share`` (0: off), and its
    PNG bytes. Unchanged, they are the work PNG's (``write_mask``'s), not encoded again."""
    data = Path(mask_path).read_bytes()
    mask = decode_mask(data, mask_path)
    if min_share > 0:
        mask = np.where(read_mask(agreement_path) < round(min_share * 255), np.uint8(ignore_index), mask)
        data = encode_mask(mask)
    return mask, data


@dataclass(frozen=True)
class Runs:
    """A mask's runs of one value in column-major order (COCO's), found once for its RLEs and its pixel counts."""

    height: int
    width: int
    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> Runs:
        h, w = mask.shape
        flat = cv2.transpose(mask).ravel()  # column-major; twice as fast as np.asfortranarray
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts, ends = np.concatenate(([0], change)), np.concatenate((change, [flat.size]))
        return cls(h, w, starts, ends, flat[starts])

    def counts(self) -> np.ndarray:
        """Pixels per value 0-255 (int64)."""
        return np.bincount(self.values, weights=self.ends - self.starts, minlength=256).astype(np.int64)


def coco_annotations(runs: Runs, spec: Spec) -> list[dict[str, Any]]:
    """One COCO annotation (compressed RLE, iscrowd 1, no ids yet) per non-background class present, by class id.

    Each class's RLE counts are the gaps between its runs and their lengths, compressed by pycocotools exactly as
    ``mask.encode`` of the class's binary mask would be.
    """
    h, w, size = runs.height, runs.width, runs.height * runs.width
    out = []
    for c in spec.classes[1:]:
        mine = runs.values == c.id
        if not mine.any():
            continue
        s, e = runs.starts[mine], runs.ends[mine]
        counts = np.empty(2 * len(s) + 1, np.int64)  # zeros, ones, zeros, ..., trailing zeros
        counts[0:-1:2], counts[1::2], counts[-1] = s - np.concatenate(([0], e[:-1])), e - s, size - e[-1]
        rle = mask_utils.frPyObjects({"counts": counts[:-1 if counts[-1] == 0 else None].tolist(), "size": [h, w]},
                                     h, w)
        out.append({"category_id": c.id, "iscrowd": 1, "area": int((e - s).sum()),
                    "bbox": [int(v) for v in mask_utils.toBbox(rle)],
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    return out


@dataclass(frozen=True)
class ExportOptions:
    """How photos are published: JPEG quality for re-encoded photos, the ignore threshold and optional extras."""

    quality: int = 95
    ignore_below: float = 0.0  # merge.ignore_below: pixels with a lower winning vote share get ignore_index
    agreement_maps: bool = False  # extras/agreement/{split}/<name>.png: winning vote share x 255
    ignore_masks: bool = False  # extras/ignore/{split}/<name>.png: 255 where the mask has ignore_index

    @classmethod
    def from_config(cls, cfg: Config) -> ExportOptions:
        return cls(cfg.export.jpeg_quality, cfg.merge.ignore_below, cfg.export.agreement_maps, cfg.export.ignore_masks)


@dataclass(frozen=True)
class Exported:
    """What export_photos wrote for one photo: the facts the COCO files and the dataset card need."""

    name: str
    user: str
    split: str
    height: int
    width: int
    reencoded: str | None  # a REENCODE_REASONS code; None: stripped losslessly
    pixels: tuple[int, ...]  # per spec class id
    ignored: int
    annotations: tuple[dict[str, Any], ...]  # COCO, without ids


def export_photos(published: pd.DataFrame, root: Path, spec: Spec, key: bytes, opts: ExportOptions
                  ) -> tuple[list[Exported], dict[str, str]]:
    """Write the images, masks, derived views and extras of a batch of published photos under ``root``; what was
    exported for each photo, and the sha256 of every file written, by its relative POSIX path, in path order.

    ``published`` needs photo_id, user_id, path, mask_path, agreement_path and split (may be empty).
    """
    views, _ = derived_views(spec)
    ignore = spec.ignore_index
    out: list[Exported] = []
    digests: dict[str, str] = {}
    folders: set[Path] = set()

    def put(folder: str, split: str, file: str, data: bytes) -> None:
        rel = "/".join(part for part in (folder, split, file) if part)
        path = root / rel
        if path.parent not in folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            folders.add(path.parent)
        path.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()

    for p in published.itertuples(index=False):
        name, split = image_name(p.photo_id, key), p.split
        jpeg, reason = export_photo(p.path, opts.quality)
        put("images", split, f"{name}.jpg", jpeg)
        mask, png = publish_mask(p.mask_path, p.agreement_path, opts.ignore_below, ignore)
        put("annotations", split, f"{name}.png", png)
        for v in views:
            put(f"views/{v.name}", split, f"{name}.png", encode_mask(apply_view(mask, v, ignore)))
        if opts.agreement_maps:
            put("extras/agreement", split, f"{name}.png", Path(p.agreement_path).read_bytes())
        if opts.ignore_masks:
            put("extras/ignore", split, f"{name}.png", encode_mask(np.where(mask == ignore, 255, 0).astype(np.uint8)))
        runs = Runs.of(mask)
        counts = runs.counts()
        out.append(Exported(name, public_user(p.user_id, key), split, mask.shape[0], mask.shape[1], reason,
                            tuple(int(counts[c.id]) for c in spec.classes), int(counts[ignore]),
                            tuple(coco_annotations(runs, spec))))
    return out, dict(sorted(digests.items()))


def write_json(obj: Any, path: Path, indent: int | None = None) -> None:
    """Canonical JSON: sorted keys, fixed separators, UTF-8, one trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=indent,
                      separators=(",", ":") if indent is None else (",", ": "))
    path.write_text(text + "\n", encoding="utf-8")


def write_coco(root: Path, split: str, spec: Spec, exported: Sequence[Exported],
               lines: Callable[[Exported], str] = lambda e: coco_lines(e.annotations)) -> Path:
    """Write ``coco/{split}.json``: images by name (ids from 1), annotations by image then class (ids from 1).

    Streamed image by image from each image's ``coco_lines`` (``lines(e)``), so only one image's annotations are in
    memory at a time and none is parsed again. The bytes are those of ``write_json`` on the whole document."""
    path = root / "coco" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = sorted((e for e in exported if e.split == split), key=lambda e: e.name)
    images = [{"id": i, "file_name": f"images/{split}/{e.name}.jpg", "height": e.height, "width": e.width}
              for i, e in enumerate(mine, 1)]
    head = {"info": {"description": f"{spec.name} {split} split, built by crowdseg; pixels with ignore_index "
                     f"{spec.ignore_index} in the PNG masks belong to no annotation", "version": str(spec.version)},
            "licenses": [], "images": images,
            "categories": [{"id": c.id, "name": c.name, "supercategory": spec.name} for c in spec.classes[1:]]}
    with path.open("w", encoding="utf-8") as f:
        f.write('{"annotations":[')
        n = 0
        for image_id, e in enumerate(mine, 1):
            chunk = []
            for line in lines(e).splitlines():
                before, _, after = line.partition("\t")
                n += 1
                chunk.append("{" + ",".join(p for p in (before, f'"id":{n},"image_id":{image_id}', after) if p) + "}")
            if chunk:  # one write per image
                f.write(("," if n > len(chunk) else "") + ",".join(chunk))
        f.write("]," + ",".join(f"{_canonical(k)}:{_canonical(head[k])}" for k in sorted(head)) + "}\n")
    return path


def coco_lines(annotations: Sequence[dict[str, Any]]) -> str:
    """An image's COCO annotations (no ids yet) as text ``write_coco`` numbers without parsing: per annotation one
    line, its canonical JSON members that sort before "id", a tab, and those that sort after "image_id"."""
    lines = []
    for a in annotations:
        if any("id" <= k <= "image_id" for k in a):
            raise ValueError(f"a COCO annotation's keys must sort outside 'id'..'image_id': {sorted(a)}")
        lines.append(_canonical({k: v for k, v in a.items() if k < "id"})[1:-1] + "\t"
                     + _canonical({k: v for k, v in a.items() if k > "image_id"})[1:-1] + "\n")
    return "".join(lines)


def coco_snippets(exported: Sequence[Exported]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Every image's ``coco_lines`` one after another, UTF-8, and where each lies in them: (offset, length) by name.

    An export batch writes them to one file, which publishing reads image by image."""
    chunks, spans, offset = [], {}, 0
    for e in exported:
        chunk = coco_lines(e.annotations).encode()
        chunks.append(chunk)
        spans[e.name] = (offset, len(chunk))
        offset += len(chunk)
    return b"".join(chunks), spans


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def write_view_classes(root: Path, spec: Spec) -> list[Path]:
    """Write ``views/<view>/classes.json`` for every derived view of the spec."""
    paths = []
    for v in derived_views(spec)[0]:
        paths.append(root / "views" / v.name / "classes.json")
        write_json(view_classes(v, spec), paths[-1], indent=2)
    return paths


def meta_table(published: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """EasyPortrait's meta.csv columns, plus agreement and provenance, sorted by split and name."""
    meta = pd.DataFrame({
        "image_name": [image_name(p, key) for p in published["photo_id"]],
        "user_id": [public_user(u, key) for u in published["user_id"]],
        "height": published["height"].astype(int), "width": published["width"].astype(int),
        "set": published["split"], "brightness": published["brightness"].round(4),
        "n_annotators": published["n_assignments"].astype(int), "agreement": published["median_iou"].round(4),
        "mask_from": published["source"], "source": published.get("origin", CROWD),
    })
    return meta.sort_values(["set", "image_name"], ignore_index=True)[META_COLUMNS]


def tree_files(root: Path) -> list[str]:
    """Every file under ``root``, as sorted relative POSIX paths (``os.walk``: no stat per file)."""
    top = os.path.join(root, "")
    return sorted(f"{folder.removeprefix(top).replace(os.sep, '/')}/{f}".lstrip("/")
                  for folder, _, files in os.walk(top) for f in files)


LINK_THREADS = 2  # hard links release the GIL: two threads make them in half the time; more add nothing


def place(exported: Path, staging: Path, files: Mapping[str, str], split_of: Mapping[str, str]) -> dict[str, str]:
    """Put files exported with no split (``<dir>/<name>.<ext>`` under ``exported``) into their split
    (``<dir>/<split>/<name>.<ext>`` under ``staging``), as hard links where the file system allows; returns the
    placed files' digests by their path in ``staging``."""
    placed = {}
    src_root, dst_root = os.fspath(exported), os.fspath(staging)  # plain strings: ~100k files per publish
    for rel, digest in files.items():
        folder, _, file = rel.rpartition("/")
        placed[f"{folder}/{split_of[file.split('.')[0]]}/{file}"] = digest
    for folder in {target.rpartition("/")[0] for target in placed}:
        os.makedirs(f"{dst_root}/{folder}", exist_ok=True)
    pairs = [(f"{src_root}/{rel}", f"{dst_root}/{target}") for rel, target in zip(files, placed, strict=True)]
    with ThreadPoolExecutor(LINK_THREADS) as pool:
        list(pool.map(_link_all, [pairs[k::LINK_THREADS] for k in range(LINK_THREADS)]))
    return placed


def _link_all(pairs: list[tuple[str, str]]) -> None:
    for src, dst in pairs:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def publish(staging: Path, final: Path) -> Path | None:
    """Replace ``final`` with ``staging`` so that readers see the old tree or the new one, never a mix.

    Returns where the old tree now lies (``<final>.old``), for the caller to delete, or None when there was none:
    deleting ~100k files takes longer than the swap, and nobody waits on it."""
    old = final.with_name(final.name + ".old")
    if old.exists():  # left by a build that stopped before deleting it
        shutil.rmtree(old)
    if not final.exists():
        staging.rename(final)
        return None
    final.rename(old)
    staging.rename(final)
    return old
