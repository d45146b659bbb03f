"""Incremental rebuilds through Prefect: what reruns after each kind of change, equality with a cold build, and
resuming after kill -9."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.build import preflight
from pipeline.config import load_config
from pipeline.flows import run_build
from pipeline.simulate import simulate

NEW_PHOTOS = 4
QUORUM = {"merge.quorum": {"skin": 0.75}}


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _same_tree(a: Path, b: Path) -> None:
    files = _tree(a)
    assert files == _tree(b) and files
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors, mismatch


def _build(crowd: Path, out: Path, **overrides: object) -> dict:
    cfg = load_config(crowd / "config.toml", {"output.out": str(out), **overrides})
    return run_build(cfg, preflight(cfg))


@pytest.fixture(scope="module")
def crowd(tmp_path_factory) -> Path:
    """A small crowd whose last few uploads (manifest rows and annotation lines) come last in its files, plus
    ``*.before`` copies of those files without them."""
    crowd = tmp_path_factory.mktemp("incremental")
    simulate(crowd, photos=30, users=12, annotators=4, seed=11, size=(240, 320))
    manifest = pd.read_csv(crowd / "photos.csv", dtype=str, keep_default_na=False)
    lines = (crowd / "annotations.jsonl").read_text().splitlines()
    new = set(manifest["photo_id"].iloc[-NEW_PHOTOS:])
    old_lines = [x for x in lines if json.loads(x)["photo_id"] not in new]
    (crowd / "annotations.jsonl").write_text("\n".join(old_lines + [x for x in lines if x not in old_lines]) + "\n")
    manifest[~manifest["photo_id"].isin(new)].to_csv(crowd / "photos.csv.before", index=False)
    (crowd / "annotations.jsonl.before").write_text("\n".join(old_lines) + "\n")
    return crowd


def _swapped(crowd: Path) -> tuple[Path, Path]:
    """Put the ``*.before`` files in place; returns where the full files went."""
    moved = []
    for name in ("photos.csv", "annotations.jsonl"):
        shutil.move(crowd / name, crowd / f"{name}.after")
        shutil.copy(crowd / f"{name}.before", crowd / name)
        moved.append(crowd / f"{name}.after")
    return moved[0], moved[1]


@pytest.fixture(scope="module")
def chain(crowd, prefect_server, tmp_path_factory) -> dict[str, dict]:
    """One output folder rebuilt after each change in turn (the day's uploads appended to the same files, then
    new ratios, then a stricter threshold); returns each build's ledger and work counts."""
    out = tmp_path_factory.mktemp("chain")
    after = _swapped(crowd)
    steps = {"first": _build(crowd, out)}
    steps["same"] = _build(crowd, out)
    for path in after:
        shutil.move(path, path.with_suffix(""))
    shutil.copy(out / "work" / "weights.csv", crowd / "weights_v1.csv")
    pinned = {"merge.pin_skills": "weights_v1.csv"}
    steps["new_photos"] = _build(crowd, out, **pinned)
    ratios = {"split.ratios": {"train": 0.5, "val": 0.25, "test": 0.25}}
    steps["ratios"] = _build(crowd, out, **pinned, **ratios)
    threshold = {"merge.class_agreement": {"skin": 0.97}}
    steps["threshold"] = _build(crowd, out, **pinned, **ratios, **threshold)
    steps["quorum"] = _build(crowd, out, **pinned, **ratios, **threshold, **QUORUM)
    steps["out"] = {"path": out}
    return steps


def test_an_unchanged_rebuild_reuses_everything(chain):
    work = chain["same"]["work"]
    assert all(v["computed"] == 0 for v in work.values()), work
    assert all(v["reused"] > 0 for k, v in work.items() if k != "faces"), work  # every mask here has a face


def test_new_uploads_are_the_only_photos_hashed_and_merged(chain):
    work, first = chain["new_photos"]["work"], chain["first"]["work"]
    assert work["ingest"]["computed"] == NEW_PHOTOS and work["ingest"]["reused"] == first["ingest"]["computed"]
    for stage in ("score", "merge"):  # new uploads that are duplicates are never merged
        assert 0 < work[stage]["computed"] <= NEW_PHOTOS and work[stage]["reused"] == first[stage]["computed"]
    assert work["read inputs"]["computed"] == 1 and work["dedup"]["computed"] == 1
    lines, before = work["annotation lines"], chain["first"]["work"]["annotation lines"]
    assert lines["reused"] == before["computed"] and 0 < lines["computed"] < before["computed"] / 4  # appended only


def test_changing_the_split_ratios_reruns_only_split_and_export_placement(chain):
    work = chain["ratios"]["work"]
    assert all(v["computed"] == 0 for v in work.values()), work


def test_changing_a_threshold_re_votes_nothing(chain):
    work = chain["threshold"]["work"]
    assert all(v["computed"] == 0 for v in work.values()), work
    assert chain["threshold"]["photos_held_back"] > chain["ratios"]["photos_held_back"]


def test_a_cold_build_rasterises_each_photo_once(chain):
    """The scoring pass rasterises and tallies; the final vote reads its prepared photos back."""
    work = chain["first"]["work"]
    assert work["rasterise"] == {"computed": work["score"]["computed"], "reused": work["merge"]["computed"]}, work


def test_a_new_quorum_re_votes_without_rasterising(chain):
    work = chain["quorum"]["work"]
    voted = work["merge"]["computed"] + work.get("score", {"computed": 0})["computed"]
    assert work["merge"]["computed"] > 0 and work["rasterise"] == {"computed": 0, "reused": voted}, work
    assert all(v["computed"] == 0 for k, v in work.items() if k in ("ingest", "read inputs", "dedup")), work


def test_the_rebuilt_folder_equals_a_cold_build(chain, crowd, tmp_path):
    """Every reused result is exactly what a cold build computes: the same dataset and reports."""
    cold = tmp_path / "cold"
    _build(crowd, cold, **{"merge.pin_skills": "weights_v1.csv",
                           "split.ratios": {"train": 0.5, "val": 0.25, "test": 0.25},
                           "merge.class_agreement": {"skin": 0.97}, **QUORUM})
    out = chain["out"]["path"]
    _same_tree(cold / "dataset", out / "dataset")
    for name in ("agreement.csv", "class_agreement.csv", "rejections.csv", "findings.csv", "duplicates.csv",
                 "assignments.csv", "thresholds.csv", "summary.md"):
        assert (cold / "reports" / name).read_bytes() == (out / "reports" / name).read_bytes(), name


KILL_AT = {
    "ingest": lambda out: any((out / "work" / "cache" / "ingest").glob("*.keys")),
    "merge": lambda out: any((out / "work" / "cache" / "merge").glob("*.keys")),
    "export": lambda out: any((out / "work" / "cache" / "export").glob("*.keys")),
}


@pytest.fixture(scope="module")
def reference(crowd, prefect_server, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    _build(crowd, out)
    return out


@pytest.mark.parametrize("stage", list(KILL_AT))
def test_a_build_killed_mid_stage_resumes_to_the_same_bytes(crowd, reference, tmp_path, stage):
    out = tmp_path / "out"
    config = crowd / f"config_{stage}.toml"  # beside the inputs, as the reference build's config is
    config.write_text((crowd / "config.toml").read_text() + "\n[build]\nbatch_size = 3\n")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "crowdseg"), "build", "--config", str(config), "--out",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 240
    while not KILL_AT[stage](out) and proc.poll() is None:
        assert time.monotonic() < deadline, f"the build never reached {stage}"
        time.sleep(0.05)
    assert proc.poll() is None, f"the build ended before reaching {stage}"
    children = _children(proc.pid)  # its Prefect server and the watcher that stops it
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    while any(map(_running, children)):  # not left running: the watcher polls once a second
        assert time.monotonic() < deadline + 10, f"processes of the killed build still run: {children}"
        time.sleep(0.1)
    assert not (out / "dataset").exists()
    cfg = load_config(config, {"output.out": str(out)})
    result = run_build(cfg, preflight(cfg))
    assert sum(v["reused"] for v in result["work"].values()) > 0, result["work"]
    _same_tree(reference / "dataset", out / "dataset")
    assert not list((out / "work" / "cache").rglob(".*.tmp"))


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads started them (Linux /proc; a thread that ends while
    they are listed has none left)."""
    found = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in f.read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
