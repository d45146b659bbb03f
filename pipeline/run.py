"""What runs around a build's flow: the lock on its output folder, the Prefect server it talks to and the stopwatch
of its stages."""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import CrowdsegError

if TYPE_CHECKING:
    import pandas as pd


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


SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
              "PREFECT_API_BLOCKS_REGISTER_ON_START": "false", "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
              "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
              "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false", "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "false"}
"""The embedded server's settings. A build saves no block, so the server registers no block types: checking whether
they changed first imported every installed Prefect collection (``prefect_dask`` brings Dask's ``distributed``).
Nobody can add an automation to this private server or read its event feed, so it neither stores events nor
evaluates triggers on them, nor vacuums old ones: ~20% of its CPU in a 2,000-photo build (8.1-8.6 -> 6.1-7.3 s).
Task and flow run states are still recorded (``task_run_recorder``)."""
SERVER_PORTS = range(8000, 9000)
PORT_IN_USE = 3  # uvicorn's exit status when its port is taken


@dataclass
class EmbeddedServer:
    """The embedded temporary Prefect server's process (uvicorn serving Prefect's API app, as Prefect's own
    ``SubprocessASGIServer`` starts it), started without importing Prefect's server modules into this process."""

    process: subprocess.Popen[bytes]
    port: int
    watcher: subprocess.Popen[bytes]  # stops the server if this process dies without stopping it

    @classmethod
    def spawn(cls) -> EmbeddedServer:
        """Start the process on a free port; it answers a few seconds later (``url``). Its URL goes into this
        process's environment as PREFECT_API_URL, for every thread and worker process of the build: a Prefect
        client without one would start a temporary server of its own."""
        port = _free_port(SERVER_PORTS)
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
             "error", "--lifespan", "on"], env=os.environ | SERVER_ENV, stdin=subprocess.DEVNULL)
        server = cls(process, port, stop_when_orphaned(process.pid))
        atexit.register(server.stop)
        return server

    def url(self, timeout: float) -> str | None:
        """The API URL once the server answers; None if its port was taken meanwhile (start another)."""
        api = f"http://127.0.0.1:{self.port}/api"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self.process.returncode == PORT_IN_USE:
                    return None
                raise CrowdsegError(f"the embedded Prefect server exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=1) as r:
                    if r.status == 200:
                        return api
            except OSError:
                pass
            time.sleep(0.05)
        raise CrowdsegError(f"the embedded Prefect server did not answer within {timeout:.0f} s (raise "
                            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or set PREFECT_API_URL)")

    def stop(self) -> None:
        self.watcher.kill()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port(ports: range) -> int:
    for port in random.sample(ports, 20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise CrowdsegError(f"no free port for the embedded Prefect server in {ports.start}-{ports.stop - 1}")


_SERVER: EmbeddedServer | None = None


def start_prefect_server() -> None:
    """Start the embedded Prefect server's process now, unless PREFECT_API_URL names a server.

    The CLI calls this first thing, so that the server's start (~3 s of its own process) overlaps reading the
    config, checking the inputs and importing the flow's modules; ``prefect_server`` then waits for it."""
    global _SERVER
    if _SERVER is None and not os.environ.get("PREFECT_API_URL"):
        _SERVER = EmbeddedServer.spawn()


def stop_prefect_server() -> None:
    """Stop a server ``start_prefect_server`` started (the CLI's errors before the flow)."""
    global _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None
        os.environ.pop("PREFECT_API_URL", None)


def prefect_server() -> str | None:
    """The API URL of the embedded server once it answers (started here unless already on its way), or None when
    Prefect's settings name a server of the user's."""
    global _SERVER
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if _SERVER is None:
        if PREFECT_API_URL.value():
            return None
        _SERVER = EmbeddedServer.spawn()
    timeout = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    for _ in range(5):
        url = _SERVER.url(timeout)
        if url is not None:
            refresh_global_settings_context()  # a Prefect imported before the URL was in the environment sees it
            return url
        _SERVER = EmbeddedServer.spawn()  # its port was taken between the check and uvicorn's bind: another one
    raise CrowdsegError("the embedded Prefect server found no free port")


def stop_when_orphaned(pid: int) -> subprocess.Popen[bytes]:
    """A watcher that terminates process ``pid`` (the embedded server) if this process dies without stopping it: a
    build killed by SIGKILL or the OOM killer would otherwise leave its server running, ~230 MB each. It polls this
    process once a second; ``EmbeddedServer.stop`` kills it before it stops the server."""
    return subprocess.Popen(
        ["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill {pid} 2>/dev/null"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


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
        import pandas as pd  # here: the CLI starts the server before this module would have imported pandas
        total = sum(self.laps.values()) or 1.0
        rows = [{"stage": k, "seconds": v, "share": round(v / total, 3)} for k, v in self.laps.items()]
        rows += [{"stage": "total", "seconds": round(total, 3), "share": 1.0}]
        rows += [{"stage": f"{k} items", **v} for k, v in self.work.items()]
        return pd.DataFrame(rows, columns=["stage", "seconds", "share", "computed", "reused"]).astype(
            {"computed": "Int64", "reused": "Int64"})
