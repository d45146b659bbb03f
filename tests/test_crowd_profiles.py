"""Every annotator profile of a simulated crowd is caught by the merge stage, with no Prefect involved."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import incremental as inc
from pipeline import store
from pipeline.build import annotator_table, combine, merge_jobs
from pipeline.config import IngestConfig, MergeConfig
from pipeline.io.annotations import read_annotations
from pipeline.io.ballots import Ballots
from pipeline.io.manifest import read_manifest
from pipeline.simulate import simulate
from pipeline.spec import load_spec
from pipeline.stages.ingest import ingest
from pipeline.stages.merge import MergeResult, merge_batch
from pipeline.stages.skill import PooledSkill

SPEC = load_spec("easyportrait")
PROFILES = {"careful": 0.45, "sloppy": 0.15, "lazy": 0.15, "swapper": 0.15, "spammer": 0.1}


def crowd_jobs(folder: Path, size: int) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """The crowd's merge batches of ``size`` photos: photos, their assignments and shapes."""
    photos, _ = ingest(read_manifest(folder / "photos.csv")[0], IngestConfig(detect_faces=False))
    assignments, shapes, _ = read_annotations(folder / "annotations.jsonl", SPEC)
    return [(batch, a, shapes[shapes["assignment"].isin(a["assignment"])])
            for batch, a in merge_jobs(photos, assignments[assignments["photo_id"].isin(photos["photo_id"])],
                                       [list(range(i, min(i + size, len(photos))))
                                        for i in range(0, len(photos), size)])]


def merge_crowd(folder: Path, out: Path, cfg: MergeConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The merge stage as the flow runs it (EM passes, then the final vote); photos, assignments, annotators."""
    jobs = crowd_jobs(folder, 16)
    weights: dict = {}
    for _ in range(cfg.em_iterations):
        scores = pd.concat([merge_batch(*job, SPEC, cfg, weights, None).scores for job in jobs])
        weights = PooledSkill(cfg.skill_prior_photos, cfg.gold_weight).fit(scores).weights()
    m = combine([merge_batch(*job, SPEC, cfg, weights, out).summed() for job in jobs], SPEC)
    skills = PooledSkill(cfg.skill_prior_photos, cfg.gold_weight).fit_sums(m.scores).skills_
    table = annotator_table(m.assignments, m.repairs, skills, m.rejections, SPEC, cfg.min_agreement, cfg.ban)
    return m.photos, m.assignments, table


@pytest.fixture(scope="module")
def crowd(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    folder, out = tmp_path_factory.mktemp("crowd"), tmp_path_factory.mktemp("masks")
    simulate(folder, photos=60, users=20, annotators=5, pool=16, seed=5, size=(480, 640), profiles=PROFILES,
             gold_share=0.0)
    return (folder, *merge_crowd(folder, out, MergeConfig()))


def test_spammers_and_swappers_are_detected_and_careful_annotators_are_not(crowd):
    folder, _, _, annotators = crowd
    truth = pd.read_csv(folder / "truth" / "annotators.csv")[["annotator_id", "profile"]]
    status = annotators.merge(truth, on="annotator_id").groupby("profile")["status"].agg(set)
    assert status["spammer"] == {"spammer"}
    assert status["swapper"] == {"swapper"}
    assert status["careful"] == {"ok"}


def test_swapped_assignments_are_swapped_back_and_spam_is_left_out(crowd):
    folder, _, assignments, _ = crowd
    truth = pd.read_csv(folder / "truth" / "annotators.csv")[["annotator_id", "profile"]]
    a = assignments.merge(truth, on="annotator_id")
    assert a.loc[a["profile"] == "careful", "swapped"].mean() < 0.05
    assert a.loc[a["profile"] == "swapper", "swapped"].mean() > 0.4  # they swap on ~70% of photos with eyes
    assert (a.loc[a["profile"] == "spammer", "used"]).mean() < 0.1


def test_lazy_annotators_do_not_erase_the_parts_they_skip(crowd):
    folder, photos, _, annotators = crowd
    truth = pd.read_csv(folder / "truth" / "annotators.csv")[["annotator_id", "profile"]]
    skill = annotators.merge(truth, on="annotator_id").groupby("profile")["skill_teeth"].mean()
    assert skill["lazy"] < skill["careful"]
    inter = union = 0
    for p in photos.itertuples():
        pred = np.asarray(Image.open(p.mask_path)) == 8
        true = np.asarray(Image.open(folder / "truth" / "masks" / f"{p.photo_id}.png")) == 8
        inter, union = inter + (pred & true).sum(), union + (pred | true).sum()
    assert union > 0 and inter / union > 0.9


def test_merge_batches_combine_alike_however_they_are_grouped_and_ordered(crowd, tmp_path, monkeypatch):
    """The flow joins the final pass's batches a few at a time as it reads them (``incremental.gather``), and
    ``combine`` takes the joined groups in any order: the result is the one of combining every batch at once."""
    results = [merge_batch(*job, SPEC, MergeConfig(), {}, tmp_path) for job in crowd_jobs(crowd[0], 5)]
    whole = combine([r.summed() for r in results], SPEC)
    ids = [p for r in results for p in r.photos["photo_id"]]
    parts, at = {}, 0
    for k, r in enumerate(results):
        parts[str(store.save(r, tmp_path / f"{k:03d}.pkl"))] = list(range(at, at + len(r.photos)))
        at += len(r.photos)
    monkeypatch.setattr(inc, "JOIN_EVERY", 3)
    joined = inc.gather(parts, ids, MergeResult.summed, lambda rs: combine(rs, SPEC))
    assert len(results) > 6 and len(joined) == -(-len(results) // 3) and len(whole.photos) == len(ids) > 30
    again = combine(joined[::-1], SPEC)
    for name in ("photos", "assignments", "classes", "rejections", "repairs", "scores"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(whole, name))


@pytest.fixture(scope="module")
def gold_crowd(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gold_crowd")
    simulate(folder, photos=24, users=10, annotators=5, pool=8, seed=3, size=(240, 320), profiles=PROFILES,
             gold_share=0.5)
    return folder


@pytest.mark.parametrize("settings, maps", [({}, False), ({"use_golden": False, "swaps": "exclude"}, True)])
def test_a_vote_from_kept_prepared_photos_equals_a_fresh_one(gold_crowd, tmp_path, settings, maps):
    """The final vote of a photo read back from its ballot (``Prepared``, kept by a scoring pass) writes the same
    masks, agreement maps and tables as one that rasterises the photo, with golden answers, swaps and bans."""
    jobs = crowd_jobs(gold_crowd, 8)
    someone = sorted(jobs[0][1]["annotator_id"])[0]
    cfg = MergeConfig(ban=[someone], **settings)
    weights = {(a, c): 0.2 + k % 5 / 5 for k, a in enumerate(sorted({a for _, j, _ in jobs for a in j["annotator_id"]}))
               for c in SPEC.draw_ids}
    results = []
    for photos, assignments, shapes in jobs:
        box = Ballots(tmp_path / "ballots", {p: f"b-{p}" for p in photos["photo_id"]})
        fresh = merge_batch(photos, assignments, shapes, SPEC, cfg, weights, tmp_path / "fresh", maps)
        merge_batch(photos, assignments, shapes, SPEC, cfg, {}, None, ballots=box)  # a scoring pass keeps them
        box = box.found()
        assert box.present == set(photos["photo_id"])
        kept = merge_batch(photos, assignments, shapes.iloc[:0], SPEC, cfg, weights, tmp_path / "kept", maps, box)
        for name in ("assignments", "classes", "rejections", "repairs", "scores"):
            pd.testing.assert_frame_equal(getattr(kept, name), getattr(fresh, name))
        paths = ["mask_path", "agreement_path"]
        pd.testing.assert_frame_equal(kept.photos.drop(columns=paths), fresh.photos.drop(columns=paths))
        for a, b in zip(fresh.photos[paths].to_numpy().ravel(), kept.photos[paths].to_numpy().ravel(), strict=True):
            assert (a == b == "") or Path(a).read_bytes() == Path(b).read_bytes()
        results.append(kept)
    seen = combine([r.summed() for r in results], SPEC)
    assert seen.assignments["swapped"].any() and (seen.assignments["excluded"] == "banned").any()
    assert (seen.photos["source"] == "vote").any() and (seen.photos["agreement_path"] != "").all() == maps
    assert (seen.photos["source"] == "golden").any() == cfg.use_golden
