"""End-to-end builds through Prefect on one session-scoped test server, checked against the simulator's truth."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import flows, store
from pipeline import incremental as inc
from pipeline.build import preflight
from pipeline.config import Config, load_config
from pipeline.flows import run_build
from pipeline.pool import ProcessPool
from pipeline.run import Stopwatch
from pipeline.simulate import simulate
from pipeline.spec import load_spec

SPEC = load_spec("easyportrait")


def _build(crowd: Path, out: Path) -> dict:
    cfg = load_config(crowd / "config.toml", {"output.out": str(out)})
    return run_build(cfg, preflight(cfg))


def _coco_export(crowd: Path, n: int) -> Path:
    """One native assignment of each of the first n photos re-exported as COCO (pixel edges at integers)."""
    spec_ids = {c.id: c.name for c in SPEC.classes}
    photos = pd.read_csv(crowd / "photos.csv", dtype=str).set_index("photo_id")
    images, annotations = [], []
    lines = [json.loads(line) for line in (crowd / "annotations.jsonl").read_text().splitlines()]
    first = {a["photo_id"]: a for a in reversed(lines) if a["photo_id"] in set(photos.index)}
    for a in [first[p] for p in sorted(first)[:n]]:
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": photos.at[a["photo_id"], "path"], "width": 720, "height": 960})
        for s in a["shapes"]:
            if not s["holes"]:
                flat = [v + 0.5 for point in s["points"] for v in point]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                    "category_id": SPEC.class_id(s["label"]), "segmentation": [flat]})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in spec_ids.items() if i]}
    path = crowd / "tool_export.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="module")
def crowd(tmp_path_factory) -> Path:
    """A careful crowd with every kind of broken input, at a realistic phone size, plus a COCO export."""
    out = tmp_path_factory.mktemp("crowd")
    simulate(out, photos=36, users=14, annotators=5, seed=7, size=(720, 960), profiles={"careful": 1.0},
             broken=True)
    _coco_export(out, 6)
    with (out / "config.toml").open("a") as f:
        f.write('\n[[inputs.sources]]\npath = "tool_export.json"\nannotator = "coco-tool"\n')
    return out


@pytest.fixture(scope="module")
def builds(crowd, prefect_server, tmp_path_factory) -> tuple[Path, Path, dict]:
    a, b = tmp_path_factory.mktemp("build_a"), tmp_path_factory.mktemp("build_b")
    ledger = _build(crowd, a)
    _build(crowd, b)
    return a, b, ledger


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_dataset_tree_is_complete(builds):
    out, _, ledger = builds
    ds = out / "dataset"
    meta = pd.read_csv(ds / "meta.csv", dtype={"image_name": str, "user_id": str})
    assert list(meta.columns[:6]) == ["image_name", "user_id", "height", "width", "set", "brightness"]
    assert len(meta) == ledger["photos_published"] > 0
    for r in meta.itertuples():
        img = Image.open(ds / "images" / r.set / f"{r.image_name}.jpg")
        mask = Image.open(ds / "annotations" / r.set / f"{r.image_name}.png")
        assert img.format == "JPEG" and mask.mode == "L" and img.size == mask.size == (r.width, r.height)
        assert np.asarray(mask).max() < len(SPEC.classes)
    assert (ds / "README.md").read_text().startswith("# easyportrait dataset")
    assert not (out / "dataset.staging").exists()
    assert "photo_id" not in (ds / "meta.csv").read_text()
    assert (out / "reports" / "qa.html").stat().st_size > 0 and (out / "reports" / "photo_map.csv").exists()
    for name in ("duplicates", "rejected_photos"):
        rows = json.loads((out / "reports" / f"{name}.json").read_text())
        assert len(rows) == len(pd.read_csv(out / "reports" / f"{name}.csv")) > 0
    assert (out / "work" / "index.parquet").exists()
    assert not (out / "work" / "merged").exists(), "merge's stored rows are let go once the report is written"
    assert len(pd.read_csv(out / "reports" / "assignments.csv")) > 0
    assert (out / "reports" / "summary.md").read_text().startswith("# crowdseg build: easyportrait")
    timings = pd.read_csv(out / "reports" / "timings.csv")
    assert list(timings["stage"]) == [*ledger["timings"], "total", *(f"{k} items" for k in ledger["work"])]
    assert {"ingest", "merge", "merge items"} <= set(timings["stage"])


def test_rebuild_is_byte_identical(builds):
    a, b, _ = builds
    assert _tree(a / "dataset") == _tree(b / "dataset")
    _, mismatch, errors = filecmp.cmpfiles(a / "dataset", b / "dataset", _tree(a / "dataset"), shallow=False)
    assert not mismatch and not errors
    for name in ("agreement.csv", "duplicates.csv", "findings.csv", "photo_map.csv"):
        assert (a / "reports" / name).read_bytes() == (b / "reports" / name).read_bytes(), name


def test_published_tree_leaks_nothing_and_checks_out(builds, crowd):
    """An audit of dataset/ alone: user-disjoint sets, near-duplicate clusters in one set, no metadata, no raw id,
    COCO equal to the PNGs, SHA256SUMS valid."""
    from pycocotools import mask as rle

    out, _, _ = builds
    ds = out / "dataset"
    meta = pd.read_csv(ds / "meta.csv", dtype=str)
    assert meta.groupby("user_id")["set"].nunique().max() == 1
    truth = pd.read_csv(crowd / "truth" / "duplicates.csv", dtype=str)
    pmap = pd.read_csv(out / "reports" / "photo_map.csv", dtype=str).set_index("photo_id")["split"]
    for r in truth.itertuples():
        if r.photo_id in pmap.index and r.original_photo_id in pmap.index:
            assert pmap[r.photo_id] == pmap[r.original_photo_id], r
    raw = set(pd.read_csv(crowd / "photos.csv", dtype=str)[["photo_id", "user_id"]].to_numpy().ravel())
    for path in ds.rglob("*"):
        if path.suffix == ".jpg":
            data = path.read_bytes()
            assert b"Exif" not in data and b"http://ns.adobe.com/xap" not in data and not Image.open(path).getexif()
        elif path.suffix in (".csv", ".json", ".md") or path.name == "SHA256SUMS":
            text = path.read_text()
            assert not any(i in text for i in raw), path
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=ds, check=True)
    for split in ("train", "val", "test"):
        coco = json.loads((ds / "coco" / f"{split}.json").read_text())
        by_image = {im["id"]: im for im in coco["images"]}
        assert len(by_image) == int((meta["set"] == split).sum())
        built = {i: np.zeros((im["height"], im["width"]), np.uint8) for i, im in by_image.items()}
        for a in coco["annotations"]:
            built[a["image_id"]][rle.decode(a["segmentation"]).astype(bool)] = a["category_id"]
        for i, im in by_image.items():
            png = ds / "annotations" / split / Path(im["file_name"]).with_suffix(".png").name
            assert np.array_equal(built[i], np.asarray(Image.open(png)))


def test_a_rebuild_with_new_users_moves_no_old_photo(crowd, prefect_server, tmp_path):
    manifest = pd.read_csv(crowd / "photos.csv", dtype=str)
    users = sorted(manifest["user_id"].unique())
    newcomers = set(users[-max(1, len(users) // 5):])
    old = crowd / "photos_before_newcomers.csv"  # beside the photos, as manifest paths are relative to it
    manifest[~manifest["user_id"].isin(newcomers)].to_csv(old, index=False)
    first = tmp_path / "first"
    cfg = load_config(crowd / "config.toml", {"output.out": str(first), "inputs.photos": str(old)})
    run_build(cfg, preflight(cfg))
    second = tmp_path / "second"
    cfg = load_config(crowd / "config.toml", {"output.out": str(second),
                                              "split.previous": str(first / "work" / "splits.csv")})
    run_build(cfg, preflight(cfg))
    before = pd.read_csv(first / "work" / "splits.csv", dtype=str).set_index("photo_id")["split"]
    after = pd.read_csv(second / "work" / "splits.csv", dtype=str).set_index("photo_id")["split"]
    assert len(after) > len(before) > 0 and (after[before.index] == before).all()
    quality = json.loads((second / "reports" / "qa.json").read_text())["split_quality"]
    assert quality["pinned_photos"] == len(before) and quality["moved_photos"] == 0
    assert "kept their split from the previous version" in (second / "dataset" / "README.md").read_text()


def test_careful_crowd_merges_to_truth(builds, crowd):
    out, _, _ = builds
    pmap = pd.read_csv(out / "reports" / "photo_map.csv", dtype=str)
    n = len(SPEC.classes)
    inter, union = np.zeros(n), np.zeros(n)
    for r in pmap.itertuples():
        pred = np.asarray(Image.open(out / "dataset" / "annotations" / r.split / f"{r.image_name}.png"))
        true = np.asarray(Image.open(crowd / "truth" / "masks" / f"{r.photo_id}.png"))
        cm = np.bincount(pred.ravel().astype(np.int64) * n + true.ravel(), minlength=n * n).reshape(n, n)
        inter += np.diag(cm)
        union += cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = inter / np.maximum(union, 1)
    assert iou.mean() >= 0.95, dict(zip(SPEC.names, iou.round(3), strict=True))


def test_no_user_in_two_splits_and_exact_duplicates_removed(builds, crowd):
    out, _, _ = builds
    pmap = pd.read_csv(out / "reports" / "photo_map.csv", dtype=str)
    assert pmap.groupby("user_id")["split"].nunique().max() == 1
    truth = pd.read_csv(crowd / "truth" / "duplicates.csv", dtype=str)
    published = set(pmap["photo_id"])
    exact = truth[truth["kind"] == "exact_cross_user"]
    assert len(exact) > 0
    for r in exact.itertuples():
        assert not {r.photo_id, r.original_photo_id} <= published


def test_every_input_is_accounted_for(builds, crowd):
    out, _, ledger = builds
    manifest_rows = len(pd.read_csv(crowd / "photos.csv"))
    lines = sum(1 for line in (crowd / "annotations.jsonl").read_text().splitlines() if line.strip())
    lines += len(json.loads((crowd / "tool_export.json").read_text())["images"])
    assert ledger["photos_in"] == manifest_rows and ledger["assignments_in"] == lines
    assert (ledger["photos_published"] + ledger["photos_rejected"] + ledger["photos_deduplicated"]
            + ledger["photos_held_back"]) == manifest_rows
    rejections = pd.read_csv(out / "reports" / "rejections.csv", dtype=str)
    published = pd.read_csv(out / "reports" / "photo_map.csv", dtype=str)["photo_id"]
    dropped = pd.read_csv(out / "reports" / "duplicates.csv", dtype=str).query("action == 'drop'")["photo_id"]
    photo_rejected = rejections.query("item == 'photo'")["photo_id"]
    manifest_ids = pd.read_csv(crowd / "photos.csv", dtype=str)["photo_id"]
    assert sorted([*published, *dropped, *photo_rejected]) == sorted(manifest_ids)
    used = pd.read_csv(out / "reports" / "assignments.csv", dtype=str)
    assert len(used) + int((rejections["item"] == "assignment").sum()) == lines


def test_tool_exports_join_the_vote(builds):
    out, _, _ = builds
    used = pd.read_csv(out / "reports" / "assignments.csv", dtype=str)
    coco = used[used["annotator_id"] == "coco-tool"]
    assert len(coco) >= 5 and coco["assignment"].str.startswith("source1/").all()
    assert (coco["iou_person"].astype(float) > 0.97).all()  # COCO drops holed shapes: compare what it kept
    assert (coco["iou_left_eye"].astype(float) > 0.8).all()


def test_broken_inputs_are_rejected_with_reasons(builds, crowd):
    out, _, _ = builds
    rejections = pd.read_csv(out / "reports" / "rejections.csv", dtype=str)
    reasons = set(zip(rejections["item"], rejections["reason"], strict=True))
    assert {("photo", "corrupt_image"), ("shape", "unknown_label"), ("shape", "outside_image"),
            ("assignment", "unknown_photo")} <= reasons
    repairs = pd.read_csv(out / "reports" / "repairs.csv", dtype=str)
    assert "made_valid" in set(repairs["repair"])
    assert rejections["message"].notna().all()
    summary = json.loads((out / "reports" / "qa.json").read_text())
    assert summary["ledger"]["photos_rejected"] >= 1


GOOD_MANIFEST = b"photo_id,user_id,path\np1,u1,p.jpg\n"


@pytest.mark.parametrize("manifest,annotations,expected", [
    (b"photo_id,path\np1,p.jpg\n", b"", "photos.csv:1: missing required column(s) user_id"),
    (b"photo_id,user_id,path\np1,\xff,p.jpg\n", b"", "photos.csv:2: not UTF-8"),
    (GOOD_MANIFEST, b'{"photo_id": "p1"}\n{"x": "\xff"}\n', "annotations.jsonl:2: not UTF-8"),
    (GOOD_MANIFEST, None, "annotations.jsonl: cannot read: No such file or directory"),
])
def test_cli_build_reports_malformed_inputs_in_one_line(tmp_path, manifest, annotations, expected):
    (tmp_path / "photos.csv").write_bytes(manifest)
    if annotations is not None:
        (tmp_path / "annotations.jsonl").write_bytes(annotations)
    run = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "build",
                          "--photos", str(tmp_path / "photos.csv"), "--annotations",
                          str(tmp_path / "annotations.jsonl"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crowdseg: error: ") and expected in lines[0], lines


def test_cli_simulate_then_build_quorum_typo_is_one_line(tmp_path):
    cli = [sys.executable, "-c", "from pipeline.cli import main; main()"]
    run = subprocess.run([*cli, "simulate", str(tmp_path), "--photos", "3", "--users", "2", "--annotators", "2",
                          "--size", "320x240"], capture_output=True, text=True)
    assert run.returncode == 0 and "simulated crowd" in run.stdout
    with (tmp_path / "config.toml").open("a") as f:
        f.write("\n[merge]\nquorum = {eyes = 0.5}\n")
    run = subprocess.run([*cli, "build", "--config", str(tmp_path / "config.toml")], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip() == (f"crowdseg: error: {tmp_path / 'config.toml'}: merge.quorum: 'eyes' is not a "
                                  "drawable class of spec 'easyportrait'")


def test_next_build_checks_new_uploads_against_the_previous_index(builds, crowd, tmp_path):
    out, _, _ = builds
    kept = pd.read_csv(out / "reports" / "photo_map.csv", dtype=str).iloc[0]
    source = pd.read_csv(crowd / "photos.csv", dtype=str).set_index("photo_id").loc[kept["photo_id"]]
    Image.open(crowd / source["path"]).save(tmp_path / "again.jpg", quality=70)  # re-saved by the same user
    Image.open(crowd / source["path"]).rotate(180).save(tmp_path / "new.jpg", quality=90)
    (tmp_path / "photos.csv").write_text(f"photo_id,user_id,path\nz1,{kept['user_id']},again.jpg\n"
                                         f"z2,{kept['user_id']},new.jpg\n")
    (tmp_path / "annotations.jsonl").write_text("")
    cfg = load_config(None, {"inputs.photos": str(tmp_path / "photos.csv"),
                             "inputs.annotations": str(tmp_path / "annotations.jsonl"),
                             "dedup.index": str(out / "work" / "index.parquet"), "output.out": str(tmp_path / "out")})
    run_build(cfg, preflight(cfg))
    found = pd.read_csv(tmp_path / "out" / "reports" / "duplicates.csv", dtype=str).set_index("photo_id")
    assert found.loc["z1", "action"] == "drop" and found.loc["z1", "kept_photo_id"] == kept["photo_id"]
    assert found.loc[kept["photo_id"], "source"] == "index" and "z2" not in found.index


DEFECT_CHECKS = {"blurred": "blur", "dark": "underexposed", "tiny_face": "small_face", "spammer": "spammer",
                 "swapper": "swapper", "lazy": "misses_classes"}


@pytest.fixture(scope="module")
def defective(prefect_server, tmp_path_factory) -> tuple[Path, Path]:
    """A crowd with every kind of injected defect: blurred, dark and tiny-face photos; spammers, swappers and
    lazy annotators. Built once."""
    crowd = tmp_path_factory.mktemp("defects")
    simulate(crowd, photos=150, users=50, annotators=5, seed=23, size=(720, 960), pool=30, defects=4,
             profiles={"careful": 0.55, "sloppy": 0.15, "lazy": 0.1, "swapper": 0.1, "spammer": 0.1})
    _build(crowd, crowd / "build")
    return crowd, crowd / "build"


def test_findings_catch_each_injected_defect(defective):
    crowd, build = defective
    photos = pd.read_csv(crowd / "truth" / "photos.csv", dtype=str, keep_default_na=False)
    annotators = pd.read_csv(crowd / "truth" / "annotators.csv", dtype=str)
    truth = {k: set(photos.loc[photos["defect"] == k, "photo_id"]) for k in ("blurred", "dark", "tiny_face")}
    truth |= {k: set(annotators.loc[annotators["profile"] == k, "annotator_id"])
              for k in ("spammer", "swapper", "lazy")}
    findings = pd.read_csv(build / "reports" / "findings.csv", dtype=str, keep_default_na=False)
    scores = {}
    for kind, check in DEFECT_CHECKS.items():
        flagged = set(findings.loc[findings["check"] == check, "subject_id"])
        hit = len(flagged & truth[kind])
        scores[kind] = (hit / len(truth[kind]), hit / len(flagged) if flagged else 0.0, len(truth[kind]))
    assert all(n >= 3 for _, _, n in scores.values()), scores
    assert all(recall >= 0.95 and precision >= 0.9 for recall, precision, _ in scores.values()), scores


def test_reviewer_decisions_apply_on_the_next_build_and_thumbnails_are_cached(defective):
    crowd, build = defective
    reports = build / "reports"
    agreement = pd.read_csv(reports / "agreement.csv", dtype=str, keep_default_na=False)
    published = sorted(pd.read_csv(reports / "photo_map.csv", dtype=str)["photo_id"])
    held = sorted(set(agreement.loc[agreement["status"] == "needs_reannotation", "photo_id"]) - set(published))
    assert held, "the defective crowd should leave some photos held back"
    thumbs = {p: p.stat().st_mtime_ns for p in (build / "work" / "thumbs").iterdir()}
    assert thumbs and "data-photo=" in (reports / "qa.html").read_text()
    stale = build / "work" / "thumbs" / "0123456789abcdef0123456789abcdef.json"  # a photo no longer flagged
    stale.write_text("[]", encoding="utf-8")
    decisions = crowd / "decisions.csv"
    decisions.write_text(f"photo_id,decision,note\n{held[0]},accept,checked by hand\n{published[0]},reject,"
                         f"\"blurry, see =A1\"\n{published[1]},reannotate,\nnot_a_photo,accept,\n", encoding="utf-8")
    cfg = load_config(crowd / "config.toml", {"output.out": str(build), "review.decisions": str(decisions)})
    ledger = run_build(cfg, preflight(cfg))

    now = sorted(pd.read_csv(reports / "photo_map.csv", dtype=str)["photo_id"])
    assert held[0] in now and published[0] not in now and published[1] not in now
    assert ledger["photos_published"] == len(published) - 1
    rejections = pd.read_csv(reports / "rejections.csv", dtype=str, keep_default_na=False)
    reasons = rejections[rejections["item"] == "photo"].set_index("photo_id")["reason"]
    assert reasons[published[0]] == "reviewer_rejected" and reasons[published[1]] == "reviewer_reannotate"
    queue = [json.loads(line)["photo_id"] for line in (reports / "reannotation.jsonl").read_text().splitlines()]
    assert published[1] in queue and held[0] not in queue
    applied = pd.read_csv(reports / "decisions.csv", dtype=str).set_index("photo_id")["status"].to_dict()
    assert applied == {held[0]: "applied", published[0]: "applied", published[1]: "applied",
                       "not_a_photo": "not_applied"}
    assert "not_a_photo" in (reports / "qa.html").read_text()
    assert all(p.stat().st_mtime_ns == t for p, t in thumbs.items()), "a cached thumbnail was made again"
    assert not stale.exists(), "thumbnails of photos no longer shown are pruned"


def test_the_built_report_opens_cleanly_in_chromium(defective, browser):
    _, build = defective
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((build / "reports" / "qa.html").as_uri(), wait_until="load")
    assert page.locator(".card[data-photo]").count() > 0 and not errors
    page.close()


def test_dask_and_process_runners_give_the_local_bytes(prefect_server, tmp_path, monkeypatch):
    """The same build one task at a time, on threads, on threads with the annotation read, the merge passes and
    the export on processes (auto), on a process pool and on a local Dask cluster: byte-identical dataset trees."""
    crowd = tmp_path / "crowd"
    simulate(crowd, photos=16, users=6, annotators=3, seed=3, size=(240, 320))
    pooled = []
    take = flows.WorkerPool.take
    monkeypatch.setattr(flows, "POOL_MIN_PHOTOS", 8)
    monkeypatch.setattr(flows, "DIGEST_CHUNK", 5)  # ingest planned and submitted in chunks
    monkeypatch.setattr(flows.WorkerPool, "take", lambda self, n: pooled.append(take(self, n)) or pooled[-1])
    trees = {}
    for runner in ("local", "threads", "auto", "processes", "dask"):
        out = tmp_path / runner
        cfg = load_config(crowd / "config.toml", {"output.out": str(out), "build.runner": runner,
                                                  "build.batch_size": 4, "build.workers": 2})
        run_build(cfg, preflight(cfg))
        trees[runner] = out / "dataset"
    assert sum(p is not None for p in pooled) == 4  # auto's read, two merge passes and export went to processes
    files = _tree(trees["threads"])
    assert len(files) > 20
    for runner in ("local", "auto", "processes", "dask"):
        assert _tree(trees[runner]) == files
        _, mismatch, errors = filecmp.cmpfiles(trees["threads"], trees[runner], files, shallow=False)
        assert not mismatch and not errors, (runner, mismatch)


@task
def _gc_threshold() -> tuple[int, int, int]:
    import gc

    return gc.get_threshold()


def test_worker_processes_and_local_dask_workers_get_the_commands_gc_setting(prefect_server):
    """The build's process pools (their initializer) and a local Dask cluster's workers (its preload) collect young
    garbage as rarely as the command does (``tuning.tune_gc``), whatever the test process's own setting."""
    from pipeline.tuning import GC_THRESHOLD

    for runner in (ProcessPool(1),
                   flows.task_runner(Config.model_validate({"build": {"runner": "dask", "workers": 1}}))):
        @flow(task_runner=runner)
        def probe() -> tuple[int, int, int]:
            return _gc_threshold.submit().result()

        assert probe()[0] == GC_THRESHOLD


@task
def _client_and_settings() -> tuple[int, bool, str]:
    """This worker, whether its task run found an earlier one's API client holding the same settings (the task is
    pickled by value, so the mark lives on the client), and the results folder it sees."""
    from prefect.context import SyncClientContext
    from prefect.settings import get_current_settings

    client, settings = SyncClientContext.get().client, get_current_settings()
    reused = getattr(client, "_probe_settings", None) is settings
    client._probe_settings = settings
    return os.getpid(), reused, str(settings.results.local_storage_path)


def test_process_workers_set_up_once_for_all_their_task_runs(prefect_server, tmp_path):
    """A worker of the build's process pool validates the parent's settings and opens an API client once, not for
    every task run (~60 ms each), and its task runs still see the settings in force where the pool started."""
    @flow(task_runner=ProcessPool(1))
    def probe() -> list[tuple[int, bool, str]]:
        return [_client_and_settings.submit().result() for _ in range(3)]

    with flows.results_in(tmp_path):
        runs = probe()
    assert len({pid for pid, _, _ in runs}) == 1
    assert [reused for _, reused, _ in runs] == [False, True, True]
    assert {folder for _, _, folder in runs} == {str(tmp_path)}


_MADE: list[int] = []  # the batches whose arguments run_stage's per_batch has made, in order


@task(persist_result=False, cache_policy=NO_CACHE)
def _windowed(n: int, items: list[str], key: str, part: str) -> str:
    """Batch ``n``: its result is how many batches' arguments were made when it ran."""
    return str(store.save_part(len(_MADE), items, Path(part)))


def test_run_stage_keeps_a_few_batches_in_flight_and_makes_their_arguments_as_it_submits(prefect_server, tmp_path):
    """A stage holds the inputs of at most ``ahead`` unfinished batches: when batch n runs, no batch after n + ahead
    has had its arguments made; every batch still runs, and the parts map back to the plan's rows."""
    plan = inc.plan([f"k{i}" for i in range(12)], "probe", tmp_path, inc.Batching(1))

    def per_batch() -> Iterator[tuple[int]]:
        for n in range(len(plan.todo)):
            _MADE.append(n)
            yield (n,)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def stage() -> dict[str, list[int]]:
        return flows.run_stage(_windowed, plan, per_batch(), stage="probe", clock=Stopwatch(), used=set(), ahead=3)

    _MADE.clear()
    parts = stage()
    made_when_run = {rows[0]: store.load(Path(part)) for part, rows in parts.items()}
    assert sorted(made_when_run) == list(range(12))
    assert all(made <= n + 3 for n, made in made_when_run.items())
    assert list(range(12)) == _MADE


def test_batches_in_flight_follow_the_workers_and_have_no_limit_on_a_remote_cluster_of_unknown_size():
    def cfg(**build: Any) -> Config:
        return Config.model_validate({"build": build})

    assert flows.in_flight(cfg(workers=3)) == 3 * flows.IN_FLIGHT
    assert flows.in_flight(cfg(runner="dask", workers=2)) == 2 * flows.IN_FLIGHT  # a local cluster
    assert flows.in_flight(cfg(runner="dask", dask_address="tcp://10.0.0.5:8786")) is None
    assert flows.in_flight(cfg(runner="dask", dask_address="tcp://10.0.0.5:8786", workers=64)) == 64 * flows.IN_FLIGHT


def test_process_workers_get_their_arguments_unwalked(monkeypatch):
    """A process task's arguments reach the worker's task engine still marked, so that neither of its walks (task
    inputs, then resolution) visits every entry of a weight table, for every batch; the task gets the table itself."""
    import cloudpickle
    from prefect.task_runners import ProcessPoolTaskRunner
    from prefect.utilities import engine

    weights = {(f"a{i}", c): 0.5 for i in range(50) for c in range(1, 10)}
    (arg,) = flows.quoted((weights,), ProcessPoolTaskRunner(max_workers=1))
    sent = engine.resolve_inputs_sync({"weights": arg})  # the runner, before it pickles the call
    got = cloudpickle.loads(cloudpickle.dumps(sent))["weights"]
    visits = []
    counting = engine.get_state_for_result
    monkeypatch.setattr(engine, "get_state_for_result", lambda obj: visits.append(obj) or counting(obj))
    assert engine.collect_task_run_inputs_sync(got) == set()
    resolving = engine.resolve_to_final_result
    monkeypatch.setattr(engine, "resolve_to_final_result", lambda e, c: visits.append(e) or resolving(e, c))
    assert engine.resolve_inputs_sync({"weights": got})["weights"] == weights
    assert len(visits) <= 2  # the mark and the table, not 450 keys and values


def test_tasks_and_the_flow_pickle_their_functions_by_reference():
    """Each task run sent to a worker process carries its flow run's context and so the build flow: its function and
    every task's must travel as names, not as code and globals pickled again for every batch."""
    import cloudpickle
    from prefect import Flow, Task

    runnables = [v for v in vars(flows).values() if isinstance(v, Task | Flow) and v.fn.__module__ == flows.__name__]
    assert flows.build_flow in runnables and flows.merge_batch in runnables
    for r in runnables:
        assert cloudpickle.loads(cloudpickle.dumps(r)).fn is r.fn, r.name
    assert len(cloudpickle.dumps(flows.build_flow)) < 40_000  # by value: ~80 kB
