"""Layer synthetic: personas, brainstormed instructions and validated examples from an LLM (KaLM §3.2 (1)).

With no backend configured (the embedded default) the tables materialise empty and their metadata says how to
enable the stage; the rest of the DAG runs.
"""

import dagster as dg
import polars as pl

from assets.resources import SettingsResource, WarehouseResource
from assets.versions import run_profile_versions
from kalm_core import warehouse as wh
from kalm_core.config import SynthesisConfig, get_profile
from kalm_core.synthesis.backends import BackendConfig, make_backend
from kalm_core.synthesis.generate import (BRAINSTORM, GENERATE, PAIR_SCHEMA, REJECT_SCHEMA,
                                          brainstorm_requests, collect_examples, collect_instructions,
                                          failed_share, generation_requests, run_stage)
from kalm_core.synthesis.personas import load_personas
from kalm_core.synthesis.store import GenerationStore

PERSONAS = dg.AssetKey(["synthetic", "personas"])
INSTRUCTIONS = dg.AssetKey(["synthetic", "instructions"])
EXAMPLES = dg.AssetKey(["synthetic", "examples"])
REJECTS = dg.AssetKey(["synthetic", "rejects"])
HOW_TO_ENABLE = ("No LLM backend is configured. Set KALM_LLM_BASE_URL (any OpenAI-compatible server, e.g. "
                 "`vllm serve Qwen/Qwen2-72B-Instruct`), KALM_LLM_MODEL and, if needed, KALM_LLM_API_KEY; or "
                 "KALM_LLM_BACKEND=vllm with KALM_LLM_MODEL for vLLM's offline engine on a GPU.")


def _stage_metadata(stats, backend_cfg: BackendConfig) -> dict:
    return {"requests": stats.requests, "skipped_already_done": stats.skipped_done, "sent": stats.sent,
            "ok": stats.ok, "failed": stats.failed, "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens, "requests_per_s": stats.requests_per_s,
            "backend": dg.MetadataValue.json(backend_cfg.describe())}


@dg.asset(key=PERSONAS, group_name="synthetic", kinds={"duckdb"},
          description="Personas that steer the brainstorm stage (system prompts).")
def personas(warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    catalog = settings.catalog()
    with warehouse.connect() as con:
        frame = load_personas(con, catalog.personas, catalog.base_dir)
        wh.write(con, "synthetic", "personas", frame)
        sample = wh.markdown_sample(con, "select * from synthetic.personas")
    return dg.MaterializeResult(metadata={"dagster/row_count": frame.height, "sample": dg.MetadataValue.md(sample)})


@dg.asset(key=INSTRUCTIONS, deps=[PERSONAS], group_name="synthetic", kinds={"duckdb"},
          description="Stage 1: task instructions brainstormed under a random persona, per retrieval task type.")
def instructions(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                 settings: SettingsResource) -> dg.MaterializeResult:
    backend_cfg, cfg = BackendConfig.from_env(), get_profile(settings.profile).synthesis
    if not backend_cfg.enabled:
        with warehouse.connect() as con:
            wh.write(con, "synthetic", "instructions", pl.DataFrame(schema={
                "instruction": pl.Utf8, "task_type": pl.Utf8, "persona_id": pl.Utf8, "brainstorm_key": pl.Utf8}))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "enabled": False, "how_to_enable": HOW_TO_ENABLE},
                                    **run_profile_versions(context, settings.profile))
    backend = make_backend(backend_cfg)
    with warehouse.connect(read_only=True) as con:
        people = [tuple(r) for r in con.execute("select persona_id, persona from synthetic.personas").fetchall()]
    requests = brainstorm_requests(people, cfg)
    stats = run_stage(backend, GenerationStore(connect=warehouse.connect), BRAINSTORM, requests,
                      lambda done, total: context.log.info(f"brainstorm {done}/{total}") if done % 16 == 0 else None)
    with warehouse.connect() as con:
        frame, rejects = collect_instructions(con, requests, backend.model, cfg)
        wh.write(con, "synthetic", "instructions", frame)
        wh.write(con, "synthetic", "brainstorm_rejects", rejects)
    return dg.MaterializeResult(metadata={
        **_stage_metadata(stats, backend_cfg), "dagster/row_count": frame.height, "rejected_brainstorms": rejects.height,
        "per_task_type": dg.MetadataValue.json(dict(frame.group_by("task_type").len().iter_rows()))},
        **run_profile_versions(context, settings.profile))


@dg.multi_asset(
    specs=[dg.AssetSpec(EXAMPLES, deps=[INSTRUCTIONS], group_name="synthetic", kinds={"duckdb"},
                        description="Stage 2: validated examples in the pair schema (source synthetic/<task_type>)."),
           dg.AssetSpec(REJECTS, deps=[INSTRUCTIONS], group_name="synthetic", kinds={"duckdb"},
                        description="Answers that failed validation, with the raw text and the reason.")],
)
def examples(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource):
    backend_cfg, cfg = BackendConfig.from_env(), get_profile(settings.profile).synthesis
    if not backend_cfg.enabled:
        with warehouse.connect() as con:
            wh.write(con, "synthetic", "examples", pl.DataFrame(schema=PAIR_SCHEMA))
            wh.write(con, "synthetic", "rejects", pl.DataFrame(schema=REJECT_SCHEMA))
        yield dg.MaterializeResult(asset_key=EXAMPLES, metadata={"dagster/row_count": 0, "enabled": False,
                                                                 "how_to_enable": HOW_TO_ENABLE},
                                   **run_profile_versions(context, settings.profile, EXAMPLES))
        yield dg.MaterializeResult(asset_key=REJECTS, metadata={"dagster/row_count": 0},
                                   **run_profile_versions(context, settings.profile, REJECTS))
        return
    backend = make_backend(backend_cfg)
    with warehouse.connect(read_only=True) as con:
        instr = con.sql("select * from synthetic.instructions").pl()
    requests = generation_requests(instr, cfg)
    stats = run_stage(backend, GenerationStore(connect=warehouse.connect), GENERATE, requests,
                      lambda done, total: context.log.info(f"generate {done}/{total}") if done % 32 == 0 else None)
    with warehouse.connect() as con:
        pairs, rejects, accounting = collect_examples(con, requests, backend.model)
        wh.write(con, "synthetic", "examples", pairs)
        wh.write(con, "synthetic", "rejects", rejects)
        sample = wh.markdown_sample(con, "select synthetic_task, query, positive from synthetic.examples")
    per_task = dict(pairs.group_by("synthetic_task").len().iter_rows())
    yield dg.MaterializeResult(asset_key=EXAMPLES, metadata={
        **_stage_metadata(stats, backend_cfg), **accounting, "dagster/row_count": pairs.height,
        "accept_rate": accounting["accepted"] / max(accounting["requests"], 1),
        "per_task_type": dg.MetadataValue.json(per_task), "sample": dg.MetadataValue.md(sample)},
        **run_profile_versions(context, settings.profile, EXAMPLES))
    yield dg.MaterializeResult(asset_key=REJECTS, metadata={
        "dagster/row_count": rejects.height,
        "reasons": dg.MetadataValue.json(dict(rejects.group_by("reason").len().iter_rows()))},
        **run_profile_versions(context, settings.profile, REJECTS))


@dg.asset_check(asset=EXAMPLES, name="request_accounting", blocking=True,
                description="requests = accepted + rejected + failed: every prompt is accounted for")
def request_accounting(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    meta = context.instance.get_latest_materialization_event(EXAMPLES).asset_materialization.metadata
    if "requests" not in meta:
        return dg.AssetCheckResult(passed=True, metadata={"enabled": False})
    n = {k: meta[k].value for k in ("requests", "accepted", "rejected", "failed", "not_answered")}
    return dg.AssetCheckResult(passed=n["requests"] == n["accepted"] + n["rejected"] + n["failed"] + n["not_answered"]
                               and n["not_answered"] == 0, metadata=n)


def build_backend_health_check(key: dg.AssetKey, stage: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=key, name="llm_failures_below_threshold", blocking=True,
                    description=f"at most the profile's share ({SynthesisConfig.max_failed_share:.0%} by default) of "
                                f"the {stage} requests failed: a dead or overloaded backend fails the run instead of "
                                "yielding an empty layer")
    def _health(context: dg.AssetCheckExecutionContext, settings: SettingsResource) -> dg.AssetCheckResult:
        meta = context.instance.get_latest_materialization_event(key).asset_materialization.metadata
        if "sent" not in meta:  # no backend configured: the stage is off, as its metadata says
            return dg.AssetCheckResult(passed=True, metadata={"enabled": False})
        failed, requests = meta["failed"].value, meta["requests"].value
        share, limit = failed_share(failed, requests), get_profile(settings.profile).synthesis.max_failed_share
        backend = meta["backend"].value
        return dg.AssetCheckResult(
            passed=share <= limit,
            metadata={"failed": failed, "requests": requests, "failed_share": share, "max_failed_share": limit},
            description=None if share <= limit else
            f"{failed} of {requests} {stage} requests failed ({share:.0%} > {limit:.0%}): is the LLM backend at "
            f"{backend.get('base_url') or backend.get('backend')} up? Failed requests are retried by the next run.")

    return _health


def build() -> tuple[list, list]:
    return ([personas, instructions, examples],
            [request_accounting, build_backend_health_check(INSTRUCTIONS, "brainstorm"),
             build_backend_health_check(EXAMPLES, "generation")])
