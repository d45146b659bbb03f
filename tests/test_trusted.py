"""Trusted masks of external and derived samples: checked, mapped to class ids, written like merged masks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.build import source_splits
from pipeline.config import load_config
from pipeline.io.png import read_mask
from pipeline.spec import load_spec
from pipeline.stages.ingest import Unusable
from pipeline.stages.trusted import class_mask, load_trusted, trusted_batch

SPEC = load_spec("portrait")
EG = {"0": 0, "255": 1}


def test_values_map_to_class_ids_and_unknown_values_are_named():
    values = np.array([[0, 255], [255, 0]], np.uint8)
    assert class_mask(values, EG).tolist() == [[0, 1], [1, 0]]
    with pytest.raises(Unusable, match=r"7 \(2 px\)") as e:
        class_mask(np.array([[7, 7, 0]], np.uint8), EG)
    assert e.value.code == "mask_values_outside_class_map"


def test_palette_masks_give_indices_and_colour_masks_are_refused(tmp_path):
    pal = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.save(tmp_path / "p.png")
    assert load_trusted(str(tmp_path / "p.png"), {"0": 0, "1": 1}, 2, 2, SPEC).tolist() == [[0, 1], [1, 1]]
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((2, 2, 3), np.uint8))
    codes = []
    for path, size in ((tmp_path / "rgb.png", (2, 2)), (tmp_path / "p.png", (3, 2)), (tmp_path / "none.png", (2, 2)),
                       (tmp_path / "bad.png", (2, 2))):
        (tmp_path / "bad.png").write_bytes(b"not a png")
        with pytest.raises(Unusable) as e:
            load_trusted(str(path), {"0": 0, "1": 1}, *size, SPEC)
        codes.append(e.value.code)
    assert codes == ["mask_not_single_channel", "mask_size_mismatch", "missing_mask", "corrupt_mask"]


def test_a_batch_writes_masks_and_full_agreement_and_rejects_misfits(tmp_path):
    good = np.zeros((40, 30), np.uint8)
    good[10:30, 5:25] = 255
    cv2.imwrite(str(tmp_path / "good.png"), good)
    cv2.imwrite(str(tmp_path / "small.png"), good[:20])
    photos = pd.DataFrame({"photo_id": ["eg/1", "eg/2"], "mask": [str(tmp_path / "good.png"),
                                                                   str(tmp_path / "small.png")],
                           "mask_values": json.dumps(EG), "height": 40, "width": 30, "manifest": "list.txt",
                           "row": [1, 2]})
    m = trusted_batch(photos, SPEC, tmp_path / "out")
    assert m.photos["photo_id"].tolist() == ["eg/1"] and m.photos.at[0, "source"] == "trusted"
    assert m.photos.at[0, "px_person"] == 400
    assert np.array_equal(read_mask(m.photos.at[0, "mask_path"]), good // 255)
    assert (read_mask(m.photos.at[0, "agreement_path"]) == 255).all()
    assert m.rejections[["photo_id", "reason", "file", "row"]].values.tolist() == [
        ["eg/2", "mask_size_mismatch", "list.txt", 2]]
    assert m.classes["class"].tolist() == ["person"] and m.assignments.empty


def test_samples_go_only_to_the_splits_their_dataset_allows(tmp_path: Path):
    (tmp_path / "config.toml").write_text(
        '[split]\nratios = {train = 0.6, val = 0.2, test = 0.2}\n'
        '[[inputs.datasets]]\nname = "a"\nkind = "external"\nlayout = "eg1800"\npath = "."\nlicence = "x"\n'
        '[[inputs.datasets]]\nname = "b"\nkind = "external"\nlayout = "eg1800"\npath = "."\nlicence = "x"\n'
        'splits = ["train", "val"]\n')
    cfg = load_config(tmp_path / "config.toml")
    ids = [f"a/{i}" for i in range(30)] + [f"b/{i}" for i in range(40)] + ["c1"]
    photos = pd.DataFrame({"photo_id": ids, "user_id": ids, "origin": [i.split("/")[0] if "/" in i else "crowd"
                                                                        for i in ids]})
    splits = source_splits(photos, photos[photos["photo_id"] != "a/0"], cfg, []).set_index("photo_id")["split"]
    assert "c1" not in splits and "a/0" not in splits
    assert set(splits[splits.index.str.startswith("a/")]) == {"train"}
    b = splits[splits.index.str.startswith("b/")].value_counts()
    assert set(b.index) == {"train", "val"} and b["train"] == 30  # 0.6 : 0.2 of 40
