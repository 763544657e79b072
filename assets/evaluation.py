"""Layer evaluation: mteb scores per Matryoshka dim, base vs trained, as the table evaluation.mteb_results."""

import dagster as dg
import polars as pl

from assets.marts import overlap_count
from assets.training import CANDIDATE, RESULTS
from assets.resources import SettingsResource, WarehouseResource
from assets.versions import run_profile_versions
from kalm_core import plots
from kalm_core import warehouse as wh
from kalm_core.config import data_dir, get_profile, resolve_model_path
from kalm_core.evaluation import HELD_OUT_TASK, beir_task, evaluate_model, heldout_task, load_real_tasks
from kalm_core.identifiers import table


@dg.asset(key=RESULTS, deps=[CANDIDATE, dg.AssetKey(["marts", "eval_pairs"])], group_name="evaluation",
          kinds={"pytorch", "duckdb"},
          description="mteb scores per task, split, dim, metric and role (base or trained): the held-out split and "
                      "the profile's BEIR folders as local retrieval tasks, its MTEB tasks and benchmarks by name.")
def mteb_results(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                 settings: SettingsResource) -> dg.MaterializeResult:
    profile = get_profile(settings.profile)
    with warehouse.connect(read_only=True) as con:
        leaked, sources = overlap_count(con, "batched.batches")  # what the candidate trained on
        if leaked:
            raise dg.Failure(description=f"{leaked} evaluation pair(s) are in the batches the candidate trained on "
                                         f"({sources}): scoring them would overstate the model. Rebuild the training "
                                         "chain (`kalm run --stale`) or remove them from the held-out source.",
                             metadata={"overlapping_pairs": leaked})
        pairs = con.sql(f"select query, positive, instruction from {table('marts', 'eval_pairs')}").pl()
        trained = con.execute(f"select model_path from {table('training', 'candidate')}").fetchall()[0][0]
    if profile.eval.max_eval_pairs:
        pairs = pairs.sample(n=min(profile.eval.max_eval_pairs, pairs.height), seed=0)
    real, skipped = load_real_tasks(profile.eval.mteb_tasks)  # an unknown name raises before any encoding
    for s in skipped:
        context.log.warning(f"MTEB task {s.task_name} skipped: {s.reason}")
    tasks = [heldout_task(pairs, data_dir() / "eval" / HELD_OUT_TASK),
             *(beir_task(folder) for folder in profile.eval.beir_folders), *real]
    dims = profile.train.dims
    base = resolve_model_path(profile.model.base_model)
    results_dir = f"{trained}/mteb"  # mteb's own result JSON, beside the model (both roles)
    rows = (evaluate_model("base", base, profile.model, dims, tasks, profile.eval.batch_size, results_dir)
            + evaluate_model("trained", trained, profile.model, dims, tasks, profile.eval.batch_size, results_dir))
    frame = pl.DataFrame(rows)
    with warehouse.connect() as con:
        wh.write(con, "evaluation", "mteb_results", frame)
        wh.write(con, "evaluation", "skipped_tasks",
                 pl.DataFrame({"task_name": [s.task_name for s in skipped], "reason": [s.reason for s in skipped]},
                              schema={"task_name": pl.Utf8, "reason": pl.Utf8}))
    main = (frame.filter(pl.col("metric") == "main_score")
            .group_by("role", "task_type", "task_name", "dim").agg(pl.col("score").mean()))
    by_type = main.group_by("role", "task_type", "dim").agg(pl.col("score").mean())
    plots_md = "\n\n".join(
        f"**{task_type}** (average main score of its tasks)\n\n" + plots.score_vs_dim(
            {role: dict(zip(g["dim"].to_list(), g["score"].to_list())) for (role,), g in part.group_by("role")},
            "main score")
        for (task_type,), part in sorted(by_type.group_by("task_type"), key=lambda kv: str(kv[0])))
    summary = (main.pivot(on="role", index=["task_type", "task_name", "dim"], values="score")
               .sort("task_type", "task_name", pl.col("dim"), descending=[False, False, True]))
    held = main.filter(pl.col("task_name") == HELD_OUT_TASK)
    series = {role: dict(zip(g["dim"].to_list(), g["score"].to_list())) for (role,), g in held.group_by("role")}
    full = max(dims)
    meta = {f"{role}_ndcg10_dim{d}": s for role, pts in series.items() for d, s in pts.items()}
    return dg.MaterializeResult(metadata={
        **meta, "dagster/row_count": frame.height, "held_out_pairs": pairs.height,
        "tasks": dg.MetadataValue.json({t.metadata.name: t.metadata.type for t in tasks}),
        "skipped_tasks": dg.MetadataValue.json({s.task_name: s.reason for s in skipped}),
        "trained_minus_base_full_dim": series["trained"][full] - series["base"][full],
        "summary": dg.MetadataValue.md(_markdown(summary)),
        "score_vs_dim": dg.MetadataValue.md(plots_md), "mteb_result_json": dg.MetadataValue.path(results_dir),
        "trained_model": trained}, **run_profile_versions(context, settings.profile))


@dg.asset_check(asset=RESULTS, name="candidate_beats_base", blocking=True,
                description="the candidate beats its base on the held-out task at full dim (by the profile's "
                            "eval.promote_min_gain); only then is it promoted to training/embedder")
def candidate_beats_base(warehouse: WarehouseResource, settings: SettingsResource) -> dg.AssetCheckResult:
    min_gain = get_profile(settings.profile).eval.promote_min_gain
    with warehouse.connect(read_only=True) as con:
        scores = dict(con.execute(
            f"select role, avg(score) from {table('evaluation', 'mteb_results')} where task_name = ? and metric = "
            f"'ndcg_at_10' and dim = (select max(dim) from {table('evaluation', 'mteb_results')}) group by role",
            [HELD_OUT_TASK]).fetchall())
        path = con.execute(f"select model_path from {table('training', 'candidate')}").fetchall()[0][0]
    trained, base = scores.get("trained"), scores.get("base")
    passed = trained is not None and base is not None and trained - base >= min_gain
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"trained_ndcg_at_10": trained, "base_ndcg_at_10": base, "min_gain": min_gain,
                  "expected": "trained - base >= min_gain", "candidate": dg.MetadataValue.path(path)},
        description=None if passed else f"the candidate at {path} scores {trained} against the base's {base} "
                                        f"(needs a gain of {min_gain}): not promoted; training/embedder keeps its "
                                        "previous model, the candidate stays on disk")


def _markdown(frame: pl.DataFrame) -> str:
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=-1, tbl_cols=-1, float_precision=4, tbl_width_chars=1000):
        return str(frame)


def build() -> tuple[list, list]:
    return [mteb_results], [candidate_beats_base]
