"""The bad-input corpus: a small clean crowd plus one item of each kind of bad input, and what a build must say of
each (the table ``EXPECTED``: stage, item, reason code, and the file and row the rejection must name).

    python tests/corpus.py OUT      # write the corpus to OUT (OUT/config.toml builds it)

Everything is generated (photos are real encoded files made here); nothing is checked in as a blob.
"""

from __future__ import annotations

import io
import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.simulate import simulate  # noqa: E402


@dataclass(frozen=True)
class Expected:
    """What the build must report for one kind of bad input."""

    kind: str
    photo_id: str  # the photo the rejection names ("" when none)
    stage: str
    item: str  # photo, assignment or shape
    reason: str
    file: str  # the file the rejection names, relative to the corpus folder
    row: int | None  # the row it names (None: any)


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
        img[y0: y0 + int(rng.integers(4, h)), x0: x0 + int(rng.integers(4, w))] = rng.integers(0, 256, 3)
    out = io.BytesIO()
    Image.fromarray(img).save(out, "JPEG", quality=90)
    return out.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of ``width`` x ``height`` zero pixels: a few hundred KB that decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    raw = zlib.compressobj(9)
    body = b"".join(raw.compress(b"\0" * (width + 1)) for _ in range(height)) + raw.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _animated_webp() -> bytes:
    frames = [Image.new("RGB", (96, 96), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("P", (96, 96)).save(out, "GIF")
    return out.getvalue()


def _shape(label: str, points: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {"label": label, "points": points, **extra}


SQUARE = [[100.0, 100.0], [200.0, 100.0], [200.0, 200.0], [100.0, 200.0]]


def clean_crowd(out: Path) -> None:
    """The corpus's clean part alone: a build of it is what the bad items must leave unchanged."""
    simulate(out, photos=8, users=4, annotators=3, seed=5, size=(360, 480), profiles={"careful": 1.0})


def write_corpus(out: Path) -> list[Expected]:
    """Write the corpus to ``out``; returns what the build must report."""
    clean_crowd(out)
    manifest = (out / "photos.csv").read_text()
    header = manifest.splitlines()[0]
    rows = manifest.splitlines()[1:]
    bad = out / "bad"
    bad.mkdir()
    expected: list[Expected] = []
    extra_rows: list[str] = []

    def photo(kind: str, data: bytes | None, reason: str, name: str = "", path: str = "") -> str:
        pid = f"bad_{kind}"
        if data is not None:
            (bad / (name or f"{kind}.jpg")).write_bytes(data)
        extra_rows.append(f"{pid},ubad,{path or 'bad/' + (name or kind + '.jpg')},,phone_vga")
        expected.append(Expected(kind, pid, "ingest", "photo", reason, "photos.csv", len(rows) + len(extra_rows) + 1))
        return pid

    photo("missing_file", None, "missing_file")
    photo("empty_file", b"", "empty_file")
    photo("not_an_image", b"these are not the pixels you are looking for\n", "not_an_image")
    photo("truncated_jpeg", _jpeg((360, 480), 1)[:3000], "corrupt_image")
    photo("tiny_photo", _jpeg((40, 30), 2), "too_small")
    photo("decompression_bomb", _png_bomb(12_000, 9_000), "too_many_pixels", "bomb.png")
    photo("animated", _animated_webp(), "animated", "animated.webp")
    photo("unsupported_format", _gif(), "unsupported_format", "still.gif")
    photo("a_directory", None, "missing_file", path="bad")
    outside = out.parent / f"{out.name}-outside.jpg"
    outside.write_bytes(_jpeg((360, 480), 3))
    os.symlink(outside, bad / "escape.jpg")
    photo("symlink_escape", None, "outside_root", "escape.jpg")

    def manifest_row(kind: str, line: str, reason: str, pid: str = "") -> None:
        extra_rows.append(line)
        expected.append(Expected(kind, pid, "ingest", "photo", reason, "photos.csv", len(rows) + len(extra_rows) + 1))

    manifest_row("path_traversal", "bad_traversal,ubad,../../etc/passwd,,phone_vga", "bad_row", "bad_traversal")
    manifest_row("missing_user", "bad_nouser,,bad/x.jpg,,phone_vga", "bad_row", "bad_nouser")
    manifest_row("extra_fields", "bad_fields,ubad,bad/x.jpg,,phone_vga,surplus", "bad_row")
    first_id = rows[0].split(",")[0]
    manifest_row("duplicate_photo_id", f"{first_id},ubad,bad/dup.jpg,,phone_vga", "duplicate_photo_id", first_id)
    (bad / "dup.jpg").write_bytes(_jpeg((360, 480), 4))
    (out / "photos.csv").write_text("\n".join([header, *rows, *extra_rows]) + "\n")

    lines = (out / "annotations.jsonl").read_text().splitlines()
    target = json.loads(lines[0])["photo_id"]
    extra_lines: list[str] = []

    def line(kind: str, text: str, stage: str, item: str, reason: str, pid: str = "") -> None:
        extra_lines.append(text)
        expected.append(Expected(kind, pid, stage, item, reason, "annotations.jsonl", len(lines) + len(extra_lines)))

    def assignment(annotator: str, shapes: list[dict[str, Any]], pid: str = target, **extra: Any) -> str:
        return json.dumps({"photo_id": pid, "annotator_id": annotator, "assignment_id": f"{pid}-{annotator}",
                           "shapes": shapes, **extra})

    line("invalid_json", '{"photo_id": "p", "shapes": [', "import", "assignment", "bad_json")
    line("json_not_an_object", "[1, 2, 3]", "import", "assignment", "bad_row")
    line("bad_field_type", assignment("x1", [], golden="maybe"), "import", "assignment", "bad_row", target)
    line("no_annotator", json.dumps({"photo_id": target, "shapes": []}), "import", "assignment", "bad_row", target)
    line("deeply_nested_json", '{"photo_id": ' + "[" * 5000 + "]" * 5000 + "}", "import", "assignment", "bad_json")
    line("unknown_photo", assignment("x2", [_shape("skin", SQUARE)], pid="nobody"), "import", "assignment",
         "unknown_photo", "nobody")
    line("photo_rejected", assignment("x3", [_shape("skin", SQUARE)], pid="bad_empty_file"), "import", "assignment",
         "photo_rejected", "bad_empty_file")
    line("unknown_label", assignment("x4", [_shape("moustache", SQUARE)]), "import", "shape", "unknown_label",
         target)
    line("too_few_points", assignment("x5", [_shape("skin", SQUARE[:2])]), "merge", "shape", "too_few_points",
         target)
    line("non_finite_point", assignment("x6", [_shape("skin", [[1e400, 1.0], *SQUARE[1:]])]), "merge", "shape",
         "bad_coordinates", target)
    line("outside_image", assignment("x7", [_shape("skin", [[p[0] + 5000, p[1]] for p in SQUARE])]), "merge",
         "shape", "outside_image", target)
    line("tiny_shape", assignment("x8", [_shape("skin", [[10.0, 10.0], [10.5, 10.0], [10.0, 10.5]])]), "merge",
         "shape", "too_small", target)
    (out / "annotations.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")
    expected += _tool_exports(out, rows[1].split(",")[2])
    return expected


def _tool_exports(out: Path, clean_path: str) -> list[Expected]:
    """Exports of every tool format (COCO, CVAT, LabelMe, Label Studio, Toloka) with hostile image references and
    bad annotations, added as sources."""
    flat = [v for p in SQUARE for v in p]
    coco = {"images": [{"id": 1, "file_name": "../../../../etc/passwd", "width": 360, "height": 480},
                       {"id": 2, "file_name": clean_path, "width": 360, "height": 480},
                       {"id": 3, "file_name": "photos/never_annotated.jpg", "width": 360, "height": 480}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [flat]},
                            {"id": 2, "image_id": 2, "category_id": 99, "segmentation": [flat]},
                            {"id": 3, "image_id": 7, "category_id": 1, "segmentation": [flat]}],
            "categories": [{"id": 1, "name": "skin"}]}
    (out / "coco.json").write_text(json.dumps(coco))
    points = ";".join(f"{x},{y}" for x, y in SQUARE)
    (out / "cvat.xml").write_text(
        "<?xml version='1.0'?><annotations>"
        f"<image id='0' name='/etc/shadow' width='360' height='480'><polygon label='skin' points='{points}'/></image>"
        "</annotations>")
    (out / "labelme").mkdir()
    (out / "labelme" / "escape.json").write_text(json.dumps(
        {"imagePath": "../../../../etc/passwd", "imageWidth": 360, "imageHeight": 480,
         "shapes": [{"label": "skin", "points": SQUARE, "shape_type": "polygon"}]}))
    (out / "ls.json").write_text(json.dumps([
        {"data": {"image": "/data/upload/1/0a1b2c3d-..%2F..%2Fetc%2Fhosts"}, "annotations": [
            {"completed_by": 7, "result": [{"type": "polygonlabels", "original_width": 360, "original_height": 480,
                                            "value": {"points": [[10, 10], [50, 10], [50, 50]],
                                                      "polygonlabels": ["skin"]}}]}]},
        "not a task"]))
    (out / "toloka.tsv").write_text("INPUT:image\tOUTPUT:result\tASSIGNMENT:worker_id\n"
                                    "../../x.jpg\t{\"shape\": \"polygon\", \"points\": [\tw1\n")
    with (out / "config.toml").open("a") as f:
        f.write('\n[[inputs.sources]]\npath = "coco.json"\nannotator = "coco-tool"\n'
                '\n[[inputs.sources]]\npath = "cvat.xml"\nannotator = "cvat-tool"\n'
                '\n[[inputs.sources]]\npath = "labelme"\nannotator = "labelme-tool"\n'
                '\n[[inputs.sources]]\npath = "ls.json"\nformat = "label_studio"\n'
                '\n[[inputs.sources]]\npath = "toloka.tsv"\n')
    return [Expected("coco_path_traversal", "../../../../etc/passwd", "import", "assignment", "unknown_photo",
                     "coco.json", 1),
            Expected("coco_unknown_category", clean_path, "import", "shape", "unknown_label", "coco.json", 2),
            Expected("coco_not_annotated", "photos/never_annotated.jpg", "import", "assignment", "not_annotated",
                     "coco.json", 3),
            Expected("coco_unknown_image_id", "", "import", "shape", "unknown_image", "coco.json", 3),
            Expected("cvat_absolute_path", "/etc/shadow", "import", "assignment", "unknown_photo", "cvat.xml", 1),
            Expected("labelme_path_traversal", "../../../../etc/passwd", "import", "assignment", "unknown_photo",
                     "labelme/escape.json", 1),
            Expected("label_studio_encoded_traversal", "/data/upload/1/0a1b2c3d-..%2F..%2Fetc%2Fhosts", "import",
                     "assignment", "unknown_photo", "ls.json", 1),
            Expected("label_studio_not_a_task", "", "import", "assignment", "bad_row", "ls.json", 2),
            Expected("toloka_bad_answer_json", "../../x.jpg", "import", "assignment", "bad_json", "toloka.tsv", 2)]


if __name__ == "__main__":
    for e in write_corpus(Path(sys.argv[1])):
        print(e)
