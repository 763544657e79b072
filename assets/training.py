"""Layer training: fine-tune a candidate in its own process (torchrun when nproc > 1) on the batch snapshot; the
candidate becomes training.embedder only after the blocking evaluation check shows it beats its base."""

import json
import sys
import warnings
from dataclasses import asdict, replace
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets.batched import BATCHES
from assets.resources import SettingsResource, WarehouseResource
from assets.versions import run_profile_versions
from kalm_core import plots
from kalm_core import warehouse as wh
from kalm_core.config import data_dir, get_profile, resolve_model_path
from kalm_core.identifiers import table
from kalm_core.prompts import eval_task_prompts

CANDIDATE = dg.AssetKey(["training", "candidate"])
EMBEDDER = dg.AssetKey(["training", "embedder"])
RUNS = dg.AssetKey(["training", "runs"])
RESULTS = dg.AssetKey(["evaluation", "mteb_results"])


QUIET_SUBPROCESS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


def trainer_failure(run_dir, pipes_error: str) -> str:
    """The failure's message: what the trainer wrote (its error and traceback), else how the process ended."""
    from kalm_core.trainer import ERROR_FILE

    written = run_dir / ERROR_FILE
    if written.exists():
        return f"the trainer failed: {written.read_text().strip()}"
    if "code -9" in pipes_error:
        return (f"the trainer was killed (SIGKILL), most often by the kernel for running out of memory; the run "
                f"directory {run_dir} keeps its checkpoints ({pipes_error})")
    return f"the trainer failed without a message: {pipes_error}"


def trainer_command(nproc: int, args: list[str]) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "dagster_project.torchrun", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "dagster_project.pipes_trainer", *args]
    return [sys.executable, "-m", "dagster_project.pipes_trainer", *args]


@dg.multi_asset(
    specs=[dg.AssetSpec(CANDIDATE, deps=[BATCHES], group_name="training", kinds={"pytorch"},
                        description="The latest fine-tuned model (one row: its path and run), not yet promoted."),
           dg.AssetSpec(RUNS, deps=[BATCHES], group_name="training", kinds={"duckdb"},
                        description="Every training run, appended.")],
)
def candidate(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource):
    profile = get_profile(settings.profile)
    profile = replace(profile, model=replace(profile.model, base_model=resolve_model_path(profile.model.base_model)))
    event = context.instance.get_latest_materialization_event(BATCHES)
    batch_meta = event.asset_materialization.metadata
    snapshot, digest = batch_meta["snapshot_path"].value, batch_meta["snapshot_sha256"].value
    lake_snapshot = batch_meta["lake_snapshot"].value  # the lake version of batched.batches this run trains on
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + context.run_id[:8]
    out = data_dir() / "models" / run_id
    out.mkdir(parents=True)
    (out / "run_config.json").write_text(json.dumps(asdict(profile), indent=2, default=list))
    # the evaluation tasks' prompts, saved with the model: this process has mteb's metadata loaded, the trainer not
    prompts = eval_task_prompts(profile.eval.mteb_tasks, profile.model.query_template)
    (out / "task_prompts.json").write_text(json.dumps(prompts, indent=2))
    args = ["--snapshot", snapshot, "--sha256", digest, "--config", str(out / "run_config.json"), "--output", str(out),
            "--task-prompts", str(out / "task_prompts.json")]
    from kalm_core import checkpoint  # torch: imported by the step that trains, not by every `kalm` command

    key = checkpoint.resume_key(digest, profile)
    (out / checkpoint.RESUME_KEY).write_text(key)
    if earlier := checkpoint.interrupted_run(out.parent, key, exclude=out):  # same snapshot and settings, killed
        context.log.info(f"resuming from the last checkpoint of the interrupted run {earlier.name}")
        args += ["--resume-from", str(earlier)]
    cmd = trainer_command(profile.train.nproc, args)
    context.log.info(" ".join(cmd))
    started = datetime.now(timezone.utc).replace(tzinfo=None)
    # Dagster Pipes: the trainer's step lines stream into this run's log, cancelling the run sends it SIGINT
    client = dg.PipesSubprocessClient(env=QUIET_SUBPROCESS, forward_termination=True)
    try:
        with warnings.catch_warnings():  # Dagster's Pipes reads its own preview property on every run: not ours
            warnings.simplefilter("ignore", dg.PreviewWarning)
            records = client.run(command=cmd, context=context).get_custom_messages()
    except Exception as e:  # DagsterPipesExecutionError (not exported publicly): the trainer's log says why
        raise dg.Failure(description=trainer_failure(out, str(e)), metadata={"run_dir": str(out)}) from None
    records = [r for r in records if isinstance(r, dict)]
    summary = next(r for r in records if r["event"] == "done")
    records = [r for r in records if r["event"] == "step"]
    finished = datetime.now(timezone.utc).replace(tzinfo=None)
    row = pl.DataFrame([{"run_id": run_id, "model_path": summary["model_path"],
                         "base_model": profile.model.base_model, "profile": profile.name, "steps": summary["steps"],
                         "final_loss": summary["final_loss"], "pairs_per_s": summary["pairs_per_s"],
                         "tokens_per_s": summary["tokens_per_s"], "snapshot": snapshot,
                         "batches_snapshot": lake_snapshot, "started_at": started, "finished_at": finished}])
    with warehouse.connect() as con:
        wh.write(con, "training", "candidate", row)
        con.register("_run", row.to_arrow())
        con.execute(f"create table if not exists {table('training', 'runs')} as select * from _run limit 0")
        con.execute(f"insert into {table('training', 'runs')} by name select * from _run")
        n_runs = wh.count(con, "training", "runs")
        lake_snap = wh.snapshot_id(con)
    curve = plots.loss_curve([r["step"] for r in records], [r["loss"] for r in records])
    yield dg.MaterializeResult(asset_key=CANDIDATE, metadata={
        "model_path": dg.MetadataValue.path(summary["model_path"]), "steps": summary["steps"],
        "final_loss": summary["final_loss"], "pairs_per_s": summary["pairs_per_s"],
        "tokens_per_s": summary["tokens_per_s"], "loss_curve": dg.MetadataValue.md(curve),
        "profile": profile.name, "snapshot": snapshot, "batches_snapshot": lake_snapshot,
        "lake_snapshot": dg.MetadataValue.int(lake_snap)}, **run_profile_versions(context, settings.profile, CANDIDATE))
    yield dg.MaterializeResult(asset_key=RUNS, metadata={"dagster/row_count": n_runs, "run_id": run_id,
                                                         "lake_snapshot": dg.MetadataValue.int(lake_snap)},
                               **run_profile_versions(context, settings.profile, RUNS))


@dg.asset(key=EMBEDDER, deps=[RESULTS], group_name="training", kinds={"duckdb"},
          description="The promoted embedder: the candidate, once the blocking check on evaluation/mteb_results "
                      "showed it beats its base on the held-out split.")
def embedder(warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        row = con.sql(f"select * from {table('training', 'candidate')}").pl()
        wh.write(con, "training", "embedder", row)
        snap = wh.snapshot_id(con)
    return dg.MaterializeResult(metadata={"model_path": dg.MetadataValue.path(row["model_path"][0]),
                                          "run_id": row["run_id"][0], "lake_snapshot": dg.MetadataValue.int(snap)})


def build() -> tuple[list, list]:
    return [candidate, embedder], []
