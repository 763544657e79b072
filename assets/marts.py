"""SQL-file models (sql/<layer>/<name>.sql, marts first of all) as assets, with key checks."""

import re

import dagster as dg

from assets.common import table_metadata
from assets.resources import WarehouseResource
from assets.versions import data_version_of
from kalm_core import sql_models
from kalm_core import warehouse as wh
from kalm_core.identifiers import table

MODEL_LAYERS = ("training", "evaluation")  # a model reading these runs after training: its own step
TRAINING_PAIRS = dg.AssetKey(["marts", "training_pairs"])
EVAL_PAIRS = dg.AssetKey(["marts", "eval_pairs"])
NO_EVAL_OVERLAP = "no_eval_overlap"
FULL_REFRESH_TAG = "kalm/full_refresh"  # a run tagged so builds incremental models whole (`kalm run --full-refresh`)


def _spec(model: sql_models.SqlModel, built: dict[str, list[str]]) -> dg.AssetSpec:
    return dg.AssetSpec([model.layer, model.name], deps=[dg.AssetKey(list(d)) for d in model.dependencies(built)],
                        group_name=model.layer, kinds={"duckdb"}, code_version=model.code_version,
                        description=model.description, metadata=model.metadata)


def _check_specs(model: sql_models.SqlModel) -> list[dg.AssetCheckSpec]:
    """not_empty (unless the header says when the table is `empty`), and unique_<key> for a model whose header
    names a single-column `key`."""
    key = dg.AssetKey([model.layer, model.name])
    specs = [] if "empty" in model.header else [dg.AssetCheckSpec("not_empty", asset=key,
                                                                  description="the table has rows")]
    key_col = model.header.get("key", "")
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_col):
        specs.append(dg.AssetCheckSpec(f"unique_{key_col}", asset=key, description=f"{key_col} is unique and not null"))
    return specs


def _check(con, model: sql_models.SqlModel, name: str, rows: int | None = None) -> dg.AssetCheckResult:
    """One key check; `rows`: the table's row count when the step just built it."""
    where = table(model.layer, model.name)
    asset_key = dg.AssetKey([model.layer, model.name])
    if name == "not_empty":
        n = con.execute(f"select count(*) from {where}").fetchall()[0][0] if rows is None else rows
        return dg.AssetCheckResult(asset_key=asset_key, check_name=name, passed=n > 0,
                                   metadata={"row_count": n, "expected_min": 1})
    key_col = name.removeprefix("unique_")
    n, distinct, nulls = con.execute(
        f'select count(*), count(distinct "{key_col}"), count(*) - count("{key_col}") from {where}').fetchall()[0]
    return dg.AssetCheckResult(asset_key=asset_key, check_name=name, passed=n == distinct and nulls == 0,
                               metadata={"rows": n, "distinct_keys": distinct, "null_keys": nulls})


def build_models_asset(models: list[sql_models.SqlModel], built: dict[str, list[str]],
                       name: str) -> dg.AssetsDefinition:
    """The models as one subsettable multi-asset, run as dbt runs a project: one step, one lake connection, the
    selected models in dependency order, each model's checks right after it (a step and a connection per model and
    per check cost ~0.5 s each, more than these models' SQL)."""
    by_key = {dg.AssetKey([m.layer, m.name]): m for m in models}
    checks = [c for m in models for c in _check_specs(m)]
    if TRAINING_PAIRS in by_key and EVAL_PAIRS in by_key:
        checks.append(dg.AssetCheckSpec(
            NO_EVAL_OVERLAP, asset=TRAINING_PAIRS, blocking=True, additional_deps=[EVAL_PAIRS],
            description="no training query or positive is an evaluation query or relevant text after normalisation "
                        "(case, whitespace, end punctuation): evaluation data never leaks into training (evaluation "
                        "guards the other side)"))
    order = _dependency_order(models, built)

    @dg.multi_asset(name=name, specs=[_spec(m, built) for m in models], check_specs=checks, can_subset=True)
    def _models(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        assets = set(context.selected_asset_keys)
        wanted = context.selected_asset_check_keys
        overlap = dg.AssetCheckKey(TRAINING_PAIRS, NO_EVAL_OVERLAP)
        with warehouse.connect(read_only=not assets) as con:  # checks alone only read
            for model in order:
                key = dg.AssetKey([model.layer, model.name])
                rows = None
                if key in assets:
                    try:
                        how, rows = _materialize(context, con, model, key, built)
                    except Exception as e:
                        raise RuntimeError(f"SQL model {model.path.name} ({model.layer}.{model.name}): {e}") from e
                    yield dg.MaterializeResult(asset_key=key, metadata=table_metadata(
                        con, model.layer, model.name, rows=rows, sql=dg.MetadataValue.md(f"```sql\n{model.text}\n```"),
                        materialized=how))
                for check in sorted((c for c in wanted if c.asset_key == key and c != overlap), key=lambda c: c.name):
                    yield _check(con, model, check.name, rows)
            if overlap in wanted:  # it reads two models: after both are built
                yield no_eval_overlap(con)

    return _models


def _materialize(context: dg.AssetExecutionContext, con, model: sql_models.SqlModel, key: dg.AssetKey,
                 built: dict[str, list[str]]) -> tuple[str, int | None]:
    """Build the model whole, or, for an incremental one whose last build's inputs differ only in some tables of its
    `ref('layer.*')`, recompute those tables' rows. Returns how (for the metadata) and the row count (None: not
    counted)."""
    changed = _changed_inputs(context, con, model, key)
    if changed is not None:
        how = "incremental: " + (", ".join(".".join(t) for t in changed) or "no input changed")
        return how, sql_models.run_incremental(con, model, built, changed) if changed else None
    return "whole", sql_models.run_model(con, model, built)


def _changed_inputs(context: dg.AssetExecutionContext, con, model: sql_models.SqlModel,
                    key: dg.AssetKey) -> list[tuple[str, str]] | None:
    """The input tables whose data version moved since the model's last materialisation, from the provenance Dagster
    recorded with it; None where the model must be built whole: not incremental, a full refresh asked (run tag
    kalm/full_refresh), never built, other code, other inputs, or a changed input outside its `ref('layer.*')`."""
    if model.partition is None or context.run.tags.get(FULL_REFRESH_TAG, "").lower() in ("1", "true", "yes"):
        return None
    provenance = context.get_asset_provenance(key)
    if provenance is None or not wh.exists(con, model.layer, model.name):
        return None
    if provenance.code_version != context.assets_def.code_versions_by_key.get(key):
        return None
    deps = {d.asset_key for d in context.assets_def.specs_by_key[key].deps}
    if set(provenance.input_data_versions) != deps:
        return None
    records = context.instance.get_asset_records(sorted(deps, key=lambda k: k.path))  # one query for all
    if len(records) != len(deps):  # an input's history was wiped
        return None
    changed = []
    for record in records:
        entry = record.asset_entry
        latest = max((r for r in (entry.last_materialization_record, entry.last_observation_record) if r),
                     key=lambda r: r.storage_id, default=None)
        current = data_version_of(latest.event_log_entry) if latest else None
        recorded = provenance.input_data_versions[entry.asset_key]
        if current != (recorded.value if recorded else None):
            changed.append(tuple(entry.asset_key.path))
    changed.sort()
    return None if any(layer not in model.wildcard_layers for layer, _ in changed) else changed


def _dependency_order(models: list[sql_models.SqlModel], built: dict[str, list[str]]) -> list[sql_models.SqlModel]:
    """Models after the models they read (a model may ref another one), else in file order."""
    keys = {(m.layer, m.name): m for m in models}
    done: dict[tuple[str, str], sql_models.SqlModel] = {}

    def visit(m: sql_models.SqlModel, path: tuple = ()) -> None:
        if (m.layer, m.name) in done:
            return
        if (m.layer, m.name) in path:
            raise ValueError(f"SQL models read each other in a cycle: {' -> '.join('.'.join(p) for p in path)}")
        for dep in m.dependencies(built):
            if dep in keys:
                visit(keys[dep], path + ((m.layer, m.name),))
        done[(m.layer, m.name)] = m

    for m in models:
        visit(m)
    return list(done.values())


def no_eval_overlap(con) -> dg.AssetCheckResult:
    """The blocking check on marts.training_pairs: no query or positive of it is an evaluation text after
    normalisation (decontamination, marts.contamination, leaves them out: this guards that it did)."""
    if not wh.exists(con, "marts", "eval_pairs"):
        return dg.AssetCheckResult(asset_key=TRAINING_PAIRS, check_name=NO_EVAL_OVERLAP, passed=True,
                                   metadata={"overlapping_pairs": 0, "not_built_yet": "eval_pairs"})
    overlap, sources = overlap_count(con)
    return dg.AssetCheckResult(
        asset_key=TRAINING_PAIRS, check_name=NO_EVAL_OVERLAP, passed=overlap == 0,
        metadata={"overlapping_pairs": overlap, "expected": 0},
        description=None if overlap == 0 else
        f"{overlap} training text(s) are evaluation texts after normalisation ({sources}): decontamination "
        "(sql/marts/training_pairs.sql) let them through")


def overlap_count(con, training: str = "marts.training_pairs") -> tuple[int, str | None]:
    """(training queries and positives in `training` that equal a query or relevant text of marts.eval_pairs or of
    the profile's evaluation sets (marts.evaluation_sets) after normalisation (kalm_norm), which sources they pair).
    Computed here from the evaluation tables, not from marts.evaluation_texts: a guard of decontamination."""
    layer, name = training.split(".")
    sets = (f"union select kalm_norm(text), source from {table('marts', 'evaluation_sets')}"
            if wh.exists(con, "marts", "evaluation_sets") else "")
    return con.execute(
        f"""with e as (select kalm_norm(query) as text, source from {table('marts', 'eval_pairs')}
                       union select kalm_norm(positive), source from {table('marts', 'eval_pairs')} {sets}),
                 t as (select source, kalm_norm(query) as q, kalm_norm(positive) as p from {table(layer, name)}),
                 hits as (select t.source || ' ~ ' || e.source as pair from t join e on e.text = t.q
                          union all select t.source || ' ~ ' || e.source from t join e on e.text = t.p)
            select count(*), string_agg(distinct pair, ', ') from hits""").fetchall()[0]


def build(built: dict[str, list[str]]) -> tuple[list, list]:
    """The curation models (marts over the data layers) as one step; a model that reads training or evaluation
    (downstream of the batches the marts feed) as its own, so the step graph has no cycle."""
    models = sql_models.discover()
    later = {(m.layer, m.name) for m in models if any(layer in MODEL_LAYERS for layer, _ in m.dependencies(built))}
    while grown := {(m.layer, m.name) for m in models if set(m.dependencies(built)) & later} - later:
        later |= grown  # and a model reading one of those
    after_training = [m for m in models if (m.layer, m.name) in later]
    curation = [m for m in models if (m.layer, m.name) not in later]
    assets = [build_models_asset(curation, built, "marts")] if curation else []
    assets += [build_models_asset([m], built, f"{m.layer}__{m.name}") for m in after_training]
    return assets, []
