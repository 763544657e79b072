"""Jobs as asset selections: the whole DAG, one per layer, and the observation of the source files."""

from __future__ import annotations

import warnings

import dagster as dg

from kalm_core.identifiers import LAYERS

ALL_JOB = "kalm_all"
OBSERVE_JOB = "observe_sources"


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
