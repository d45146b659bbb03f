"""The QA report: gallery selection, cached overlay thumbnails, and the self-contained HTML page."""

from __future__ import annotations

import base64
import functools
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.report.gallery import ALPHA, ANNOTATOR_SCALE, flagged_photos, gallery_thumbs
from pipeline.report.html import OPTIONAL_TABLES, render_report
from pipeline.simulate.portrait import render, truth_mask
from pipeline.spec import Spec, load_spec

HOSTILE = "<img src=x onerror=alert(1)>"
CLASSES = ["person", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "lips", "teeth"]
SPEC = load_spec("easyportrait")


def finding(level: str, subject: str, check: str, severity: str, message: str = "") -> dict[str, object]:
    return {"level": level, "subject_id": subject, "check": check, "severity": severity, "value": 1.0,
            "threshold": np.nan, "message": message or f"{check} on {subject}"}


def findings_table(photos: list[str]) -> pd.DataFrame:
    """Each photo gets a mix of checks; the hostile id gets an error, annotators get their own findings."""
    rows = [finding("annotator", "a1", "spammer", "error"), finding("dataset", "all", "presence_gap", "warning")]
    for k, p in enumerate(photos):
        rows.append(finding("photo", p, "blur" if k % 2 else "no_face", "warning"))
        rows.append(finding("annotation", p, "excluded_assignments", "info", "left out: a1 (low_agreement)"))
        if k % 3 == 0:
            rows.append(finding("annotation", p, "disputed_class", "warning", "annotators disagree on lips"))
    rows.append(finding("photo", HOSTILE, "corrupt_exif", "error", "<script>alert('msg')</script>"))
    return pd.DataFrame(rows)


def report_tables(photos: list[str], gold: bool = True) -> dict[str, pd.DataFrame]:
    """Small tables in the shapes the build writes (see reports/*.csv), for the given published photo ids."""
    rng = np.random.default_rng(0)
    n = len(photos)
    grid = [round(0.05 * k, 2) for k in range(21)]
    thresholds = pd.DataFrame([
        {"class": c, "threshold": t, "photos": n, "accepted_share": float(np.clip(1.2 - t ** 3 * (1 + i / 8), 0, 1)),
         "gold_photos": 3 if gold and t <= 0.8 else 0,
         "gold_iou": 0.8 + 0.1 * t if gold and t <= 0.8 else np.nan, "current": t == 0.5}
        for i, c in enumerate(CLASSES) for t in grid])
    thresholds.loc[(thresholds["class"] == "teeth") & (thresholds["threshold"] == 0.5), "current"] = False
    thresholds = pd.concat([thresholds, pd.DataFrame([{"class": "teeth", "threshold": 0.62, "photos": n,
                                                       "accepted_share": 0.7, "gold_photos": 0, "gold_iou": np.nan,
                                                       "current": True}])], ignore_index=True)
    class_agreement = pd.DataFrame([{"photo_id": p, "class": c, "pixels": 100, "drawn_by": 5,
                                     "agreement": float(rng.beta(8, 1)), "pairwise_iou": 0.9, "disputed": False}
                                    for p in photos for c in CLASSES])
    duplicates = pd.DataFrame([
        {"cluster": "p900", "photo_id": "p900", "user_id": "u1", "source": "new", "action": "keep",
         "kept_photo_id": "p900", "kind": None, "distance": 0, "reason": "best copy"},
        {"cluster": "p900", "photo_id": "p901", "user_id": "u2", "source": "new", "action": "drop",
         "kept_photo_id": "p900", "kind": "exact", "distance": 0, "reason": "identical copy"},
        {"cluster": "p900", "photo_id": "p902", "user_id": "u1", "source": "new", "action": "drop",
         "kept_photo_id": "p900", "kind": "mirror", "distance": 3, "reason": "mirrored copy"}])
    annotators = pd.DataFrame([{"annotator_id": f"a{k}", "photos": int(5 + 7 * k), "agreement": 0.2 if k == 1 else
                                0.9 - 0.01 * k, "mean_iou": 0.9, "status": "spammer" if k == 1 else "ok"}
                               for k in range(1, 9)])
    rejections = pd.DataFrame([{"stage": "ingest", "item": "photo", "file": "photos.csv", "row": 3, "photo_id": "p777",
                                "annotator_id": "", "reason": "corrupt_image", "message": "cannot decode"},
                               {"stage": "merge", "item": "photo", "file": "photos.csv", "row": 4, "photo_id": "p778",
                                "annotator_id": "", "reason": "needs_reannotation", "message": "disputed:lips"}])
    return {
        "rejections": rejections, "rejected_photos": rejections, "duplicates": duplicates,
        "agreement": pd.DataFrame({"photo_id": photos, "status": "accepted", "n_assignments": 5,
                                   "mean_iou": rng.uniform(0.8, 1, n)}),
        "class_agreement": class_agreement,
        "annotators": annotators,
        "findings": findings_table(photos),
        "classes": pd.DataFrame({"id": range(9), "class": ["background", *CLASSES], "photos": n,
                                 "pixel_share": 1 / 9}),
        "thresholds": thresholds,
        "class_by_split": pd.DataFrame([{"split": s, "class": c, "photos": n, "presence": 1 - i / 20 - j / 10,
                                         "pixel_share": 0.01} for j, s in enumerate(["train", "val", "test"])
                                        for i, c in enumerate(CLASSES)]),
        "decisions": pd.DataFrame([{"photo_id": "p001", "decision": "accept", "note": "fine", "status": "applied",
                                    "detail": "published despite disputed classes"},
                                   {"photo_id": "gone", "decision": "reject", "note": "", "status": "not_applied",
                                    "detail": "no such photo in this build"}]),
    }


def summary_dict(n: int) -> dict[str, object]:
    ledger = {"photos_in": n + 4, "photos_published": n - 1, "photos_rejected": 1, "photos_deduplicated": 2,
              "photos_held_back": 1, "assignments_in": 5 * n, "assignments_used": 5 * n - 3, "assignments_rejected": 3}
    return {"spec": "easyportrait", "build_id": "0123abcd", "ledger": ledger,
            "splits": {"train": {"photos": n - 3, "users": 4, "target": 0.7, "actual": 0.7},
                       "val": {"photos": 1, "users": 1, "target": 0.1, "actual": 0.1},
                       "test": {"photos": 1, "users": 1, "target": 0.2, "actual": 0.2}},
            "findings": {}, "config": {"merge": {"min_agreement": 0.5}, "qa": {"min_annotator_agreement": 0.7}}}


def annotator_masks(mask: np.ndarray) -> dict[str, np.ndarray]:
    """Three annotators: one close to the merged mask, one shifted, one who swapped left and right eyes."""
    swapped = mask.copy()
    swapped[mask == 5], swapped[mask == 6] = 6, 5
    return {"a2": np.roll(mask, 1, axis=1), "a3": np.roll(mask, (9, 14), axis=(0, 1)), "a1": swapped}


def write_photo(folder: Path, photo_id: str, seed: int, size: tuple[int, int] = (480, 640)
                ) -> tuple[Path, Path, np.ndarray]:
    """A simulated selfie JPEG and its class-index PNG mask."""
    portrait = render(np.random.default_rng(seed), *size)
    mask = truth_mask(portrait, SPEC)
    folder.mkdir(parents=True, exist_ok=True)
    photo, png = folder / f"photo{seed}.jpg", folder / f"mask{seed}.png"
    Image.fromarray(portrait.image).save(photo, "JPEG", quality=90)
    Image.fromarray(mask).save(png)
    return photo, png, mask


def make_gallery(tmp: Path, findings: pd.DataFrame, limit: int, spec: Spec = SPEC) -> dict[str, list[tuple[str, str]]]:
    """Real thumbnails for the flagged photos, through gallery_thumbs."""
    out = {}
    for k, pid in enumerate(flagged_photos(findings, limit)):
        photo, png, mask = write_photo(tmp / "photos", pid, k % 4)
        out[pid] = gallery_thumbs(str(photo), str(png), lambda m=mask: annotator_masks(m), spec, tmp / "cache",
                                  pid, side=200)
    return out


def duplicate_paths(tmp: Path) -> dict[str, str]:
    """Photo files for the duplicate cluster of ``report_tables``, so the report shows an example pair."""
    photo = str(write_photo(tmp / "duplicates", "p900", 5)[0])
    return dict.fromkeys(("p900", "p901", "p902"), photo)


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


# ---- flagged_photos ---------------------------------------------------------------------------------------------

def test_flagged_photos_orders_by_worst_severity_then_count_then_id() -> None:
    f = pd.DataFrame([finding("photo", "b", "blur", "warning"), finding("annotation", "b", "disputed", "warning"),
                      finding("photo", "a", "blur", "warning"), finding("photo", "c", "dark", "error"),
                      finding("photo", "z", "blur", "warning"), finding("annotation", "a", "disputed", "warning"),
                      finding("photo", "i", "blur", "info"), finding("annotator", "x", "spammer", "error"),
                      finding("dataset", "d", "gap", "error")])
    assert flagged_photos(f, 10) == ["c", "a", "b", "z"]
    assert flagged_photos(f, 2) == ["c", "a"]
    assert flagged_photos(f, 0) == []
    assert flagged_photos(f.head(0), 5) == []


# ---- gallery_thumbs ---------------------------------------------------------------------------------------------

def test_gallery_thumbs_overlay_the_palette_and_hit_the_cache(tmp_path: Path) -> None:
    h, w = 120, 160
    photo = tmp_path / "grey.png"
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(photo)
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2:] = 1  # person on the right half
    mask[: h // 4, : w // 4] = SPEC.ignore_index
    png = tmp_path / "mask.png"
    Image.fromarray(mask).save(png)
    lips = np.full((h, w), 7, np.uint8)
    first = gallery_thumbs(str(photo), str(png), lambda: {"b": lips, "a": mask}, SPEC, tmp_path / "c", "k", side=80)

    assert [c for c, _ in first] == ["merged", "a", "b"]
    merged = decode(first[0][1])
    assert max(merged.shape[:2]) == 80 and max(decode(first[1][1]).shape[:2]) == round(80 * ANNOTATOR_SCALE)
    blend = lambda rgb: 100 * (1 - ALPHA) + np.array(rgb) * ALPHA  # noqa: E731
    assert np.abs(merged[30, 70] - blend(SPEC.classes[1].color)).max() <= 6  # person colour
    assert np.abs(merged[45, 10] - 100).max() <= 3  # background untouched
    assert np.abs(merged[5, 5] - blend((128, 128, 128))).max() <= 6  # ignore index in grey
    assert np.abs(decode(first[2][1])[20, 20] - blend(SPEC.classes[7].color)).max() <= 8  # b drew lips everywhere

    def boom() -> dict[str, np.ndarray]:
        raise AssertionError("annotator masks must not be computed on a cache hit")

    photo.unlink()  # nothing is decoded on a hit either
    assert gallery_thumbs(str(photo), str(png), boom, SPEC, tmp_path / "c", "k", side=80) == first
    assert len(list((tmp_path / "c").glob("*.json"))) == 1


def test_gallery_thumbs_apply_exif_orientation(tmp_path: Path) -> None:
    stored = np.zeros((40, 80, 3), np.uint8)  # landscape as stored; orientation 6 shows it as portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "p.jpg", exif=exif.tobytes())
    Image.fromarray(np.zeros((80, 40), np.uint8)).save(tmp_path / "m.png")
    (_, uri), = gallery_thumbs(str(tmp_path / "p.jpg"), str(tmp_path / "m.png"), dict, SPEC, tmp_path, "o", side=40)
    assert decode(uri).shape[:2] == (40, 20)


# ---- render_report ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    tmp = tmp_path_factory.mktemp("report")
    photos = [f"p{k:03d}" for k in range(1, 9)] + [HOSTILE]
    tables = report_tables(photos)
    gallery = make_gallery(tmp, tables["findings"], limit=6)
    summary, paths = summary_dict(len(photos)), duplicate_paths(tmp)
    html = render_report(summary, tables, paths, gallery)
    return html, {"summary": summary, "tables": tables, "paths": paths, "gallery": gallery}


def test_report_has_every_section_and_loads_nothing(page: tuple[str, dict]) -> None:
    html, _ = page
    for sid in ("summary", "plots", "gallery", "thresholds", "decisions", "findings", "duplicates", "annotators",
                "rejections"):
        assert f'<section id="{sid}">' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, re.I)
    assert "<link rel=stylesheet" not in html and "<script src" not in html
    assert html.count('<img class="plot"') == 5  # 4 plots + the threshold small multiples
    assert html.count("<div class=pair>") == 2  # the exact and the mirrored copy of p900


def test_report_escapes_user_text(page: tuple[str, dict]) -> None:
    html, inputs = page
    assert HOSTILE in inputs["gallery"]  # the hostile photo has an error, so it is first in the gallery
    assert "<img src=x" not in html and "onerror=alert(1)>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script>alert" not in html


def test_report_gallery_cards_follow_flagged_order(page: tuple[str, dict]) -> None:
    html, inputs = page
    cards = re.findall(r'<article class=card data-photo="([^"]*)"', html)
    assert cards == [c.replace("<", "&lt;").replace(">", "&gt;") for c in inputs["gallery"]]
    assert "3 are left out by the gallery limit" in html  # 9 flagged, 6 shown
    assert "review.decisions" in html and "no such photo in this build" in html


def test_report_is_byte_identical_across_renders(page: tuple[str, dict]) -> None:
    html, inputs = page
    assert render_report(inputs["summary"], inputs["tables"], inputs["paths"], inputs["gallery"]) == html


def test_report_figures_are_kept_and_drawn_again_only_when_their_data_changes(page: tuple[str, dict], tmp_path,
                                                                              monkeypatch) -> None:
    from pipeline.report import plots

    html, inputs = page
    drawn: list[str] = []

    def counted(figure):
        @functools.wraps(figure)
        def draw(*a):
            drawn.append(figure.__name__)
            return figure(*a)
        return draw

    for name in ("agreement_by_class", "class_frequency", "annotators", "duplicates", "thresholds"):
        monkeypatch.setattr(plots, name, counted(getattr(plots, name)))
    args = (inputs["summary"], inputs["tables"], inputs["paths"], inputs["gallery"], None)
    cache = plots.FigureCache(tmp_path)
    assert render_report(*args, cache) == html and len(drawn) == 5 and len(cache.used) == 5
    again = plots.FigureCache(tmp_path)
    assert render_report(*args, again) == html and len(drawn) == 5 and again.used == cache.used  # all read back
    splits = inputs["tables"]["class_by_split"]
    moved = {**inputs["tables"], "class_by_split": splits.assign(photos=splits["photos"] + 1)}
    render_report(inputs["summary"], moved, inputs["paths"], inputs["gallery"], None, plots.FigureCache(tmp_path))
    assert drawn[5:] == ["class_frequency"]


def test_report_threshold_explorer_says_when_there_is_no_gold() -> None:
    photos = ["p1", "p2"]
    html = render_report(summary_dict(2), report_tables(photos, gold=False), {}, {})
    assert "No gold tasks exist in this build" in html
    assert "gold IoU at chosen" not in html


def test_report_on_empty_tables() -> None:
    full = report_tables(["p1"])
    empty = {name: df.head(0) for name, df in full.items()}
    html = render_report(summary_dict(0) | {"splits": {}}, empty, {}, {})
    assert html.count('class="nodata"') + html.count("class=nodata") >= 5
    legacy = {k: v for k, v in empty.items() if k not in OPTIONAL_TABLES}  # a build without the newer tables
    assert "<section id=\"thresholds\">" in render_report(summary_dict(0), legacy, {}, {})


def test_write_csv_defuses_formula_cells_only(tmp_path):
    from pipeline.report.write import write_csv

    df = pd.DataFrame({"text": ["=SUM(A1)", "+1", "-x", "@me", "\tq", "ok", None],
                       "mixed": pd.Series(["=1", 2, None, "a-b", 1.5, "@", ""], dtype=object),
                       "n": [-1, 2, 3, 4, 5, 6, 7]})
    write_csv(df, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text(encoding="utf-8").splitlines() == [
        "text,mixed,n", "'=SUM(A1),'=1,-1", "'+1,2,2", "'-x,,3", "'@me,a-b,4", "'\tq,1.5,5", "ok,'@,6", ",,7"]


def test_write_csv_writes_the_bytes_of_pandas_float_format(tmp_path, monkeypatch):
    from pipeline.report import write

    rng = np.random.default_rng(3)
    n = 257
    special = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-7, 123456789.0, 1 / 3, 2.5e-5, -7.0]
    df = pd.DataFrame({
        "x": np.concatenate([special, rng.normal(0, 1e3, n - len(special))]),
        "small": rng.random(n).astype(np.float32),
        "n": rng.integers(-5, 5, n), "flag": rng.random(n) < 0.5,
        "text": pd.Series(rng.choice(["a,b", 'say "hi"', "line\nbreak", "", "plain"], n), dtype="str"),
        "kind": pd.Series(rng.choice(["x", "y"], n)).astype("category"),
        "maybe": pd.array(rng.choice([1.5, None], n), dtype="Float64")})
    monkeypatch.setattr(write, "CSV_CELLS", 700)  # 100 rows of 7 columns a chunk: three chunks
    for table in (df, df.head(0), df[["x"]].head(1)):
        write.write_csv(table, tmp_path / "new.csv")
        table.to_csv(tmp_path / "pandas.csv", index=False, lineterminator="\n", float_format="%.6g")
        assert (tmp_path / "new.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_write_csv_neutralises_tables_with_a_repeated_index(tmp_path):
    from pipeline.report.write import write_csv

    write_csv(pd.DataFrame({"a": ["=x", "ok"], "b": ["=1", 2]}, index=[0, 0]), tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text(encoding="utf-8") == "a,b\n'=x,'=1\nok,2\n"


@pytest.mark.parametrize("n", [0, 1, 5, 7])
def test_json_rows_are_written_in_chunks_as_one_list_would_be(tmp_path, monkeypatch, n):
    from pipeline.report import write

    monkeypatch.setattr(write, "JSON_CHUNK", 3)  # 7 rows: chunks of 3, 3 and 1
    df = pd.DataFrame({"id": [f"p{i}" for i in range(7)], "score": [0.5, np.nan, 1, 2.25, np.nan, 3, 4],
                       "n": np.arange(7, dtype=np.int64), "note": ["a", None, "é", "\"q\"", "", "x", "y"]}).iloc[:n]
    write.write_json_rows(df, tmp_path / "chunked.json")
    write.write_json(write.json_rows(df), tmp_path / "whole.json")
    assert (tmp_path / "chunked.json").read_bytes() == (tmp_path / "whole.json").read_bytes()


@pytest.mark.parametrize("n", [0, 1, 5, 7])
def test_a_fingerprint_hashed_in_chunks_is_that_of_the_whole_table(monkeypatch, n):
    from pipeline.report import write

    df = pd.DataFrame({"id": [f"p{i}" for i in range(7)], "score": [0.5, np.nan, 1, 2.25, np.nan, 3, 4],
                       "c": pd.Categorical(list("abcabca"))}).iloc[:n]
    whole = write.fingerprint(df, "s")
    monkeypatch.setattr(write, "HASH_ROWS", 3)  # 7 rows: chunks of 3, 3 and 1
    assert write.fingerprint(df, "s") == whole
    assert write.fingerprint(df.assign(score=df["score"] + 1), "s") != whole or n == 0


def test_report_tables_are_written_again_only_when_their_content_or_file_changed(tmp_path, monkeypatch):
    from pipeline.report import write

    ledger, out = tmp_path / "work" / "tables.json", tmp_path / "r"
    written: list[str] = []
    real = write.write_csv
    monkeypatch.setattr(write, "write_csv", lambda df, path: written.append(path.stem) or real(df, path))
    tables = {"a": pd.DataFrame({"x": [1, 2], "y": [0.5, np.nan]}), "b": pd.DataFrame({"t": ["=1+1", "ok"]})}

    def rewrite(tables: dict[str, pd.DataFrame]) -> list[str]:
        written.clear()
        write.write_tables(tables, out, ledger)
        for name, df in tables.items():  # the folder holds each table as write_csv writes it
            real(df, tmp_path / "expected.csv")
            assert (out / f"{name}.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
        return sorted(written)

    assert rewrite(tables) == ["a", "b"]
    assert rewrite(tables) == []  # the same tables
    (out / "b.csv").write_text("edited by hand\n")
    changed = {"a": tables["a"].assign(y=[0.5, 0.25]), "b": tables["b"]}
    assert rewrite(changed) == ["a", "b"]  # a new value; a file changed since
    assert rewrite({"a": changed["a"].astype({"x": float})}) == ["a"]  # equal numbers of another dtype


def test_write_csv_defuses_formula_cells_of_categorical_columns(tmp_path):
    from pipeline.report.write import write_csv

    df = pd.DataFrame({"c": pd.Series(["=1+1", "ok", None, "=1+1"], dtype="category"), "n": [1, 2, 3, 4]})
    write_csv(df, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text(encoding="utf-8") == "c,n\n'=1+1,1\nok,2\n,3\n'=1+1,4\n"
