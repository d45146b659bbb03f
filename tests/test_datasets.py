"""Listing labelled datasets (EG1800, EasyPortrait, folders, LabelMe): samples, value maps, rejections."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DatasetConfig
from pipeline.errors import CrowdsegError
from pipeline.io.datasets import SAMPLE_COLUMNS, labelme_mask, read_dataset, value_map
from pipeline.spec import load_spec
from pipeline.stages.ingest import Unusable
from pipeline.tables import REJECTION_COLUMNS
from tests.conftest import realdata, write_jpeg

PORTRAIT = load_spec("portrait")
EASYPORTRAIT = load_spec("easyportrait")


def dataset(layout: str, root: Path, name: str = "src", class_map: dict[str, str] | None = None) -> DatasetConfig:
    return DatasetConfig(name=name, kind="external", layout=layout, path=str(root), licence="CC-BY-4.0",
                         class_map=class_map or {})


def write_mask(path: Path, values: tuple[int, ...] = (0, 255), size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    mask = np.full((h, w), values[0], np.uint8)
    mask[h // 4:, w // 4: 3 * w // 4] = values[-1]
    Image.fromarray(mask).save(path)
    return path


def rejections(rejected, root: Path) -> list[tuple[str, str, int, str]]:
    """(reason, file relative to root, row, photo_id) of each rejection."""
    assert list(rejected.columns) == REJECTION_COLUMNS
    assert set(rejected["stage"]) <= {"ingest"} and set(rejected["item"]) <= {"photo"}
    return sorted((r.reason, str(Path(r.file).relative_to(root)), int(r.row), r.photo_id)
                  for r in rejected.itertuples())


def test_eg1800_samples_and_rejections(tmp_path: Path) -> None:
    root = tmp_path / "EG1800"
    for i in range(1, 7):
        write_jpeg(root / "images_data_crop" / f"{i:05d}.jpg", seed=i, size=(40, 30))
        if i != 5:
            write_mask(root / "GT_png" / f"{i:05d}_mask.png")
    write_mask(root / "GT_png" / "00009_mask.png")  # a mask without its image
    (root / "train.txt").write_text("00001\n\n00002.jpg\nimages_data_crop/00003.png\n00007\n00001\n", encoding="utf-8")
    (root / "val.txt").write_text("00004.png\n00005\n", encoding="utf-8")

    samples, rejected = read_dataset(dataset("eg1800", root, "eg1800"), root, PORTRAIT)

    assert list(samples.columns) == SAMPLE_COLUMNS
    assert samples["photo_id"].tolist() == [f"eg1800/{i:05d}" for i in range(1, 5)]
    assert samples["user_id"].tolist() == samples["photo_id"].tolist()
    assert samples["row"].tolist() == [1, 3, 4, 1]
    assert [Path(m).name for m in samples["manifest"]] == ["train.txt"] * 3 + ["val.txt"]
    assert [json.loads(a) for a in samples["attrs"]] == [{"listed_split": "train"}] * 3 + [{"listed_split": "val"}]
    first = samples.iloc[0]
    assert first.path == str(root / "images_data_crop" / "00001.jpg")
    assert first["mask"] == str(root / "GT_png" / "00001_mask.png")
    assert Path(first.manifest).parent == root
    assert (first.submitted_at, first.origin, first.origin_kind) == ("", "eg1800", "external")
    assert json.loads(first.mask_values) == {"0": 0, "255": 1}
    assert rejections(rejected, root) == [
        ("duplicate_sample", "train.txt", 6, "eg1800/00001"),
        ("missing_image", "GT_png/00009_mask.png", 6, "eg1800/00009"),
        ("missing_image", "train.txt", 5, "eg1800/00007"),
        ("missing_mask", "val.txt", 2, "eg1800/00005"),
        ("unlisted_image", "images_data_crop/00006.jpg", 6, "eg1800/00006"),
    ]
    messages = dict(zip(rejected["reason"] + rejected["row"].astype(str), rejected["message"], strict=True))
    assert "train.txt:5" in messages["missing_image5"] and "00007" in messages["missing_image5"]
    assert "00005_mask.png" in messages["missing_mask2"] and "00005.jpg" in messages["missing_mask2"]
    assert "train.txt:1" in messages["duplicate_sample6"]
    assert read_dataset(dataset("eg1800", root, "eg1800"), root, PORTRAIT)[0].equals(samples)  # deterministic


def test_eg1800_prefixed_lists_and_layout_errors(tmp_path: Path) -> None:
    root = tmp_path / "eg"
    write_jpeg(root / "images_data_crop" / "00001.jpg", seed=1, size=(40, 30))
    write_mask(root / "GT_png" / "00001_mask.png")
    ds = dataset("eg1800", root)
    with pytest.raises(CrowdsegError, match=r"no train\.txt or val\.txt list") as e:
        read_dataset(ds, root, PORTRAIT)
    assert e.value.file == str(root)
    (root / "eg1800_test.txt").write_text("00001.jpg\r\n", encoding="utf-8")
    samples, rejected = read_dataset(ds, root, PORTRAIT)
    assert samples["photo_id"].tolist() == ["src/00001"] and rejected.empty
    assert json.loads(samples.at[0, "attrs"]) == {"listed_split": "test"}
    (root / "GT_png" / "00001_mask.png").rename(root / "masks.png")
    (root / "GT_png").rmdir()
    with pytest.raises(CrowdsegError, match="no GT_png/ folder"):
        read_dataset(ds, root, PORTRAIT)
    with pytest.raises(CrowdsegError, match="no such folder") as e:
        read_dataset(ds, tmp_path / "absent", PORTRAIT)
    assert e.value.file == str(tmp_path / "absent")


def test_easyportrait_splits_meta_users_and_orphans(tmp_path: Path) -> None:
    root = tmp_path / "easyportrait"
    for split, stem, seed in [("train", "a", 1), ("train", "b", 2), ("test", "c", 3), ("val", "a", 4)]:
        write_jpeg(root / "images" / split / f"{stem}.jpg", seed=seed, size=(40, 30))
        write_mask(root / "annotations" / split / f"{stem}.png", (0, 8))
    write_jpeg(root / "images" / "train" / "d.JPEG", seed=5, size=(40, 30))  # no mask
    (root / "images" / "train" / "notes.txt").write_text("not an image", encoding="utf-8")
    write_mask(root / "annotations" / "train" / "z.png", (0, 1))  # no image
    (root / "meta.csv").write_text("image_name,user_id,set\na.jpg,u1,train\nc,u2,test\nb.jpg,,train\n",
                                   encoding="utf-8")

    samples, rejected = read_dataset(dataset("easyportrait", root, "ep"), root, EASYPORTRAIT)

    assert samples["photo_id"].tolist() == ["ep/a", "ep/b", "ep/c"]
    assert samples["user_id"].tolist() == ["ep/u1", "ep/b", "ep/u2"]
    assert [json.loads(a)["listed_split"] for a in samples["attrs"]] == ["train", "train", "test"]
    assert samples["manifest"].tolist() == [str(root / "images" / s) for s in ("train", "train", "test")]
    assert samples["row"].tolist() == [1, 2, 1]
    assert samples["mask"].tolist() == [str(root / "annotations" / "train" / "a.png"),
                                        str(root / "annotations" / "train" / "b.png"),
                                        str(root / "annotations" / "test" / "c.png")]
    assert json.loads(samples.at[0, "mask_values"]) == {str(i): i for i in range(9)}
    assert rejections(rejected, root) == [
        ("duplicate_sample", "images/val/a.jpg", 1, "ep/a"),
        ("missing_image", "annotations/train/z.png", 3, "ep/z"),
        ("missing_mask", "images/train/d.JPEG", 3, "ep/d"),
    ]


def test_easyportrait_layout_errors(tmp_path: Path) -> None:
    ds = dataset("easyportrait", tmp_path)
    with pytest.raises(CrowdsegError, match="no images/ folder"):
        read_dataset(ds, tmp_path, EASYPORTRAIT)
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    with pytest.raises(CrowdsegError, match="no split folders"):
        read_dataset(ds, tmp_path, EASYPORTRAIT)
    write_jpeg(tmp_path / "images" / "train" / "a.jpg", seed=1, size=(40, 30))
    (tmp_path / "meta.csv").write_text("name,user_id\na,u1\n", encoding="utf-8")
    with pytest.raises(CrowdsegError, match="no image_name column") as e:
        read_dataset(ds, tmp_path, EASYPORTRAIT)
    assert (e.value.file, e.value.where) == (str(tmp_path / "meta.csv"), 1)


def test_folders_layout_with_symlink_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for stem, seed in [("x", 1), ("y", 2), ("z", 3)]:
        write_jpeg(root / "images" / f"{stem}.jpg", seed=seed, size=(40, 30))
    write_mask(root / "masks" / "x.png", (0, 1))
    write_mask(root / "masks" / "y_mask.png", (0, 1))
    write_mask(root / "masks" / "w.png", (0, 1))
    outside = write_jpeg(tmp_path / "elsewhere.jpg", seed=4, size=(40, 30))
    (root / "images" / "w.jpg").symlink_to(outside)
    ds = dataset("folders", root, "mine", {"0": "background", "1": "person"})

    samples, rejected = read_dataset(ds, root, PORTRAIT)

    assert samples["photo_id"].tolist() == ["mine/x", "mine/y"]
    assert samples["mask"].tolist() == [str(root / "masks" / "x.png"), str(root / "masks" / "y_mask.png")]
    assert samples["manifest"].tolist() == [str(root / "images")] * 2
    assert samples["row"].tolist() == [2, 3]
    assert [json.loads(a) for a in samples["attrs"]] == [{"listed_split": ""}] * 2
    assert rejections(rejected, root) == [("missing_mask", "images/z.jpg", 4, "mine/z"),
                                          ("outside_root", "images/w.jpg", 1, "mine/w")]
    assert str(outside) in rejected.set_index("reason").at["outside_root", "message"]
    shutil.rmtree(root / "masks")
    with pytest.raises(CrowdsegError, match="no masks/ folder"):
        read_dataset(ds, root, PORTRAIT)


def test_value_map_defaults_and_errors() -> None:
    assert value_map(dataset("eg1800", Path()), PORTRAIT) == {"0": 0, "255": 1}
    assert value_map(dataset("easyportrait", Path()), PORTRAIT) == {"0": 0, "1": 1}
    assert value_map(dataset("labelme", Path()), PORTRAIT) == {"__background__": 0, "person": 1}
    assert value_map(dataset("labelme", Path(), class_map={"bg": "bg", "human": "person"}), PORTRAIT) == {
        "bg": 0, "human": 1}
    seven = {str(i): "person" for i in range(2, 9)}
    assert value_map(dataset("easyportrait", Path(), class_map={"0": "background", "1": "person", **seven}),
                     PORTRAIT) == {"0": 0, "1": 1, **dict.fromkeys(seven, 1)}
    assert value_map(dataset("folders", Path(), class_map={"000": "background", "7": "person"}), PORTRAIT) == {
        "0": 0, "7": 1}

    with pytest.raises(CrowdsegError, match="source eg1800 has no class skin of spec easyportrait; map it in "
                       "class_map or use a spec whose classes it has") as e:
        value_map(dataset("eg1800", Path(), "eg1800"), EASYPORTRAIT)
    assert e.value.file == "inputs.datasets[eg1800]"
    with pytest.raises(CrowdsegError, match=r"'hair' .* is not a class of spec portrait"):
        value_map(dataset("folders", Path(), class_map={"0": "background", "1": "person", "2": "hair"}), PORTRAIT)
    with pytest.raises(CrowdsegError, match="the folders layout has no default"):
        value_map(dataset("folders", Path()), PORTRAIT)
    with pytest.raises(CrowdsegError, match="'person' is not a mask value"):
        value_map(dataset("folders", Path(), class_map={"0": "background", "person": "person"}), PORTRAIT)


def labelme_file(path: Path, image_path: str, shapes: list[dict], size: tuple[int, int] = (40, 30)) -> Path:
    doc = {"version": "5.0.1", "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None,
           "imageWidth": size[0], "imageHeight": size[1]}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def rect(label: str, x0: float, y0: float, x1: float, y1: float) -> dict:
    return {"label": label, "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle", "flags": {}}


def test_labelme_layout(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    write_jpeg(root / "imgs" / "a.jpg", seed=1, size=(40, 30))
    write_jpeg(tmp_path / "outside.jpg", seed=2, size=(40, 30))
    labelme_file(root / "a.json", "imgs\\a.jpg", [rect("person", 5, 5, 20, 25)])
    labelme_file(root / "b.json", "../outside.jpg", [])
    labelme_file(root / "c.json", "imgs/c.jpg", [])
    labelme_file(root / "d.json", "imgs/a.jpg", [])
    (root / "e.json").write_text('{"shapes": [', encoding="utf-8")

    samples, rejected = read_dataset(dataset("labelme", root, "lm"), root, PORTRAIT)

    assert samples["photo_id"].tolist() == ["lm/a"]
    row = samples.iloc[0]
    assert (row["path"], row["mask"], row["manifest"], row["row"]) == (str(root / "imgs" / "a.jpg"),
                                                                       str(root / "a.json"), str(root / "a.json"), 1)
    assert json.loads(row.mask_values) == {"__background__": 0, "person": 1}
    assert rejections(rejected, root) == [("bad_json", "e.json", 1, ""), ("duplicate_sample", "d.json", 1, "lm/a"),
                                          ("missing_image", "c.json", 1, "lm/c"),
                                          ("outside_root", "b.json", 1, "lm/outside")]
    with pytest.raises(CrowdsegError, match=r"no \*\.json files"):
        read_dataset(dataset("labelme", root), root / "imgs", PORTRAIT)


def test_labelme_mask_keeps_only_mapped_labels(tmp_path: Path) -> None:
    path = labelme_file(tmp_path / "a.json", "a.jpg", [rect("person", 0, 0, 20, 30), rect("cat", 10, 0, 40, 30),
                                                       rect("Skin", 2, 2, 6, 6)])
    mask = labelme_mask(path, EASYPORTRAIT, {"__background__": 0, "person": 1, "skin": 2}, 30, 40)
    assert mask.dtype == np.uint8 and mask.shape == (30, 40)
    # LabelMe's pixel edges become pixel centres -0.5 .. 19.5, and the crowd rasteriser fills centres on the edge
    assert (mask[2:7, 2:7] == 2).all() and np.count_nonzero(mask == 2) == 25  # "Skin" matches "skin"
    assert (mask[:, :21] > 0).all() and not mask[:, 21:].any()  # person on its left; cat is not mapped
    doubled = labelme_mask(path, EASYPORTRAIT, {"person": 1}, 60, 80)  # drawn on a 40x30 view of an 80x60 photo
    assert (doubled[:, :41] == 1).all() and not doubled[:, 41:].any()  # skin is not in these labels
    with pytest.raises(Unusable) as e:
        labelme_mask(tmp_path / "absent.json", PORTRAIT, {"person": 1}, 30, 40)
    assert e.value.code == "missing_mask"
    (tmp_path / "bad.json").write_text("[]", encoding="utf-8")
    with pytest.raises(Unusable) as e:
        labelme_mask(tmp_path / "bad.json", PORTRAIT, {"person": 1}, 30, 40)
    assert e.value.code == "corrupt_mask"


def test_labelme_mask_matches_labelme_rasterisation() -> None:
    annotated = realdata("labelme", "semantic_segmentation", "data_annotated")
    truth = realdata("labelme", "semantic_segmentation", "data_dataset_voc", "SegmentationClass", "2011_000003.png")
    gt = np.asarray(Image.open(truth)) == 15  # palette index of VOC's person
    mask = labelme_mask(annotated / "2011_000003.json", PORTRAIT, {"person": 1}, *gt.shape)
    ours = mask == 1
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert np.count_nonzero(ours & gt) / np.count_nonzero(ours | gt) >= 0.98
    h, w = np.asarray(Image.open(annotated / "2011_000025.jpg")).shape[:2]
    assert not labelme_mask(annotated / "2011_000025.json", PORTRAIT, {"person": 1}, h, w).any()
    samples, rejected = read_dataset(dataset("labelme", annotated, "voc"), annotated.resolve(), PORTRAIT)
    assert samples["photo_id"].tolist() == ["voc/2011_000003", "voc/2011_000006", "voc/2011_000025"]
    assert rejected.empty
