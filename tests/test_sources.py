"""One build that mixes three sources: a simulated crowd (2-class portrait spec), an imported EG1800-style folder,
and SINet-style crops derived from the LabelMe person photos; checked for provenance, splits and cross-source
dedup."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.build import preflight
from pipeline.config import load_config
from pipeline.errors import CrowdsegError
from pipeline.flows import run_build
from tests.conftest import realdata, write_jpeg


def eg1800(root: Path, crowd_photo: Path) -> Path:
    """An EG1800-style folder: 5 listed samples (0/255 masks), the 5th a copy of a crowd photo; a listed image that
    is missing, a sample whose mask has a stray value and one whose mask has the wrong size."""
    images, masks = root / "images_data_crop", root / "GT_png"
    masks.mkdir(parents=True)
    for n in range(1, 5):
        write_jpeg(images / f"{n:05d}.jpg", 100 + n, (300, 400))
    shutil.copyfile(crowd_photo, images / "00005.jpg")
    for n in range(1, 8):
        if n == 6:
            continue  # listed, but neither image nor mask exists
        h, w = cv2.imread(str(images / f"{min(n, 5):05d}.jpg")).shape[:2] if n <= 5 else (400, 300)
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (w // 2, h // 2), (w // 4, h // 3), 0, 0, 360, 255, -1)
        if n == 3:
            mask[0, 0] = 7  # not in the class map
        if n == 4:
            mask = mask[:-10]  # not the image's size
        cv2.imwrite(str(masks / f"{n:05d}_mask.png"), mask)
    (root / "train.txt").write_text("00001.jpg\n00002.jpg\n00003.jpg\n00004.jpg\n")
    (root / "val.txt").write_text("00005.jpg\n00006.jpg\n")
    return root


@pytest.fixture(scope="module")
def mixed(prefect_server, tmp_path_factory) -> tuple[Path, Path, dict]:
    from pipeline.simulate import simulate

    labelme = realdata("labelme", "semantic_segmentation", "data_annotated")
    crowd = tmp_path_factory.mktemp("crowd")
    simulate(crowd, photos=12, users=6, annotators=3, seed=3, size=(360, 480), spec="portrait")
    photos = pd.read_csv(crowd / "photos.csv", dtype=str)
    copied = photos["photo_id"].iloc[0]
    folder = eg1800(tmp_path_factory.mktemp("eg1800"), crowd / photos["path"].iloc[0])
    with (crowd / "config.toml").open("a") as f:
        f.write(f'\n[[inputs.datasets]]\nname = "eg1800"\nkind = "external"\nlayout = "eg1800"\npath = "{folder}"\n'
                'licence = "research only (EG1800 terms)"\n'
                f'\n[[inputs.datasets]]\nname = "voc"\nkind = "derived"\nlayout = "labelme"\npath = "{labelme}"\n'
                'licence = "PASCAL VOC 2011 terms (Flickr)"\ncrop = {min_face_px = 20, face_width_share = 0.35}\n')
    out = tmp_path_factory.mktemp("build")
    cfg = load_config(crowd / "config.toml", {"output.out": str(out)})
    first = run_build(cfg, preflight(cfg))
    sums = (out / "dataset" / "SHA256SUMS").read_text()
    again = run_build(cfg, preflight(cfg))
    return out, folder, {"ledger": first, "copied": copied, "sums": sums, "again": again}


def test_a_rebuild_reuses_every_crop_and_mask_and_publishes_the_same_bytes(mixed):
    out, _, info = mixed
    work = info["again"]["work"]
    assert work["derive"] == {"computed": 0, "reused": 3} and work["trusted masks"]["computed"] == 0
    assert (out / "dataset" / "SHA256SUMS").read_text() == info["sums"]


def test_the_dataset_holds_three_sources_and_samples_only_in_train(mixed):
    out, _, _ = mixed
    meta = pd.read_csv(out / "dataset" / "meta.csv", dtype=str)
    assert set(meta["source"]) == {"crowd", "eg1800", "voc"}
    assert set(meta.loc[meta["source"] != "crowd", "set"]) == {"train"}
    assert set(meta.loc[meta["source"] != "crowd", "mask_from"]) == {"trusted"}
    card = (out / "dataset" / "README.md").read_text()
    for line in ("| eg1800 | external | research only (EG1800 terms) |", "| voc | derived |", "| crowd |"):
        assert line in card
    counts = meta.groupby("source").size()
    assert counts["eg1800"] == 3  # 00001, 00002 and 00005 (kept over its crowd copy); 00003, 00004: bad masks
    assert counts["voc"] >= 1


def test_bad_samples_are_rejected_with_named_reasons(mixed):
    out, folder, _ = mixed
    rej = pd.read_csv(out / "reports" / "rejections.csv", dtype=str)
    mine = rej[rej["photo_id"].fillna("").str.startswith(("eg1800/", "voc/"))]
    reasons = dict(zip(mine["photo_id"], mine["reason"], strict=False))
    assert reasons["eg1800/00003"] == "mask_values_outside_class_map"
    assert reasons["eg1800/00004"] == "mask_size_mismatch"
    assert reasons["eg1800/00006"] == "missing_image"
    assert all(str(folder) in f for f in mine.loc[mine["photo_id"].str.startswith("eg1800/"), "file"])
    derive = mine[mine["stage"] == "derive"]
    assert set(derive["reason"]) <= {"no_face", "face_too_small", "face_cut_off", "several_faces",
                                     "face_not_on_person", "crop_outside_image"}
    assert "voc/2011_000025" in set(derive["photo_id"])  # buses, no person: no portrait


def test_a_crowd_photo_copying_an_external_sample_is_dropped(mixed):
    out, _, info = mixed
    dups = pd.read_csv(out / "reports" / "duplicates.csv", dtype=str)
    row = dups.set_index("photo_id").loc[info["copied"]]
    assert row["action"] == "drop" and row["kept_photo_id"] == "eg1800/00005"
    assert "eg1800" in row["reason"]


def test_every_sample_is_accounted_for(mixed):
    ledger = mixed[2]["ledger"]
    assert ledger["photos_in"] == sum(ledger[k] for k in ("photos_published", "photos_rejected",
                                                          "photos_deduplicated", "photos_held_back"))


def test_a_dataset_whose_classes_miss_the_spec_is_one_line(tmp_path):
    (tmp_path / "eg").mkdir()
    (tmp_path / "config.toml").write_text(
        '[[inputs.datasets]]\nname = "eg"\nkind = "external"\nlayout = "eg1800"\npath = "eg"\nlicence = "x"\n')
    cfg = load_config(tmp_path / "config.toml")
    with pytest.raises(CrowdsegError, match="skin"):
        from pipeline.build import check_datasets, resolve_spec

        check_datasets(cfg, resolve_spec(cfg))  # easyportrait has 9 classes; EG1800 has 2


def test_a_published_dataset_reads_back_as_an_easyportrait_source(mixed):
    """crowdseg's own output is an EasyPortrait-layout folder: every published image comes back as a sample with its
    mask and its (pseudonymised) user."""
    from pipeline.config import DatasetConfig
    from pipeline.io.datasets import read_dataset
    from pipeline.spec import load_spec

    out = mixed[0] / "dataset"
    ds = DatasetConfig(name="v1", kind="external", layout="easyportrait", path=str(out), licence="ours")
    samples, rejected = read_dataset(ds, out, load_spec("portrait"))
    meta = pd.read_csv(out / "meta.csv", dtype=str)
    assert rejected.empty and len(samples) == len(meta)
    users = dict(zip("v1/" + meta["image_name"], "v1/" + meta["user_id"], strict=True))
    assert dict(zip(samples["photo_id"], samples["user_id"], strict=True)) == users
    assert all(Path(m).parent.parent.name == "annotations" for m in samples["mask"])


def test_split_checks_look_at_the_crowd_only(mixed):
    """Train-only samples would tilt the split shares; QA judges the ratios on the crowd, which they apply to."""
    findings = pd.read_csv(mixed[0] / "reports" / "findings.csv", dtype=str)
    ratio = findings[findings["check"] == "split_ratio"]
    meta = pd.read_csv(mixed[0] / "dataset" / "meta.csv", dtype=str)
    crowd = meta[meta["source"] == "crowd"]["set"].value_counts(normalize=True)
    assert set(ratio["subject_id"]) == {s for s, r in {"train": 0.7, "val": 0.1, "test": 0.2}.items()
                                        if abs(crowd.get(s, 0.0) - r) > 0.01}
