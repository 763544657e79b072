"""What each layer's tables are computed from: the modules (its asset module's import closure) and profile sections
its code version covers."""

from __future__ import annotations

import hashlib

import dagster as dg

from kalm_core.config import Profile, get_profile
from kalm_core.versions import code_version, import_closure

CODE_VERSION_TAG, DATA_VERSION_TAG = "dagster/code_version", "dagster/data_version"
PROFILE_TAG = "kalm/profile"  # on every materialisation of a table the profile shapes: which profile built it

# What runs a layer's tables: its asset module (and a process it launches); the code version covers everything they
# import inside the project (kalm_core.versions.import_closure), so no hand-kept module list can drift.
LAYER_ROOTS: dict[str, tuple[str, ...]] = {
    "raw": ("assets.raw",), "staged": ("assets.staged",), "synthetic": ("assets.synthetic",),
    "filtered": ("assets.filtered",), "marts": ("assets.marts",), "mix": ("assets.batched",),
    "batched": ("assets.batched",), "training": ("assets.training", "dagster_project.pipes_trainer"),
    "evaluation": ("assets.evaluation",), "evaluation_sets": ("assets.evaluation_sets",),
}
VERSIONING = ("assets.versions", "kalm_core.versions")  # computes versions, not tables: followed by none
LAYER_CODE: dict[str, tuple[str, ...]] = {layer: import_closure(roots, stop=VERSIONING)
                                          for layer, roots in LAYER_ROOTS.items()}


# Python assets among the SQL marts: their own code and settings
KEY_LAYERS = {("marts", "data_mix"): "mix", ("marts", "evaluation_sets"): "evaluation_sets"}


def layer_of(key: dg.AssetKey) -> str:
    return KEY_LAYERS.get(tuple(key.path), key.path[0])


def layer_settings(layer: str, profile: Profile) -> tuple:
    """The profile sections a layer reads."""
    from kalm_core import filter_model, token_length  # here: importing assets.versions adds no module to a layer

    if layer == "filtered":  # and the filter model's weights: a newly promoted `embedder:latest` re-filters
        return profile.filter, profile.model, profile.n_negatives, filter_model.identity(profile)
    return {"staged": (token_length.length_limits(profile.model),), "synthetic": (profile.synthesis,),
            "mix": (profile.mix,),
            "batched": (profile.batch, profile.train.nproc, profile.mix.seed),
            "training": (profile.model, profile.train, profile.batch),
            "evaluation": (profile.model, profile.eval, profile.train),
            "evaluation_sets": (profile.eval.beir_folders, profile.eval.mteb_tasks)}.get(layer, ())


def versioned(assets: list, profile: Profile) -> list:
    """Every asset's code version covers its code and settings; a SQL model's own version (its text's hash) is kept
    inside the new one."""
    settings = {layer: layer_settings(layer, profile) for layer in LAYER_CODE}  # once: the filter's looks at the lake

    def version(spec: dg.AssetSpec) -> dg.AssetSpec:
        layer = layer_of(spec.key)
        if layer not in LAYER_CODE:  # observable sources are versioned by their data
            return spec
        return spec.replace_attributes(code_version=code_version(LAYER_CODE[layer], settings[layer],
                                                                 base=spec.code_version))

    return dg.map_asset_specs(version, assets)


def data_version_of(entry: dg.EventLogEntry) -> str | None:
    """The data version a materialisation or observation recorded (its `dagster/data_version` tag)."""
    event = entry.asset_materialization or entry.asset_observation
    return (event.tags or {}).get(DATA_VERSION_TAG) if event else None


def latest_data_versions(instance: dg.DagsterInstance, materialized: list[dg.AssetKey],
                         observed: list[dg.AssetKey] = ()) -> dict[dg.AssetKey, str | None]:
    """Each asset's current data version (None: never built or observed), through the instance's public methods:
    the asset records in one query for materialised assets, the latest observation for each observed source (an
    asset record does not carry observations in Dagster's SQLite storage)."""
    versions: dict[dg.AssetKey, str | None] = dict.fromkeys([*materialized, *observed])
    if materialized:
        for record in instance.get_asset_records(list(materialized)):
            latest = record.asset_entry.last_materialization
            versions[record.asset_entry.asset_key] = data_version_of(latest) if latest else None
    for key in observed:
        records = instance.fetch_observations(key, limit=1, ascending=False).records
        versions[key] = data_version_of(records[0].event_log_entry) if records else None
    return versions


def _latest_data_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str:
    return latest_data_versions(instance, [key])[key] or latest_data_versions(instance, [], [key])[key] or ""


def run_profile_versions(context: dg.AssetExecutionContext, profile_name: str,
                         key: dg.AssetKey | None = None, base: str | None = None) -> dict:
    """Versions for a materialisation made with a profile picked at launch (the launchpad's
    `resources.settings.config.profile`) other than the code location's: the code version computed with that
    profile (Dagster lets an output's tags replace the definition's), so the UI shows the table stale against the
    location's profile, and a data version over it and the inputs' data versions, so what reads the table sees it
    change. When the run uses the location's profile, Dagster's own versions are the right ones and only the
    profile's name is added. `base`: the asset's own version inside the layer's (a SQL model's hash)."""
    key = key or context.assets_def.key
    layer = layer_of(key)
    profile = get_profile(profile_name)
    defined = context.assets_def.code_versions_by_key.get(key)
    used = code_version(LAYER_CODE[layer], layer_settings(layer, profile), base=base)
    if used == defined:
        return {"tags": {PROFILE_TAG: profile.name}}
    h = hashlib.sha256(used.encode())
    for dep in sorted(d.asset_key.to_user_string() for d in context.assets_def.specs_by_key[key].deps):
        h.update(f"{dep}={_latest_data_version(context.instance, dg.AssetKey.from_user_string(dep))}".encode())
    return {"tags": {PROFILE_TAG: profile.name, CODE_VERSION_TAG: used},
            "data_version": dg.DataVersion(h.hexdigest()[:16])}
