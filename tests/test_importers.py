"""Tool importers (CVAT, COCO, LabelMe, Label Studio, Toloka) against real exports, and photo resolution."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from pipeline.errors import CrowdsegError
from pipeline.io.coco import read_coco
from pipeline.io.cvat import read_cvat
from pipeline.io.label_studio import read_label_studio
from pipeline.io.labelme import read_labelme
from pipeline.io.manifest import read_manifest
from pipeline.io.shapes import ASSIGNMENT_COLUMNS, SHAPE_COLUMNS, trace_mask
from pipeline.io.sources import detect_format, read_source, resolve_photos
from pipeline.io.toloka import read_toloka
from pipeline.spec import Spec
from pipeline.stages.polygons import clean_shape, rasterise
from pipeline.tables import REJECTION_COLUMNS
from tests.conftest import realdata


def make_spec(*names: str, aliases: dict[str, list[str]] | None = None) -> Spec:
    """A small spec: background plus the given classes, ids in order."""
    classes = [{"id": 0, "name": "background", "color": [0, 0, 0]}]
    classes += [{"id": i, "name": n, "color": [i, i, i], "aliases": (aliases or {}).get(n, [])}
                for i, n in enumerate(names, start=1)]
    return Spec.model_validate({"name": "test", "classes": classes, "draw_order": list(names)})


def paint(shapes: pd.DataFrame, height: int, width: int, value: dict[int, int] | None = None,
          scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Rasterise shapes the way the merge stage does, painting them in table order (later ones on top)."""
    out = np.zeros((height, width), np.int32)
    for s in shapes.itertuples(index=False):
        polys, _ = clean_shape(s.points, s.holes, width, height, 0, scale)
        layer = rasterise(polys, height, width)
        if layer is not None:
            out[layer.slices][layer.mask.astype(bool)] = (value or {}).get(s.class_id, s.class_id)
    return out


def reasons(rejected: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(rejected["item"], rejected["reason"], strict=True))


def check_columns(tables: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    for table, columns in zip(tables, (ASSIGNMENT_COLUMNS, SHAPE_COLUMNS, REJECTION_COLUMNS), strict=True):
        assert list(table.columns) == columns


# --- CVAT -------------------------------------------------------------------------------------------------------

def test_cvat_images_export_keeps_regions_and_rejects_the_rest():
    path = realdata("format_fixtures", "datumaro", "cvat_dataset", "for_images", "train.xml")
    tables = read_cvat(path, make_spec("label1", "label2"), {}, "alice")
    check_columns(tables)
    assignments, shapes, rejected = tables
    assert assignments["row"].tolist() == [83, 102]  # line numbers of the <image> elements
    assert assignments["photo_id"].tolist() == ["img0.jpg", "img1.jpg"]
    assert assignments[["seen_width", "seen_height"]].values.tolist() == [[8, 8], [10, 10]]
    assert assignments["n_shapes"].tolist() == [3, 3] and set(assignments["annotator_id"]) == {"alice"}
    assert shapes["label"].tolist() == ["label1"]  # the box, xtl=0 ytl=2 xbr=4 ybr=4, as crowdseg points
    assert shapes.iloc[0]["points"].tolist() == [[-0.5, 1.5], [3.5, 1.5], [3.5, 3.5], [-0.5, 3.5]]
    assert reasons(rejected) == [("shape", "not_a_region"), ("shape", "not_a_region"), ("shape", "unknown_label"),
                                 ("shape", "not_a_region"), ("shape", "not_a_region")]
    assert "<polyline> has no area" in rejected.iloc[0]["message"] and "label ''" in rejected.iloc[2]["message"]
    assert rejected["row"].tolist() == [83, 83, 102, 102, 102]


def test_cvat_needs_an_annotator_and_refuses_video_tracks():
    images = realdata("format_fixtures", "datumaro", "cvat_dataset", "for_images", "train.xml")
    assignments, _, rejected = read_cvat(images, make_spec("label1"), {}, "")
    assert assignments.empty and reasons(rejected) == [("assignment", "no_annotator")] * 2
    video = realdata("format_fixtures", "datumaro", "cvat_dataset", "for_video", "annotations.xml")
    assignments, _, rejected = read_cvat(video, make_spec("label1"), {}, "")
    assert assignments.empty and reasons(rejected) == [("shape", "unsupported_shape")] * 4
    assert "CVAT for images" in rejected.iloc[0]["message"]


def test_cvat_masks_ellipses_and_rotated_boxes(tmp_path):
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 1:4] = mask[1, 1] = mask[1, 3] = mask[2, 0:5] = mask[3, 4] = 1
    flat = np.concatenate([[0], mask.ravel(), [2]])
    runs = np.diff(np.flatnonzero(np.diff(flat)), prepend=0)  # alternating runs, starting with 0s
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
  <meta><task><owner><username>owner</username></owner><assignee><username>bob</username></assignee></task></meta>
  <image id="0" name="a/p1.jpg" width="20" height="10">
    <mask label="skin" rle="{', '.join(map(str, runs))}" left="6" top="3" width="5" height="4" z_order="0"/>
    <box label="skin" xtl="2" ytl="1" xbr="6" ybr="3" rotation="90"/>
    <ellipse label="skin" cx="10" cy="5" rx="3" ry="2"/>
    <polygon label="skin" points="1,2;3"/>
    <tag label="skin"/>
  </image>
  <image id="1" name="a/p2.jpg" width="20" height="10"></image>
</annotations>"""
    path = tmp_path / "cvat.xml"
    path.write_text(xml, encoding="utf-8")
    assignments, shapes, rejected = read_cvat(path, make_spec("skin"), {}, "")
    assert assignments["annotator_id"].tolist() == ["bob"]  # the assignee, before the owner
    assert reasons(rejected) == [("shape", "bad_coordinates"), ("shape", "not_a_region"),
                                 ("assignment", "not_annotated")]
    traced = paint(shapes[shapes["index"] == 0], 10, 20)
    assert (traced[3:7, 6:11] == mask).all() and traced.sum() == mask.sum()
    box = np.asarray(shapes[shapes["index"] == 1].iloc[0]["points"])  # 4x2 box turned about its centre (4, 2)
    assert np.allclose(box.min(axis=0), [2.5, -0.5]) and np.allclose(box.max(axis=0), [4.5, 3.5])
    ellipse = np.asarray(shapes[shapes["index"] == 2].iloc[0]["points"])
    assert np.allclose(ellipse.min(axis=0), [6.5, 2.5]) and np.allclose(ellipse.max(axis=0), [12.5, 6.5])


def test_cvat_project_export_takes_each_task_assignee(tmp_path):
    square = '<polygon label="skin" points="1,1;4,1;4,4"/>'
    path = tmp_path / "project.xml"
    path.write_text(f"""<annotations><meta><project><owner><username>pm</username></owner><tasks>
  <task><id>7</id><owner><username>pm</username></owner><assignee><username>ann7</username></assignee></task>
  <task><id>8</id><owner><username>pm</username></owner><assignee></assignee></task></tasks></project></meta>
  <image id="0" name="a.jpg" task_id="7" width="9" height="9">{square}</image>
  <image id="1" name="b.jpg" task_id="8" width="9" height="9">{square}</image>
  <image id="2" name="c.jpg" width="9" height="9">{square}</image>
</annotations>""")
    assignments, _, _ = read_cvat(path, make_spec("skin"), {}, "")
    assert assignments["annotator_id"].tolist() == ["ann7", "pm", "ann7"]
    assert read_cvat(path, make_spec("skin"), {}, "alice")[0]["annotator_id"].tolist() == ["alice"] * 3


def test_cvat_refuses_entity_declarations(tmp_path):
    path = tmp_path / "bomb.xml"
    path.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><annotations>&x;</annotations>')
    with pytest.raises(CrowdsegError, match="document type"):
        read_cvat(path, make_spec("skin"), {}, "a")


# --- COCO -------------------------------------------------------------------------------------------------------

def test_coco_polygon_and_uncompressed_rle_fixture():
    path = realdata("format_fixtures", "datumaro", "coco_dataset", "coco_instances", "annotations",
                    "instances_val.json")
    assignments, shapes, rejected = read_coco(path, make_spec("a", "b"), {}, "alice")
    assert rejected.empty and assignments[["photo_id", "seen_width", "seen_height", "n_shapes"]].values.tolist() \
        == [["b.jpg", 5, 10, 2]]
    assert shapes.iloc[0]["points"].tolist() == [[-0.5, -0.5], [0.5, -0.5], [0.5, 1.5], [-0.5, 1.5]]
    rle = json.loads(path.read_text())["annotations"][1]["segmentation"]
    expected = coco_mask.decode(coco_mask.frPyObjects(rle, 10, 5))
    assert (paint(shapes[shapes["label"] == "b"], 10, 5) == 2 * expected).all()


def test_coco_bbox_only_annotation_becomes_its_box():
    path = realdata("format_fixtures", "datumaro", "coco_dataset", "coco_instances", "annotations",
                    "instances_train.json")
    _, shapes, _ = read_coco(path, make_spec("a", "b"), {}, "alice")
    assert shapes.iloc[0]["points"].tolist() == [[1.5, 1.5], [4.5, 1.5], [4.5, 2.5], [1.5, 2.5]]


@pytest.mark.parametrize("compressed", [False, True])
def test_rle_trace_rasterises_back_to_exactly_the_mask(tmp_path, compressed):
    rng = np.random.default_rng(7)
    images, annotations, masks = [], [], []
    for k in range(40):
        h, w = (int(v) for v in rng.integers(3, 30, 2))
        m = (rng.random((h, w)) < rng.uniform(0.2, 0.8)).astype(np.uint8)
        if k % 2:
            m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))  # blobs with holes
        rle = coco_mask.encode(np.asfortranarray(m))
        if compressed:
            seg = {"size": [h, w], "counts": rle["counts"].decode()}
        else:
            flat = np.concatenate([[0], m.ravel(order="F"), [2]])
            seg = {"size": [h, w], "counts": np.diff(np.flatnonzero(np.diff(flat)), prepend=0).tolist()}
        images.append({"id": k, "file_name": f"{k}.jpg", "width": w, "height": h})
        annotations.append({"id": k, "image_id": k, "category_id": 1, "segmentation": seg, "iscrowd": 1})
        masks.append(m)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "skin"}]}))
    assignments, shapes, rejected = read_coco(path, make_spec("skin"), {}, "alice")
    assert rejected.empty and len(assignments) == 40
    for a, m in zip(assignments.itertuples(), masks, strict=True):
        assert (paint(shapes[shapes["assignment"] == a.assignment], *m.shape) == m).all()
    assert any(s for s in shapes["holes"])


def test_trace_keeps_one_pixel_lines_and_corner_touches_exact():
    m = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 1]], np.uint8)
    parts = trace_mask(m)
    shapes = pd.DataFrame([{"points": e, "holes": h, "class_id": 1} for e, h in parts])
    assert (paint(shapes, 4, 4) == m).all()


def test_coco_rejects_what_it_cannot_use(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "p1.jpg", "width": 4, "height": 4},
                      {"id": 2, "file_name": "p2.jpg", "width": 4, "height": 4}],
           "categories": [{"id": 1, "name": "skin"}, {"id": 2, "name": "hair"}],
           "annotations": [
               {"id": 10, "image_id": 1, "category_id": 1, "segmentation": {"size": [4, 4], "counts": "zz"}},
               {"id": 11, "image_id": 1, "category_id": 2, "segmentation": [[0, 0, 2, 0, 2, 2]]},
               {"id": 12, "image_id": 1, "category_id": 9, "segmentation": [[0, 0, 2, 0, 2, 2]]},
               {"id": 13, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2]]},
               {"id": 14, "image_id": 7, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]]},
               {"id": 15, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]],
                "attributes": {"annotator": "carol"}}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    assignments, shapes, rejected = read_coco(path, make_spec("skin"), {}, "")
    assert reasons(rejected) == [("shape", "unknown_image"), ("assignment", "no_annotator"),
                                 ("assignment", "not_annotated")]
    assert assignments["annotator_id"].tolist() == ["carol"] and len(shapes) == 1
    assignments, shapes, rejected = read_coco(path, make_spec("skin"), {}, "alice")
    assert assignments["n_shapes"].tolist() == [5]
    assert [(r.reason, r.message.split(":")[0]) for r in rejected.itertuples() if r.item == "shape"] == [
        ("unknown_image", "annotations element 5"), ("bad_coordinates", "shape 0 (annotation id 10)"),
        ("unknown_label", "shape 1 (annotation id 11)"), ("unknown_label", "shape 2 (annotation id 12)"),
        ("bad_coordinates", "shape 3 (annotation id 13)")]


# --- LabelMe ----------------------------------------------------------------------------------------------------

def voc_spec() -> Spec:
    """The 20 PASCAL VOC classes with VOC's ids, plus 'ignore' (21) for labelme's __ignore__."""
    names = realdata("labelme", "semantic_segmentation", "labels.txt").read_text().splitlines()
    assert names[:2] == ["__ignore__", "_background_"] and len(names) == 22
    return make_spec(*[n.replace(" ", "_").replace("/", "_") for n in names[2:]], "ignore",
                     aliases={"tv_monitor": ["tv/monitor"]})


def test_labelme_polygons_rasterise_like_labelme_itself():
    """labelme's own class PNGs vs the merge stage's rasteriser on the imported polygons.

    With the half-pixel shift (pixel edges at integers in LabelMe) 1,094 of 544,000 pixels differ (0.20%), every
    class IoU >= 0.983; without it, 5,890 pixels would differ. The rest is the rasterisers' boundary rules.
    """
    folder = realdata("labelme", "semantic_segmentation")
    assignments, shapes, rejected = read_labelme(folder / "data_annotated", voc_spec(), {"__ignore__": "ignore"},
                                                 "wkentaro")
    assert rejected.empty and len(assignments) == 3 and len(shapes) == 18
    diff, total, inter, union = 0, 0, {}, {}
    for a in assignments.itertuples():
        ref = np.array(Image.open(folder / "data_dataset_voc" / "SegmentationClass" / f"{Path(a.file).stem}.png"))
        assert ref.shape == (a.seen_height, a.seen_width)
        ours = paint(shapes[shapes["assignment"] == a.assignment], a.seen_height, a.seen_width, {21: 255})
        diff, total = diff + int((ours != ref).sum()), total + ref.size
        for c in np.unique(ref):
            inter[c] = inter.get(c, 0) + int(((ours == c) & (ref == c)).sum())
            union[c] = union.get(c, 0) + int(((ours == c) | (ref == c)).sum())
    assert diff <= 1100 and total == 544_000
    assert min(inter[c] / union[c] for c in inter) >= 0.983


def test_labelme_unmapped_ignore_label_is_unknown_and_annotator_is_required():
    folder = realdata("labelme", "semantic_segmentation", "data_annotated")
    _, shapes, rejected = read_labelme(folder, voc_spec(), {}, "wkentaro")
    assert len(shapes) == 16 and reasons(rejected) == [("shape", "unknown_label")] * 2
    assert "'__ignore__'" in rejected.iloc[0]["message"]
    assignments, _, rejected = read_labelme(folder, voc_spec(), {}, "")
    assert assignments.empty and reasons(rejected) == [("assignment", "no_annotator")] * 3
    assert rejected["row"].tolist() == [1, 1, 1] and rejected["file"].str.endswith(".json").all()


def test_labelme_primitives_and_embedded_mask():
    path = realdata("labelme", "primitives", "primitives.json")
    label_map = {k: "skin" for k in ("rectangle", "circle", "polygon", "octagon", "line", "point", "line_strip")}
    assignments, shapes, rejected = read_labelme(path, make_spec("skin"), label_map, "a")
    assert assignments["n_shapes"].tolist() == [8] and reasons(rejected) == [("shape", "not_a_region")] * 3
    assert shapes[shapes["index"] == 0].iloc[0]["points"].tolist() == [[31.5, 34.5], [131.5, 34.5], [131.5, 134.5],
                                                              [31.5, 134.5]]
    circle = np.asarray(shapes[shapes["index"] == 1].iloc[0]["points"])
    assert np.allclose(np.hypot(*(circle - [194.5, 83.5]).T), np.hypot(30, 41))
    doc = json.loads(path.read_text())
    png = cv2.imdecode(np.frombuffer(base64.b64decode(doc["shapes"][7]["mask"]), np.uint8), 0)
    traced = paint(shapes[shapes["index"] == 7], 450, 560)
    assert (traced[305:405, 417:517] == png).all() and traced.sum() == png.sum()


def test_labelme_folder_rejects_broken_files(tmp_path):
    (tmp_path / "a.json").write_text('{"imagePath": "a.jpg", "shapes": [')
    (tmp_path / "b.json").write_text('{"imagePath": "b.jpg"}')
    (tmp_path / "c.json").write_text('{"imagePath": "c.jpg", "imageWidth": 9, "imageHeight": 9, "shapes": []}')
    assignments, _, rejected = read_labelme(tmp_path, make_spec("skin"), {}, "a")
    assert assignments["photo_id"].tolist() == ["c.jpg"] and assignments["assignment"].tolist() == ["c.json:1"]
    assert reasons(rejected) == [("assignment", "bad_json"), ("assignment", "bad_row")]
    with pytest.raises(CrowdsegError, match="no such file"):
        read_labelme(tmp_path / "missing", make_spec("skin"), {}, "a")


# --- Label Studio -----------------------------------------------------------------------------------------------

def test_label_studio_polygons_are_percent_of_the_original_size():
    path = realdata("format_fixtures", "label_studio", "test_export_yolo", "data_polygons.json")
    assignments, shapes, rejected = read_label_studio(path, make_spec("airplane"), {}, "")
    assert rejected.empty
    assert assignments[["photo_id", "annotator_id", "assignment_id", "seen_width", "seen_height"]].values.tolist() \
        == [["/image2", "1", "211797", 640, 426]]
    first = json.loads(path.read_text())[0]["annotations"][0]["result"][0]["value"]["points"][0]
    assert np.allclose(shapes.iloc[0]["points"][0], [first[0] * 6.4 - 0.5, first[1] * 4.26 - 0.5])


def test_label_studio_task_done_by_two_users_is_two_assignments():
    path = realdata("format_fixtures", "label_studio", "test_export_yolo", "data.json")
    assignments, shapes, rejected = read_label_studio(path, make_spec("parasites", "white"), {}, "")
    assert rejected.empty
    assert assignments[["assignment", "photo_id", "annotator_id", "row"]].values.tolist() == [
        ["data.json:1", "/image1", "2", 1], ["data.json:1#2", "/image1", "1", 1], ["data.json:2", "/image2", "1", 2]]
    assert shapes.groupby("assignment").size().tolist() == [2, 2, 2]
    value = json.loads(path.read_text())[0]["annotations"][0]["result"][0]["value"]
    x0, y0 = value["x"] * 28 - 0.5, value["y"] * 28 - 0.5
    assert np.allclose(shapes.iloc[0]["points"][0], [x0, y0])
    assert np.allclose(shapes.iloc[0]["points"][2], [x0 + value["width"] * 28, y0 + value["height"] * 28])


def test_label_studio_cancelled_golden_rotated_and_unsized(tmp_path):
    box = {"x": 10, "y": 20, "width": 20, "height": 10, "rotation": 90, "rectanglelabels": ["skin"]}
    tasks = [{"id": 1, "data": {"img": "/data/upload/3/0a1b2c3d-p1.jpg"}, "annotations": [
        {"id": 5, "completed_by": {"id": 7, "email": "a@x"}, "ground_truth": True, "result": [
            {"id": "r1", "type": "rectanglelabels", "original_width": 200, "original_height": 100, "value": box},
            {"id": "r2", "type": "polygon", "original_width": 200, "original_height": 100,
             "value": {"points": [[0, 0], [50, 0], [50, 50]]}},
            {"id": "r2", "type": "labels", "value": {"labels": ["Skin"]}},
            {"id": "r3", "type": "keypointlabels", "value": {"x": 1, "y": 1, "keypointlabels": ["skin"]}},
            {"id": "r4", "type": "brushlabels", "value": {"format": "rle", "rle": [1], "brushlabels": ["skin"]}}]},
        {"id": 6, "completed_by": 8, "was_cancelled": True, "result": []},
        {"id": 7, "completed_by": 9, "result": [
            {"type": "polygonlabels", "value": {"points": [[0, 0], [50, 0], [50, 50]], "polygonlabels": ["skin"]}},
            {"type": "rectanglelabels", "value": box}]}]}]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(tasks))
    assignments, shapes, rejected = read_label_studio(path, make_spec("skin"), {}, "")
    assert assignments[["annotator_id", "golden", "seen_width", "seen_height"]].values.tolist() == [
        ["7", True, 200, 100], ["9", False, 1, 1]]
    assert reasons(rejected) == [("shape", "not_a_region"), ("shape", "unsupported_shape"),
                                 ("assignment", "cancelled"), ("shape", "bad_coordinates")]
    turned = np.asarray(shapes.iloc[0]["points"]) + 0.5  # 40x10 px box turned 90 degrees about (20, 20)
    assert np.allclose(turned, [[20, 20], [20, 60], [10, 60], [10, 20]])
    assert shapes.iloc[1]["label"] == "Skin" and shapes.iloc[1]["points"][1].tolist() == [99.5, -0.5]
    assert shapes.iloc[2]["points"][1].tolist() == [0.0, -0.5]  # relative units: 50% - 0.5 of a 1x1 image


# --- Toloka -----------------------------------------------------------------------------------------------------

TOLOKA_HEADER = ["INPUT:image", "OUTPUT:result", "GOLDEN:result", "HINT:text", "ASSIGNMENT:link",
                 "ASSIGNMENT:assignment_id", "ASSIGNMENT:worker_id", "ASSIGNMENT:status", "ASSIGNMENT:started"]


def toloka_row(image: str, answer: object, worker: str, status: str = "APPROVED", golden: object = "",
               n: int = 1) -> str:
    cells = [image, answer if isinstance(answer, str) else json.dumps(answer),
             golden if isinstance(golden, str) else json.dumps(golden), "", "", f"0000{n}--{worker}", worker, status,
             "2024-05-01T10:00:00"]
    return "\t".join(cells)


def write_toloka(path: Path, rows: list[str]) -> Path:
    path.write_text("\t".join(TOLOKA_HEADER) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_toloka_relative_polygons_golden_answers_and_statuses(tmp_path):
    poly = {"shape": "polygon", "label": "skin", "points": [{"left": 0.25, "top": 0.25}, {"left": 0.75, "top": 0.25},
                                                            {"left": 0.75, "top": 0.75}]}
    rect = {"shape": "rectangle", "label": "person", "left": 0.1, "top": 0.2, "width": 0.5, "height": 0.4}
    gold = [{"shape": "rectangle", "label": "skin", "left": 0.25, "top": 0.25, "width": 0.5, "height": 0.5}]
    path = write_toloka(tmp_path / "assignments.tsv", [
        toloka_row("https://cdn.example.com/photos/p1.jpg?sig=1", [poly, rect, {"shape": "point", "left": 0.5,
                                                                                "top": 0.5}], "w1"),
        toloka_row("https://cdn.example.com/photos/p1.jpg?sig=1", [poly], "w2", status="REJECTED", n=2),
        toloka_row("https://cdn.example.com/photos/p2.jpg", [poly], "w1", golden=gold, n=3),
        toloka_row("https://cdn.example.com/photos/p2.jpg", [rect], "w3", golden=gold, n=4),
        toloka_row("https://cdn.example.com/photos/p3.jpg", "[{not json", "w3", n=5),
        toloka_row("https://cdn.example.com/photos/p3.jpg", [poly], "w4", status="SKIPPED", n=6),
        '"https://cdn.example.com/photos/p4.jpg"\t"[{""shape"": ""polygon"", ""label"": ""skin"", ""points"": '
        '[{""left"": 0, ""top"": 0}, {""left"": 1, ""top"": 0}, {""left"": 1, ""top"": 1}]}]"\t\t\t\t7\tw5\t'
        'SUBMITTED\t',
    ])
    tables = read_toloka(path, make_spec("person", "skin"), {}, "")
    check_columns(tables)
    assignments, shapes, rejected = tables
    assert assignments[["assignment", "annotator_id", "golden", "row"]].values.tolist() == [
        ["assignments.tsv:2", "w1", False, 2], ["assignments.tsv:4", "w1", False, 4],
        ["assignments.tsv:4#2", "golden", True, 4], ["assignments.tsv:5", "w3", False, 5],
        ["assignments.tsv:8", "w5", False, 8]]
    assert set(zip(assignments["seen_width"], assignments["seen_height"], strict=True)) == {(1, 1)}
    assert assignments["assignment_id"].iloc[0] == "00001--w1"
    assert [(r.row, r.reason) for r in rejected.itertuples()] == [
        (2, "not_a_region"), (3, "rejected_on_platform"), (6, "bad_json"), (7, "cancelled")]
    assert shapes.iloc[0]["points"].tolist() == [[-0.25, -0.25], [0.25, -0.25], [0.25, 0.25]]  # relative - 0.5
    # the merge stage scales seen 1x1 to the photo with pixel edges fixed: 0.25 of 100 px is the edge at 25
    polys, _ = clean_shape(shapes.iloc[0]["points"], [], 100, 80, 0, (100.0, 80.0))
    assert np.allclose(polys[0][0].min(axis=0), [24.5, 19.5]) and np.allclose(polys[0][0].max(axis=0), [74.5, 59.5])
    assert shapes[shapes["assignment"] == "assignments.tsv:8"].iloc[0]["points"][1].tolist() == [0.5, -0.5]


def test_toloka_legacy_editor_answers_and_missing_columns(tmp_path):
    legacy = [{"type": "rectangle", "label": "skin", "data": {"p1": {"x": 0.2, "y": 0.2}, "p2": {"x": 0.6, "y": 0.4}}},
              {"type": "polygon", "label": "skin", "data": [{"x": 0.1, "y": 0.1}, {"x": 0.5, "y": 0.1},
                                                              {"x": 0.5, "y": 0.5}]}]
    path = write_toloka(tmp_path / "t.tsv", [toloka_row("p1.jpg", legacy, "w1")])
    _, shapes, rejected = read_toloka(path, make_spec("skin"), {}, "")
    assert rejected.empty and shapes.iloc[0]["points"][2] == pytest.approx([0.1, -0.1])
    bad = tmp_path / "bad.tsv"
    bad.write_text("INPUT:a\tINPUT:b\tOUTPUT:result\n")
    with pytest.raises(CrowdsegError, match="INPUT:image"):
        read_toloka(bad, make_spec("skin"), {}, "")


# --- sources: detection, dispatch, photo resolution -------------------------------------------------------------

def test_detect_format_sniffs_every_fixture(tmp_path):
    cases = {
        ("format_fixtures", "datumaro", "cvat_dataset", "for_images", "train.xml"): "cvat",
        ("format_fixtures", "datumaro", "coco_dataset", "coco_instances", "annotations", "instances_val.json"): "coco",
        ("labelme", "instance_segmentation", "data_dataset_coco", "annotations.json"): "coco",
        ("labelme", "semantic_segmentation", "data_annotated"): "labelme",
        ("labelme", "primitives", "primitives.json"): "labelme",
        ("format_fixtures", "label_studio", "test_export_yolo", "data.json"): "label_studio",
        ("format_fixtures", "label_studio", "test_export_json_min", "data.json"): "label_studio",
    }
    for parts, fmt in cases.items():
        assert detect_format(realdata(*parts)) == fmt, parts
    assert detect_format(write_toloka(tmp_path / "t.txt", [])) == "toloka"
    (tmp_path / "a.data").write_text('{"photo_id": "p1", "annotator_id": "a", "shapes": []}\n{"photo_id": "p2"}\n')
    assert detect_format(tmp_path / "a.data") == "jsonl"
    with pytest.raises(CrowdsegError, match="cannot tell"):
        detect_format(realdata("format_fixtures", "crowd_kit", "segmentation_aggregation_fixtures.json"))
    assignments, _, _ = read_source(tmp_path / "a.data", "auto", make_spec("skin"), {}, "")
    assert assignments["photo_id"].tolist() == ["p1"]


def test_coco_and_labelme_exports_of_one_job_agree_after_resolving_photos(tmp_path):
    spec = voc_spec()
    coco = read_source(realdata("labelme", "instance_segmentation", "data_dataset_coco", "annotations.json"), "auto",
                       spec, {}, "wkentaro")
    labelme = read_source(realdata("labelme", "instance_segmentation", "data_annotated"), "labelme", spec, {},
                          "wkentaro")
    (tmp_path / "photos.csv").write_text("photo_id,user_id,path\n" + "".join(
        f"voc{k},u{k},JPEGImages/2011_0000{n}.jpg\n" for k, n in enumerate(("03", "06", "25"))))
    manifest, _ = read_manifest(tmp_path / "photos.csv")
    order = {"coco": ["voc0", "voc2", "voc1"], "labelme": ["voc0", "voc1", "voc2"]}  # images vs sorted files
    shapes = {}
    for name, (assignments, found, rejected) in {"coco": coco, "labelme": labelme}.items():
        assignments, found, unresolved = resolve_photos(assignments, found, manifest)
        assert unresolved.empty and assignments["photo_id"].tolist() == order[name]
        assert reasons(rejected) == ([] if name == "coco" else [("shape", "unknown_label")] * 2)  # __ignore__
        shapes[name] = sorted((s.photo_id, s.class_id, json.dumps(s.points.tolist())) for s in found.itertuples())
    assert shapes["coco"] == shapes["labelme"] and len(shapes["coco"]) == 16


def test_resolve_photos_by_id_path_name_stem_and_url(tmp_path):
    (tmp_path / "photos.csv").write_text("photo_id,user_id,path\n"
                                         "p1,u1,batch1/img_001.jpg\n"
                                         "p2,u2,batch2/img_001.jpg\n"
                                         "p3,u3,batch2/selfie.png\n"
                                         "p4,u4,p4.jpeg\n"
                                         "p5,u5,uploads/cat.jpg\n"
                                         "p6,u6,x/passwd\n")
    manifest, _ = read_manifest(tmp_path / "photos.csv")
    refs = ["p3", "batch1\\img_001.jpg", "./batch2/./img_001.jpg", "img_001.jpg", "selfie.png",
            "https://cdn.example.com/a/selfie.png?x=1", "https://cdn.example.com/p4.png",
            "/data/upload/9/0a1b2c3d-cat.jpg", "/data/local-files/?d=batch1/img_001.jpg", "nothing.jpg",
            "../../etc/passwd", "C:\\Users\\me\\uploads\\cat.jpg"]  # "passwd" is only a name to compare: p6
    assignments = pd.DataFrame([{c: "" for c in ASSIGNMENT_COLUMNS} | {
        "assignment": f"a.tsv:{i}", "photo_id": r, "annotator_id": "w", "file": "a.tsv", "row": i, "n_shapes": 1}
        for i, r in enumerate(refs, start=2)])[ASSIGNMENT_COLUMNS]
    shapes = pd.DataFrame([{c: None for c in SHAPE_COLUMNS} | {"assignment": a, "photo_id": r}
                           for a, r in zip(assignments["assignment"], refs, strict=True)])[SHAPE_COLUMNS]
    kept, kept_shapes, rejected = resolve_photos(assignments, shapes, manifest)
    assert dict(zip(kept["row"], kept["photo_id"], strict=True)) == {
        2: "p3", 3: "p1", 4: "p2", 6: "p3", 7: "p3", 8: "p4", 9: "p5", 10: "p1", 12: "p6", 13: "p5"}
    assert kept_shapes["photo_id"].tolist() == kept["photo_id"].tolist()
    assert [(r.row, r.reason, r.file) for r in rejected.itertuples()] == [
        (5, "ambiguous_photo", "a.tsv"), (11, "unknown_photo", "a.tsv")]
    assert "'img_001.jpg' matches 2 photos by file name: p1, p2" in rejected.iloc[0]["message"]
