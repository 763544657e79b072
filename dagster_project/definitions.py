"""The Definitions: assets of every layer built from the catalogue, checks, resources, jobs.

`dg dev -m dagster_project.definitions` (`kalm ui`) loads `defs`; the catalogue is $KALM_CATALOG (default
catalog/sources.yaml), the lake $KALM_LAKE (default data/lake).
"""

from __future__ import annotations

import os

import dagster as dg

from assets import batched, evaluation, evaluation_sets, filtered, marts, raw, staged, synthetic, training
from dagster_project import automation
from dagster_project.progress import progress_logger, quiet_logger
from assets.resources import SettingsResource, WarehouseResource
from assets.versions import versioned
from kalm_core.catalog import load_catalog
from kalm_core.config import get_profile
from kalm_core.warehouse import lake_spec


def build_defs(catalog_path: str | None = None, lake: str | None = None,
               profile: str | None = None) -> dg.Definitions:
    catalog = load_catalog(catalog_path)
    built = {"raw": [s.name for s in catalog.sources], "staged": [s.name for s in catalog.sources],
             "staged/held_out": [s.name for s in catalog.sources if s.held_out],
             "filtered": [s.name for s in catalog.sources if not s.held_out] + ["synthetic"]}
    raw_assets, staged_assets, filtered_assets = raw.build(catalog), staged.build(catalog), filtered.build(catalog)
    sql_assets, sql_checks = marts.build(built)
    batched_assets, batched_checks = batched.build(catalog)
    synthetic_assets, synthetic_checks = synthetic.build()
    training_assets, _ = training.build()
    eval_assets, eval_checks = evaluation.build()
    settings = get_profile(profile)
    eval_set_assets = evaluation_sets.build(settings)
    assets = automation.automated(versioned([*raw_assets, *staged_assets, *synthetic_assets, *filtered_assets,
                                             *eval_set_assets, *sql_assets, *batched_assets, *training_assets,
                                             *eval_assets], settings),
                                  settings.automate_training)
    layers = {a.group_names_by_key[k] for a in assets if isinstance(a, dg.AssetsDefinition) for k in a.keys}
    return dg.Definitions(
        assets=assets,
        asset_checks=[*synthetic_checks, *sql_checks, *batched_checks, *eval_checks],  # a source's: in its steps
        jobs=automation.jobs(layers),
        sensors=automation.sensors(catalog, raw.fingerprint,
                                   {evaluation_sets.SOURCE: lambda: evaluation_sets.fingerprint(settings)}),
        resources={
            "warehouse": WarehouseResource(lake=_lake_location(lake)),
            # a launchpad run may give only `profile`: the catalogue path stays the location's unless given here
            "settings": SettingsResource(catalog_path=str(catalog.path) if catalog_path else None,
                                         profile=profile or os.environ.get("KALM_PROFILE", "demo")),
        },
        executor=dg.in_process_executor,  # in-process is ~5x faster for this graph (docs/DESIGN.md)
        loggers={"progress": progress_logger, "quiet": quiet_logger},
    )


def _lake_location(lake: str | None) -> str:
    spec = lake_spec(lake)
    return str(spec.home) if spec.kind == "sqlite" else spec.catalog


defs = build_defs()
