"""What each layer's tables are computed from: the modules and profile sections its code version covers."""

from __future__ import annotations

import dagster as dg

from kalm_core.config import Profile
from kalm_core.versions import code_version

MODEL = ("kalm_core.model", "kalm_core.device")
LAYER_CODE: dict[str, tuple[str, ...]] = {
    "raw": ("assets.raw", "kalm_core.extract", "kalm_core.records", "kalm_core.python_docs"),
    "staged": ("assets.staged", "kalm_core.staging", "kalm_core.pairs"),
    "synthetic": ("assets.synthetic", "kalm_core.synthesis.generate", "kalm_core.synthesis.tasks",
                  "kalm_core.synthesis.validation", "kalm_core.synthesis.personas", "kalm_core.pairs"),
    "filtered": ("assets.filtered", "kalm_core.filtering", "kalm_core.ranking_consistency", "kalm_core.mining",
                 "kalm_core.search", "kalm_core.embedding_cache", *MODEL),
    "marts": ("assets.marts", "kalm_core.sql_models", "kalm_core.pairs"),
    "batched": ("assets.batched", "kalm_core.batching", "kalm_core.snapshot"),
    "training": ("assets.training", "kalm_core.trainer", "kalm_core.batch_data", "kalm_core.grad_cache",
                 "kalm_core.losses.info_nce", "kalm_core.losses.matryoshka", "kalm_core.checkpoint", *MODEL),
    "evaluation": ("assets.evaluation", "kalm_core.evaluation", *MODEL),
}


def layer_settings(layer: str, profile: Profile) -> tuple:
    """The profile sections a layer reads."""
    return {"filtered": (profile.filter, profile.model), "batched": (profile.batch,),
            "training": (profile.model, profile.train, profile.batch),
            "evaluation": (profile.model, profile.eval, profile.train)}.get(layer, ())


def versioned(assets: list, profile: Profile) -> list:
    """Every asset's code version covers its code and settings; a SQL model's own version (its text's hash) is kept
    inside the new one."""
    def version(spec: dg.AssetSpec) -> dg.AssetSpec:
        layer = spec.key.path[0]
        if layer not in LAYER_CODE:  # observable sources are versioned by their data
            return spec
        return spec.replace_attributes(code_version=code_version(LAYER_CODE[layer], layer_settings(layer, profile),
                                                                 base=spec.code_version))

    return dg.map_asset_specs(version, assets)
