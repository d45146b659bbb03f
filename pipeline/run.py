"""What runs around a build's flow: the lock on its output folder, the Prefect server it talks to and the stopwatch
of its stages."""

from __future__ import annotations

import atexit
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from pipeline.errors import CrowdsegError


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold the build folder's lock for the duration; a second build on the same folder stops with a clear message.

    The lock is an ``flock`` on ``OUT/.crowdseg.lock``, which the kernel releases when the holder exits, so a
    killed build never leaves a stale lock behind.
    """
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".crowdseg.lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CrowdsegError(f"another build is running on this output folder ({holder}); wait for it to end",
                                file=str(out)) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def check_lock(out: Path) -> None:
    """Stop now, with ``build_lock``'s message, if another build holds ``out`` (the lock is taken and released)."""
    with build_lock(out):
        pass


_SERVER: Future[str | None] | None = None


def start_prefect_server() -> None:
    """Bring up the embedded Prefect server in a background thread, unless PREFECT_API_URL names a server.

    The CLI calls this once the inputs and the output folder's lock are checked, so that the server's start (~3 s,
    mostly in its own process) overlaps the import of the flow's modules; ``prefect_server`` then waits for it."""
    global _SERVER
    if _SERVER is None:
        pool = ThreadPoolExecutor(1, thread_name_prefix="prefect-server")
        _SERVER = pool.submit(_configured_or_started)
        pool.shutdown(wait=False)


def prefect_server() -> str:
    """The embedded temporary server's API URL, once it answers (started here unless already on its way)."""
    return (_SERVER.result() if _SERVER is not None else None) or _started()


def _configured_or_started() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return None if PREFECT_API_URL.value() else _started()


def _started() -> str:
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    if server.server_process is not None:
        stop_when_orphaned(server.server_process.pid)
    return server.api_url


def stop_when_orphaned(pid: int) -> None:
    """Terminate process ``pid`` (the embedded server) if this process dies without stopping it: a build killed by
    SIGKILL or the OOM killer would otherwise leave its server running, ~230 MB each. A small watcher polls this
    process once a second; a normal exit stops the server (Prefect's atexit hook) and kills the watcher first."""
    watcher = subprocess.Popen(
        ["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill {pid} 2>/dev/null"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    atexit.register(watcher.kill)  # runs before the server's stop, registered earlier: hooks run last-in first-out


class Stopwatch:
    """Wall-clock seconds per stage of a build, and items computed or reused per cached stage, for
    ``reports/timings.csv`` (kept out of the deterministic reports)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.work: dict[str, dict[str, int]] = {}
        self._last = time.perf_counter()

    def count(self, stage: str, computed: int, reused: int) -> None:
        """Add ``computed`` items run and ``reused`` items taken from the cache to ``stage``'s counts."""
        seen = self.work.setdefault(stage, {"computed": 0, "reused": 0})
        seen["computed"] += computed
        seen["reused"] += reused

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap to ``stage``."""
        now = time.perf_counter()
        self.laps[stage] = round(now - self._last, 3)
        self._last = now

    def table(self) -> pd.DataFrame:
        """Per stage: seconds, share of the total; then per cached step: items computed and reused."""
        total = sum(self.laps.values()) or 1.0
        rows = [{"stage": k, "seconds": v, "share": round(v / total, 3)} for k, v in self.laps.items()]
        rows += [{"stage": "total", "seconds": round(total, 3), "share": 1.0}]
        rows += [{"stage": f"{k} items", **v} for k, v in self.work.items()]
        return pd.DataFrame(rows, columns=["stage", "seconds", "share", "computed", "reused"]).astype(
            {"computed": "Int64", "reused": "Int64"})
