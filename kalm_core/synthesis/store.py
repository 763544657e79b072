"""synthetic.generations: every LLM answer, keyed by its request hash, committed as it arrives.

A rerun skips every key answered before, so a crash never throws away finished work and no prompt is paid for
twice; a failed request is stored too and retried by the next run (its row replaced, never duplicated). The key is
unique by construction: each commit deletes the keys it writes and inserts them in one transaction (a DuckLake
table has no primary key to upsert on).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from datetime import datetime, timezone

import polars as pl

from kalm_core.identifiers import table
from kalm_core.synthesis.backends import ChatResult
from kalm_core.warehouse import replace_rows

DDL = f"""create table if not exists {table('synthetic', 'generations')} (
    key varchar, stage varchar, task_type varchar, persona_id varchar, instruction varchar,
    model varchar, params varchar, messages varchar, response varchar, error varchar, status varchar,
    prompt_tokens bigint, completion_tokens bigint, latency_s double, created_at timestamp)"""


SCHEMA = {"key": pl.Utf8, "stage": pl.Utf8, "task_type": pl.Utf8, "persona_id": pl.Utf8, "instruction": pl.Utf8,
          "model": pl.Utf8, "params": pl.Utf8, "messages": pl.Utf8, "response": pl.Utf8, "error": pl.Utf8,
          "status": pl.Utf8, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "latency_s": pl.Float64,
          "created_at": pl.Datetime("us")}


class GenerationStore:
    """`con` is an open connection, or `connect` opens a short one per commit, so a long LLM stage does not
    hold the lake's write lock between commits."""

    def __init__(self, con=None, commit_every: int = 8, commit_seconds: float = 1.0, connect=None):
        self._connect = connect or (lambda: nullcontext(con))
        self.commit_every, self.commit_seconds = commit_every, commit_seconds
        self.buffer: list[tuple] = []
        self.last_commit = time.monotonic()
        with self._connect() as c:
            c.execute(DDL)

    def done_keys(self, stage: str) -> set[str]:
        with self._connect() as c:
            rows = c.execute(f"select key from {table('synthetic', 'generations')} where stage = ? and status = 'ok'",
                             [stage]).fetchall()
        return {k for (k,) in rows}

    def add(self, stage: str, model: str, result: ChatResult) -> None:
        m = result.request.meta
        self.buffer.append((
            result.key, stage, m.get("task_type"), m.get("persona_id"), m.get("instruction"), model,
            json.dumps(m.get("params", {})), json.dumps(result.request.messages), result.text, result.error,
            "ok" if result.error is None else "failed", result.prompt_tokens, result.completion_tokens,
            result.latency_s, datetime.now(timezone.utc).replace(tzinfo=None)))
        if len(self.buffer) >= self.commit_every or time.monotonic() - self.last_commit >= self.commit_seconds:
            self.flush()

    def flush(self) -> None:
        """Commit the buffered answers in one statement (an Arrow batch: far cheaper than executemany)."""
        if not self.buffer:
            return
        frame = pl.DataFrame(self.buffer, schema=SCHEMA, orient="row")
        frame = frame.unique("key", keep="last", maintain_order=True)
        gens = table('synthetic', 'generations')
        with self._connect() as con:
            con.register("_kalm_generations", frame.to_arrow())
            try:
                replace_rows(con, gens, "key in (select key from _kalm_generations)", "_kalm_generations")
            finally:
                con.unregister("_kalm_generations")
        self.buffer.clear()
        self.last_commit = time.monotonic()
