"""The QA report in a real headless Chromium: no console errors, gallery filters, decisions and their download.

Needs the `playwright` package and Debian's /usr/bin/chromium (`make browser` installs it); never downloads a
browser. Set CROWDSEG_REPORT_SCREENSHOT=path.png to keep a full-page screenshot of the test report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.report.html import render_report
from tests.test_report import HOSTILE, duplicate_paths, make_gallery, report_tables, summary_dict


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of 9 photos, 6 of them in the gallery with real thumbnails, written to a file."""
    tmp = tmp_path_factory.mktemp("browser")
    photos = [f"p{k:03d}" for k in range(1, 9)] + [HOSTILE]
    tables = report_tables(photos)
    gallery = make_gallery(tmp, tables["findings"], limit=6)
    html = render_report(summary_dict(len(photos)), tables, duplicate_paths(tmp), gallery)
    path = tmp / "qa.html"
    path.write_text(html, encoding="utf-8")
    return path


@pytest.fixture
def page(browser: Any, report: Path) -> Iterator[tuple[Any, list[str]]]:
    """A fresh page (own storage) on the report, and the console errors and page errors it logs."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    tab.goto(report.as_uri(), wait_until="load")
    yield tab, errors
    context.close()


def visible_cards(tab: Any) -> list[str]:
    return tab.eval_on_selector_all(".card[data-photo]", "cs => cs.filter(c => !c.hidden).map(c => c.dataset.photo)")


def test_page_renders_without_errors(page: tuple[Any, list[str]], tmp_path: Path) -> None:
    tab, errors = page
    assert tab.title() == "crowdseg QA report: easyportrait"
    assert tab.locator("#filter-count").inner_text() == "6 of 6 photos shown"
    assert tab.locator("#threshold-value").inner_text() == "0.50"
    assert tab.eval_on_selector_all("img", "ims => ims.filter(i => !i.complete || i.naturalWidth === 0).length") == 0
    shot = tmp_path / "qa.png"
    tab.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    if os.environ.get("CROWDSEG_REPORT_SCREENSHOT"):
        keep = Path(os.environ["CROWDSEG_REPORT_SCREENSHOT"])
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_bytes(shot.read_bytes())
    assert errors == []


def test_gallery_filters_by_check_and_severity(page: tuple[Any, list[str]]) -> None:
    tab, errors = page
    everything = visible_cards(tab)
    tab.select_option("#filter-check", "blur")
    blurred = visible_cards(tab)
    assert blurred and len(blurred) < len(everything)
    assert all("blur" in tab.locator(f".card[data-photo='{p}'] ul.findings").text_content() for p in blurred)
    assert tab.locator("#filter-count").inner_text() == f"{len(blurred)} of 6 photos shown"

    tab.uncheck("input[name=severity][value=warning]")  # blur is only ever a warning
    assert visible_cards(tab) == []
    tab.select_option("#filter-check", "")
    tab.uncheck("input[name=severity][value=info]")
    assert visible_cards(tab) == [HOSTILE]  # the only photo with an error
    assert errors == []


def test_decisions_persist_and_download_as_csv(page: tuple[Any, list[str]], tmp_path: Path) -> None:
    tab, errors = page
    cards = tab.locator(".card[data-photo]")
    second = cards.nth(1)
    second_id = second.get_attribute("data-photo")
    second.locator("button[data-decision=reject]").click()
    second.locator("input.note").fill('blurry, "really" bad')
    first = cards.nth(0)
    first.locator("button[data-decision=reannotate]").click()
    first.locator("button[data-decision=accept]").click()  # a second choice replaces the first
    third = cards.nth(2)
    third.locator("button[data-decision=accept]").click()
    third.locator("button[data-decision=accept]").click()  # pressing it again takes the decision back
    assert first.locator("button[aria-pressed=true]").inner_text() == "Accept"
    assert tab.locator("#decision-count").inner_text() == "2 decisions"

    tab.reload(wait_until="load")  # decisions live in localStorage, keyed by the build id
    assert tab.locator(".card").nth(1).locator("input.note").input_value() == 'blurry, "really" bad'
    tab.select_option("#filter-decision", "none")
    assert len(visible_cards(tab)) == 4

    with tab.expect_download() as info:
        tab.click("#download-decisions")
    download = info.value
    assert download.suggested_filename == "decisions.csv"
    path = tmp_path / "decisions.csv"
    download.save_as(path)
    assert path.read_text(encoding="utf-8") == (
        "photo_id,decision,note\n"
        f"{HOSTILE},accept,\n"
        f'{second_id},reject,"blurry, ""really"" bad"\n')
    assert errors == []


def test_threshold_slider_updates_the_table(page: tuple[Any, list[str]]) -> None:
    tab, errors = page
    tab.locator("#threshold-slider").fill("20")
    assert tab.locator("#threshold-value").inner_text() == "1.00"
    teeth = tab.locator("#threshold-table tbody tr").nth(7)
    assert teeth.locator("td").first.inner_text() == "teeth"
    assert teeth.locator(".at-share").inner_text() == "0.0%"
    assert teeth.locator(".at-delta").inner_text() == "-6"  # 70% of 9 photos accepted at the configured 0.62
    assert teeth.locator(".at-gold").inner_text() == "–"  # no gold photo accepted at 1.0
    assert errors == []
