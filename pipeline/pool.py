"""The build's worker processes: Prefect's process runner, with what it set up for every task run done once per
worker."""

from __future__ import annotations

from typing import Any, Self

from prefect.context import SettingsContext, SyncClientContext, get_settings_context
from prefect.settings import Profile, Settings
from prefect.task_runners import ProcessPoolTaskRunner

from pipeline.tuning import tune_gc


class ProcessPool(ProcessPoolTaskRunner):
    """Prefect 3.8's process runner, each worker set up once for all the task runs it is given.

    For every task run, Prefect's worker validated the parent's settings again from a dict (pydantic-settings reads
    every source for each of ~50 nested models) and opened two API clients, each loading the CA bundle into a new
    SSL context: ~60 ms of a worker's CPU per task run, ~0.5 ms per photo in each merge pass and the export.
    Here each worker enters the parent's settings and opens one API client when it starts (``start_worker``), and
    task runs are sent without the settings, so they use those. Workers also get the command's garbage collector
    setting (``tuning.tune_gc``); the rest of ``tuning.tune_process`` they inherit through the environment.

    The settings are those in force when the pool starts (``__enter__``), as Prefect's own runner sends the ones in
    force at its first task run; a build changes none in between.
    """

    def __init__(self, max_workers: int | None = None):
        super().__init__(max_workers=max_workers, initializer=start_worker)

    def __enter__(self) -> Self:
        ctx = get_settings_context()
        self._initargs = (ctx.profile, ctx.settings)
        return super().__enter__()

    def _resolve_futures_and_submit(self, *args: Any, **kwargs: Any) -> Any:
        if "context" in kwargs:  # Prefect 3.8.8 passes it by keyword; otherwise task runs carry the settings again
            kwargs["context"] = {**kwargs["context"], "settings_context": {}}
        return super()._resolve_futures_and_submit(*args, **kwargs)


def start_worker(profile: Profile, settings: Settings) -> None:
    """A ``ProcessPool`` worker's set-up: the command's garbage collector setting, then the parent's settings and
    one API client, entered for the life of the worker (its task runs find them in their context)."""
    tune_gc()
    SettingsContext(profile=profile, settings=settings).__enter__()
    SyncClientContext().__enter__()
