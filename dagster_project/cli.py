"""`kalm`: the command line, thin over Dagster and the warehouse.

  kalm run [--profile NAME] [--select SELECTION] [--stale]   materialise the DAG (or a part of it)
  kalm ui [--port N]                                           the Dagster UI on 127.0.0.1
  kalm sql "QUERY" [--csv]                                     query the warehouse read-only
  kalm sources                                                 the catalogue with row counts
  kalm export --format flagembedding OUT.jsonl                 write the curated pairs
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

import duckdb

from kalm_core import warehouse as wh
from kalm_core.catalog import CatalogError, load_catalog


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", help="source catalogue YAML (default: $KALM_CATALOG or catalog/sources.yaml)")
    p.add_argument("--warehouse", help="DuckDB file (default: $KALM_WAREHOUSE or data/warehouse.duckdb)")


def _apply_env(args) -> None:
    if getattr(args, "catalog", None):
        os.environ["KALM_CATALOG"] = os.path.abspath(args.catalog)
    if getattr(args, "warehouse", None):
        os.environ["KALM_WAREHOUSE"] = os.path.abspath(args.warehouse)
    if getattr(args, "profile", None):
        os.environ["KALM_PROFILE"] = args.profile


def cmd_run(args) -> int:
    from dagster_project import runner
    from dagster_project.definitions import build_defs

    defs = build_defs(profile=args.profile)
    inst = runner.instance()
    if args.stale:
        runner.observe_sources(defs, inst)
        keys = runner.stale_keys(defs, inst)
        if args.select:
            keys = [k for k in keys if k in set(runner.select(defs, args.select))]
        if not keys:
            print("Nothing is stale: every table is up to date.")
            return 0
        print(f"{len(keys)} stale asset(s): " + ", ".join(k.to_user_string() for k in keys))
    else:
        keys = runner.select(defs, args.select)
    t0 = time.monotonic()
    print(f"kalm run: profile {os.environ.get('KALM_PROFILE', 'demo')}, warehouse {wh.warehouse_path().resolve()}")
    result = runner.materialize(defs, inst, keys, observe=not args.stale)  # --stale observed already
    done = sorted({e.asset_key for e in result.get_asset_materialization_events()}, key=lambda k: k.path)
    failed = [e.step_key for e in result.get_step_failure_events()]
    print(f"\n{len(done)} table(s) materialised in {time.monotonic() - t0:.1f}s:")
    with wh.connect(read_only=True) as con:
        for key in done:
            layer, name = key.path
            print(f"  {layer + '.' + name:<40s} {wh.count(con, layer, name):>9,d} rows")
    print(f"Warehouse: {wh.warehouse_path().resolve()}  (query it with `kalm sql`)")
    if failed:
        print(f"{len(failed)} step(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_ui(args) -> int:
    from dagster_project import runner

    runner.instance()  # sets DAGSTER_HOME beside the warehouse, so the UI shows `kalm run`'s history
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "dagster_project.definitions", "-h", "127.0.0.1",
           "-p", str(args.port)]
    return subprocess.call(cmd)


def cmd_sql(args) -> int:
    with wh.connect(read_only=True) as con:
        rel = con.sql(args.query)
        if rel is None:
            return 0
        if args.csv:
            writer = csv.writer(sys.stdout)
            writer.writerow(rel.columns)
            writer.writerows(rel.fetchall())
        else:
            rel.show(max_width=200)
    return 0


def cmd_sources(args) -> int:
    catalog = load_catalog()
    counts: dict[str, tuple] = {}
    if wh.warehouse_path().exists():
        with wh.connect(read_only=True) as con:
            for s in catalog.sources:
                raw = wh.count(con, "raw", s.name) if wh.exists(con, "raw", s.name) else None
                kept = wh.count(con, "staged", s.name) if wh.exists(con, "staged", s.name) else None
                counts[s.name] = (raw, kept)
    print(f"{'source':<24s} {'kind':<12s} {'split':<6s} {'raw':>8s} {'staged':>8s}  uri")
    for s in catalog.sources:
        raw, kept = counts.get(s.name, (None, None))
        fmt = lambda n: "-" if n is None else f"{n:,d}"  # noqa: E731
        where = s.uri or "python-docs: " + ", ".join(s.packages)
        print(f"{s.name:<24s} {s.kind:<12s} {'eval' if s.held_out else 'train':<6s} {fmt(raw):>8s} "
              f"{fmt(kept):>8s}  {where[:70]}")
    return 0


def cmd_export(args) -> int:
    from kalm_core.export import export_flagembedding

    with wh.connect(read_only=True) as con:
        n = export_flagembedding(con, args.out, *args.table.split("."))
    print(f"wrote {n:,d} pairs from {args.table} to {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kalm", description="KaLM-Embedding recipe as a Dagster DAG over DuckDB.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="materialise the DAG, with progress and a summary of the tables")
    r.add_argument("--profile", default=None, help="config profile (default: $KALM_PROFILE or demo)")
    r.add_argument("--select", help="Dagster asset selection, e.g. 'key:raw/numpy+' or 'group:marts'")
    r.add_argument("--stale", action="store_true", help="only what a changed source or SQL model made stale")
    _common(r)
    r.set_defaults(fn=cmd_run)

    u = sub.add_parser("ui", help="run `dagster dev` on 127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    _common(u)
    u.set_defaults(fn=cmd_ui)

    q = sub.add_parser("sql", help="query the warehouse read-only")
    q.add_argument("query")
    q.add_argument("--csv", action="store_true", help="CSV with a header instead of a table")
    _common(q)
    q.set_defaults(fn=cmd_sql)

    s = sub.add_parser("sources", help="list the catalogue with row counts")
    _common(s)
    s.set_defaults(fn=cmd_sources)

    e = sub.add_parser("export", help="write curated pairs as jsonl")
    e.add_argument("--format", choices=["flagembedding"], default="flagembedding")
    e.add_argument("--table", default="marts.training_pairs", help="table to export (default marts.training_pairs)")
    e.add_argument("out", help="output .jsonl path")
    _common(e)
    e.set_defaults(fn=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-model "Loading weights" bars drown the step progress
    import datasets

    datasets.disable_progress_bars()  # mteb's per-split "Standardizing" bars, likewise
    _apply_env(args)
    try:
        return args.fn(args)
    except (CatalogError, wh.WarehouseLocked, FileNotFoundError, ValueError, duckdb.Error) as e:
        print(f"kalm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
