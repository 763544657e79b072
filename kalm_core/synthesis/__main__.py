"""Run both synthesis stages against a warehouse without Dagster (the assets call the same functions).

    KALM_LLM_BASE_URL=http://127.0.0.1:8000/v1 KALM_LLM_MODEL=Qwen/Qwen2-72B-Instruct \
        python -m kalm_core.synthesis --lake data/lake
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from kalm_core import warehouse as wh
from kalm_core.catalog import load_catalog
from kalm_core.config import SynthesisConfig
from kalm_core.synthesis.backends import BackendConfig, make_backend
from kalm_core.synthesis.generate import (BRAINSTORM, GENERATE, brainstorm_requests,
                                          collect_examples, collect_instructions, generation_requests, run_stage)
from kalm_core.synthesis.personas import load_personas
from kalm_core.synthesis.store import GenerationStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kalm_core.synthesis", description=__doc__.splitlines()[0])
    ap.add_argument("--lake", help="the lake folder or postgres: DSN (default $KALM_LAKE or data/lake)")
    ap.add_argument("--catalog")
    ap.add_argument("--personas-per-task", type=int, default=SynthesisConfig.personas_per_task)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--max-retries", type=int, default=3)
    args = ap.parse_args(argv)
    backend_cfg = BackendConfig.from_env(concurrency=args.concurrency, timeout_s=args.timeout,
                                         max_retries=args.max_retries)
    if not backend_cfg.enabled:
        print("no LLM backend: set KALM_LLM_BASE_URL and KALM_LLM_MODEL (or KALM_LLM_BACKEND=vllm)", file=sys.stderr)
        return 2
    cfg = replace(SynthesisConfig(), personas_per_task=args.personas_per_task)
    backend = make_backend(backend_cfg)
    catalog = load_catalog(args.catalog)
    connect = lambda: wh.connect(args.lake)  # noqa: E731  one short writable connection per commit
    with connect() as con:
        people = load_personas(con, catalog.personas, catalog.base_dir)
    store = GenerationStore(connect=connect)
    brainstorms = brainstorm_requests(list(people.iter_rows()), cfg)
    s1 = run_stage(backend, store, BRAINSTORM, brainstorms)
    with connect() as con:
        instructions, _ = collect_instructions(con, brainstorms, backend.model, cfg)
    requests = generation_requests(instructions, cfg)
    s2 = run_stage(backend, store, GENERATE, requests,
                   lambda done, total: print(json.dumps({"event": "progress", "done": done, "total": total}),
                                             flush=True))
    with connect() as con:
        pairs, rejects, accounting = collect_examples(con, requests, backend.model)
    print(json.dumps({"event": "done", "brainstorm_sent": s1.sent, "generate_sent": s2.sent, **accounting}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
