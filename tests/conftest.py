"""Shared fixtures: the real-data folder, tiny hand-made inputs, and one Prefect harness for flow tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("CROWDSEG_REALDATA", ROOT.parent / "shared" / "realdata"))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("CROWDSEG_PSEUDONYM_KEY", "crowdseg-tests-only-0123456789")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")

# hypothesis: a bounded run in `make test`, a long one in `make fuzz` (HYPOTHESIS_PROFILE=long); each example must
# finish within the deadline, so a reader that stalls on some input fails the test
settings.register_profile("default", max_examples=40, deadline=2000, derandomize=True, print_blob=True)
settings.register_profile("long", max_examples=3000, deadline=5000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def realdata(*parts: str) -> Path:
    """A path under ../shared/realdata, or skip the test when the folder is absent (as in a user's clone)."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real-data fixture {path} is absent (set CROWDSEG_REALDATA or place ../shared/realdata)")
    return path


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (160, 120), **save: object) -> Path:
    """A small real JPEG with some structure, so that perceptual hashes differ between seeds."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
        img[y0: y0 + rng.integers(10, h), x0: x0 + rng.integers(10, w)] = rng.integers(0, 256, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, "JPEG", quality=90, **save)
    return path


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser), or skip with the reason."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: run `make browser` (apt-get install chromium) for the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        except Exception as e:
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {e}")
        yield chromium
        chromium.close()
