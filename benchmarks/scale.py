"""Rebuilds at scale: a cold build of a simulated 20,000-photo crowd against its floor, incremental rebuilds into
the same folder, and the peak memory of the table-level stages at 20k and 200k photos.

1. Data. A crowd is simulated once (5 annotators per photo, users as in EasyPortrait: 8,377 per 20,000 photos,
   FullHD 1920x1080 / 1080x1920 and 720x960 photos) and cached under ``--data``, outside the repository. A 99%
   variant (the last 1% of uploads, their manifest rows and annotation lines, held out) is written beside it.
2. Builds. Every build is ``crowdseg build --config C --out O`` in a subprocess started by a small ``python -c``
   wrapper that reports its child's wall time, CPU time and peak RSS (``os.wait4``: the build process and every
   process it waited for). Per-stage seconds come from ``O/reports/timings.csv``. The builds run from a snapshot
   of ``pipeline/`` taken at start, so edits made while the benchmark runs do not change the cache keys.
   All go into one folder, in this order:
   - cold: the 99% crowd into an empty folder, default config (a cold build of all of it would do 1% more work:
     dividing by this one makes every ratio below slightly pessimistic);
   - (b) the whole crowd, with ``[merge] pin_skills`` and ``[split] previous`` pointing at the cold build's
     ``work/weights.csv`` and ``work/splits.csv``;
   - (a) the whole crowd, still pinned, with ``[split] ratios = {train=0.7, val=0.15, test=0.15}`` (and no
     ``split.previous``, so every photo is split again), then twice more, with ratios 72/14/14 and back to
     70/15/15: three builds that each change the ratios alone. A 15 s build varies by a second or two from one run
     to the next on these machines, so (a) is their median; all three times are printed;
   - (c) (a)'s config plus ``[merge] class_agreement = {teeth = 0.6}``.
3. Floor, in the same run after (b): each photo of the whole manifest decoded once (``cv2.imdecode``) and each
   merged mask encoded once (``cv2.imwrite``, PNG compression 1), in a pool of ``os.cpu_count()`` processes. Only
   the decode and encode calls are timed (loading a mask to encode is not); the floor is the busiest worker's
   timed seconds. Each mask is also encoded with crowdseg's own ``write_mask`` (zlib-ng, run-length deflate, ~4x
   faster than OpenCV's level 1), and the ratio to that lower floor is printed beside the standing one.
4. Table-level memory: hash-index, manifest, assignment and merge-result tables for N photos, tiled from the real
   ingest and merge output of 40 photos of the crowd (new ids, users, hashes and planted duplicates), go through
   dedup, skills, hold-back, split, accounting, QA and the report tables in a fresh subprocess that reports VmHWM;
   once at 20k and once at 200k.

    python benchmarks/scale.py            # 20,000 photos: simulating ~25 min once, then the builds (hours)
    python benchmarks/scale.py --quick    # 1,000 photos, tables at 1k and 10k: a few minutes after simulating
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, table

DEFAULT_DATA = Path("/work/bench-data/scale")
MIX = {"laptop_webcam": 0.25, "phone_fhd": 0.25, "phone_vga": 0.5}  # 1920x1080, 1080x1920 and 720x960 photos
USERS_PER_PHOTO = 8_377 / 20_000  # EasyPortrait: 20,000 photos from 8,377 users
ANNOTATORS = 5
HOLD_OUT = 0.01  # case (b): the last 1% of uploads arrive after the first build
TEMPLATE_PHOTOS = 40  # real photos whose ingest and merge rows are tiled for the table-level runs
KEY = "scale-benchmark-pseudonym-key"
RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}
OTHER_RATIOS = {"train": 0.72, "val": 0.14, "test": 0.14}  # (a)'s second build: ratios changed again
TARGETS = {"a": 0.05, "b": 0.10}  # share of the cold build's time

WRAPPER = r"""
import json, os, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
with open(out + ".log", "wb") as log:
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
with open(out, "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024,
               "cpu_s": usage.ru_utime + usage.ru_stime}, f)
"""
"""Runs one command and reports its wall time, exit code, CPU time and peak RSS. The wrapper is a fresh small
process: Linux's ru_maxrss of a child starts from its parent's peak, so a big parent would hide the child's."""


# ---------------------------------------------------------------------------------------------------------- data

def crowd_params(photos: int, seed: int) -> dict[str, Any]:
    return {"photos": photos, "users": max(1, round(photos * USERS_PER_PHOTO)), "annotators": ANNOTATORS,
            "seed": seed, "pool": max(20, photos // 50), "devices": MIX}


def ensure_crowd(data: Path, photos: int, seed: int, workers: int) -> tuple[Path, dict[str, Any]]:
    """The simulated crowd, simulated on first use and reused afterwards (``simulated.json`` marks a whole one)."""
    from pipeline.simulate import simulate

    folder = data / f"crowd-{photos}-seed{seed}"
    marker = folder / "simulated.json"
    params = crowd_params(photos, seed)
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info["params"] == params:
            return folder, info
    print(f"simulating {photos:,} photos into {folder} with {workers} processes (once; reused later) ...",
          file=sys.stderr, flush=True)
    shutil.rmtree(folder, ignore_errors=True)  # an unfinished or different simulation, and its hold-out files
    folder.mkdir(parents=True)
    start = time.perf_counter()
    counts = simulate(folder, **params, workers=workers)
    info = {"params": params, "counts": counts, "seconds": round(time.perf_counter() - start, 1),
            "workers": workers, "cpu_count": os.cpu_count()}
    marker.write_text(json.dumps(info, indent=1))
    return folder, info


def hold_out(crowd: Path) -> dict[str, Any]:
    """Write ``photos_99.csv`` and ``annotations_99.jsonl`` beside the crowd's files: the last ``HOLD_OUT`` of the
    manifest rows (photo ids are given in upload order) and their annotation lines left out."""
    import pandas as pd

    marker = crowd / "holdout.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    manifest = pd.read_csv(crowd / "photos.csv", dtype=str, keep_default_na=False)
    n = max(1, round(HOLD_OUT * len(manifest)))
    held = set(manifest.sort_values("photo_id")["photo_id"].iloc[-n:])
    manifest[~manifest["photo_id"].isin(held)].to_csv(crowd / "photos_99.csv", index=False, lineterminator="\n")
    kept_lines = dropped_lines = 0
    with (crowd / "annotations.jsonl").open(encoding="utf-8") as src, \
            (crowd / "annotations_99.jsonl").open("w", encoding="utf-8", newline="\n") as dst:
        for line in src:
            if json.loads(line)["photo_id"] in held:
                dropped_lines += 1
            else:
                dst.write(line)
                kept_lines += 1
    info = {"rows": len(manifest), "held_rows": n, "lines": kept_lines + dropped_lines, "held_lines": dropped_lines}
    marker.write_text(json.dumps(info, indent=1))
    return info


UPLOADS = ("photos.csv", "annotations.jsonl")


def restore_uploads(crowd: Path) -> None:
    """Put the whole crowd's files back in place if a run stopped inside ``uploads_so_far``."""
    for name in UPLOADS:
        full = crowd / f"{name}.all"
        if full.exists():
            os.replace(full, crowd / name)


@contextmanager
def uploads_so_far(crowd: Path) -> Iterator[None]:
    """The 99% files under the crowd's own names, as a user's files stood before the last uploads arrived: the
    same rows in the same files, so assignments keep their ``file:row`` keys when the files grow."""
    for name in UPLOADS:
        stem, dot, ext = name.partition(".")
        os.replace(crowd / name, crowd / f"{name}.all")
        shutil.copyfile(crowd / f"{stem}_99{dot}{ext}", crowd / name)
    try:
        yield
    finally:
        restore_uploads(crowd)


def crowd_mix(crowd: Path) -> str:
    import pandas as pd

    truth = pd.read_csv(crowd / "truth" / "photos.csv", dtype=str)
    sizes = (truth["width"] + "x" + truth["height"]).value_counts()
    main = [s for s in ("1920x1080", "1080x1920", "720x960") if s in sizes]
    other = len(truth) - int(sizes[main].sum())
    return ", ".join(f"{s} {sizes[s]:,}" for s in main) + f", other (resized/cropped copies) {other:,}"


# ---------------------------------------------------------------------------------------------------------- code

def snapshot_code(scratch: Path) -> Path:
    """A copy of the package and specs the builds run from (the cache keys hash the package source)."""
    code = scratch / "code"
    shutil.rmtree(code, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "pipeline", code / "pipeline", ignore=ignore)
    shutil.copytree(ROOT / "annotation_specs", code / "annotation_specs", ignore=ignore)
    return code


def supports(code: Path, section: str, name: str) -> bool:
    """Whether the snapshot's config has ``[section] name``."""
    out = subprocess.run([sys.executable, "-c", f"from pipeline.config import Config; "
                          f"print({name!r} in Config.model_fields[{section!r}].annotation.model_fields)"],
                         env=child_env(code, None), capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def child_env(code: Path, prefect_home: Path | None) -> dict[str, str]:
    env = os.environ | {"PYTHONPATH": str(code), "CROWDSEG_PSEUDONYM_KEY": KEY, "DO_NOT_TRACK": "1",
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONDONTWRITEBYTECODE": "1",
                        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60"}
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    return env


# ---------------------------------------------------------------------------------------------------------- builds

@dataclass
class Run:
    name: str
    rc: int = -1
    seconds: float = float("nan")
    peak_mb: float = float("nan")
    cpu_s: float = float("nan")
    stages: dict[str, float] = field(default_factory=dict)
    items: dict[str, tuple[int, int]] = field(default_factory=dict)  # stage -> (computed, reused)
    ledger: dict[str, int] = field(default_factory=dict)
    note: str = ""
    error: str = ""


def toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def write_config(path: Path, crowd: Path, sections: dict[str, dict[str, Any]], photos: str = "photos.csv",
                 annotations: str = "annotations.jsonl") -> Path:
    sections = {"inputs": {"photos": str(crowd / photos), "annotations": str(crowd / annotations)}} | sections
    text = "".join(f"[{s}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in kv.items()) + "\n"
                   for s, kv in sections.items())
    tomllib.loads(text)
    path.write_text(text, encoding="utf-8")
    return path


def build(name: str, config: Path, out: Path, code: Path, prefect_home: Path, logs: Path) -> Run:
    """One ``crowdseg build`` in a subprocess; its time, peak RSS, per-stage seconds and ledger."""
    import pandas as pd

    report = logs / f"{name}.json"
    cmd = [str(Path(sys.executable).with_name("crowdseg")), "build", "--config", str(config), "--out", str(out)]
    print(f"build {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-c", WRAPPER, str(report), *cmd], env=child_env(code, prefect_home), check=True)
    res = json.loads(report.read_text())
    run = Run(name, res["rc"], res["seconds"], res["peak_mb"], res["cpu_s"])
    log = Path(str(report) + ".log").read_text(errors="replace")
    if run.rc != 0:
        run.error = " | ".join(line.strip() for line in log.strip().splitlines()[-3:])[-300:]
        print(f"  failed (exit {run.rc}): {run.error}", file=sys.stderr, flush=True)
        return run
    for line in log.splitlines():
        if line.startswith("ledger: "):
            run.ledger = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)(?=, |$)", line)}
    timings = out / "reports" / "timings.csv"
    if timings.is_file():
        t = pd.read_csv(timings, keep_default_na=False)
        for row in t.to_dict("records"):
            stage = str(row["stage"])
            if stage.endswith(" items") and "computed" in t:
                run.items[stage.removesuffix(" items")] = (int(row["computed"] or 0), int(row["reused"] or 0))
            elif row.get("seconds", "") != "":
                run.stages[stage] = float(row["seconds"])
    print(f"  {run.seconds:.1f} s, peak {run.peak_mb:,.0f} MB", file=sys.stderr, flush=True)
    return run


def warm_prefect(code: Path, prefect_home: Path) -> None:
    """Create the Prefect database once, so that no build pays the migrations."""
    snippet = "from prefect import flow\n@flow\ndef warm():\n    return 1\nwarm()\n"
    done = subprocess.run([sys.executable, "-c", snippet], env=child_env(code, prefect_home), capture_output=True,
                          text=True)
    if done.returncode != 0:  # not fatal: the first build then creates the database itself
        print("warning: could not warm Prefect up: " + " | ".join(done.stderr.strip().splitlines()[-3:]),
              file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------- floor

def _floor_job(job: tuple[str, list[str], str]) -> tuple[int, str, float, float, int]:
    """Decode photos or encode masks (``encode``: OpenCV, PNG level 1; ``own``: crowdseg's ``write_mask``); return
    (worker pid, kind, timed seconds, timed CPU seconds, items)."""
    import cv2
    import numpy as np

    from pipeline.io.png import write_mask
    from pipeline.tuning import tune_process

    tune_process()  # the settings of a build's processes
    cv2.setNumThreads(1)
    kind, paths, tmp = job
    timed = cpu = 0.0
    for n, p in enumerate(paths):
        if kind == "decode":
            t, c = time.perf_counter(), time.process_time()
            image = cv2.imdecode(np.frombuffer(Path(p).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            timed, cpu = timed + time.perf_counter() - t, cpu + time.process_time() - c
            assert image is not None, p
        else:
            mask = cv2.imread(p, cv2.IMREAD_UNCHANGED)  # not timed: the build has the mask in memory
            target = Path(f"{tmp}/{os.getpid()}-{n}.png")
            t, c = time.perf_counter(), time.process_time()
            if kind == "encode":
                cv2.imwrite(str(target), mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            else:
                write_mask(mask, target)
            timed, cpu = timed + time.perf_counter() - t, cpu + time.process_time() - c
    return os.getpid(), kind, timed, cpu, len(paths)


def merged_masks(out: Path) -> list[Path]:
    """The merged masks a build wrote (its work folder), else its published masks."""
    work = out / "work"
    for pattern in ("cache/merge/**/*.png", "masks/**/*.png"):
        found = [p for p in work.glob(pattern) if "agreement" not in p.name]
        if found:
            return sorted(found)
    return sorted((out / "dataset" / "annotations").rglob("*.png"))


def floor(crowd: Path, out: Path, scratch: Path) -> dict[str, Any]:
    import pandas as pd

    manifest = pd.read_csv(crowd / "photos.csv", dtype=str, keep_default_na=False)
    photos = [str(crowd / p) for p in manifest["path"]]
    masks = [str(p) for p in merged_masks(out)]
    tmp = scratch / "floor"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    workers = os.cpu_count() or 1
    chunk = 25
    jobs = ([("decode", photos[i:i + chunk], str(tmp)) for i in range(0, len(photos), chunk)]
            + [(kind, masks[i:i + chunk], str(tmp)) for kind in ("encode", "own") for i in range(0, len(masks), chunk)])
    busy: dict[int, float] = {}  # decode + OpenCV encode
    busy_own: dict[int, float] = {}  # decode + crowdseg's encode
    by_kind = {"decode": [0.0, 0.0, 0], "encode": [0.0, 0.0, 0], "own": [0.0, 0.0, 0]}
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        for pid, kind, timed, cpu, n in pool.map(_floor_job, jobs):
            if kind != "own":
                busy[pid] = busy.get(pid, 0.0) + timed
            if kind != "encode":
                busy_own[pid] = busy_own.get(pid, 0.0) + timed
            by_kind[kind][0] += timed
            by_kind[kind][1] += cpu
            by_kind[kind][2] += n
    wall = time.perf_counter() - start
    shutil.rmtree(tmp, ignore_errors=True)
    return {"workers": workers, "floor": max(busy.values(), default=0.0), "wall": wall,
            "floor_own": max(busy_own.values(), default=0.0), "own_s": by_kind["own"][0],
            "own_cpu": by_kind["own"][1], "cpu_own": by_kind["decode"][1] + by_kind["own"][1],
            "cpu": by_kind["decode"][1] + by_kind["encode"][1],
            "decode_s": by_kind["decode"][0], "decode_cpu": by_kind["decode"][1], "photos": by_kind["decode"][2],
            "encode_s": by_kind["encode"][0], "encode_cpu": by_kind["encode"][1], "masks": by_kind["encode"][2]}


# ---------------------------------------------------------------------------------------------------------- tables

def first(*names: str) -> Any:
    """The first of ``module:attribute`` names that exists (the pipeline's glue moves between modules)."""
    import importlib

    for name in names:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {names} exists")


def make_template(crowd: Path, path: Path) -> None:
    """Real ingest, annotation and merge tables of the crowd's first TEMPLATE_PHOTOS photos, pickled (run in a
    subprocess: decoding and merging photos would raise the table runs' peak memory)."""
    from pipeline import build as b
    from pipeline.config import load_config
    from pipeline.io.manifest import read_manifest
    from pipeline.stages import ingest, merge
    from pipeline.tables import CROWD

    cfg = load_config(crowd / "config.toml")
    spec = b.resolve_spec(cfg)
    manifest, _ = read_manifest(cfg.path(cfg.inputs.photos))
    manifest = manifest.sort_values("photo_id", ignore_index=True).iloc[:TEMPLATE_PHOTOS]
    manifest = manifest.assign(origin=CROWD, origin_kind=CROWD)  # as the build's with_samples marks crowd uploads
    photos, _ = ingest.ingest(manifest, cfg.ingest)
    read_all = first("pipeline.io.sources:read_all_annotations", "pipeline.build:read_all_annotations")
    assignments, shapes, _ = read_all(cfg, spec, manifest)
    assignments = assignments[assignments["photo_id"].isin(photos["photo_id"])].reset_index(drop=True)
    shapes = shapes[shapes["assignment"].isin(set(assignments["assignment"]))]
    masks = path.parent / "template-masks"
    masks.mkdir(parents=True, exist_ok=True)
    m = merge.merge_batch(photos, assignments, shapes, spec, cfg.merge, {}, masks)
    with path.open("wb") as f:
        pickle.dump({"manifest": manifest, "photos": photos, "assignments": assignments, "merge": m,
                     "config": str(crowd / "config.toml")}, f)


def vm_hwm_mb(field: str = "VmHWM") -> float:
    """This process's peak RSS in MB (its current RSS with ``field="VmRSS"``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0), so each step's peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def tile(template: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """Manifest, ingest and assignment tables of ``n`` photos made from the template's rows.

    Each photo copies a template photo's row with a new id, a user (Zipf-like, EasyPortrait's photos per user),
    fresh byte and pixel hashes and its pHash pair XORed with a random 64-bit mask (so hashes are spread like random
    ones and the photo's own mirror distance is kept). 10% of the photos are then made duplicates of an earlier one,
    as in the simulator: a sixth exact copies by another user, the rest near copies by the same user (pHash 1-6 bits
    off, same colour thumbnail, a third of them mirrored). Each photo's assignments are its template photo's, each
    crowd annotator mapped to one of n/50 annotators.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    tm, tp, ta = template["manifest"], template["photos"].set_index("photo_id"), template["assignments"]
    tids = tp.index.to_numpy()
    users = max(1, round(n * USERS_PER_PHOTO))
    pool = max(20, n // 50)
    src = np.arange(n) % len(tids)
    ids = np.array([f"s{i:07d}" for i in range(n)], dtype=object)
    weights = 1 / np.arange(1, users + 1) ** 1.1
    owners = rng.permutation(np.concatenate([rng.permutation(users)[:n],
                                             rng.choice(users, max(0, n - users), p=weights / weights.sum())]))
    user = np.array([f"v{u:06d}" for u in owners], dtype=object)

    photos = tp.loc[tids[src]].reset_index()
    photos["photo_id"] = ids
    photos["user_id"] = user
    photos["sha256"] = [rng.bytes(32).hex() for _ in range(n)]
    photos["pixel_hash"] = [rng.bytes(16).hex() for _ in range(n)]
    mask = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    ph = np.array([int(h, 16) for h in photos["phash"]], dtype=np.uint64) ^ mask
    mi = np.array([int(h, 16) for h in photos["phash_mirror"]], dtype=np.uint64) ^ mask
    seconds = np.sort(rng.integers(0, 60 * 86_400, n))
    photos["submitted_at"] = pd.to_datetime(seconds, unit="s", origin="2024-03-01").strftime("%Y-%m-%dT%H:%M:%SZ")
    photos["brightness"] = np.clip(photos["brightness"].to_numpy(float) + rng.normal(0, 0.08, n), 0.05, 0.95)

    dups = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, round(n / 10)), replace=False)) if n > 1 else []
    copied = ("width", "height", "thumb", "chroma", "brightness", "sharpness", "sha256", "pixel_hash", "user_id")
    col = {c: photos[c].to_numpy(dtype=object).copy() for c in copied}  # plain arrays: .at on Arrow copies
    for k, d in enumerate(dups):
        s = int(rng.integers(0, d))
        for c in ("width", "height", "thumb", "chroma", "brightness", "sharpness"):
            col[c][d] = col[c][s]
        if k % 6 == 0:  # an exact copy uploaded by someone else
            col["sha256"][d], col["pixel_hash"][d] = col["sha256"][s], col["pixel_hash"][s]
            ph[d], mi[d] = ph[s], mi[s]
            other = col["user_id"][s]
            while users > 1 and other == col["user_id"][s]:
                other = f"v{int(rng.integers(0, users)):06d}"
            col["user_id"][d] = other
        else:  # a near copy by the same user
            flip = np.uint64(0)
            for bit in rng.choice(64, int(rng.integers(1, 7)), replace=False):
                flip |= np.uint64(1) << np.uint64(int(bit))
            ph[d], mi[d] = (mi[s] ^ flip, ph[s] ^ flip) if k % 3 == 0 else (ph[s] ^ flip, mi[s] ^ flip)
            col["user_id"][d] = col["user_id"][s]
    for c in copied:
        photos[c] = pd.Series(col[c], index=photos.index).astype(photos[c].dtype)
    photos["phash"] = [f"{int(v):016x}" for v in ph]
    photos["phash_mirror"] = [f"{int(v):016x}" for v in mi]
    photos["row"] = np.arange(2, n + 2)
    manifest = tm.set_index("photo_id").loc[tids[src]].reset_index()
    for col in ("photo_id", "user_id", "submitted_at", "path", "row"):
        manifest[col] = photos[col].to_numpy()

    # assignments: the template photo's rows, annotators renamed per photo
    golden = set(ta.loc[ta["golden"].astype(bool), "annotator_id"])
    names = {a: i for i, a in enumerate(sorted(set(ta["annotator_id"]) - golden))}
    assignments, target = repeat_rows(ta, "photo_id", tids[src], ids)
    assignments["annotator_id"] = [new_annotator(a, int(t), names, pool)
                                   for a, t in zip(assignments["annotator_id"], target, strict=True)]
    assignments["assignment"] = assignments["photo_id"] + "-" + assignments["annotator_id"]
    assignments["row"] = np.arange(1, len(assignments) + 1)
    # where read-inputs would have put each assignment's shapes in the shape store, and their digest
    length = rng.integers(2_000, 16_000, len(assignments))
    assignments["shape_offset"] = np.cumsum(length) - length
    assignments["shape_length"] = length
    assignments["shape_digest"] = pd.Series([rng.bytes(8).hex() for _ in range(len(assignments))], dtype="str")
    return {"manifest": manifest, "photos": photos, "assignments": assignments, "names": names, "pool": pool}


def repeat_rows(df: Any, key: str, sources: Any, targets: Any) -> Any:
    """For each target id, the rows of ``df`` whose ``key`` is its source id (in order), with ``key`` renamed;
    also each row's target position."""
    import numpy as np

    order = df.sort_values(key, kind="stable").reset_index(drop=True)
    ids, starts, counts = np.unique(order[key].to_numpy(), return_index=True, return_counts=True)
    where = {k: i for i, k in enumerate(ids)}
    at = np.array([where.get(t, -1) for t in sources])
    reps = np.where(at >= 0, counts[at], 0)
    pos = np.repeat(starts[at], reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
    target = np.repeat(np.arange(len(targets)), reps)
    out = order.iloc[pos].reset_index(drop=True)
    out[key] = np.asarray(targets, dtype=object)[target]
    return out, target


def new_annotator(old: str, photo: int, names: dict[str, int], pool: int) -> str:
    """Template annotator ``old`` on tiled photo number ``photo``: distinct annotators stay distinct on a photo."""
    return old if old not in names else f"b{(names[old] + 7 * photo) % pool:05d}"


def tile_merge(template: dict[str, Any], batch: Any, names: dict[str, int], pool: int) -> Any:
    """The final merge pass's result for one batch of kept photos, as a build saves it (each photo's rows copied
    from its template photo's, with the ids the tiled assignments have)."""
    import numpy as np

    from pipeline.stages.merge import MergeResult

    m = template["merge"]
    tids = template["photos"]["photo_id"].to_numpy()
    targets = batch["photo_id"].to_numpy()
    number = np.array([int(p[1:]) for p in targets])
    sources = tids[number % len(tids)]

    def tiled(df: Any) -> Any:
        if df.empty:
            return df
        out, target = repeat_rows(df, "photo_id", sources, targets)
        for col in ("mask_path", "agreement_path"):
            if col in out:
                out[col] = out["photo_id"] + ".png"
        if "annotator_id" in out:
            out["annotator_id"] = [new_annotator(a, int(number[t]), names, pool)
                                   for a, t in zip(out["annotator_id"], target, strict=True)]
            if "assignment" in out:  # a photo's rows in assignment order, as merge_batch makes them
                out["assignment"] = out["photo_id"] + "-" + out["annotator_id"]
                out = out.sort_values(["photo_id", "assignment"], kind="stable", ignore_index=True)
        return out

    tables = {name: tiled(getattr(m, name)) for name in ("photos", "assignments", "classes", "rejections", "repairs",
                                                           "scores")}
    return MergeResult(**tables)


def save_tiles(n: int, template_path: Path, seed: int, folder: Path) -> dict[str, Any]:
    """Tile the template to ``n`` photos and save in ``folder`` what a build's flow loads from its cache: the
    read-inputs result (manifest and assignments), the ingest batches and the final merge pass's batches, in
    batches of the build's size. Run in a process of its own, so that the tiling's memory is not measured."""
    from pipeline import build as b
    from pipeline import store
    from pipeline.config import load_config
    from pipeline.stages import dedup
    from pipeline.tables import REJECTION_COLUMNS, as_categories, frame

    with template_path.open("rb") as f:
        template = pickle.load(f)
    cfg = load_config(template["config"])
    size = b.batching(cfg).size
    tiled = tile(template, n, seed)
    photos = tiled["photos"]
    shutil.rmtree(folder, ignore_errors=True)
    none = frame([], REJECTION_COLUMNS)
    store.save((tiled["manifest"], as_categories(tiled["assignments"], ["file"]), none), folder / "inputs.pkl")
    for i, at in enumerate(range(0, n, size)):
        store.save((photos.iloc[at:at + size], none), folder / "ingest" / f"{i:06d}.pkl")
    kept = b.kept_photos(photos, dedup.find_duplicates(photos, cfg.dedup))
    parts, scored = {}, 0
    for i, at in enumerate(range(0, len(kept), size)):
        batch = kept.iloc[at:at + size]
        part = tile_merge(template, batch, tiled["names"], tiled["pool"])
        parts[str(store.save(part, folder / "merge" / f"{i:06d}.pkl"))] = list(range(at, at + len(batch)))
        scored += len(part.scores)
    plan = {"config": template["config"], "ids": kept["photo_id"].tolist(), "parts": parts, "scored": scored}
    (folder / "plan.json").write_text(json.dumps(plan))
    return {"photos": n, "merge_parts": len(parts)}


def held_in_flight(jobs: Iterable[Any], ahead: int) -> None:
    """Pickle each batch's arguments as the build's process pool does when it sends them, holding as many as
    ``flows.run_stage`` keeps submitted and unfinished (the workers' own work is not run here)."""
    import cloudpickle

    sent: deque[bytes] = deque(maxlen=ahead)
    for job in jobs:
        sent.append(cloudpickle.dumps(job))


def table_stages(folder: Path) -> dict[str, Any]:
    """The table-level stages of a build on the tiles ``save_tiles`` left in ``folder``, loaded and held as the flow
    loads and holds them; seconds and peak RSS per step (this process)."""
    from pipeline.tuning import tune_process

    tune_process()  # the build's settings, before pyarrow is loaded: its memory pool is chosen then
    import pandas as pd

    from pipeline import build as b
    from pipeline import incremental as inc
    from pipeline import rows, store
    from pipeline.config import load_config
    from pipeline.flows import in_flight, write_report_files
    from pipeline.report.write import write_csv
    from pipeline.stages import accounting, dedup, merge, qa, review, skill, split
    from pipeline.tables import REJECTION_COLUMNS, concat, isin
    from pipeline.tuning import release_memory

    steps: list[dict[str, Any]] = []
    resettable = reset_hwm()

    def step(name: str, start: float, lap: bool = True) -> None:
        """A step's time and peak; ``lap``: a stage of the flow ends with it, and frees its memory as the flow does."""
        steps.append({"step": name, "seconds": round(time.perf_counter() - start, 2), "peak_mb": round(vm_hwm_mb())})
        if lap:
            release_memory()
        steps[-1]["held_mb"] = round(vm_hwm_mb("VmRSS"))
        reset_hwm()

    t = time.perf_counter()
    plan = json.loads((folder / "plan.json").read_text())
    cfg = load_config(plan["config"])
    spec = b.resolve_spec(cfg)
    manifest, assignments, rejected = store.load(folder / "inputs.pkl")
    photos = b.by_photo([p for p, _ in map(store.load, sorted((folder / "ingest").iterdir()))])
    step("load inputs (read-inputs result, ingest batches)", t)

    t = time.perf_counter()
    out = folder / "out"
    out.mkdir()
    duplicates = dedup.find_duplicates(photos, cfg.dedup)
    dedup.index_table(photos, duplicates, None).to_parquet(out / "index.parquet", index=False)
    step("dedup (find_duplicates, index_table to Parquet)", t)

    t = time.perf_counter()  # as a build, from here on: no whole photo or assignment table, kept and to_merge
    kept = b.kept_photos(photos, duplicates)
    voted, _ = b.by_origin(kept)
    del photos
    release_memory()  # as the flow does, before routing copies the assignment rows
    submitted = len(assignments)
    to_merge, orphans = accounting.route_orphans(assignments, set(manifest["photo_id"]), set(),
                                                 dedup.dropped_ids(duplicates))
    del assignments
    manifest = manifest[["photo_id", "path"]]  # as the flow keeps it (it keeps each photo's mask path too)
    to_merge, repeated = merge.one_per_annotator(to_merge)
    step("route assignments (route_orphans, one_per_annotator)", t)  # the flow frees the heap before its merge

    t = time.perf_counter()  # a final pass's batches: photos, assignments, and a weight per annotator and class
    batch = b.batching(cfg, "processes").length(len(voted))
    weights = {(a, c): 1.0 for a in sorted(set(to_merge["annotator_id"])) for c in spec.draw_ids}
    jobs = b.merge_jobs(voted, to_merge, [list(range(i, min(i + batch, len(voted))))
                                          for i in range(0, len(voted), batch)])
    held_in_flight(((p, a, spec, cfg, weights) for p, a in jobs), in_flight(cfg))
    del weights, jobs
    step("merge pass inputs (merge_jobs, pickled for the process pool)", t)

    t = time.perf_counter()
    spill = b.MergeSpill(folder / "merged")
    parts = inc.gather(plan["parts"], plan["ids"], merge.MergeResult.summed,
                       lambda rs: spill.keep(b.settled(rs, spec, cfg.merge)))
    m = spill.merged(parts, spec)
    del parts
    step("merge result (gather and settle batches, combine)", t)

    t = time.perf_counter()
    skills = skill.PooledSkill(cfg.merge.skill_prior_photos, cfg.merge.gold_weight).fit_sums(m.scores).skills_
    held = merge.held_back(kept, to_merge, m.photos, cfg.merge.hold_disputed)
    held, decisions = review.apply_decisions(b.decisions(cfg), m.photos, held, kept, to_merge)
    merged = m.photos[~m.photos["photo_id"].isin(held["photo_id"])]
    rejections = concat([rejected, orphans, repeated, m.rejections, held], REJECTION_COLUMNS)
    del orphans, repeated, held  # as the flow lets them go
    to_merge.to_parquet(folder / "routed.parquet", index=False)
    del to_merge  # as the flow puts it aside (Layout.routed)
    step("skills and hold-back", t)

    t = time.perf_counter()
    links = dedup.user_links(duplicates, cfg.dedup.cross_user_policy)
    strata_table, strata = b.split_strata(voted, merged, spec, cfg.split)
    splits, split_report = split.assign_splits(strata_table, cfg.split.ratios, cfg.split.seed, links, strata, None)
    del voted, merged, strata_table  # as the flow lets them go
    kept = b.with_faces(kept, pd.DataFrame(columns=["photo_id"]).assign(  # the detector's columns: zeros, as for
        **{c: [] for c in ("faces", "face_x", "face_y", "face_w", "face_h")}))  # photos whose mask has a face
    reviewed = b.published_table(kept, m.photos, splits)
    del kept  # as the flow lets it go
    published = b.in_dataset(reviewed)
    step("split (split_strata, assign_splits)", t)

    t = time.perf_counter()
    annotators = b.annotator_table(m.assignments, m.repairs, skills, rejections, spec, cfg.merge.min_agreement,
                                   cfg.merge.ban)
    used = rows.count(m.assignments, lambda a: isin(a["photo_id"], published["photo_id"]))
    ledger = accounting.balance(len(manifest), submitted, published, used, rejections, duplicates)
    step("accounting (annotator_table, balance)", t)  # the flow frees the heap after annotator_table

    t = time.perf_counter()
    batch = b.batching(cfg, "processes").length(len(published))  # the export's own batches, as the flow sizes them
    held_in_flight(((published.iloc[i: i + batch], spec, cfg) for i in range(0, len(published), batch)),
                   in_flight(cfg))
    step("export inputs (published batches, pickled for the process pool)", t, lap=False)

    t = time.perf_counter()
    findings = qa.run_checks(qa.QAInputs(reviewed, m.assignments, m.classes, m.repairs, annotators, duplicates,
                                         spec, cfg.qa, cfg.split.ratios))
    step("QA checks", t)

    del reviewed  # as the flow lets it go after the thumbnails
    release_memory()
    reset_hwm()
    t = time.perf_counter()
    classes = b.class_summary(published, spec)
    tables = b.report_tables(rejections, duplicates, m, skills, annotators, findings, classes, published, decisions,
                             spec, cfg, KEY.encode())
    summary = b.summary(spec, cfg, ledger, published, findings, decisions, "scale", split_report.as_dict())
    class_rows, photos_in = len(m.classes), len(manifest)
    del m  # as the flow lets it go
    write_csv(splits, out / "splits.csv")
    write_report_files(summary, tables, dict(zip(manifest["photo_id"], manifest["path"], strict=True)), {}, None,
                       out, folder / "report-tables.json")
    step("report (report_tables, write_report_files: CSV, JSON, qa.html)", t)
    size = sum(p.stat().st_size for p in out.iterdir())
    shutil.rmtree(out, ignore_errors=True)
    return {"photos": photos_in, "kept": len(plan["ids"]), "published": len(published), "assignments": submitted,
            "class_rows": class_rows, "score_rows": plan["scored"],
            "clusters": int(duplicates["cluster"].nunique()),
            "steps": steps, "peak_mb": max(s["peak_mb"] for s in steps), "per_step_peaks": resettable,
            "report_mb": size / 2**20}


def run_tables(n: int, template: Path, seed: int, code: Path) -> dict[str, Any]:
    print(f"table-level stages at {n:,} photos ...", file=sys.stderr, flush=True)
    tiles = template.parent / f"tiles-{n}"
    try:
        for args in (["--save-tiles", str(n), "--template", str(template), "--seed", str(seed)], []):
            proc = subprocess.run([sys.executable, __file__, *args, "--table-stages", str(tiles)],
                                  env=child_env(code, None), capture_output=True, text=True)
            if proc.returncode != 0:  # a negative code is the signal that ended it (-9: the OOM killer, often)
                tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[-400:]
                return {"photos": n, "error": f"exit code {proc.returncode}" + (f": {tail}" if tail else "")}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tiles, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- main

def pct(x: float, cold: float) -> str:
    return f"{100 * x / cold:.1f}%" if cold == cold and cold > 0 and x == x else "n/a"


def run_cell(r: Run | None) -> str:
    if r is None:
        return "not run"
    if r.rc != 0:
        return f"failed (exit {r.rc})"
    return f"{r.seconds:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=20_000, help="original photos of the crowd (duplicates on top)")
    ap.add_argument("--quick", action="store_true", help="1,000 photos; table-level runs at 1k and 10k")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where crowds and builds are kept (not the repo)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sim-workers", type=int, default=os.cpu_count() or 1, help="processes that simulate")
    ap.add_argument("--tables", default="", help="photo counts of the table-level runs (default: 20k,200k)")
    ap.add_argument("--skip-builds", action="store_true", help="only the table-level runs")
    ap.add_argument("--skip-tables", action="store_true", help="only the builds")
    ap.add_argument("--table-stages", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--save-tiles", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--template", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--make-template", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--crowd", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.save_tiles is not None:
        print(json.dumps(save_tiles(args.save_tiles, args.template, args.seed, args.table_stages)))
        return
    if args.table_stages is not None:
        print(json.dumps(table_stages(args.table_stages)))
        return
    if args.make_template is not None:
        make_template(args.crowd, args.make_template)
        return
    photos = 1_000 if args.quick else args.photos
    sizes = [int(float(s.replace("k", "e3"))) for s in args.tables.split(",")] if args.tables else (
        [1_000, 10_000] if args.quick else [20_000, 200_000])

    load0 = os.getloadavg()
    crowd, info = ensure_crowd(args.data, photos, args.seed, args.sim_workers)
    held = hold_out(crowd)
    scratch = args.data / "runs" / crowd.name
    scratch.mkdir(parents=True, exist_ok=True)
    lock = (scratch / ".lock").open("a+")
    try:  # a second run would replace the code snapshot and logs under the first one's builds
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"scale.py: another run is using {scratch}; wait for it to end")
    restore_uploads(crowd)  # a run killed during the cold build left the 99% files in place
    code = snapshot_code(scratch)
    logs = scratch / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    counts = info["counts"]
    print(f"## Rebuilds at scale: {photos:,} photos\n")
    print(f"Crowd `{crowd}`: {counts['manifest_rows']:,} manifest rows ({counts['photos']:,} originals + "
          f"{counts['duplicates']:,} duplicates), {counts['users']:,} users, {counts['assignments']:,} assignments "
          f"({ANNOTATORS} per photo from a pool of {info['params']['pool']}, plus gold), sizes: {crowd_mix(crowd)}. "
          f"Simulated in {info['seconds']:,.0f} s with {info['workers']} processes. Case (b) holds out "
          f"{held['held_rows']:,} manifest rows and {held['held_lines']:,} annotation lines. "
          f"{os.cpu_count()} cores; load average {load0[0]:.1f} at start.\n", flush=True)

    runs: dict[str, Run] = {}
    fl: dict[str, Any] = {}
    if not args.skip_builds:
        home = scratch / "prefect-home"
        shutil.rmtree(home, ignore_errors=True)
        warm_prefect(code, home)
        pin = supports(code, "merge", "pin_skills")
        configs = scratch / "configs"
        configs.mkdir(exist_ok=True)
        out = scratch / "build"
        for d in (out, scratch / "build-a", scratch / "build-b"):  # build-a/-b: earlier versions' two folders
            shutil.rmtree(d, ignore_errors=True)
        with uploads_so_far(crowd):
            runs["cold"] = build("cold", write_config(configs / "cold.toml", crowd, {}), out, code, home, logs)
        pinned: dict[str, dict[str, Any]] = {"merge": {"pin_skills": str(out / "work" / "weights.csv")}} if pin else {}
        runs["b"] = build("b", write_config(configs / "b.toml", crowd, pinned | {
            "split": {"previous": str(out / "work" / "splits.csv")}}), out, code, home, logs)
        if not pin:
            runs["b"].note = "without merge.pin_skills (not in this version)"
        if runs["b"].rc == 0:
            print("floor: decoding photos and encoding masks ...", file=sys.stderr, flush=True)
            fl = floor(crowd, out, scratch)
        runs["a"] = ratio_changes([build(f"a{n}", write_config(configs / f"a{n}.toml", crowd, pinned | {
            "split": {"ratios": ratios}}), out, code, home, logs) for n, ratios in
            enumerate((RATIOS, OTHER_RATIOS, RATIOS), 1)])
        runs["c"] = build("c", write_config(configs / "c.toml", crowd, {
            "split": {"ratios": RATIOS}, "merge": {**pinned.get("merge", {}), "class_agreement": {"teeth": 0.6}}}),
            out, code, home, logs)
        print_builds(runs, fl)

    results = []
    if not args.skip_tables:
        template = scratch / "template" / "template.pkl"
        template.parent.mkdir(exist_ok=True)
        print("template: ingesting and merging the first photos ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--make-template", str(template), "--crowd", str(crowd)],
                       env=child_env(code, None), check=True)
        results = [run_tables(n, template, args.seed, code) for n in sizes]
        print_tables(results)
    load1 = os.getloadavg()
    print(f"Load average (1 min) {load0[0]:.1f} at start, {load1[0]:.1f} at the end; builds ran from a snapshot of "
          f"the package in `{code}`.")


def ratio_changes(repeats: list[Run]) -> Run:
    """Case (a) from its repeated builds: the median one by time (a failed one, if any), its times noted."""
    failed = [r for r in repeats if r.rc != 0]
    median = failed[0] if failed else sorted(repeats, key=lambda r: r.seconds)[len(repeats) // 2]
    median.note = "median of 3 builds: " + ", ".join(f"{r.seconds:,.1f}" for r in repeats) + " s"
    return median


def print_builds(runs: dict[str, Run], fl: dict[str, Any]) -> None:
    cold = runs["cold"].seconds if runs["cold"].rc == 0 else float("nan")
    rows = []
    labels = {"cold": ("cold build, 99% of uploads", "(empty folder, default config, last 1% held out)", ""),
              "b": ("(b) +1% photos", "all uploads, pin_skills + split.previous", "<= 10%"),
              "a": ("(a) split ratios", "all uploads, pin_skills, ratios 70/15/15", "<= 5%"),
              "c": ("(c) class threshold", "(a) + class_agreement teeth = 0.6", "re-votes nothing")}
    for key, (name, change, target) in labels.items():
        r = runs.get(key)
        if r is None:
            continue
        ok = ""
        if r.rc == 0 and key in ("a", "b") and cold == cold:
            ok = " met" if r.seconds <= TARGETS[key] * cold else " missed"
        if r.rc == 0 and key == "c" and {"score", "merge"} <= set(r.items):
            voted = r.items["score"][0] + r.items["merge"][0]
            ok = ": met" if voted == 0 else f": missed ({voted:,} photo votes)"
        published = r.ledger.get("photos_published", "")
        cold_cpu = runs["cold"].cpu_s if runs["cold"].rc == 0 else float("nan")
        rows.append([name, change + (f"; {r.note}" if r.note else ""), run_cell(r),
                     pct(r.seconds, cold) if key != "cold" and r.rc == 0 else "", (target + ok).strip(),
                     f"{r.peak_mb:,.0f}" if r.rc == 0 else "", f"{r.cpu_s:,.0f}" if r.rc == 0 else "",
                     pct(r.cpu_s, cold_cpu) if key != "cold" and r.rc == 0 else "",
                     f"{published:,}" if published != "" else ""])
    print(table(["build", "change", "seconds", "% of cold", "target", "peak RSS MB", "CPU s", "CPU % of cold",
                 "published"], rows))
    print()
    for r in runs.values():
        if r.rc != 0:
            print(f"- {r.name} failed: `{r.error}`")
    stages = list(dict.fromkeys(s for r in runs.values() for s in r.stages))
    if stages:
        keys = [k for k in ("cold", "b", "a", "c") if k in runs]
        print(table(["stage", *keys], [[s, *(f"{runs[k].stages[s]:,.1f}" if s in runs[k].stages else ""
                                             for k in keys)] for s in stages]))
        print()
    items = list(dict.fromkeys(s for r in runs.values() for s in r.items))
    if items:
        keys = [k for k in ("cold", "b", "a", "c") if k in runs]
        print("Items computed / reused per cached step (`timings.csv`):\n")
        print(table(["step", *keys], [[s, *(f"{runs[k].items[s][0]:,} / {runs[k].items[s][1]:,}"
                                            if s in runs[k].items else "" for k in keys)] for s in items]))
        print()
    if fl:
        ratio = cold / fl["floor"] if fl["floor"] else float("nan")
        cold_cpu = runs["cold"].cpu_s
        print(table(["floor part", "items", "timed seconds (sum over workers)", "CPU seconds"],
                    [["decode each photo, all uploads (cv2.imdecode)", f"{fl['photos']:,}", f"{fl['decode_s']:,.1f}",
                      f"{fl['decode_cpu']:,.1f}"],
                     ["encode each merged mask (cv2.imwrite PNG, compression 1)", f"{fl['masks']:,}",
                      f"{fl['encode_s']:,.1f}", f"{fl['encode_cpu']:,.1f}"],
                     ["(alternative) encode each merged mask (crowdseg's write_mask)", f"{fl['masks']:,}",
                      f"{fl['own_s']:,.1f}", f"{fl['own_cpu']:,.1f}"]]))
        print(f"\nFloor on {fl['workers']} processes (busiest worker's timed seconds): **{fl['floor']:,.1f} s** "
              f"(pool wall time with untimed mask loading {fl['wall']:,.1f} s). "
              f"**Cold build (99% of uploads) / floor (all of them) = {ratio:.1f}x** ({cold:,.1f} s / "
              f"{fl['floor']:,.1f} s); in CPU seconds "
              f"{cold_cpu / fl['cpu']:.1f}x ({cold_cpu:,.0f} / {fl['cpu']:,.0f}). With crowdseg's own mask encoder "
              f"in the floor instead of OpenCV's, the floor is {fl['floor_own']:,.1f} s and the cold build "
              f"{cold / fl['floor_own']:.1f}x it (CPU {cold_cpu / fl['cpu_own']:.1f}x).\n", flush=True)


def print_tables(results: list[dict[str, Any]]) -> None:
    ok = [r for r in results if "error" not in r]
    for r in results:
        if "error" in r:
            print(f"- table-level run at {r['photos']:,} photos failed: `{r['error']}`")
    if not ok:
        return
    steps = list(dict.fromkeys(s["step"] for r in ok for s in r["steps"]))
    rows = []
    for s in steps:
        cells = []
        for r in ok:
            found = next((x for x in r["steps"] if x["step"] == s), None)
            cells += ([f"{found['seconds']:,.2f}", f"{found['peak_mb']:,}", f"{found['held_mb']:,}"] if found
                      else ["", "", ""])
        rows.append([s, *cells])
    rows.append(["**whole run**", *[c for r in ok for c in (f"{sum(x['seconds'] for x in r['steps']):,.1f}",
                                                            f"**{r['peak_mb']:,}**", "")]])
    heads = [h for r in ok for h in (f"{r['photos'] // 1000}k s", f"{r['photos'] // 1000}k peak MB",
                                     f"{r['photos'] // 1000}k held MB")]
    print(table(["table-level step", *heads], rows))
    print()
    print(table(["photos", "kept", "published", "assignments", "class rows", "score rows", "dup clusters",
                 "report files MB"],
                [[f"{r['photos']:,}", f"{r['kept']:,}", f"{r['published']:,}", f"{r['assignments']:,}",
                  f"{r['class_rows']:,}", f"{r['score_rows']:,}", f"{r['clusters']:,}", f"{r['report_mb']:,.0f}"]
                 for r in ok]))
    print("\n(peak MB: VmHWM of the subprocess during the step; it is reset after each step through "
          "/proc/self/clear_refs" + ("" if all(r["per_step_peaks"] for r in ok) else " where allowed") + ". "
          "held MB: its RSS after the step, once a stage's end has freed what the flow frees there.)\n", flush=True)


if __name__ == "__main__":
    main()
