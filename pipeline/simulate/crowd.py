"""A synthetic crowd with ground truth: users upload selfies (and near duplicates of them), annotators trace them.

``simulate`` writes what a real project would hand crowdseg (photos, manifest, annotations, config) and, under
``truth/``, what really happened, for tests. Every random draw comes from a generator seeded by (seed, stream,
item), so the same arguments give byte-identical files whatever the order of work.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline.errors import CrowdsegError
from pipeline.simulate.portrait import (
    FAR_FACE,
    LAYER_NAMES,
    SELFIE_FACE,
    Portrait,
    blur,
    render,
    truth_mask,
    underexpose,
)
from pipeline.simulate.trace import DEFAULT_PROFILES, EXPERT, Annotator, annotate, apportion, sample_annotator
from pipeline.spec import Spec, load_spec

DUPLICATE_KINDS = ("exact_cross_user", "recompressed", "resized", "cropped", "brightness", "mirrored")
DEFECT_KINDS = ("blurred", "dark", "tiny_face")
IMAGE_DEFECTS = {"blurred": blur, "dark": underexpose}  # tiny_face is drawn so, not edited afterwards
DEVICES = {"laptop_webcam": (1920, 1080), "phone_fhd": (1080, 1920), "phone_3mp": (1440, 1920), "phone_vga": (720, 960)}
DEVICE_SHARES = (0.15, 0.15, 0.2, 0.5)  # default share of users per device, in the order of DEVICES
EPOCH = datetime(2024, 3, 1, tzinfo=UTC)
DAY = 86_400
BROKEN_COLUMNS = ["kind", "file", "row", "photo_id", "detail"]
TRUTH_PHOTO_COLUMNS = ["photo_id", "user_id", "device", "width", "height", "orientation", "jpeg_quality", "gold",
                       "original_photo_id", "kind", "has_teeth", "has_beard", "face_width", "roll_deg", "defect"]

# Random streams. Run-wide draws are seeded by [seed, stream], per-item draws by [seed, stream, item...]; the two
# kinds never share a stream, as numpy's SeedSequence seeds [s, k] and [s, k, 0] alike.
DEVICE_PLAN, OWNER_PLAN, DUPLICATE_PLAN, POOL_PLAN, GOLD_PLAN, BROKEN_PLAN, BROKEN_LINES, DEFECT_PLAN = range(1, 9)
UPLOAD, DUPLICATE, RENDER, HABITS, CROWD, TRACE, EXPERT_TRACE, DEFECT = range(11, 19)


def _rng(seed: int, stream: int, *item: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *item])


@dataclass
class Upload:
    """One manifest row: an original photo or a duplicate of one. Sizes are (width, height) of the oriented photo."""

    key: int                # originals are 0..photos-1, duplicates follow
    original: int           # key of the original whose picture this is
    kind: str               # "original" or one of DUPLICATE_KINDS
    user: int
    device: str
    size: tuple[int, int]
    orientation: int        # EXIF orientation of the stored file: 1, or 6/8 when stored rotated
    quality: int
    seconds: int            # upload time after EPOCH
    crop: tuple[int, int, int, int] | None = None
    delta: int = 0          # brightness shift
    photo_id: str = ""
    annotators: list[int] = field(default_factory=list)
    gold: bool = False
    defect: str = ""        # one of DEFECT_KINDS, or "" for a fine photo

    @property
    def path(self) -> str:
        return f"photos/{user_id(self.user)}/{self.photo_id}.jpg"


def user_id(user: int) -> str:
    return f"u{user + 1:04d}"


def stamp(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=int(seconds))).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan_uploads(photos: int, users: int, seed: int, size: tuple[int, int] | None,
                 devices: dict[str, float] | None = None) -> list[Upload]:
    """Originals spread over users Zipf-like, about 10% duplicates on top, ids given in upload order.

    Each user owns one device of DEVICES, drawn with the ``devices`` shares (default DEVICE_SHARES)."""
    names = list(DEVICES)
    shares = np.array(DEVICE_SHARES if devices is None else [devices.get(n, 0.0) for n in names], dtype=float)
    owned = [names[i] for i in _rng(seed, DEVICE_PLAN).choice(len(names), users, p=shares / shares.sum())]
    owners = _owners(photos, users, _rng(seed, OWNER_PLAN))
    originals = [_original(i, int(owners[i]), owned[owners[i]], size, _rng(seed, UPLOAD, i)) for i in range(photos)]
    uploads = originals + _duplicates(originals, users, owned, seed)
    for n, up in enumerate(sorted(uploads, key=lambda u: (u.seconds, u.key)), start=1):
        up.photo_id = f"p{n:06d}"
    return uploads


def _owners(photos: int, users: int, rng: np.random.Generator) -> np.ndarray:
    """The user of each original: everyone uploads at least once while photos last, the rest go Zipf-like."""
    first = rng.permutation(users)[:photos]
    weights = 1 / np.arange(1, users + 1) ** 1.1
    extra = rng.permutation(users)[rng.choice(users, photos - first.size, p=weights / weights.sum())]
    return rng.permutation(np.concatenate([first, extra]))


def _original(key: int, user: int, device: str, size: tuple[int, int] | None, rng: np.random.Generator) -> Upload:
    rotated = device.startswith("phone") and rng.random() < 0.07
    return Upload(key, key, "original", user, device, size or DEVICES[device],
                  orientation=int(rng.choice([6, 8])) if rotated else 1, quality=int(rng.integers(80, 96)),
                  seconds=int(rng.integers(0, 60 * DAY)))


def _duplicates(originals: list[Upload], users: int, devices: list[str], seed: int) -> list[Upload]:
    """About one duplicate per nine originals. Kinds take turns, each round an exact cross-user copy first and then
    the others in random order, so that even a small crowd has one to find."""
    rng = _rng(seed, DUPLICATE_PLAN)
    count = round(len(originals) / 9)
    sources = np.sort(rng.choice(len(originals), count, replace=False))
    rounds = math.ceil(count / len(DUPLICATE_KINDS))
    kinds = [str(k) for _ in range(rounds) for k in [DUPLICATE_KINDS[0], *rng.permutation(DUPLICATE_KINDS[1:])]]
    kinds = kinds[:count]
    return [_duplicate(originals[int(src)], len(originals) + j, kind, users, devices, _rng(seed, DUPLICATE, j))
            for j, (src, kind) in enumerate(zip(sources, kinds, strict=True))]


def _duplicate(src: Upload, key: int, kind: str, users: int, devices: list[str], rng: np.random.Generator) -> Upload:
    """A later upload of ``src``'s picture: the same bytes under another account, or an edited copy by the same user."""
    if kind == "exact_cross_user" and users < 2:
        kind = "recompressed"
    seconds = src.seconds + int(rng.integers(60, 7 * DAY))
    if kind == "exact_cross_user":
        other = int(rng.integers(users - 1))
        other += other >= src.user  # anyone but the uploader
        return Upload(key, src.key, kind, other, devices[other], src.size, src.orientation, src.quality, seconds)
    w, h = src.size
    dup = Upload(key, src.key, kind, src.user, src.device, src.size, 1, int(rng.integers(80, 96)), seconds)
    if src.device.startswith("phone") and rng.random() < 0.07:
        dup.orientation = int(rng.choice([6, 8]))
    if kind == "recompressed":
        dup.quality = int(rng.choice([q for q in range(80, 96) if q != src.quality]))
    elif kind == "resized":
        scale = rng.uniform(0.5, 0.85)
        dup.size = (round(w * scale), round(h * scale))
    elif kind == "cropped":
        cw, ch = w - round(w * rng.uniform(0.01, 0.05)), h - round(h * rng.uniform(0.01, 0.05))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        dup.crop, dup.size = (x0, y0, x0 + cw, y0 + ch), (cw, ch)
    elif kind == "brightness":
        dup.delta = int(rng.integers(15, 41)) * (1 if rng.random() < 0.5 else -1)
    return dup


def plan_defects(uploads: list[Upload], eligible: list[int], defects: int, seed: int) -> None:
    """Give ``defects`` of the ``eligible`` originals each defect kind."""
    need = defects * len(DEFECT_KINDS)
    if need > len(eligible):
        raise CrowdsegError(f"defects={defects} needs {need} photos that are neither gold, duplicated nor broken; "
                            f"only {len(eligible)} are: simulate more photos or fewer defects")
    for n, key in enumerate(_rng(seed, DEFECT_PLAN).choice(eligible, need, replace=False)):
        uploads[int(key)].defect = DEFECT_KINDS[n // defects]


def make_pool(size: int, profiles: dict[str, float], seed: int) -> list[Annotator]:
    """``size`` annotators, profiles in proportion to ``profiles``, in shuffled order of ids a001, a002, ..."""
    names = apportion(size, profiles)
    order = _rng(seed, POOL_PLAN).permutation(size)
    return [sample_annotator(f"a{i + 1:03d}", names[order[i]], _rng(seed, HABITS, i)) for i in range(size)]


def derive(portrait: Portrait, up: Upload, src: Upload, partner: dict[str, str]) -> Portrait:
    """The picture of a duplicate, made from the original's portrait."""
    if up.kind == "recompressed":
        return portrait.with_image(decode_jpeg(encode_jpeg(portrait.image, src.quality, 1)))
    if up.kind == "resized":
        return portrait.resized(*up.size)
    if up.crop is not None:
        return portrait.cropped(up.crop)
    if up.kind == "brightness":
        lut = np.clip(np.arange(256) + up.delta, 0, 255).astype(np.uint8)
        return portrait.with_image(cv2.LUT(portrait.image, lut))
    if up.kind == "mirrored":
        return portrait.mirrored(partner)
    return portrait


def encode_jpeg(image: np.ndarray, quality: int, orientation: int) -> bytes:
    """JPEG bytes; with orientation 6 or 8 the pixels are stored rotated and EXIF says how to turn them upright."""
    turns = {1: 0, 6: 1, 8: -1}[orientation]
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(image, turns)))
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Crowd:
    """Everything ``simulate`` needs besides the uploads."""

    seed: int
    spec: Spec
    pool: list[Annotator]
    partner: dict[str, str]
    truncate: int | None      # key of the upload whose file is cut in half (broken mode)


def write_group(out: Path, crowd: Crowd, group: list[Upload]) -> tuple[list[dict], list[dict]]:
    """Render an original, derive its duplicates, write their files; return annotation lines and truth rows."""
    src = group[0]
    share = FAR_FACE if src.defect == "tiny_face" else SELFIE_FACE
    portrait = render(_rng(crowd.seed, RENDER, src.key), *src.size, share).for_spec(crowd.spec)
    if src.defect in IMAGE_DEFECTS:
        portrait = portrait.with_image(IMAGE_DEFECTS[src.defect](portrait.image, _rng(crowd.seed, DEFECT, src.key)))
    lines, rows = [], []
    original_bytes = encode_jpeg(portrait.image, src.quality, src.orientation)
    for up in group:
        pic = derive(portrait, up, src, crowd.partner)
        if up.kind in ("original", "exact_cross_user"):
            data = original_bytes
        else:
            data = encode_jpeg(pic.image, up.quality, up.orientation)
        path = out / up.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[:len(data) // 2] if up.key == crowd.truncate else data)
        (out / "truth" / "masks" / f"{up.photo_id}.png").write_bytes(png_bytes(truth_mask(pic, crowd.spec)))
        lines += _assignments(crowd, up, pic)
        rows.append(_truth_row(up, src, pic))
    return lines, rows


def _assignments(crowd: Crowd, up: Upload, pic: Portrait) -> list[dict]:
    work = [(crowd.pool[i], _rng(crowd.seed, TRACE, up.key, i)) for i in up.annotators]
    if up.gold:
        work.append((EXPERT, _rng(crowd.seed, EXPERT_TRACE, up.key)))
    lines = []
    for annotator, rng in work:
        line = {"photo_id": up.photo_id, "annotator_id": annotator.annotator_id,
                "assignment_id": f"{up.photo_id}-{annotator.annotator_id}",
                "submitted_at": stamp(up.seconds + int(rng.integers(3600, 5 * DAY)))}
        if annotator is EXPERT:
            line["golden"] = True
        line["shapes"] = annotate(annotator, pic.layers, crowd.spec, pic.size, rng)
        lines.append(line)
    return lines


def _truth_row(up: Upload, src: Upload, pic: Portrait) -> dict:
    return {"photo_id": up.photo_id, "user_id": user_id(up.user), "device": up.device, "width": up.size[0],
            "height": up.size[1], "orientation": up.orientation, "jpeg_quality": up.quality, "gold": up.gold,
            "original_photo_id": "" if up.kind == "original" else src.photo_id, "kind": up.kind, **pic.facts,
            "defect": up.defect}


@dataclass(frozen=True)
class Line:
    """An annotation line as its sort key, shape count and JSON text (as dicts, a big crowd's lines take GBs)."""

    photo_id: str
    annotator_id: str
    shapes: int
    text: str

    @classmethod
    def of(cls, line: dict | Line) -> Line:
        if isinstance(line, Line):
            return line
        return cls(line["photo_id"], line["annotator_id"], len(line["shapes"]), json.dumps(line, separators=(",", ":")))

    @staticmethod
    def key(line: dict | Line) -> tuple[str, str]:
        """File order: by photo, then annotator."""
        if isinstance(line, Line):
            return line.photo_id, line.annotator_id
        return line["photo_id"], line["annotator_id"]


def break_lines(lines: list[dict], uploads: list[Upload], rng: np.random.Generator) -> list[dict]:
    """Spoil a few annotation lines, one way each, and add a line for an unknown photo; say what was done."""
    widths = {u.photo_id: u.size[0] for u in uploads}
    usable = [i for i, line in enumerate(lines) if line["shapes"] and not line.get("golden")]
    if not usable:
        raise CrowdsegError("broken mode needs at least one assignment with shapes")
    picks = [lines[int(i)] for i in rng.choice(usable, 4, replace=len(usable) < 4)]
    broken = []
    for line, kind in zip(picks, ("unknown_label", "self_intersecting", "outside_image"), strict=False):
        shape = _bad_shape(kind, line["shapes"][-1], widths[line["photo_id"]])
        line["shapes"].append(shape)
        detail = f"{line['annotator_id']}, shape {len(line['shapes'])}: {shape['label']} {shape['points']}"
        broken.append({"kind": kind, "line": line, "photo_id": line["photo_id"], "detail": detail})
    stray = dict(picks[3], photo_id=f"p{len(uploads) + 1:06d}")
    stray["assignment_id"] = f"{stray['photo_id']}-{stray['annotator_id']}"
    lines.append(stray)
    broken.append({"kind": "unknown_photo", "line": stray, "photo_id": stray["photo_id"],
                   "detail": f"copy of {picks[3]['assignment_id']} for a photo that is not in photos.csv"})
    return broken


def _bad_shape(kind: str, near: dict, width: int) -> dict:
    """A shape with an unknown label, a bowtie over ``near``'s bounding box, or a triangle right of the image."""
    (x0, y0), (x1, y1) = np.min(near["points"], axis=0).tolist(), np.max(near["points"], axis=0).tolist()
    if kind == "unknown_label":
        return {"label": "glasses", "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "holes": []}
    if kind == "self_intersecting":
        return {"label": near["label"], "points": [[x0, y0], [x1, y1], [x1, y0], [x0, y1]], "holes": []}
    return {"label": near["label"], "points": [[width + 10, 10], [width + 60, 10], [width + 35, 50]], "holes": []}


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: str(v).lower() if isinstance(v, bool) else v for k, v in row.items()})


def _prepare(out: Path) -> None:
    """Make ``out`` ready: refuse a folder with other content, replace the files of an earlier simulation."""
    if out.exists() and any(out.iterdir()):
        if not (out / "truth" / "annotators.csv").is_file():
            raise CrowdsegError("folder is not empty and holds no earlier simulation", file=str(out))
        for name in ("photos", "truth"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("photos.csv", "annotations.jsonl", "config.toml"):
            (out / name).unlink(missing_ok=True)
    (out / "truth" / "masks").mkdir(parents=True, exist_ok=True)


def _check(photos: int, users: int, annotators: int, seed: int, pool: int, size: tuple[int, int] | None,
           profiles: dict[str, float], gold_share: float, defects: int, spec: Spec,
           devices: dict[str, float] | None, workers: int) -> None:
    if photos < 1 or users < 1 or annotators < 1:
        raise CrowdsegError("photos, users and annotators must be at least 1")
    if defects < 0:
        raise CrowdsegError(f"defects must be a non-negative integer, got {defects}")
    if seed < 0:
        raise CrowdsegError(f"seed must be a non-negative integer, got {seed}")
    if pool < annotators:
        raise CrowdsegError(f"the pool ({pool}) must hold at least the {annotators} annotators each photo gets")
    if size is not None and min(size) < 64:
        raise CrowdsegError(f"photo size {size} is too small; both sides must be at least 64")
    unknown = set(profiles) - set(DEFAULT_PROFILES)
    if unknown or any(v < 0 for v in profiles.values()) or sum(profiles.values()) <= 0:
        raise CrowdsegError(f"profiles must give non-negative shares of {', '.join(DEFAULT_PROFILES)}, got {profiles}")
    if devices is not None and (set(devices) - set(DEVICES) or any(v < 0 for v in devices.values())
                                or sum(devices.values()) <= 0):
        raise CrowdsegError(f"devices must give non-negative shares of {', '.join(DEVICES)}, got {devices}")
    if workers < 1:
        raise CrowdsegError(f"workers must be at least 1, got {workers}")
    if not 0 <= gold_share <= 1:
        raise CrowdsegError(f"gold_share must be between 0 and 1, got {gold_share}")
    missing = [n for n in spec.names[1:] if n not in LAYER_NAMES]
    if missing:
        raise CrowdsegError(f"cannot simulate classes {missing}; known: {', '.join(LAYER_NAMES)}")


def simulate(out: Path, *, photos: int, users: int, annotators: int, seed: int,
             size: tuple[int, int] | None = None, pool: int | None = None,
             profiles: dict[str, float] | None = None, gold_share: float = 0.05,
             broken: bool = False, spec: str = "easyportrait", defects: int = 0,
             devices: dict[str, float] | None = None, workers: int = 1) -> dict[str, int]:
    """Write a synthetic crowd project to ``out`` (see the package docstring for the layout); return counts.

    ``defects`` photos of each of DEFECT_KINDS are picked among originals that are neither gold, duplicated nor
    broken; the annotators still trace what is really there. ``devices`` gives the share of users per device of
    DEVICES (which sets their photos' sizes; unnamed devices get none), e.g. ``{"laptop_webcam": 1, "phone_vga": 2}``;
    ``size`` overrides it. ``workers`` processes render the photos; every draw is seeded per item, so the files are
    the same whatever the number.
    """
    out, the_spec = Path(out), load_spec(spec)
    pool = 4 * annotators if pool is None else pool
    profiles = DEFAULT_PROFILES if profiles is None else profiles
    _check(photos, users, annotators, seed, pool, size, profiles, gold_share, defects, the_spec, devices, workers)

    uploads = plan_uploads(photos, users, seed, size, devices)
    for up in uploads:
        up.annotators = sorted(int(i) for i in _rng(seed, CROWD, up.key).choice(pool, annotators, replace=False))
    for key in _rng(seed, GOLD_PLAN).choice(photos, round(gold_share * photos), replace=False):
        uploads[int(key)].gold = True
    has_copies = {u.original for u in uploads if u.kind != "original"}
    plain = [u.key for u in uploads[:photos] if not u.gold and u.key not in has_copies]
    truncate = int(_rng(seed, BROKEN_PLAN).choice(plain or [0])) if broken else None
    plan_defects(uploads, [key for key in plain if key != truncate], defects, seed)
    crowd = Crowd(seed, the_spec, make_pool(pool, profiles, seed),
                  {c.name: c.flip for c in the_spec.classes if c.flip}, truncate)
    _prepare(out)

    lines, truth_rows = [], []
    groups: dict[int, list[Upload]] = {}
    for up in uploads:
        groups.setdefault(up.original, []).append(up)
    for group_lines, group_rows in _write_groups(out, crowd, [groups[key] for key in sorted(groups)], workers):
        lines += group_lines if broken else [Line.of(line) for line in group_lines]  # broken mode edits them
        truth_rows += group_rows

    broken_rows = break_lines(lines, uploads, _rng(seed, BROKEN_LINES)) if broken else []
    lines.sort(key=Line.key)
    uploads.sort(key=lambda u: u.photo_id)
    _write_inputs(out, uploads, lines, spec)
    _write_truth(out / "truth", crowd, uploads, lines, truth_rows, broken_rows)
    return {"photos": photos, "duplicates": len(uploads) - photos, "manifest_rows": len(uploads),
            "users": len({u.user for u in uploads}), "annotators": pool, "assignments": len(lines),
            "gold": sum(u.gold for u in uploads), "shapes": sum(Line.of(line).shapes for line in lines),
            "broken": len(broken_rows) + (crowd.truncate is not None), "defects": sum(bool(u.defect) for u in uploads)}


def _write_groups(out: Path, crowd: Crowd, work: list[list[Upload]], workers: int
                  ) -> Iterator[tuple[list[dict], list[dict]]]:
    """``write_group`` on each group, in order, in this process or in a pool of ``workers``."""
    if workers == 1:
        yield from (write_group(out, crowd, group) for group in work)
        return
    with ProcessPoolExecutor(workers) as executor:
        chunk = max(1, min(64, len(work) // (4 * workers)))
        yield from executor.map(write_group, [out] * len(work), [crowd] * len(work), work, chunksize=chunk)


def _write_inputs(out: Path, uploads: list[Upload], lines: list[dict] | list[Line], spec: str) -> None:
    """The manifest, annotations and config a real project would have (the photos are already written)."""
    _write_csv(out / "photos.csv", ["photo_id", "user_id", "path", "submitted_at", "device"],
               [{"photo_id": u.photo_id, "user_id": user_id(u.user), "path": u.path, "submitted_at": stamp(u.seconds),
                 "device": u.device} for u in uploads])
    with (out / "annotations.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(Line.of(line).text + "\n" for line in lines)
    spec_ref = str(Path(spec).resolve()) if Path(spec).suffix else spec
    (out / "config.toml").write_text(
        f'[inputs]\nphotos = "photos.csv"\nannotations = "annotations.jsonl"\nspec = {json.dumps(spec_ref)}\n\n'
        '[output]\nout = "build"\n', encoding="utf-8")


def _write_truth(truth: Path, crowd: Crowd, uploads: list[Upload], lines: list[dict] | list[Line],
                 truth_rows: list[dict], broken_rows: list[dict]) -> None:
    """The truth tables (the masks are already written). ``uploads`` and ``lines`` are in file order."""
    ids = {u.key: u.photo_id for u in uploads}
    _write_csv(truth / "duplicates.csv", ["photo_id", "original_photo_id", "kind", "same_user"],
               [{"photo_id": u.photo_id, "original_photo_id": ids[u.original], "kind": u.kind,
                 "same_user": u.kind != "exact_cross_user"} for u in uploads if u.kind != "original"])
    _write_csv(truth / "annotators.csv", Annotator.columns(), [a.row() for a in [*crowd.pool, EXPERT]])
    _write_csv(truth / "photos.csv", TRUTH_PHOTO_COLUMNS, sorted(truth_rows, key=lambda r: r["photo_id"]))
    rows = []
    if crowd.truncate is not None:
        n, up = next((n, u) for n, u in enumerate(uploads, start=2) if u.key == crowd.truncate)
        rows.append({"kind": "truncated_jpeg", "file": up.path, "row": n, "photo_id": up.photo_id,
                     "detail": "file cut in half; row is its line in photos.csv"})
    for b in broken_rows:
        n = next(n for n, line in enumerate(lines, start=1) if line is b["line"])
        rows.append({"kind": b["kind"], "file": "annotations.jsonl", "row": n, "photo_id": b["photo_id"],
                     "detail": b["detail"]})
    _write_csv(truth / "broken.csv", BROKEN_COLUMNS, rows)
