"""marts.evaluation_sets: the texts of every evaluation set the profile names (its BEIR folders and MTEB tasks,
kalm_core/evaluation_sets.py), which decontamination compares training pairs with besides the held-out split.

`sources/evaluation_sets` is observed like a catalogue source (the folders' files, the tasks' presence in the
Hugging Face cache), so a new evaluation folder or a fetched task rebuilds the decontamination by itself.
"""

import warnings

import dagster as dg

from assets.common import table_metadata
from assets.resources import SettingsResource, WarehouseResource
from assets.versions import run_profile_versions
from kalm_core import evaluation_sets
from kalm_core import warehouse as wh
from kalm_core.config import Profile, get_profile

SOURCE = dg.AssetKey(["sources", "evaluation_sets"])
EVALUATION_SETS = dg.AssetKey(["marts", "evaluation_sets"])


def fingerprint(profile: Profile) -> str:
    return evaluation_sets.fingerprint(profile.eval.beir_folders, profile.eval.mteb_tasks)


def build(profile: Profile) -> list[dg.AssetsDefinition]:
    def _observe() -> dg.ObserveResult:
        return dg.ObserveResult(data_version=dg.DataVersion(fingerprint(profile)))

    with warnings.catch_warnings():  # observable_source_asset is marked beta; it is the documented way here
        warnings.simplefilter("ignore", dg.BetaWarning)
        observer = dg.observable_source_asset(
            key=SOURCE, group_name="sources",
            description="The evaluation sets the profile names (eval.beir_folders, eval.mteb_tasks). Observed: the "
                        "folders' files and which tasks' data is in the Hugging Face cache.")(_observe)

    @dg.asset(key=EVALUATION_SETS, deps=[SOURCE], group_name="marts", kinds={"duckdb"},
              description="Every query and relevant document (or text) of the evaluation sets the profile names, "
                          "one row per text and set; a set whose data is not present is named in the metadata.")
    def evaluation_sets_table(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                              settings: SettingsResource) -> dg.MaterializeResult:
        cfg = get_profile(settings.profile).eval
        tasks = []
        if cfg.mteb_tasks:
            from kalm_core.evaluation import resolve_task_names

            tasks = resolve_task_names(cfg.mteb_tasks)
        with warehouse.connect() as con:
            texts, missing = evaluation_sets.read(con, cfg.beir_folders, tasks)
            rows = wh.write(con, "marts", "evaluation_sets", texts)
            per_set = dict(texts.group_by("source").len().sort("source").iter_rows())
            meta = table_metadata(con, "marts", "evaluation_sets", rows=rows,
                                  texts_per_set=dg.MetadataValue.json(per_set),
                                  not_present=dg.MetadataValue.json(missing))
        for name, why in missing.items():
            context.log.warning(f"evaluation set {name} is not checked for contamination: {why}")
        return dg.MaterializeResult(metadata=meta, **run_profile_versions(context, settings.profile,
                                                                          EVALUATION_SETS))

    return [observer, evaluation_sets_table]
