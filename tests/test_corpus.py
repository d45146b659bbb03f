"""The bad-input corpus (``tests/corpus.py``): one build over a clean crowd and one item of each kind of bad input.

For each kind: the build completes, the item is in ``rejections.csv`` with its stable reason code and a message
naming the file and row, and nothing else is affected: the clean photos publish the same masks in the same splits
as a build of the clean crowd alone.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.build import preflight
from pipeline.config import load_config
from pipeline.flows import run_build
from tests.corpus import clean_crowd, write_corpus


def _build(folder: Path) -> dict:
    cfg = load_config(folder / "config.toml", {"output.out": str(folder / "build")})
    return run_build(cfg, preflight(cfg))


@pytest.fixture(scope="module")
def corpus(prefect_server, tmp_path_factory) -> dict:
    bad, clean = tmp_path_factory.mktemp("corpus"), tmp_path_factory.mktemp("clean")
    expected = write_corpus(bad)
    clean_crowd(clean)
    return {"bad": bad, "clean": clean, "expected": {e.kind: e for e in expected},
            "ledger": _build(bad), "clean_ledger": _build(clean)}


KINDS = ["missing_file", "empty_file", "not_an_image", "truncated_jpeg", "tiny_photo", "decompression_bomb",
         "animated", "unsupported_format", "a_directory", "symlink_escape", "path_traversal", "missing_user",
         "extra_fields", "duplicate_photo_id", "invalid_json", "json_not_an_object", "bad_field_type", "no_annotator",
         "deeply_nested_json", "unknown_photo", "photo_rejected", "unknown_label", "too_few_points",
         "non_finite_point", "outside_image", "tiny_shape", "coco_path_traversal", "coco_unknown_category",
         "coco_not_annotated", "coco_unknown_image_id", "cvat_absolute_path", "labelme_path_traversal",
         "label_studio_encoded_traversal", "label_studio_not_a_task", "toloka_bad_answer_json"]


def test_the_corpus_has_every_kind(corpus):
    assert sorted(corpus["expected"]) == sorted(KINDS) and len(KINDS) >= 30


@pytest.mark.parametrize("kind", KINDS)
def test_each_bad_input_is_rejected_with_its_reason_file_and_row(corpus, kind):
    e = corpus["expected"][kind]
    rej = pd.read_csv(corpus["bad"] / "build" / "reports" / "rejections.csv", dtype=str, keep_default_na=False)
    mine = rej[(rej["file"] == str(corpus["bad"] / e.file)) & (rej["row"] == str(e.row)) & (rej["item"] == e.item)]
    assert len(mine) == 1, (kind, mine)
    r = mine.iloc[0]
    assert (r["stage"], r["item"], r["reason"], r["photo_id"]) == (e.stage, e.item, e.reason, e.photo_id)
    assert r["message"].strip()


def test_nothing_else_is_affected(corpus):
    """The clean photos publish in the same splits, with the same mask bytes, as without the bad inputs."""
    def published(folder: Path) -> pd.DataFrame:
        m = pd.read_csv(folder / "build" / "reports" / "photo_map.csv", dtype=str)
        return m[m["split"].fillna("") != ""].set_index("photo_id")

    bad, clean = published(corpus["bad"]), published(corpus["clean"])
    assert bad.index.tolist() == clean.index.tolist() and (bad["split"] == clean["split"]).all()
    for pid in clean.index:
        path = Path("dataset") / "annotations" / clean.at[pid, "split"] / f"{clean.at[pid, 'image_name']}.png"
        assert (corpus["bad"] / "build" / path).read_bytes() == (corpus["clean"] / "build" / path).read_bytes(), pid


def test_the_ledger_balances_with_every_bad_input_counted(corpus):
    ledger, clean = corpus["ledger"], corpus["clean_ledger"]
    bad_photos = sum(e.item == "photo" for e in corpus["expected"].values())
    assert ledger["photos_in"] == clean["photos_in"] + bad_photos
    assert ledger["photos_published"] == clean["photos_published"]


ALIAS_BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}' if p else '0'] * 9)}]\n"
                     for a, p in zip("abcdefghi", ["", *"abcdefgh"], strict=True))


@pytest.mark.parametrize("kind,write,expect", [
    ("yaml_alias_bomb_in_spec", lambda d: (d / "s.yaml").write_text(
        ALIAS_BOMB + "name: bomb\nclasses:\n  - {id: 0, name: background, color: [0, 0, 0], aliases: *i}\n"),
     "s.yaml"),
    ("non_utf8_manifest", lambda d: (d / "photos.csv").write_bytes(
        "photo_id,user_id,path\np1,u1,caf\u00e9.jpg\n".encode("latin-1")), "photos.csv:2"),
    ("unknown_config_key", lambda d: (d / "c.toml").write_text("[merge]\nquorom = 0.5\n"), "c.toml"),
    ("nested_json_tool_export", lambda d: (d / "coco.json").write_text("[" * 100_000 + "]" * 100_000), "coco.json"),
])
def test_a_bad_file_stops_the_build_in_one_line_naming_it(tmp_path, kind, write, expect):
    """Files the whole build depends on (spec, manifest, config, a tool export) give one-line errors, fast and in
    bounded memory, never a traceback."""
    from pipeline.errors import CrowdsegError
    from pipeline.io.manifest import read_manifest
    from pipeline.io.sources import detect_format
    from pipeline.spec import load_spec

    write(tmp_path)
    read = {"yaml_alias_bomb_in_spec": lambda: load_spec(tmp_path / "s.yaml"),
            "non_utf8_manifest": lambda: read_manifest(tmp_path / "photos.csv"),
            "unknown_config_key": lambda: load_config(tmp_path / "c.toml"),
            "nested_json_tool_export": lambda: detect_format(tmp_path / "coco.json")}[kind]
    with pytest.raises(CrowdsegError) as e:
        read()
    line = e.value.line()
    assert "\n" not in line and expect in line, line


def test_a_disk_full_while_publishing_leaves_the_previous_dataset_intact(corpus, monkeypatch):
    import errno

    from pipeline.errors import CrowdsegError
    from pipeline.stages import export

    dataset = corpus["clean"] / "build" / "dataset"
    before = {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()}

    def full(root: Path, *_: object, **__: object) -> None:
        (root / "coco").mkdir(exist_ok=True)
        (root / "coco" / "train.json").write_text("{")  # half written
        raise OSError(errno.ENOSPC, "No space left on device", str(root / "coco" / "train.json"))

    monkeypatch.setattr(export, "write_coco", full)
    with pytest.raises(CrowdsegError, match=r"No space left on device.*the previous dataset is unchanged"):
        _build(corpus["clean"])
    after = {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    assert after == before and not dataset.with_name("dataset.old").exists()


def test_a_huge_line_is_rejected_unparsed_in_bounded_time(tmp_path, monkeypatch):
    """A 10^7-point polygon would be ~160 MB of JSON: lines over the limit are refused before parsing (the limit
    is lowered here so the test stays small)."""
    import json

    from pipeline.io import annotations
    from pipeline.spec import load_spec

    monkeypatch.setattr(annotations, "MAX_LINE_CHARS", 10_000)
    ring = [[float(i % 300), float(i // 300)] for i in range(2_000)]
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"photo_id": "p", "annotator_id": "a", "shapes": [{"label": "skin", "points": ring}]})
                    + "\n" + json.dumps({"photo_id": "p", "annotator_id": "b", "shapes": []}) + "\n")
    assignments, shapes, rejected = annotations.read_annotations(path, load_spec("easyportrait"))
    assert assignments["annotator_id"].tolist() == ["b"] and shapes.empty
    assert rejected[["row", "reason"]].values.tolist() == [[1, "bad_row"]]
    assert "over the limit" in rejected.at[0, "message"]
