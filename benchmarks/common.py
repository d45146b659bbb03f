"""Helpers shared by the benchmarks: peak memory, tables, the imagededup import and simulated photos."""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("CROWDSEG_REALDATA", ROOT.parent / "shared" / "realdata"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process, or of its largest finished child (a pool worker), in MB.

    Linux's ``ru_maxrss`` survives exec, so a subprocess would inherit its parent's peak; VmHWM starts afresh.
    """
    status = Path("/proc/self/status")
    own = (int(next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")))
           if status.exists() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (so a run's output can be pasted into benchmarks/README.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def imagededup() -> type | None:
    """imagededup's PHash class (its hashing and search, BK-tree and Cython brute force), or None if not installed.

    imagededup's ``methods`` and ``utils`` package ``__init__`` files re-export its CNN and plotting helpers, which
    import torchvision; there is no CPU torchvision build here, so those two package modules are registered empty
    and the hashing and search modules, which need neither, are imported unchanged.
    """
    spec = importlib.util.find_spec("imagededup")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent
    for sub in ("methods", "utils"):
        name = f"imagededup.{sub}"
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root / sub)]
            sys.modules[name] = package
    from imagededup.methods.hashing import PHash

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("imagededup"):
            logging.getLogger(name).setLevel(logging.ERROR)  # its loggers print every step at INFO
    return PHash


def simulated_pictures(out: Path, photos: int, seed: int, size: tuple[int, int] | None = None) -> list[Path]:
    """Simulate a crowd (one annotator per photo, the cheapest) and return its original photos' files."""
    import pandas as pd  # here, so that pair_search's workers stay lean

    from pipeline.simulate import simulate

    simulate(out, photos=photos, users=max(1, photos // 3), annotators=1, seed=seed, size=size)
    truth = pd.read_csv(out / "truth" / "photos.csv", dtype=str)
    originals = truth[truth["kind"] == "original"]
    return [out / "photos" / u / f"{p}.jpg" for u, p in zip(originals["user_id"], originals["photo_id"], strict=True)]
