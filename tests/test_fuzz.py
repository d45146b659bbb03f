"""Fuzzing with hypothesis: the importers, the manifest reader, the config and spec loaders and polygon hygiene
never crash on arbitrary input. They return, or refuse with a one-line CrowdsegError (a bad row becomes a
rejection), within a time bound per example, and polygon hygiene never emits a shape outside the image.

``make test`` runs a bounded number of examples per property (the ``default`` profile in conftest.py);
``make fuzz`` runs many more.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.config import Config, load_config
from pipeline.errors import CrowdsegError
from pipeline.io.annotations import Line, plain_line, read_annotations
from pipeline.io.coco import read_coco
from pipeline.io.cvat import read_cvat
from pipeline.io.formats import Assignment
from pipeline.io.label_studio import read_label_studio
from pipeline.io.labelme import read_labelme
from pipeline.io.manifest import read_manifest
from pipeline.io.shapes import compact
from pipeline.io.toloka import read_toloka
from pipeline.spec import Spec, load_spec
from pipeline.stages.polygons import ShapeRejected, clean_shape, rasterise

SPEC = load_spec("easyportrait")
LABELS = ["person", "skin", "left_eye", "lips", "teeth", "moustache", "", "Skin ", "__ignore__"]
NOT_IN_FILE = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

coord = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-50, 600), st.integers(-10**6, 10**6))
point = st.lists(coord, min_size=2, max_size=2)
ring = st.lists(point, max_size=40)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                        max_leaves=20)


def _in(tmp: str, name: str, data: str | bytes) -> Path:
    path = Path(tmp) / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


def _survives(read: Callable[[], Any]) -> Any:
    """The result of ``read``, or None when it refused the input with a one-line CrowdsegError."""
    try:
        return read()
    except CrowdsegError as e:
        assert "\n" not in e.line()
        return None


@given(ext=ring, holes=st.lists(ring, max_size=2), w=st.integers(1, 400), h=st.integers(1, 400),
       sx=st.floats(0.1, 10), sy=st.floats(0.1, 10))
def test_polygon_hygiene_returns_shapes_inside_the_image_or_rejects(ext, holes, w, h, sx, sy):
    try:
        polys, _ = clean_shape(ext, holes, w, h, 0.0, (sx, sy))
    except ShapeRejected as e:
        assert e.code in {"bad_coordinates", "too_few_points", "degenerate", "outside_image", "too_small"}
        return
    for outer, inner in polys:
        for r in (outer, *inner):
            assert all(math.isfinite(v) for v in r.ravel())
            assert r[:, 0].min() >= -0.5 - 1e-6 and r[:, 0].max() <= w - 0.5 + 1e-6
            assert r[:, 1].min() >= -0.5 - 1e-6 and r[:, 1].max() <= h - 0.5 + 1e-6
    layer = rasterise(polys, h, w)
    assert layer is None or (layer.x0 >= 0 and layer.x1 <= w and layer.y0 >= 0 and layer.y1 <= h)


shape_dict = st.fixed_dictionaries({"label": st.sampled_from(LABELS), "points": st.one_of(ring, anything)},
                                   optional={"holes": st.one_of(st.lists(ring, max_size=2), anything)})
assignment = st.fixed_dictionaries(
    {"photo_id": st.one_of(st.text(max_size=6), anything), "shapes": st.one_of(st.lists(shape_dict, max_size=4),
                                                                                anything)},
    optional={"annotator_id": st.text(max_size=6), "golden": anything, "image_width": anything})
jsonl_line = st.one_of(assignment.map(json.dumps), anything.map(json.dumps), st.text(max_size=40))


@NOT_IN_FILE
@given(lines=st.lists(jsonl_line.filter(lambda s: "\n" not in s and "\r" not in s), max_size=8))
def test_native_annotations_account_for_every_line(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = _in(tmp, "a.jsonl", "\n".join(lines) + "\n")
        tables = _survives(lambda: read_annotations(path, SPEC))
    if tables is None:
        return
    assignments, _, rejected = tables
    rows = set(assignments["row"]) | set(rejected.loc[rejected["item"] == "assignment", "row"])
    assert rows == {n for n, line in enumerate(lines, start=1) if line.strip()}


manifest_cell = st.one_of(st.text(max_size=10), st.sampled_from(["../x.jpg", "/etc/passwd", "=cmd()", "a.jpg"]))


@NOT_IN_FILE
@given(header=st.lists(st.sampled_from(["photo_id", "user_id", "path", "submitted_at", "device", ""]), max_size=5),
       rows=st.lists(st.lists(manifest_cell, max_size=6), max_size=6))
def test_the_manifest_reader_keeps_paths_inside_its_folder(header, rows):
    import csv
    import io

    text = io.StringIO()
    csv.writer(text).writerows([header, *rows])
    with tempfile.TemporaryDirectory() as tmp:
        path = _in(tmp, "photos.csv", text.getvalue())
        tables = _survives(lambda: read_manifest(path))
        if tables is not None:
            for p in tables[0]["path"]:
                assert Path(p).resolve().is_relative_to(Path(tmp).resolve())


def _cvat(images: list[dict[str, Any]]) -> str:
    body = "".join(f"<image id={quoteattr(str(i.get('id')))} name={quoteattr(str(i.get('name')))} "
                   f"width={quoteattr(str(i.get('width')))} height={quoteattr(str(i.get('height')))}>"
                   + "".join(f"<polygon label={quoteattr(str(s['label']))} points={quoteattr(str(s['points']))}/>"
                             for s in i.get("shapes", [])) + "</image>" for i in images)
    return f"<?xml version='1.0'?><annotations>{body}</annotations>"


cvat_image = st.fixed_dictionaries({"id": scalars, "name": st.text(max_size=8), "width": scalars, "height": scalars,
                                    "shapes": st.lists(st.fixed_dictionaries({"label": st.sampled_from(LABELS),
                                                                              "points": st.text(max_size=30)}),
                                                       max_size=3)})
coco_doc = st.fixed_dictionaries({"images": st.lists(anything, max_size=4), "annotations": st.lists(
    st.one_of(anything, st.fixed_dictionaries({"image_id": st.integers(0, 3), "category_id": st.integers(0, 9),
                                               "segmentation": st.one_of(st.lists(st.lists(coord, max_size=12),
                                                                                  max_size=2), anything)})),
    max_size=6), "categories": st.lists(anything, max_size=4)})


@pytest.mark.parametrize("reader,name,docs", [
    (read_coco, "coco.json", st.one_of(coco_doc, anything).map(json.dumps)),
    (read_labelme, "l.json", st.one_of(st.fixed_dictionaries({"imagePath": st.text(max_size=8), "shapes": st.lists(
        st.one_of(anything, shape_dict), max_size=4)}, optional={"imageWidth": scalars, "imageHeight": scalars}),
        anything).map(json.dumps)),
    (read_label_studio, "ls.json", st.lists(st.one_of(anything, st.fixed_dictionaries(
        {"data": anything, "annotations": st.lists(anything, max_size=3)})), max_size=4).map(json.dumps)),
    (read_cvat, "cvat.xml", st.one_of(st.lists(cvat_image, max_size=3).map(_cvat), st.text(max_size=60))),
    (read_toloka, "t.tsv", st.lists(st.lists(st.text(max_size=12).filter(lambda s: not set(s) & set("\t\r\n")),
                                             max_size=4), max_size=4).map(
        lambda rows: "\n".join("\t".join(r) for r in [["INPUT:image", "OUTPUT:result", "ASSIGNMENT:worker_id"],
                                                      *rows]))),
])
def test_tool_importers_never_crash(reader, name, docs):
    @NOT_IN_FILE
    @given(doc=docs)
    def run(doc: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = _in(tmp, name, doc)
            _survives(lambda: reader(path, SPEC, {}, "fuzz"))

    run()


@given(text=st.one_of(st.text(max_size=200), st.lists(st.tuples(st.sampled_from(
    ["merge", "split", "qa", "inputs", "dedup", "nope"]), st.text(max_size=10), scalars), max_size=4).map(
    lambda kv: "".join(f"[{s}]\n{json.dumps(k)} = {json.dumps(v)}\n" for s, k, v in kv))))
def test_the_config_loader_returns_a_config_or_one_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _survives(lambda: load_config(_in(tmp, "c.toml", text)))
    assert cfg is None or isinstance(cfg, Config)


@given(doc=st.one_of(st.text(max_size=200), anything.map(json.dumps), st.fixed_dictionaries(
    {"name": st.text(max_size=6), "classes": st.lists(anything, max_size=3)}).map(json.dumps)))
def test_the_spec_loader_returns_a_spec_or_one_line(doc):
    with tempfile.TemporaryDirectory() as tmp:
        spec = _survives(lambda: load_spec(_in(tmp, "s.yaml", doc)))
    assert spec is None or isinstance(spec, Spec)


plain_ring = st.lists(st.one_of(st.lists(st.one_of(coord, st.booleans()), min_size=2, max_size=2), anything),
                      max_size=6)
near_plain = st.fixed_dictionaries(
    {"photo_id": st.text(max_size=4), "annotator_id": st.text(max_size=4),
     "shapes": st.lists(st.fixed_dictionaries({"label": st.sampled_from(LABELS), "points": plain_ring},
                                              optional={"holes": st.lists(plain_ring, max_size=2), "z": anything}),
                        max_size=3)},
    optional={"golden": st.one_of(st.booleans(), anything), "image_width": st.one_of(st.integers(-2, 3000), anything),
              "assignment_id": st.one_of(st.none(), st.text(max_size=3), anything), "submitted_at": anything,
              "extra": anything})


@given(line=st.one_of(near_plain.map(json.dumps), jsonl_line))
def test_a_line_read_without_pydantic_reads_as_pydantic_reads_it(line):
    fast = plain_line(line)
    if fast is None:  # pydantic reads it
        return
    try:
        slow = Line.of(Assignment.model_validate_json(line))
    except ValidationError as e:
        raise AssertionError(f"read without pydantic, refused by it: {e}") from None
    assert fast[:5] == slow[:5] and len(fast.shapes) == len(slow.shapes)
    for (label, points, holes), (label2, points2, holes2) in zip(fast.shapes, slow.shapes, strict=True):
        assert label == label2 and len(holes) == len(holes2)
        for mine, theirs in zip([points, *holes], [compact(points2), *map(compact, holes2)], strict=True):
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape and mine.tobytes() == theirs.tobytes()


def test_a_plain_line_is_read_without_pydantic():
    line = json.dumps({"photo_id": "p1", "annotator_id": "a1", "golden": True, "image_width": 720, "note": {"x": 1},
                       "shapes": [{"label": "skin", "points": [[1, 2.5], [3, 4], [0.1, 9]], "holes": [[[1, 1]] * 3]}]})
    a = plain_line(line)
    assert a is not None and a[:5] == ("p1", "a1", "", True, (720, 0))
    assert a.shapes[0][1].tolist() == [[1.0, 2.5], [3.0, 4.0], [0.1, 9.0]] and a.shapes[0][2][0].shape == (3, 2)
    assert plain_line(line.replace("2.5", '"2.5"')) is None  # a number as a string: pydantic's to read
