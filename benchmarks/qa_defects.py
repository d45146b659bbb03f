"""QA defect detection: recall and precision of the findings per injected defect kind, against the simulator's truth.

A simulated crowd with blurred, dark and tiny-face photos and with spammer, swapper and lazy annotators (plus
careful and sloppy ones) is built through the real Prefect flow with default settings; each kind is matched to the
check meant to catch it. Sloppy annotators are no defect here: a finding on one counts against precision.

    python benchmarks/qa_defects.py [--photos 600] [--defects 15] [--pool 60] [--seed 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import table

from pipeline.build import preflight
from pipeline.config import load_config
from pipeline.flows import run_build
from pipeline.simulate import simulate

CHECKS = {"blurred": "blur", "dark": "underexposed", "tiny_face": "small_face", "spammer": "spammer",
          "swapper": "swapper", "lazy": "misses_classes"}
PROFILES = {"careful": 0.55, "sloppy": 0.15, "lazy": 0.1, "swapper": 0.1, "spammer": 0.1}


def truth_sets(crowd: Path) -> dict[str, set[str]]:
    """The photos and annotators that really have each defect kind."""
    photos = pd.read_csv(crowd / "truth" / "photos.csv", dtype=str, keep_default_na=False)
    people = pd.read_csv(crowd / "truth" / "annotators.csv", dtype=str)
    return ({k: set(photos.loc[photos["defect"] == k, "photo_id"]) for k in ("blurred", "dark", "tiny_face")}
            | {k: set(people.loc[people["profile"] == k, "annotator_id"]) for k in ("spammer", "swapper", "lazy")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=600)
    ap.add_argument("--defects", type=int, default=15, help="photos of each defective kind")
    ap.add_argument("--pool", type=int, default=60, help="annotators in the crowd (5 per photo)")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        crowd = Path(tmp)
        simulate(crowd, photos=args.photos, users=args.photos // 3, annotators=5, seed=args.seed, pool=args.pool,
                 profiles=PROFILES, defects=args.defects)
        cfg = load_config(crowd / "config.toml", {"output.out": str(crowd / "build")})
        start = time.perf_counter()
        run_build(cfg, preflight(cfg))
        seconds = time.perf_counter() - start
        findings = pd.read_csv(crowd / "build" / "reports" / "findings.csv", dtype=str, keep_default_na=False)
        truth = truth_sets(crowd)
    rows = []
    for kind, check in CHECKS.items():
        flagged = set(findings.loc[findings["check"] == check, "subject_id"])
        hit = len(flagged & truth[kind])
        rows.append([kind, check, len(truth[kind]), len(flagged), f"{hit / max(len(truth[kind]), 1):.3f}",
                     f"{hit / max(len(flagged), 1):.3f}"])
    print(f"{args.photos} photos, {args.defects} of each photo defect, {args.pool} annotators; build {seconds:.0f} s")
    print(table(["defect", "check", "true", "flagged", "recall", "precision"], rows))


if __name__ == "__main__":
    main()
