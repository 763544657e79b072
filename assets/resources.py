"""Resources: the lake and the pipeline settings (catalogue, profile)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import dagster as dg
from pydantic import PrivateAttr

from kalm_core import warehouse
from kalm_core.catalog import Catalog, load_catalog


# set by `kalm run`'s Ctrl-C handler: every later step refuses to start, so the whole run stops (DuckDB turns the
# interrupt into an error of the step it lands in, and Dagster would otherwise go on with the independent steps)
INTERRUPTED = threading.Event()


class WarehouseResource(dg.ConfigurableResource):
    """The DuckLake (`lake`: a folder or a `postgres:` DSN). A writable connection holds the lake's write lock
    while it is open; a step that has to wait logs whose run it waits for (kalm_core/locks.py)."""

    lake: str
    _owner: str | None = PrivateAttr(default=None)
    _log = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run_id = context.run_id
        self._owner = f"run {run_id}" if run_id else None
        self._log = context.log

    @contextmanager
    def connect(self, read_only: bool = False):
        if INTERRUPTED.is_set():
            raise dg.Failure(description="not started: the run was interrupted (Ctrl-C)")
        on_wait = self._log.warning if self._log is not None else None
        with warehouse.connect(self.lake, read_only=read_only, owner=self._owner, on_wait=on_wait) as con:
            yield con


class SettingsResource(dg.ConfigurableResource):
    """Which catalogue and profile a run uses. `profile` is the code location's (`kalm run --profile`, or
    $KALM_PROFILE for `kalm ui`); a run launched from the UI's launchpad may pick another
    (`resources: {settings: {config: {profile: kalm-mini}}}`, a name or a JSON file), validated before any step
    and recorded in the versions of what it builds (assets/versions.py)."""

    catalog_path: str | None = None  # None: the code location's ($KALM_CATALOG, else the project's)
    profile: str = "demo"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from kalm_core.config import get_profile

        try:
            get_profile(self.profile)
        except ValueError as e:
            raise dg.Failure(description=f"settings.profile: {e}") from None

    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path)
