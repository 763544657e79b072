"""Which assets are stale, read from what every materialisation records, through Dagster's public instance methods.

Dagster's rule (docs: "Asset versioning and caching"), for unpartitioned assets: an asset is *missing* when it was
never materialised, and *stale* when the code version of its definition differs from the one its latest
materialisation recorded (`dagster/code_version`), or when a dependency's current data version differs from the one
that materialisation read (`dagster/input_data_version/<dep>`), or a dependency was added or removed since. A
never-observed source counts as `INITIAL` and a never-built asset as `NULL`, as in Dagster's own resolver. Staleness of the ancestors is not
repeated here: `runner.stale_keys` takes everything downstream of a stale asset anyway.

Why not Dagster's resolver: it lives in `dagster._core` (no stability promise across minor releases); these tags are
what the UI itself shows under "Changes since last materialization".
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from assets.versions import CODE_VERSION_TAG, data_version_of, latest_data_versions

INPUT_TAG = "dagster/input_data_version/"
INITIAL = "INITIAL"  # the version Dagster records for an external asset nobody observed yet
NULL = "NULL"  # and for a materialisable one never built (Dagster reads INITIAL then NULL as unchanged)


@dataclass(frozen=True)
class Status:
    """`missing`, `stale` (with its causes, as the UI words them) or `fresh`."""

    state: str
    causes: tuple[str, ...] = ()


def statuses(defs: dg.Definitions, inst: dg.DagsterInstance,
             keys: list[dg.AssetKey] | None = None) -> dict[dg.AssetKey, Status]:
    """The status of every materialisable asset of `defs` (or of `keys`): one query for the asset records and
    one per observed source."""
    graph = defs.resolve_asset_graph()
    keys = [k for k in (keys or graph.get_all_asset_keys()) if graph.get(k).is_materializable]
    parents = {k: set(graph.get(k).parent_keys) for k in keys}
    deps = set().union(*parents.values()) if parents else set()
    observed = sorted((k for k in deps if not graph.get(k).is_materializable), key=lambda k: k.path)
    built = sorted({*keys, *deps} - set(observed), key=lambda k: k.path)
    latest = {r.asset_entry.asset_key: r.asset_entry.last_materialization for r in inst.get_asset_records(built)}
    current = {k: data_version_of(e) or NULL for k, e in latest.items() if e is not None}
    current.update({k: v or INITIAL for k, v in latest_data_versions(inst, [], observed).items()})
    out = {}
    for key in keys:
        entry = latest.get(key)
        if entry is None:
            out[key] = Status("missing")
            continue
        tags = entry.asset_materialization.tags or {}
        causes = []
        defined = graph.get(key).code_version
        if defined is not None and tags.get(CODE_VERSION_TAG) != defined:
            causes.append("has a new code version")
        read = {dg.AssetKey.from_user_string(t[len(INPUT_TAG):]): v for t, v in tags.items()
                if t.startswith(INPUT_TAG)}
        for dep in sorted(parents[key], key=lambda k: k.path):
            now = current.get(dep, NULL)
            if dep not in read:
                causes.append(f"has a new dependency on {dep.to_user_string()}")
            elif read[dep] != now and (read[dep], now) != (INITIAL, NULL):
                causes.append(f"{dep.to_user_string()} has a new data version")
        causes += [f"removed dependency on {d.to_user_string()}" for d in sorted(set(read) - parents[key],
                                                                                  key=lambda k: k.path)]
        out[key] = Status("stale", tuple(causes)) if causes else Status("fresh")
    return out
