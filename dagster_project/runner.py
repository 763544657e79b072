"""Run the Definitions in process against a persistent Dagster instance: observe, find stale, materialise.

Staleness follows Dagster's own rule: every source file is observed with a content-hash data version, and the
versions each materialisation recorded say which assets a changed file (or an edited SQL model) invalidates
(dagster_project/staleness.py).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import warnings
from pathlib import Path

import dagster as dg

from dagster_project import staleness
from dagster_project.automation import ALL_JOB, OBSERVE_JOB
from kalm_core.config import data_dir

PROGRESS = {"loggers": {"progress": {}}}  # one line per step (dagster_project/progress.py)
QUIET = {"loggers": {"quiet": {}}}
HOST_TAG, PID_TAG = "kalm/host", "kalm/pid"  # where a `kalm run` executes (fail_dead_runs)


_RUN_MONITORING = ("run_monitoring:\n  enabled: true\n  poll_interval_seconds: 30\n"
                   "  max_resume_run_attempts: 0\n")
# dagster.yaml: telemetry off; run monitoring (the daemon, under `kalm ui`: a run whose worker process died is marked
# failed, not left STARTED); everything else Dagster's defaults (its SQLite storage under the home)
INSTANCE_CONFIG = "telemetry:\n  enabled: false\n" + _RUN_MONITORING
# what earlier versions added, for any home: an event-log storage class of their own over Dagster's own files, since
# removed (it used Dagster's private modules)
_EARLIER_STORAGE = re.compile(re.escape("event_log_storage:\n  module: dagster_project.event_log\n"
                                        "  class: KalmSqliteEventLogStorage\n  config:\n    base_dir: ")
                              + r'"[^"\n]*"\n')


def instance() -> dg.DagsterInstance:
    """The persistent instance: $DAGSTER_HOME, else data/dagster_home beside the lake."""
    home = os.environ.get("DAGSTER_HOME") or str(data_dir() / "dagster_home")
    Path(home).mkdir(parents=True, exist_ok=True)
    config = Path(home) / "dagster.yaml"
    current = config.read_text() if config.exists() else None
    # the storage block an earlier kalm wrote is taken out of the config, whatever else a user added (its events are
    # in Dagster's own files: history is kept); a config a user wrote is otherwise left alone
    if current is None:
        config.write_text(INSTANCE_CONFIG)
    elif _EARLIER_STORAGE.search(current):
        config.write_text(_EARLIER_STORAGE.sub("", current))
    os.environ["DAGSTER_HOME"] = home
    return dg.DagsterInstance.get()


def observe_sources(defs: dg.Definitions, inst: dg.DagsterInstance) -> None:
    """Hash every source and record an observation for each whose version moved: the `observe_sources` sensor's own
    evaluation (the one `kalm ui` runs), its events reported without a run (a Dagster run costs ~1 s to create and
    log, in every rebuild)."""
    sensor = defs.resolve_sensor_def(OBSERVE_JOB)
    result = sensor(dg.build_sensor_context(instance=inst, definitions=defs))
    for event in result.asset_events:
        inst.report_runless_asset_event(event)


def stale_keys(defs: dg.Definitions, inst: dg.DagsterInstance) -> list[dg.AssetKey]:
    """What a rebuild must redo, in topological order: assets stale by Dagster's rule (a new source version,
    an edited SQL model) or never materialised, plus everything downstream of them (the shared tail)."""
    graph = defs.resolve_asset_graph()
    ordered = [k for level in graph.toposorted_asset_keys_by_level for k in sorted(level)
               if graph.get(k).is_materializable]
    status = staleness.statuses(defs, inst, ordered)
    roots = [k for k in ordered if status[k].state != "fresh"]
    if not roots:
        return []
    todo = dg.AssetSelection.assets(*roots).downstream().resolve(graph)
    return [k for k in ordered if k in todo]


def select(defs: dg.Definitions, selection: str | None) -> list[dg.AssetKey] | None:
    """Dagster's selection syntax (`key:raw/numpy+`, `group:marts`, `*marts/training_pairs`); None = all."""
    if selection is None:
        return None
    if not selection.strip():
        raise ValueError("an empty --select selects nothing: leave it out to run the whole DAG, or name assets, "
                         "e.g. 'key:raw/numpy+'")
    with warnings.catch_warnings():  # Dagster's parser calls its own beta parameter for `group:`: not ours to show
        warnings.simplefilter("ignore", dg.BetaWarning)
        try:
            parsed = dg.AssetSelection.from_string(selection)
        except Exception as e:  # Dagster raises its own error types with a long parser trace: one line is enough
            raise ValueError(f"invalid selection {selection!r}: {str(e).splitlines()[0]}. Examples: "
                             "'key:raw/numpy+' (and downstream), '+key:marts/training_pairs' (and upstream), "
                             "'group:marts', 'key:raw/a or key:raw/b'") from None
        # a multi-asset (synthetic examples + rejects) runs whole, so its siblings join the selection
        keys = parsed.required_multi_asset_neighbors().resolve(defs.resolve_asset_graph())
    if not keys:
        raise ValueError(f"selection {selection!r} matches no asset")
    return sorted(keys)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def fail_dead_runs(inst: dg.DagsterInstance) -> list[str]:
    """`kalm run` executes in its own process, where no daemon watches it (under `kalm ui`, Dagster's run
    monitoring does): a run whose process was killed (-9, out of memory) would stay STARTED forever. Each run is
    tagged with its host and pid; a STARTED one whose process is gone from this host is marked failed, naming it.
    Returns the run ids so marked."""
    marked = []
    for record in inst.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                             tags={HOST_TAG: socket.gethostname()})):
        run = record.dagster_run
        pid = int(run.tags.get(PID_TAG, "0"))
        if pid and not _alive(pid):
            inst.report_run_failed(run, f"the kalm run process (pid {pid} on {run.tags[HOST_TAG]}) died while the "
                                        "run was in progress (killed, or out of memory); marked failed by the next "
                                        "kalm run")
            marked.append(run.run_id)
    return marked


def materialize(defs: dg.Definitions, inst: dg.DagsterInstance, keys: list[dg.AssetKey] | None = None,
                observe: bool = True, tags: dict[str, str] | None = None):
    """Observe the sources (unless the caller just did), then materialise `keys` (all when None), the run tagged
    with `tags` too; failures are reported, not raised."""
    if observe:
        observe_sources(defs, inst)
    job = defs.resolve_job_def(ALL_JOB)
    # Dagster's compute-log capture starts `tail` and a Python watcher per stream in this process group, so a Ctrl-C
    # reaches them too and each watcher printed a KeyboardInterrupt traceback. A child inherits a blocked SIGINT:
    # it stays blocked until the capture has started (the progress logger unblocks it on LOGS_CAPTURED), and a
    # Ctrl-C meanwhile is held pending, not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return job.execute_in_process(instance=inst, asset_selection=keys, raise_on_error=False,
                                      run_config=PROGRESS, tags={**(tags or {}), HOST_TAG: socket.gethostname(),
                                                                 PID_TAG: str(os.getpid())})
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
