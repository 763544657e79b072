"""Jobs as asset selections, and declarative automation: sources observed on their own, data layers rebuilt when
their inputs change.

- `observe_sources` (a sensor, running by default under `kalm ui` / `dg dev`) hashes every source every
  `KALM_OBSERVE_INTERVAL_S` seconds (default 30) and records an observation only for a source whose version (file
  content + catalogue entry) changed: no run is launched for an unchanged source.
- `kalm_automation` (Dagster's automation-condition sensor, running by default) evaluates the conditions every
  `KALM_AUTOMATION_INTERVAL_S` seconds: the data layers (raw, staged, synthetic, filtered, marts, batched) are
  eager (`eager_from_the_start`), so a new project builds whole on the first tick and a changed source rebuilds its own chain in one run; training and evaluation show as stale but run only when asked,
  unless the profile's `automate_training` is on.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings

import dagster as dg

from kalm_core.identifiers import LAYERS

ALL_JOB = "kalm_all"
OBSERVE_JOB = "observe_sources"
DATA_LAYERS = ("raw", "staged", "synthetic", "filtered", "marts", "batched")  # eager: a new project builds whole
MODEL_LAYERS = ("training", "evaluation")


def jobs(layers_present: set[str]) -> list[dg.UnresolvedAssetJobDefinition]:
    with warnings.catch_warnings():  # include_sources is marked beta; it is how observable sources are selected
        warnings.simplefilter("ignore", dg.BetaWarning)
        sources = dg.AssetSelection.groups("sources", include_sources=True)
    out = [
        dg.define_asset_job(ALL_JOB, selection=dg.AssetSelection.all(), description="Every table of the DAG."),
        dg.define_asset_job(OBSERVE_JOB, selection=sources,
                            description="Hash every source file so changed sources show as stale."),
    ]
    out += [dg.define_asset_job(f"layer_{layer}", selection=dg.AssetSelection.groups(layer))
            for layer in LAYERS if layer in layers_present]
    return out


def eager_from_the_start() -> dg.AutomationCondition:
    """Dagster's `eager()` without its first-evaluation reset: eager() counts an asset missing at the sensor's first
    tick as handled, so on a new project an asset without parents (the synthetic layer) is never requested and its
    children wait on it forever. Here a missing asset stays due until it is requested or materialised, and runs
    once its parents are present or requested in the same tick; a failed run is not retried on every tick."""
    handled = (dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()).with_label("handled")
    due = (dg.AutomationCondition.missing().newly_true().with_label("newly_missing")
           | dg.AutomationCondition.any_deps_updated()).since(handled)
    return (due & ~dg.AutomationCondition.any_deps_missing() & ~dg.AutomationCondition.any_deps_in_progress()
            & ~dg.AutomationCondition.in_progress()).with_label("eager_from_the_start")


def automated(assets: list, automate_training: bool = False) -> list:
    """The data layers (and, when asked, training and evaluation) are built when missing and rebuilt when a
    dependency updates, never while one is missing or in progress (eager_from_the_start)."""
    layers = DATA_LAYERS + (MODEL_LAYERS if automate_training else ())

    def condition(spec: dg.AssetSpec) -> dg.AssetSpec:
        summary_of_models = spec.key == dg.AssetKey(["marts", "mteb_summary"])  # downstream of evaluation
        if spec.key.path[0] not in layers or (summary_of_models and not automate_training):
            return spec
        return spec.replace_attributes(automation_condition=eager_from_the_start())

    return dg.map_asset_specs(condition, assets)


UI_PORT = "KALM_UI_PORT"  # set by `kalm ui` for its processes: the webserver the reload is asked of
LOCATION = "dagster_project.definitions"  # the code location `kalm ui` serves (its module's name)


def ui_command(port: int) -> list[str]:
    """What `kalm ui` runs, the webserver and the daemon: `dg dev` (Dagster's successor of `dagster dev`, which
    warns that it is superseded) on this code location, on 127.0.0.1 only."""
    return [sys.executable, "-m", "dagster_dg_cli.cli", "dev", "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)]


def catalogue_edit(catalog) -> str:
    """What changed in the catalogue file since these definitions loaded it ('' when nothing, or when the file does
    not load now: a half-saved edit is seen on a later tick)."""
    from kalm_core.catalog import CatalogError, changes, load_catalog

    try:
        return "; ".join(changes(catalog, load_catalog(catalog.path)))
    except CatalogError:
        return ""


_ASKED: dict[str, float] = {}  # edit -> when its reload was first asked, in this code server process
RELOAD_WAIT_S = 120  # after which a reload that never came is given up: sources are observed with the old entries


def request_reload(edit: str) -> bool:
    """Ask the `kalm ui` webserver to reload this code location, through Dagster's public GraphQL client (what the
    UI's "Reload definitions" does). In a thread: the reload replaces the very process this sensor runs in, so the
    tick returns first. False outside `kalm ui` (no webserver known) or when an earlier ask went unanswered."""
    port = os.environ.get(UI_PORT)
    if not port or time.monotonic() - _ASKED.setdefault(edit, time.monotonic()) > RELOAD_WAIT_S:
        return False

    def reload() -> None:
        from dagster_graphql import DagsterGraphQLClient

        try:
            DagsterGraphQLClient("127.0.0.1", port_number=int(port)).reload_repository_location(LOCATION)
        except Exception:  # the process may end mid-call (it is the one replaced); the next tick asks again if not
            pass

    threading.Thread(target=reload, daemon=True).start()
    return True


def _interval(var: str) -> int:
    return max(1, int(os.environ.get(var, "30")))


def sensors(catalog, fingerprint, others: dict | None = None) -> list:
    """The source observer and the automation-condition sensor, both running by default. `others`: more observable
    sources (asset key -> its data version), such as the profile's evaluation sets."""
    from assets.raw import source_key
    from assets.versions import latest_data_versions
    from kalm_core.extract import file_facts

    @dg.sensor(name=OBSERVE_JOB, minimum_interval_seconds=_interval("KALM_OBSERVE_INTERVAL_S"),
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Hashes every source; records an observation when a source's file or catalogue entry "
                           "changed, which the data layers' automation conditions react to.")
    def observe(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        edit = catalogue_edit(catalog)
        if edit and request_reload(edit):  # new definitions: the next tick observes with the new catalogue
            context.log.info(f"the catalogue changed ({edit}): the code location reloads with it")
            return dg.SensorResult(skip_reason=f"catalogue changed ({edit}): reloading definitions",
                                   cursor=context.cursor)
        if edit:
            context.log.warning(f"the catalogue changed ({edit}) and the definitions did not reload (outside "
                                "`kalm ui` they reload when asked: Deployment > Reload definitions)")
        seen = json.loads(context.cursor) if context.cursor else {}
        events, skipped, changed = [], [], []
        observed = [(src.name, source_key(src), lambda src=src: fingerprint(src, catalog),
                     lambda src=src: file_facts(src, catalog.base_dir)) for src in catalog.sources]
        observed += [(key.to_user_string(), key, version, dict) for key, version in (others or {}).items()]
        for name, key, version_of, facts in observed:
            try:
                version = version_of()
            except Exception as e:  # a file being rewritten or gone: try again next tick
                skipped.append(f"{name}: {type(e).__name__}: {e}")
                continue
            if name not in seen:  # first tick: what the instance last recorded
                seen[name] = latest_data_versions(context.instance, [], [key])[key]
            if version != seen[name]:
                events.append(dg.AssetObservation(asset_key=key, tags={"dagster/data_version": version},
                                                  metadata=facts()))
                changed.append(name if seen[name] is None else f"{name} (changed)")
                seen[name] = version
        for line in skipped:
            context.log.warning(f"source not observed this tick: {line}")
        if changed:  # the tick's log names them; the automation sensor then requests their chains
            context.log.info(f"observed new versions of {len(changed)} source(s): {', '.join(changed)}")
        cursor = json.dumps(seen, sort_keys=True)
        if not events:
            return dg.SensorResult(skip_reason=f"no source changed ({len(observed)} observed)", cursor=cursor)
        return dg.SensorResult(asset_events=events, cursor=cursor)

    automation = dg.AutomationConditionSensorDefinition(
        "kalm_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=_interval("KALM_AUTOMATION_INTERVAL_S"),
        description="Builds the data layers when missing and rebuilds those whose inputs changed "
                    "(eager on raw, staged, synthetic, filtered, marts and batched).")
    return [observe, automation]
