"""`kalm`: the command line, thin over Dagster and the lake.

  kalm run [--profile NAME|FILE.json] [--select SELECTION] [--stale] [--offline]   materialise the DAG (or part)
  kalm ui [--port N] [--offline]                               the Dagster UI on 127.0.0.1 (its runs alike)
  kalm sql "QUERY"|- [--csv] [--at SNAPSHOT]                   query the lake read-only (as of a snapshot);
                                                               '-': a session reading queries from stdin
  kalm snapshots                                               the lake's snapshots (each materialisation is one)
  kalm maintain [--keep-runs N] [--keep-snapshots N]           expire old snapshots, delete old and orphaned files
  kalm sources                                                 the catalogue with row counts
  kalm export --format flagembedding OUT.jsonl [--force]       write the curated pairs
"""

from __future__ import annotations

import signal
import sys

# Ctrl-C while the kalm program starts (its imports take a second or more) ends it quietly, not with an import's
# traceback; main() puts Python's own handler back before any work. A process that imports this module keeps its own.
if __name__ == "__main__" or sys.argv[0].endswith("kalm"):
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import duckdb  # noqa: E402

from kalm_core import filter_model, retention, sandbox  # noqa: E402
from kalm_core import warehouse as wh  # noqa: E402
from kalm_core.locks import LakeBusy  # noqa: E402
from kalm_core.catalog import CatalogError, load_catalog  # noqa: E402


# nothing from the Hugging Face hub: the bundled model, local paths, MTEB tasks skipped with the reason
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1"}
# per-model "Loading weights" and mteb's per-split bars drown the step progress
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def _offline(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offline", action="store_true",
                   help="never reach the Hugging Face hub (HF_HUB_OFFLINE=1): local and bundled models only, hub "
                        "MTEB tasks skipped with the reason")


def _allow_lm(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-lm-filter", action="store_true",
                   help="let a plain language model (no sentence-transformers pooling) filter and mine; refused "
                        "otherwise, since an untrained LM's pooled states do not rank a corpus")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", help="the project folder: its catalog/sources.yaml and data/ (default: the "
                                     "working directory)")
    p.add_argument("--catalog", help="source catalogue YAML (default: $KALM_CATALOG, else catalog/sources.yaml of the "
                                     "project, else the packaged one)")
    p.add_argument("--lake", help="the lake: a folder, or postgres:DSN with $KALM_LAKE_DATA "
                                  "(default: $KALM_LAKE or data/lake)")


def _apply_env(args) -> None:
    """Paths given on the command line are taken relative to where kalm was called, then --project becomes the
    working directory, where the default catalogue and data/ live."""
    if getattr(args, "catalog", None):
        os.environ["KALM_CATALOG"] = os.path.abspath(args.catalog)
    if getattr(args, "lake", None):
        lake = args.lake
        os.environ["KALM_LAKE"] = lake if lake.startswith("postgres:") else os.path.abspath(lake)
    if getattr(args, "project", None):
        if not os.path.isdir(args.project):
            raise NotADirectoryError(f"--project {args.project}: no such folder")
        os.chdir(args.project)
    if getattr(args, "profile", None):
        os.environ["KALM_PROFILE"] = args.profile
    if getattr(args, "offline", False):
        os.environ.update(OFFLINE_ENV)
    if getattr(args, "allow_lm_filter", False):
        os.environ[filter_model.ALLOW_LM_ENV] = "1"
    if args.command in ("run", "ui"):  # `kalm ui`'s runs are other processes: they get these from the environment
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)


def _quiet_loaded_libraries() -> None:
    """QUIET_ENV turns the progress bars off in a library imported after it; one this process imported before (a
    caller of main(), a test) is told directly. Nothing is imported here: `kalm ui` starts without transformers."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def cmd_run(args) -> int:
    from dagster import AssetKey

    from dagster_project import runner
    from dagster_project.definitions import build_defs

    from kalm_core.config import get_profile

    profile = get_profile(args.profile)  # an unknown profile is an error before anything runs
    _refuse_empty_sources(load_catalog())
    defs = build_defs(profile=args.profile)
    inst = runner.instance()
    for run_id in runner.fail_dead_runs(inst):
        print(f"kalm run: run {run_id} was left STARTED by a process that died; marked failed", file=sys.stderr)
    if args.stale:
        runner.observe_sources(defs, inst)
        keys = runner.stale_keys(defs, inst)
        if args.select:
            selected = set(runner.select(defs, args.select))
            keys = [k for k in keys if k in selected]
        if not keys:
            print("Nothing is stale: every table is up to date.")
            return 0
        print(f"{len(keys)} stale asset(s): " + ", ".join(k.to_user_string() for k in keys))
    else:
        keys = runner.select(defs, args.select)
    if keys is None or AssetKey(["evaluation", "mteb_results"]) in keys:
        _check_eval_tasks(profile)
    if keys is None or any(k.path[0] == "filtered" for k in keys):
        filter_model.resolve(profile)  # a filter model that is no embedder is refused here, with the reason
    t0 = time.monotonic()
    lake = wh.lake_spec()
    print(f"kalm run: profile {os.environ.get('KALM_PROFILE', 'demo')}, lake {lake.describe()}")
    start = _snapshot(lake)
    from assets.marts import FULL_REFRESH_TAG
    from assets.resources import INTERRUPTED

    INTERRUPTED.clear()
    result = None
    with _stop_on_ctrl_c():
        result = runner.materialize(defs, inst, keys, observe=not args.stale,  # --stale observed already
                                    tags={FULL_REFRESH_TAG: "true"} if args.full_refresh else None)
    # each table's row count as its step recorded it (a query per table costs ~15 ms of lake catalogue work)
    counted = {".".join(e.asset_key.path): e.materialization.metadata.get("dagster/row_count")
               for e in result.get_asset_materialization_events()} if result else {}
    failed = [e.step_key for e in result.get_step_failure_events()] if result else []
    if INTERRUPTED.is_set():  # set by the handler or by the progress logger's view of an interrupted step
        print(f"\nkalm run: interrupted (Ctrl-C) during step {failed[0] if failed else '(between steps)'}; every "
              "later step was not started", file=sys.stderr)
    # what the lake holds, not what the steps managed to report: a step interrupted after its commit counts
    print(_committed_summary(lake, start, counted, time.monotonic() - t0))
    if INTERRUPTED.is_set():
        return 130
    if failed:
        print(f"{len(failed)} step(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.select is None and not args.stale:
        with wh.connect() as con:
            kept = retention.maintain(con, args.keep_runs, args.keep_snapshots, shared=lake.kind != "sqlite")
        if kept.expired or kept.files_deleted:
            print(f"Retention: {_retention_summary(kept)}")
    return 0


def _retention_summary(kept: retention.Retention) -> str:
    return (f"expired {kept.expired} snapshot(s)" + (f" older than {kept.kept_from}" if kept.expired else "")
            + f"; deleted {kept.files_deleted} file(s)"
            + (f", {kept.orphans} of them left by interrupted writes" if kept.orphans else ""))


def _snapshot(lake: wh.LakeSpec) -> int | None:
    """The lake's snapshot before a run (None: no lake yet)."""
    if not wh.exists_lake(lake):
        return None
    with wh.connect(read_only=True) as con:
        return wh.snapshot_id(con)


def _committed_summary(lake: wh.LakeSpec, start: int | None, counted: dict, seconds: float) -> str:
    """Every table committed since snapshot `start`, with its rows and snapshot, and where the lake now stands."""
    if not wh.exists_lake(lake):
        return "\nNothing was committed: the lake was not created."
    with wh.connect(read_only=True) as con:
        committed = wh.committed_since(con, start)
        lines = [f"\n{len(committed)} table(s) committed in {seconds:.1f}s:"]
        for name, snap in committed:
            rows = counted[name].value if counted.get(name) is not None else wh.count(con, *name.split(".", 1))
            lines.append(f"  {name:<40s} {rows:>9,d} rows  (snapshot {snap})")
        lines.append(f"Lake: {lake.describe()} at snapshot {wh.snapshot_id(con)}  (query it with `kalm sql`)")
    return "\n".join(lines)


@contextlib.contextmanager
def _stop_on_ctrl_c():
    """Ctrl-C interrupts the step it lands in (as usual) and marks the run interrupted, so no later step starts."""
    from assets.resources import INTERRUPTED

    def handler(signum, frame):
        INTERRUPTED.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    except KeyboardInterrupt:  # landed in Dagster's own code between steps: the run is over
        INTERRUPTED.set()
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_eval_tasks(profile) -> None:
    """Unknown MTEB task or benchmark names and broken BEIR folders are errors before any step, not after training."""
    from kalm_core.evaluation import beir_task, resolve_task_names

    resolve_task_names(profile.eval.mteb_tasks)
    for folder in profile.eval.beir_folders:
        beir_task(folder)


def _refuse_empty_sources(catalog) -> None:
    """An empty source file is an input error, said before any step runs (a missing one fails its own raw step)."""
    import glob

    for src in catalog.sources:
        if src.uri and "://" not in src.uri:
            paths = glob.glob(src.resolved_uri(catalog.base_dir))
            if paths and all(os.path.getsize(p) == 0 for p in paths):
                raise ValueError(f"source {src.name!r}: {src.resolved_uri(catalog.base_dir)} is empty")


def cmd_ui(args) -> int:
    from dagster_project import runner
    from dagster_project.automation import UI_PORT, ui_command
    from kalm_core.config import get_profile

    inst = runner.instance()  # sets DAGSTER_HOME beside the lake, so the UI shows `kalm run`'s history
    for run_id in runner.fail_dead_runs(inst):  # the UI's own runs are watched by the daemon's run monitoring
        print(f"kalm ui: run {run_id} was left STARTED by a kalm run process that died; marked failed", file=sys.stderr)
    try:
        filter_model.resolve(get_profile())
    except ValueError as e:  # the UI still opens (lineage, tables, history); the filtered steps will fail with this
        print(f"kalm ui: warning: the filtered steps will fail: {e}", file=sys.stderr)
    # the sensor asks this webserver to reload an edited catalogue
    return subprocess.call(ui_command(args.port), env={**os.environ, UI_PORT: str(args.port)})


def _show(con, statements: list, as_csv: bool) -> None:
    """Run the statements; print the last one's result (a table, or CSV with a header)."""
    for st in statements[:-1]:
        con.execute(st.query)
    rel = con.sql(statements[-1].query) if statements else None
    if rel is None:
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")  # DuckDB's CLI writes \n, not csv's \r\n
        writer.writerow(rel.columns)
        while rows := rel.fetchmany(10_000):
            writer.writerows(rows)
    else:
        rel.show(max_width=200)


def _stdin_queries(stream):
    """Queries from a stream, each ended by a line that ends with `;` (or by the end of the stream)."""
    buffer: list[str] = []
    for line in stream:
        buffer.append(line)
        if line.rstrip().endswith(";"):
            yield "".join(buffer)
            buffer = []
    if "".join(buffer).strip():
        yield "".join(buffer)


def cmd_sql(args) -> int:
    if args.query != "-":
        statements = sandbox.check_statements(args.query, wh.lake_spec().data_path)
        with sandbox.open_sandbox(at=args.at, confine=args.confine) as con:
            _show(con, statements, args.csv)
        return 0
    # a session: the lake is attached once and every query sees the last committed snapshot (or --at)
    failed = 0
    data_path = wh.lake_spec().data_path
    with sandbox.open_sandbox(at=args.at, confine=args.confine) as con:
        for query in _stdin_queries(sys.stdin):
            try:
                _show(con, sandbox.check_statements(query, data_path), args.csv)
            except (sandbox.ReadOnlyQuery, duckdb.Error) as e:
                failed += 1
                print(f"kalm: error: {e}", file=sys.stderr, flush=True)
            print(flush=True)  # a blank line ends each result
    return 1 if failed else 0


def cmd_snapshots(args) -> int:
    with wh.connect(read_only=True) as con:
        con.sql(f"select snapshot_id, snapshot_time, changes from {wh.CATALOG}.snapshots() "
                "order by snapshot_id desc limit 50").show(max_width=200)
    return 0


def cmd_maintain(args) -> int:
    with wh.connect() as con:
        kept = retention.maintain(con, args.keep_runs, args.keep_snapshots, shared=wh.lake_spec().kind != "sqlite")
    print(_retention_summary(kept))
    return 0


def cmd_sources(args) -> int:
    from kalm_core.sources import data_present

    catalog = load_catalog()
    counts: dict[str, tuple] = {}
    if wh.exists_lake(wh.lake_spec()):
        with wh.connect(read_only=True) as con:
            for s in catalog.sources:
                raw = wh.count(con, "raw", s.name) if wh.exists(con, "raw", s.name) else None
                kept = wh.count(con, "staged", s.name) if wh.exists(con, "staged", s.name) else None
                counts[s.name] = (raw, kept)
    print(f"{'source':<36s} {'kind':<11s} {'task_type':<19s} {'split':<6s} {'data':<4s} {'raw':>8s} {'staged':>8s}  "
          f"where")
    for s in catalog.sources:
        raw, kept = counts.get(s.name, (None, None))
        fmt = lambda n: "-" if n is None else f"{n:,d}"  # noqa: E731
        print(f"{s.name:<36s} {s.kind:<11s} {s.task_type:<19s} {'eval' if s.held_out else 'train':<6s} "
              f"{'yes' if data_present(s, catalog.base_dir) else 'no':<4s} {fmt(raw):>8s} {fmt(kept):>8s}  "
              f"{s.origin[:60]}")
    return 0


def cmd_fetch(args) -> int:
    """Download the MTEB splits the catalogue names into the Hugging Face cache (a machine with hub access)."""
    from kalm_core.sources.mteb_source import fetch

    wanted, failed = fetch(load_catalog(), args.task)
    print(f"{wanted - failed} of {wanted} MTEB sources present")
    return 1 if failed else 0


def cmd_export(args) -> int:
    from kalm_core.export import export_flagembedding

    parts = args.table.split(".")
    if len(parts) != 2:
        raise ValueError(f"--table {args.table!r}: give one table as layer.name, e.g. marts.training_pairs")
    with wh.connect(read_only=True) as con:
        if not wh.exists(con, *parts):
            raise ValueError(f"--table {args.table}: no such table in the lake")
        n = export_flagembedding(con, args.out, *parts, overwrite=args.force)
    print(f"wrote {n:,d} pairs from {args.table} to {args.out}")
    return 0


def _retention_options(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument("--keep-runs", type=int, default=retention.DEFAULT_KEEP_RUNS,
                   help=f"{when}keep the snapshots the last N training runs need (default %(default)s)")
    p.add_argument("--keep-snapshots", type=int, default=retention.DEFAULT_KEEP_SNAPSHOTS,
                   help="with no training run yet, keep the last N snapshots (default %(default)s)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kalm", description="KaLM-Embedding recipe as a Dagster DAG over a DuckLake.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="materialise the DAG, with progress and a summary of the tables")
    r.add_argument("--profile", default=None, help="config profile: a name (demo, kalm-mini) or a JSON file of one (default: $KALM_PROFILE or demo)")
    r.add_argument("--select", help="Dagster asset selection, e.g. 'key:raw/numpy+' or 'group:marts'")
    r.add_argument("--stale", action="store_true", help="only what a changed source or SQL model made stale")
    _allow_lm(r)
    r.add_argument("--full-refresh", action="store_true",
                   help="build incremental SQL models whole instead of recomputing only their changed inputs' rows")
    _retention_options(r, "after a full run, ")
    _offline(r)
    _common(r)
    r.set_defaults(fn=cmd_run)

    u = sub.add_parser("ui", help="run the Dagster UI and daemon (`dg dev`) on 127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    _allow_lm(u)
    _offline(u)
    _common(u)
    u.set_defaults(fn=cmd_ui)

    q = sub.add_parser("sql", help="query the lake read-only (no file access, no ATTACH, no settings)")
    q.add_argument("query", help="the query; '-' reads queries from stdin, each ended by ';' at a line end, "
                                 "over one connection (a blank line follows each result)")
    q.add_argument("--csv", action="store_true", help="CSV with a header instead of a table")
    q.add_argument("--at", type=int, metavar="SNAPSHOT", help="read the lake as of this snapshot id")
    _common(q)
    q.set_defaults(fn=cmd_sql)

    n = sub.add_parser("snapshots", help="list the lake's latest snapshots")
    _common(n)
    n.set_defaults(fn=cmd_snapshots)

    m = sub.add_parser("maintain", help="expire snapshots no recent training run needs, compact, delete old and "
                                        "orphaned files (a killed run's)")
    _retention_options(m, "")
    _common(m)
    m.set_defaults(fn=cmd_maintain)

    s = sub.add_parser("sources", help="list the catalogue: kind, task type, whether its data is here, row counts")
    _common(s)
    s.set_defaults(fn=cmd_sources)

    f = sub.add_parser("fetch", help="download the catalogue's MTEB splits into the Hugging Face cache (needs the hub)")
    f.add_argument("--task", action="append", help="only this MTEB task (repeatable)")
    _common(f)
    f.set_defaults(fn=cmd_fetch)

    e = sub.add_parser("export", help="write curated pairs as jsonl")
    e.add_argument("--format", choices=["flagembedding"], default="flagembedding")
    e.add_argument("--table", default="marts.training_pairs", help="table to export (default marts.training_pairs)")
    e.add_argument("out", help="output .jsonl path")
    e.add_argument("--force", action="store_true", help="overwrite an existing file")
    _common(e)
    e.set_defaults(fn=cmd_export)
    return p


def main(argv: list[str] | None = None, confine: bool = False) -> int:
    """`confine=True` (the `kalm` program) lets `kalm sql` take away its own process's right to write files."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parser().parse_args(argv)
    args.confine = confine
    try:
        _apply_env(args)
        if args.command in ("run", "ui"):
            _quiet_loaded_libraries()
        return args.fn(args)
    except BrokenPipeError:  # `kalm sql ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (CatalogError, wh.LakeError, LakeBusy, OSError, ValueError, duckdb.Error) as e:
        print(f"kalm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a run's steps (a run reports its own interrupt): a query, an export
        print("kalm: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def entry() -> int:
    """The `kalm` program: a process of its own, so `kalm sql` may confine it (kalm_core/sandbox.py)."""
    return main(confine=True)


if __name__ == "__main__":
    sys.exit(entry())
