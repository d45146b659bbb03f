"""The process settings of a build: the command's process and the worker processes it starts (allocator, garbage
collector, library threads and pools)."""

from __future__ import annotations

import ctypes
import gc
import os
import platform

ENV_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    "OPENCV_FOR_THREADS_NUM": "1",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}
"""The command's environment, where it sets none of these; its worker processes inherit it.

Arrow (pandas' string columns) allocates through glibc's malloc rather than its bundled mimalloc, which keeps the
pages it frees: with it, a 200k-photo build's table stages held ~300 MB more once their temporaries were gone
(``benchmarks/scale.py``'s table-level runs), and ``release_memory`` reaches glibc's heap only.

OpenCV runs single-threaded (it reads ``OPENCV_FOR_THREADS_NUM`` when it first runs in parallel): a build already
runs a task per core, and OpenCV's own threads on top of them only took turns on the same cores. With them a final
merge pass used ~35% more CPU per photo (10.2 against 7.3 ms in ``benchmarks/stage_costs.py``), ingest ~15%."""


MALLOC_LIMIT = 32 << 20
"""glibc malloc keeps freed blocks up to this size for reuse (``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``).

A build allocates and frees arrays of a few MB per photo (a decoded FullHD photo is 6 MB). Under glibc's sliding
defaults many came from fresh zero pages, whose page faults cost ~15% of ingest's CPU (9.7 -> 8.4 ms per photo in
``benchmarks/stage_costs.py``). The command and its worker processes keep at most this much freed memory each."""


def tune_process() -> None:
    """``ENV_DEFAULTS``, ``tune_malloc`` and ``tune_gc``: the settings of the command's process and of its
    workers."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    tune_malloc()
    tune_gc()


def tune_malloc() -> None:
    """Apply ``MALLOC_LIMIT`` to this process (``mallopt``) and, through the environment, to the worker processes
    it starts; nothing with a C library other than glibc, or when the environment sets either option already."""
    names = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}  # mallopt's M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    if any(n in os.environ for n in names) or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    for name, option in names.items():
        if libc.mallopt(option, MALLOC_LIMIT):
            os.environ[name] = str(MALLOC_LIMIT)


GC_THRESHOLD = 50_000
"""Container allocations between two collections of Python's youngest generation (CPython's default is 700).

A build makes millions of short-lived dicts, lists and tuples (annotation records, shapes, table rows). At the default
every few hundred of them started a collection, 5% of a cold 20k build's CPU (``perf record`` of the build); reading
the 112k annotations of a 20k crowd took 26-28 CPU-s at the default and 18 at 20,000 to 100,000. The build's code
makes little cyclic garbage, and that is still collected, later."""


def tune_gc() -> None:
    """Collect the youngest generation every ``GC_THRESHOLD`` allocations, never more often than set already (nor
    at all where collection is off): in the command's process, in its process pools' workers (their initializer,
    ``pool.ProcessPool``) and in a local Dask cluster's workers (``dask_setup``)."""
    young, *older = gc.get_threshold()
    if 0 < young < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *older)


def dask_setup(worker: object) -> None:
    """Dask's preload hook: a local cluster's workers (started by the build with this module as their ``preload``)
    get the command's garbage collector setting. A remote cluster's workers keep their own."""
    tune_gc()


def release_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``), as a stage ends. A stage's
    temporary tables leave free holes among the tables it keeps; without this, the next stage's own temporaries
    would stack on top of them (at 200k photos, ~400 MB higher peaks in the last stages). A few ms; nothing on other
    C libraries."""
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).malloc_trim(0)
