"""The two stages of persona-based synthesis, as plain functions over a backend and the generation store.

Stage 1 (brainstorm): a random persona is the system prompt; one request per (persona, retrieval task type)
asks for a JSON list of task instructions. Stage 2 (generate): no persona; one request per instruction (plus
sampled STS and bitext prompts) asks for one example as JSON, validated against the task type's schema.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from kalm_core.config import SynthesisConfig
from kalm_core.pairs import pair_ids
from kalm_core.synthesis.backends import Backend, ChatRequest, ChatResult
from kalm_core.synthesis.store import GenerationStore
from kalm_core.synthesis.tasks import RETRIEVAL_TYPES, SPECS, brainstorm_prompt, generation_prompt, json_schema
from kalm_core.synthesis.validation import Rejected, parse_example, parse_instructions

BRAINSTORM, GENERATE = "brainstorm", "generate"
STS_INSTRUCTION = "Retrieve semantically similar text."
BITEXT_INSTRUCTION = "Retrieve parallel sentences."


def failed_share(failed: int, requests: int) -> float:
    """The share of a stage's requests whose answer never came (errors, timeouts, dropped connections)."""
    return failed / requests if requests else 0.0


@dataclass
class StageStats:
    requests: int = 0
    skipped_done: int = 0
    sent: int = 0
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def brainstorm_requests(personas: list[tuple[str, str]], cfg: SynthesisConfig) -> list[ChatRequest]:
    rng = random.Random(cfg.seed)
    out = []
    for task in RETRIEVAL_TYPES:
        for i in range(cfg.personas_per_task):
            pid, persona = rng.choice(personas)
            out.append(ChatRequest(
                messages=(("system", f"You are {persona[0].lower() + persona[1:]}."),
                          ("user", brainstorm_prompt(task, cfg.n_instructions))),
                temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed + i,
                json_mode=False, meta={"task_type": task, "persona_id": pid}))
    return out


def generation_requests(instructions: pl.DataFrame, cfg: SynthesisConfig) -> list[ChatRequest]:
    """One request per instruction, then the STS and bitext samples; parameters seeded per request."""
    out = []

    def request(task: str, instruction: str | None, salt: str) -> ChatRequest:
        rng = random.Random(f"{cfg.seed}:{task}:{salt}")
        prompt, params = generation_prompt(task, rng, instruction)
        return ChatRequest(messages=(("user", prompt),), temperature=cfg.temperature, top_p=cfg.top_p,
                           max_tokens=cfg.max_tokens, seed=cfg.seed, json_mode=True, schema=json_schema(task),
                           meta={"task_type": task, "instruction": instruction, "params": params})

    for row in instructions.iter_rows(named=True):
        out.append(request(row["task_type"], row["instruction"], row["instruction"]))
    out += [request("sts", None, str(i)) for i in range(cfg.sts_examples)]
    out += [request("bitext", None, str(i)) for i in range(cfg.bitext_examples)]
    return out


def run_stage(backend: Backend, store: GenerationStore, stage: str, requests: list[ChatRequest],
              progress: Callable[[int, int], None] | None = None) -> StageStats:
    """Send every request not answered before; results are committed as they arrive."""
    done = store.done_keys(stage)
    todo = list({r.key(backend.model): r for r in requests if r.key(backend.model) not in done}.values())
    stats = StageStats(requests=len({r.key(backend.model) for r in requests}), skipped_done=0, sent=len(todo))
    stats.skipped_done = stats.requests - stats.sent
    t = time.perf_counter()

    def on_result(res: ChatResult) -> None:
        store.add(stage, backend.model, res)
        stats.ok += res.error is None
        stats.failed += res.error is not None
        stats.prompt_tokens += res.prompt_tokens
        stats.completion_tokens += res.completion_tokens
        if progress:
            progress(stats.ok + stats.failed, stats.sent)

    try:
        if todo:
            backend.run(todo, on_result)
    finally:
        store.flush()
    stats.seconds = time.perf_counter() - t
    return stats


def _rows(con, stage: str, keys: set[str]) -> list[dict]:
    frame = con.sql("select * from synthetic.generations where stage = ?", params=[stage]).pl()
    return [r for r in frame.iter_rows(named=True) if r["key"] in keys]


def collect_instructions(con, requests: list[ChatRequest], model: str, cfg: SynthesisConfig
                         ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parsed, normalised, de-duplicated instructions (per task type) and the rejected brainstorms."""
    instructions, rejects, seen = [], [], set()
    per_task: dict[str, int] = {}
    for r in _rows(con, BRAINSTORM, {q.key(model) for q in requests}):
        if r["status"] != "ok":
            continue
        try:
            items = parse_instructions(r["response"])
        except Rejected as e:
            rejects.append({"key": r["key"], "stage": BRAINSTORM, "task_type": r["task_type"], "reason": e.reason,
                            "raw": r["response"]})
            continue
        for text in items:
            if (r["task_type"], text.lower()) in seen or per_task.get(r["task_type"], 0) >= cfg.max_instructions_per_task:
                continue
            seen.add((r["task_type"], text.lower()))
            per_task[r["task_type"]] = per_task.get(r["task_type"], 0) + 1
            instructions.append({"instruction": text, "task_type": r["task_type"], "persona_id": r["persona_id"],
                                 "brainstorm_key": r["key"]})
    schema = {"instruction": pl.Utf8, "task_type": pl.Utf8, "persona_id": pl.Utf8, "brainstorm_key": pl.Utf8}
    return pl.DataFrame(instructions, schema=schema), pl.DataFrame(rejects, schema=REJECT_SCHEMA)


REJECT_SCHEMA = {"key": pl.Utf8, "stage": pl.Utf8, "task_type": pl.Utf8, "reason": pl.Utf8, "raw": pl.Utf8}
PAIR_SCHEMA = {"pair_id": pl.Utf8, "source": pl.Utf8, "row_number": pl.Int64, "positive_index": pl.Int64,
               "record_id": pl.Utf8, "query": pl.Utf8, "positive": pl.Utf8, "negatives": pl.List(pl.Utf8),
               "task_type": pl.Utf8, "instruction": pl.Utf8, "language": pl.Utf8, "is_held_out": pl.Boolean,
               "content_hash": pl.Utf8, "synthetic_task": pl.Utf8}


def collect_examples(con, requests: list[ChatRequest], model: str) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Validated examples in the normalised pair schema, the rejects with reasons, and the accounting."""
    wanted = {r.key(model) for r in requests}
    rows = _rows(con, GENERATE, wanted)
    pairs, rejects = [], []
    failed = sum(r["status"] != "ok" for r in rows)
    for r in rows:
        if r["status"] != "ok":
            continue
        params = json.loads(r["params"])
        spec = SPECS[r["task_type"]]
        try:
            fields = parse_example(r["task_type"], r["response"], params)
        except Rejected as e:
            rejects.append({"key": r["key"], "stage": GENERATE, "task_type": r["task_type"], "reason": e.reason,
                            "raw": r["response"]})
            continue
        query, positive = fields[spec.query_field], fields[spec.positive_field]
        instruction = r["instruction"] or (STS_INSTRUCTION if r["task_type"] == "sts" else BITEXT_INSTRUCTION)
        pairs.append({
            "pair_id": None,  # set below through the pair contract (kalm_core/pairs.py), as staging does
            "source": f"synthetic/{r['task_type']}", "row_number": len(pairs) + 1, "positive_index": 1,
            "record_id": r["key"], "query": query, "positive": positive,
            "negatives": [fields[spec.negative_field]] if spec.negative_field else [],
            "task_type": spec.pair_task, "instruction": instruction,
            "language": params.get("language") or f"{params.get('src_lang')}-{params.get('tgt_lang')}",
            "is_held_out": False, "content_hash": hashlib.md5(r["response"].encode()).hexdigest(),
            "synthetic_task": r["task_type"]})
    if pairs:
        queries, positives, ids = pair_ids(con, [p["query"] for p in pairs], [p["positive"] for p in pairs])
        for p, q, pos, pid in zip(pairs, queries, positives, ids):
            p.update(query=q, positive=pos, pair_id=pid)
    accounting = {"requests": len(wanted), "accepted": len(pairs), "rejected": len(rejects), "failed": failed,
                  "not_answered": len(wanted) - len(rows)}
    return pl.DataFrame(pairs, schema=PAIR_SCHEMA), pl.DataFrame(rejects, schema=REJECT_SCHEMA), accounting
