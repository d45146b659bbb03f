"""The content-keyed store and the stage keys: atomic results, reuse by item, digests remembered by stat, pruning."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import xxhash

from pipeline import incremental as inc
from pipeline import store
from pipeline.build import Layout, all_pinned, preflight
from pipeline.config import Config, load_config
from pipeline.io import manifest
from pipeline.io.ballots import Ballots
from pipeline.simulate import simulate
from pipeline.spec import load_spec


def test_save_part_makes_items_known_only_once_complete(tmp_path):
    part = tmp_path / "abc.pkl"
    store.save(pd.DataFrame({"photo_id": ["p1"]}), part)
    assert store.known_items(tmp_path) == {}  # a result with no keys file is a batch killed half-way
    store.save_part(pd.DataFrame({"photo_id": ["p1", "p2"]}), ["k1", "k2"], part)
    assert store.known_items(tmp_path) == {"k1": str(part), "k2": str(part)}
    assert list(store.load(part)["photo_id"]) == ["p1", "p2"]
    assert not list(tmp_path.glob(".*"))  # no temporary file is left behind


def test_plan_reuses_known_items_and_batches_the_rest(tmp_path):
    store.save_part("old", ["a", "c"], tmp_path / "old.pkl")
    plan = inc.plan(["a", "b", "c", "d", "e"], "ingest", tmp_path, inc.Batching(2))
    assert plan.reused == {str(tmp_path / "old.pkl"): [0, 2]}
    assert [bt.rows for bt in plan.todo] == [[1, 3], [4]] and plan.computed == 3 and plan.reused_items == 2
    again = inc.plan(["b", "d"], "ingest", tmp_path, inc.Batching(2))
    assert plan.todo[0].key == again.todo[0].key  # keyed by content
    assert plan.parts(["new1", "new2"]) == {str(tmp_path / "old.pkl"): [0, 2], "new1": [1, 3], "new2": [4]}


def test_a_stage_planned_chunk_by_chunk_covers_each_item_once_at_its_row(tmp_path):
    store.save_part("old", ["k1", "k7"], tmp_path / "old.pkl")
    keys, known = [f"k{i}" for i in range(10)], store.known_items(tmp_path)
    plan = inc.Plan.joined([inc.plan(keys[at: at + 4], "ingest", tmp_path, inc.Batching(2), at, known)
                            for at in range(0, 10, 4)])
    assert plan.reused == {str(tmp_path / "old.pkl"): [1, 7]}
    assert [bt.rows for bt in plan.todo] == [[0, 2], [3], [4, 5], [6], [8, 9]]
    assert all(bt.items == [keys[i] for i in bt.rows] for bt in plan.todo)
    whole = inc.plan(keys, "ingest", tmp_path, inc.Batching(2))  # the same items, batched otherwise
    assert sorted(i for bt in plan.todo for i in bt.rows) == sorted(i for bt in whole.todo for i in bt.rows)


def test_batches_shrink_to_spread_a_small_stage_over_the_workers(tmp_path):
    keys = [f"k{i}" for i in range(10)]
    assert [len(bt.rows) for bt in inc.plan(keys, "ingest", tmp_path, inc.Batching(128, 4)).todo] == [3, 3, 3, 1]
    assert [len(bt.rows) for bt in inc.plan(keys, "ingest", tmp_path, inc.Batching(4, 2)).todo] == [4, 4, 2]
    assert [len(bt.rows) for bt in inc.plan(keys * 100, "ingest", tmp_path, inc.Batching(128, 4)).todo][:2] == [128] * 2
    assert inc.plan([], "ingest", tmp_path, inc.Batching(128, 4)).todo == []


@dataclass(frozen=True)
class Result:
    rows: pd.DataFrame
    by_id: dict[str, int]


def test_take_selects_a_photos_share_of_any_result():
    result = (Result(pd.DataFrame({"photo_id": ["p1", "p2", "p1"], "v": [1, 2, 3]}), {"p1": 1, "p2": 2}),
              pd.DataFrame({"photo_id": ["p2"]}))
    mine, other = inc.take(result, {"p1"})
    assert list(mine.rows["v"]) == [1, 3] and mine.by_id == {"p1": 1} and other.empty


def test_file_digests_are_remembered_by_stat_and_redone_on_change(tmp_path):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"one")
    digests = store.FileDigests(tmp_path / "d.parquet")
    first = digests.digests([str(f), str(tmp_path / "missing.jpg")])
    assert first[1] == "" and first[0] == xxhash.xxh3_128_hexdigest(b"one")
    digests.save([str(f)])
    again = store.FileDigests(tmp_path / "d.parquet")
    assert again.digests([str(f)]) == first[:1]
    f.write_bytes(b"two")
    os.utime(f, ns=(1, 1))
    assert store.FileDigests(tmp_path / "d.parquet").digests([str(f)]) != first[:1]


def test_preflight_checks_again_only_the_inputs_changed_since_a_build_read_them(tmp_path, monkeypatch):
    crowd = tmp_path / "crowd"
    simulate(crowd, photos=3, users=2, annotators=2, seed=5, size=(120, 160))
    cfg = load_config(crowd / "config.toml", {"output.out": str(tmp_path / "out")})
    lines = cfg.path(cfg.inputs.annotations)
    scanned = []
    monkeypatch.setattr(manifest, "read_lines", lambda path: scanned.append(path) or iter(()))
    preflight(cfg)
    inputs = [str(p) for p in inc.input_files(cfg)]
    files = store.FileDigests(Layout(cfg.path(cfg.output.out)).work / "digests.parquet")
    files.digests(inputs)
    files.save(inputs)  # as a build that ended well
    preflight(cfg)
    assert files.unchanged(str(lines.resolve())) and scanned == [lines]
    os.utime(lines, ns=(1, 1))
    preflight(cfg)
    assert scanned == [lines, lines]


def test_prune_keeps_what_a_build_used_and_drops_leftovers(tmp_path):
    for name in ("keep.pkl", "keep.keys", "old.pkl", ".tmp.pkl.1.tmp"):
        (tmp_path / name).write_text("x")
    (tmp_path / "keep").mkdir()
    (tmp_path / "old").mkdir()
    assert store.prune([tmp_path, tmp_path / "absent"], {"keep"}) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "keep.keys", "keep.pkl"]


def test_code_versions_cover_a_stage_and_what_it_imports_only():
    merge = store._closure("pipeline.stages.merge")
    assert {"pipeline.stages.merge", "pipeline.stages.polygons", "pipeline.spec"} <= merge
    assert "pipeline.stages.export" not in merge and "pipeline.report.html" not in merge
    assert store.code_version("pipeline.stages.merge") != store.code_version("pipeline.stages.ingest")


@pytest.fixture
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    photos = pd.DataFrame({"photo_id": ["p1", "p2"], "sha256": ["s1", "s2"], "width": [10, 10], "height": [8, 8]})
    assignments = pd.DataFrame({"assignment": ["f:1", "f:2", "f:3"], "photo_id": ["p1", "p1", "p2"],
                                "annotator_id": ["a", "b", "a"], "row": [1, 2, 3], "shape_offset": [0, 9, 20],
                                "shape_length": [9, 11, 4], "shape_digest": ["d1", "d2", "d3"]})
    return photos, assignments


def test_merge_keys_follow_a_photos_own_inputs_and_weights(tables):
    photos, assignments = tables
    spec, cfg = load_spec("easyportrait"), Config()
    base = inc.merge_keys(photos, assignments, {}, spec, cfg, True)
    assert len(set(base)) == 2 and base == inc.merge_keys(photos, assignments, {}, spec, cfg, True)
    only_b = inc.merge_keys(photos, assignments, {("b", 1): 0.5}, spec, cfg, True)
    assert only_b[0] != base[0] and only_b[1] == base[1]  # b annotated p1 only
    swapped = [inc.merge_keys(photos, assignments, {("a", 1): x, ("b", 1): y}, spec, cfg, True)[0]
               for x, y in ((0.5, 0.7), (0.7, 0.5))]
    assert swapped[0] != swapped[1]  # a's and b's weights exchanged
    shapes = inc.merge_keys(photos, assignments.assign(shape_digest=["d1", "d2", "changed"]), {}, spec, cfg, True)
    assert shapes[0] == base[0] and shapes[1] != base[1]
    moved = assignments.assign(shape_offset=[100, 200, 300])  # the same shapes, placed elsewhere in a store
    assert inc.merge_keys(photos, moved, {}, spec, cfg, True) == base
    thresholds = Config.model_validate({"merge": {"class_agreement": {"skin": 0.9}, "pin_skills": "w.csv"}})
    assert inc.merge_keys(photos, assignments, {}, spec, thresholds, True) == base
    quorum = Config.model_validate({"merge": {"quorum": {"skin": 0.9}}})
    assert inc.merge_keys(photos, assignments, {}, spec, quorum, True) != base
    assert inc.merge_keys(photos, assignments, {}, spec, cfg, False) != base


def test_ballot_keys_follow_what_a_prepared_photo_holds(tables):
    """A prepared photo is rasterised, swapped and tallied: new weights or a new quorum keep it, new shapes or a new
    swap setting do not."""
    photos, assignments = tables
    spec = load_spec("easyportrait")
    contents = inc.photo_contents(photos, assignments)
    base = inc.ballot_keys(contents, spec, Config())
    assert len(set(base)) == 2 and set(base).isdisjoint(inc.merge_keys(photos, assignments, {}, spec, Config(), False))
    quorum = Config.model_validate({"merge": {"quorum": {"skin": 0.9}, "min_agreement": 0.2, "em_iterations": 3}})
    assert inc.ballot_keys(contents, spec, quorum) == base
    margin = Config.model_validate({"merge": {"swap_margin": 0.5}})
    assert inc.ballot_keys(contents, spec, margin) != base
    shapes = inc.photo_contents(photos, assignments.assign(shape_digest=["d1", "d2", "changed"]))
    changed = inc.ballot_keys(shapes, spec, Config())
    assert changed[0] == base[0] and changed[1] != base[1]


def test_scoring_is_needed_unless_every_weight_is_pinned():
    pinned = {(a, c): 0.5 for a in ("a", "b") for c in (1, 2)}
    assert all_pinned(pinned, {"a", "b"}, [1, 2]) and all_pinned(pinned, set(), [1, 2])
    assert not all_pinned(pinned, {"a", "c"}, [1, 2])  # a new annotator
    assert not all_pinned(pinned, {"a"}, [1, 2, 3])  # a class the table lacks


def test_ingest_keys_ignore_where_a_row_sits_but_not_what_it_says():
    manifest = pd.DataFrame({"photo_id": ["p1"], "user_id": ["u1"], "path": ["/x/p1.jpg"],
                             "manifest": ["/x/photos.csv"], "row": [1]})
    base = inc.ingest_keys(manifest, ["d1"], Config())
    assert inc.ingest_keys(manifest.assign(row=7, manifest="/x/new.csv"), ["d1"], Config()) == base
    assert inc.ingest_keys(manifest, ["d2"], Config()) != base
    assert inc.ingest_keys(manifest.assign(user_id="u2"), ["d1"], Config()) != base


def test_a_line_prefix_covers_complete_lines_and_survives_appends_only(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3')  # the last line is not complete yet
    prefix = inc.line_prefix(f, "k")
    assert (prefix.size, prefix.lines) == (18, 2)
    f.write_bytes(f.read_bytes() + b'4}\n{"d": 5}\n')  # appended: the complete lines are untouched
    assert inc.starts_with(f, prefix)
    assert inc.line_prefix(f, "k").lines == 4
    f.write_bytes(b'{"a": 9}\n{"b": 2}\n{"c": 34}\n')  # rewritten
    assert not inc.starts_with(f, prefix)
    assert inc.earlier_prefix(tmp_path, f, "k") is None


def test_routed_rows_reads_back_the_rows_of_the_photos_asked_for(tmp_path):
    """The vote's assignment rows, put aside as Parquet, come back for a few photos with their dtypes."""
    from pipeline.build import routed_rows
    from pipeline.tables import as_categories

    rows = as_categories(pd.DataFrame({"photo_id": ["a", "a", "b", "c"], "assignment": ["a-1", "a-2", "b-1", "c-1"],
                                       "row": [1, 2, 3, 4], "file": "x.jsonl"}), ["file"])
    rows.to_parquet(tmp_path / "routed.parquet", index=False)
    got = routed_rows(tmp_path / "routed.parquet", ["c", "a", "z"])
    pd.testing.assert_frame_equal(got, rows.iloc[[0, 1, 3]].reset_index(drop=True))
    assert routed_rows(tmp_path / "routed.parquet", []).empty
    pd.DataFrame({"photo_id": [], "row": []}).to_parquet(tmp_path / "none.parquet", index=False)  # no rows at all
    assert routed_rows(tmp_path / "none.parquet", ["a"]).empty


def test_ballots_keep_a_prepared_photo_and_name_a_file_they_cannot_read(tmp_path):
    box = Ballots(tmp_path / "ballots", {"p1": "k1", "p2": "k2"})
    box.save("p1", {"labels": np.arange(1000, dtype=np.uint8) // 100})
    assert box.load("p1") is None  # not looked for yet
    box = box.found()
    assert box.present == {"p1"} and box.load("p2") is None
    np.testing.assert_array_equal(box.load("p1")["labels"], np.arange(1000, dtype=np.uint8) // 100)
    for damaged in (b"not a ballot", box.path("p1").read_bytes()[:-5] + b"\0" * 5):
        box.path("p2").write_bytes(damaged)
        with pytest.raises(ValueError, match=r"k2\.ballot: not a readable prepared photo"):
            box.found().load("p2")
    box.path("p1").unlink()
    with pytest.raises(FileNotFoundError, match=r"k1\.ballot"):  # gone since it was found: no shapes were read for it
        box.load("p1")
