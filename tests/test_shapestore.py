"""Shapes on disk: the shape store and the annotation reader that streams into it."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from pipeline.io import annotations
from pipeline.io.annotations import read_annotations
from pipeline.io.shapestore import LOCATION_COLUMNS, ShapeStore, by_assignment, digest, located, records_of
from pipeline.spec import load_spec
from tests.conftest import write_lines

SPEC = load_spec("easyportrait")


def crowd_lines(photos: int, per_photo: int) -> list[dict]:
    return [{"photo_id": f"p{p:03d}", "annotator_id": f"a{k}",
             "shapes": [{"label": "face_skin", "points": [[p, k], [p + 9, k], [p + 9, k + 7.5]]},
                        {"label": "hair", "points": [[0, 0], [5, 0], [5, 5 + k]], "holes": []}]}
            for p in range(photos) for k in range(per_photo)]


@pytest.fixture
def lines(tmp_path):
    return write_lines(tmp_path / "annotations.jsonl", crowd_lines(200, 3))


def as_rows(df: pd.DataFrame) -> list[tuple]:
    return [tuple(str(v) for v in r) for r in df.itertuples(index=False, name=None)]



def _digests(rows):
    """Per assignment, the digest of its rows, as if every row came in one write."""
    return {a: digest(mine) for a, mine in by_assignment(rows).items()}

def test_streamed_shapes_equal_the_in_memory_table_and_the_store_returns_only_what_is_asked(lines, tmp_path,
                                                                                             monkeypatch):
    a, whole, rejected = read_annotations(lines, SPEC)
    monkeypatch.setattr(annotations, "SPILL_ROWS", 50)  # many spills, each between two assignments
    store = ShapeStore.create(tmp_path / "x.shapes")
    records: dict[str, tuple[int, int, str]] = {}
    writes = []

    def sink(rows):
        writes.append(len(rows))
        records.update(store.write(rows))

    a2, left, rejected2 = read_annotations(lines, SPEC, sink=sink)
    assert left.empty and a2.equals(a) and rejected2.equals(rejected)
    assert len(writes) > 10 and all(w % 2 == 0 for w in writes)  # 2 shapes per assignment: never split
    assert {k: d for k, (_, _, d) in records.items()} == _digests(whole.itertuples(index=False, name=None))
    located_a = located(a, records)
    assert list(located_a.columns) == [*a.columns, *LOCATION_COLUMNS] and records_of(located_a) == records

    rows = located_a[located_a["photo_id"].isin(["p017", "p018", "p150"])]
    got = pickle.loads(pickle.dumps(store)).read(rows)  # what a worker process gets: the path alone
    expected = whole[whole["assignment"].isin(rows["assignment"])]
    assert sorted(as_rows(got)) == sorted(as_rows(expected))
    assert got.groupby("assignment")["index"].apply(list).to_dict() == \
        expected.groupby("assignment")["index"].apply(list).to_dict()  # imported order within an assignment
    shapeless = located(a.iloc[:1].assign(assignment="no such assignment"), records)
    assert shapeless[LOCATION_COLUMNS].values.tolist() == [[0, 0, ""]] and store.read(shapeless).empty


def test_digests_follow_an_assignments_own_shapes_only():
    rows = [("x:1", "p1", "a", 1, "face_skin", [[0, 0], [1, 0], [1, 1]], [], 1, 0),
            ("x:2", "p1", "b", 1, "face_skin", [[0, 0], [1, 0], [1, 1]], [], 2, 0)]
    moved = [rows[0], rows[1][:5] + ([[0, 0], [1, 0], [1, 2]],) + rows[1][6:]]
    before, after = _digests(rows), _digests(moved)
    assert before["x:1"] == after["x:1"] and before["x:2"] != after["x:2"]


def test_a_new_store_starts_empty(tmp_path):
    first = ShapeStore.create(tmp_path / "x.shapes")
    (offset, length, _), = first.write([("x:1", "p1", "a", 1, "face_skin", [[0, 0], [1, 0], [1, 1]], [], 1, 0)]
                                       ).values()
    assert (offset, length) == (0, (tmp_path / "x.shapes").stat().st_size)
    ShapeStore.create(tmp_path / "x.shapes")
    assert (tmp_path / "x.shapes").stat().st_size == 0
