"""Persona synthesis against a real loopback chat-completions server with scripted answers."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from kalm_core import warehouse
from kalm_core.catalog import Personas
from kalm_core.synthesis.backends import BackendConfig, ChatRequest, make_backend
from kalm_core.synthesis.generate import (GENERATE, SynthesisConfig, brainstorm_requests, collect_examples,
                                          collect_instructions, generation_requests, run_stage)
from kalm_core.synthesis.personas import load_personas
from kalm_core.synthesis.store import GenerationStore
from kalm_core.synthesis.tasks import TASK_TYPES, generation_prompt
from kalm_core.synthesis.validation import Rejected, parse_example, parse_instructions
from tests.llm_server import ScriptedLLM, good_answer, messages_hash

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-test-0123456789abcdef-never-log-me"


def backend(url, **kw):
    return make_backend(BackendConfig(kind="openai", model="scripted", base_url=url, api_key=SECRET,
                                      **{"timeout_s": 5.0, "max_retries": 2, "concurrency": 8, **kw}))


def test_prompts_fill_their_sampled_parameters():
    import random

    for task in TASK_TYPES:
        prompt, params = generation_prompt(task, random.Random(0), "Retrieve recipes" if "-" in task else None)
        assert not re.search(r"\{[a-z_]+\}", prompt), prompt  # no unfilled {placeholder}
        assert all(str(v) in prompt for k, v in params.items() if k not in ("instruction",) and v is not None)


@pytest.mark.parametrize("task,answer,reason", [
    ("short-long", "not json at all", "invalid json"),
    ("short-long", "I'm sorry, but I can't help with that.", "refusal"),
    ("short-long", json.dumps({"user_query": "q", "positive_document": "", "hard_negative_document": "n"}),
     "missing or empty field"),
    ("short-long", json.dumps({"user_query": "same", "positive_document": "same", "hard_negative_document": "n"}),
     "query equals positive"),
    ("sts", json.dumps({"S1": "a", "S2": "b"}), "missing or empty field"),
    ("sts", json.dumps({"S1": "a", "S2": "x" * 9000, "S3": "c"}), "over-long text"),
    ("bitext", json.dumps({"S1": "The sun is warm and the sky is blue.", "S2": "The sun is warm and bright."}),
     "wrong language"),
])
def test_validation_rejects_with_a_reason(task, answer, reason):
    params = {"src_lang": "English", "tgt_lang": "French"}
    with pytest.raises(Rejected) as e:
        parse_example(task, answer, params)
    assert e.value.reason == reason


def test_valid_answers_parse_for_every_task_type():
    for body_prompt, task in (("retrieval task: x", "long-long"), ('"S1", "S2", and "S3"', "sts"),
                              ('"S1" and "S2"', "bitext")):
        text = good_answer({"messages": [{"role": "user", "content": body_prompt}]})
        fields = parse_example(task, "```json\n" + text + "\n```", {"src_lang": "English", "tgt_lang": "French"})
        assert all(fields.values())
    assert parse_instructions('["Find recipes.", "find  recipes", "Rank news"]') == ["Find recipes.", "Rank news."]
    with pytest.raises(Rejected, match="not a list"):
        parse_instructions('{"a": 1, "b": 2}')


def _instructions(n):
    return pl.DataFrame({"instruction": [f"Retrieve item {i}." for i in range(n)], "task_type": ["short-long"] * n,
                         "persona_id": ["p"] * n, "brainstorm_key": ["k"] * n})


def test_accounting_holds_over_bad_answers_errors_timeouts_and_drops(con, tmp_path):
    behaviours = ["ok", "invalid", "refusal", "500", "slow", "drop", "500-once"]

    def responder(body, seen):
        prompt = body["messages"][-1]["content"]
        idx = next((i for i in range(len(behaviours)) if f"Retrieve item {i}." in prompt), 0)
        kind = behaviours[idx % len(behaviours)]
        if kind == "invalid":
            return ("ok", "{not json")
        if kind == "refusal":
            return ("ok", "I'm sorry, but I cannot help with that request.")
        if kind == "500" or (kind == "500-once" and seen == 0):
            return ("status", 500)
        if kind == "slow":
            return ("sleep", 3.0, good_answer(body))
        if kind == "drop":
            return ("drop",)
        return ("ok", good_answer(body))

    cfg = SynthesisConfig(sts_examples=2, bitext_examples=2)
    with ScriptedLLM(responder) as server:
        b = backend(server.url, timeout_s=1.0, max_retries=1)
        requests = generation_requests(_instructions(7), cfg)
        stats = run_stage(b, GenerationStore(con), GENERATE, requests)
        pairs, rejects, acc = collect_examples(con, requests, b.model)
    assert acc["requests"] == len(requests) == 11
    assert acc["requests"] == acc["accepted"] + acc["rejected"] + acc["failed"] and acc["not_answered"] == 0
    assert acc["failed"] == 3  # the 500, the slow answer past the timeout, the dropped connection
    assert sorted(rejects["reason"].to_list()) == ["invalid json", "refusal"]
    assert acc["accepted"] == 6 and stats.failed == 3  # ok, the 500 that succeeded on retry, 2 sts, 2 bitext
    assert set(pairs["source"]) == {"synthetic/short-long", "synthetic/sts", "synthetic/bitext"}
    assert set(pairs["task_type"]) == {"retrieval", "sts", "bitext"}
    assert pairs.filter(pl.col("source") == "synthetic/short-long")["instruction"].to_list()[0].startswith("Retrieve")
    keys = con.execute("select count(*), count(distinct key) from synthetic.generations").fetchall()[0]
    assert keys == (11, 11)


def test_a_rerun_sends_only_what_failed_and_never_a_finished_prompt(con, tmp_path):
    flaky = {"on": True}

    def responder(body, seen):
        if flaky["on"] and "Retrieve item 2." in body["messages"][-1]["content"]:
            return ("status", 500)
        return ("ok", good_answer(body))

    with ScriptedLLM(responder) as server:
        b = backend(server.url, max_retries=0)
        requests = generation_requests(_instructions(4), SynthesisConfig(sts_examples=0, bitext_examples=0))
        first = run_stage(b, GenerationStore(con), GENERATE, requests)
        flaky["on"] = False
        n_before = len(server.requests)
        second = run_stage(b, GenerationStore(con), GENERATE, requests)
        resent = server.requests[n_before:]
    assert (first.ok, first.failed) == (3, 1) and (second.sent, second.ok, second.skipped_done) == (1, 1, 3)
    assert len(resent) == 1 and "Retrieve item 2." in resent[0]["body"]["messages"][-1]["content"]
    assert con.execute("select count(*), count(*) filter (status = 'ok') from synthetic.generations").fetchall()[0] == (4, 4)


def test_resume_after_kill_resends_no_finished_prompt(tmp_path):
    wh_path = tmp_path / "lake"
    with ScriptedLLM(latency=0.05) as server:
        env = {**os.environ, "KALM_LLM_BASE_URL": server.url, "KALM_LLM_MODEL": "scripted",
               "KALM_LLM_API_KEY": SECRET}
        cmd = [sys.executable, "-m", "kalm_core.synthesis", "--lake", str(wh_path), "--personas-per-task", "3",
               "--concurrency", "4"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if '"event": "progress"' in line and json.loads(line)["done"] >= 12:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with warehouse.connect(wh_path, read_only=True) as con:
            finished = {messages_hash(json.loads(m)) for (m,) in
                        con.execute("select messages from synthetic.generations where status = 'ok'").fetchall()}
        before = len(server.requests)
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        again = {r["hash"] for r in server.requests[before:]}
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert finished and not (finished & again)  # 0 finished prompts re-sent
    assert summary["requests"] == summary["accepted"] + summary["rejected"] + summary["failed"]
    with warehouse.connect(wh_path, read_only=True) as con:
        n, distinct = con.execute("select count(*), count(distinct key) from synthetic.generations").fetchall()[0]
    assert n == distinct  # 0 duplicate rows
    assert SECRET not in done.stdout + done.stderr


def test_the_api_key_is_sent_but_never_stored_or_printed(con, tmp_path, capsys):
    people = load_personas(con, Personas(), tmp_path)
    assert people.height >= 100 and people["persona"].n_unique() == people.height
    with ScriptedLLM() as server:
        cfg_obj = BackendConfig(kind="openai", model="scripted", base_url=server.url, api_key=SECRET)
        b = make_backend(cfg_obj)
        reqs = brainstorm_requests(list(people.head(10).iter_rows()), SynthesisConfig(personas_per_task=1))
        run_stage(b, GenerationStore(con), "brainstorm", reqs)
        frame, _ = collect_instructions(con, reqs, b.model, SynthesisConfig())
        assert server.requests[0]["auth"] == f"Bearer {SECRET}"
        assert all(r["body"]["messages"][0]["role"] == "system" for r in server.requests)  # persona, stage 1 only
    dump = con.sql("select * from synthetic.generations").pl().write_csv()
    assert SECRET not in dump and SECRET not in repr(cfg_obj) and SECRET not in json.dumps(cfg_obj.describe())
    assert frame.height == 4 * 4 and set(frame["task_type"]) == {"short-long", "long-short", "short-short", "long-long"}
    assert SECRET not in capsys.readouterr().out


def test_request_keys_cover_model_messages_params_and_seed():
    r = ChatRequest(messages=(("user", "hi"),))
    assert r.key("m") == ChatRequest(messages=(("user", "hi"),), meta={"x": 1}).key("m")
    assert len({r.key("m"), r.key("other"), ChatRequest(messages=(("user", "hi"),), seed=1).key("m"),
                ChatRequest(messages=(("user", "hi"),), temperature=0.5).key("m")}) == 4


@pytest.mark.parametrize("mode,expected", [("json_object", {"type": "json_object"}), ("json_schema", "json_schema"),
                                           ("none", None)])
def test_response_format_is_sent_as_configured(con, tmp_path, mode, expected):
    with ScriptedLLM() as server:
        b = backend(server.url, response_format=mode)
        run_stage(b, GenerationStore(con), GENERATE,
                  generation_requests(_instructions(1), SynthesisConfig(sts_examples=0, bitext_examples=0)))
        sent = server.requests[0]["body"].get("response_format")
    if expected == "json_schema":
        schema = sent["json_schema"]["schema"]
        assert sent["type"] == "json_schema" and schema["required"] == ["user_query", "positive_document",
                                                                         "hard_negative_document"]
    else:
        assert sent == expected


def test_synthetic_pairs_get_the_pair_id_staging_gives(con):
    """One contract (kalm_core/pairs.py): cleaned texts and their id are what the staging SQL computes."""
    from kalm_core.pairs import pair_ids

    q, p = ["  cafe\u0301 query\t", "plain"], ["  answer ", "other"]
    cleaned_q, cleaned_p, ids = pair_ids(con, q, p)
    assert cleaned_q[0] == "caf\u00e9 query\t" and cleaned_p[0] == "answer"  # NFC; DuckDB's trim strips spaces
    con.execute("create or replace temp table _one as select 'x' as source, 1 as row_number, "
                "1 as positive_index, null as record_id, 'h' as content_hash, null as load_error, cast(null as varchar) as kept_out, "
                "cast(null as varchar) as row_instruction, cast(null as varchar) as row_task_type, "
                "cast(null as double) as teacher_pos_score, cast(null as double[]) as teacher_neg_scores, "
                "cast(null as varchar) as file, "
                "null as raw_record, ? as query, ? as positive, cast([] as varchar[]) as negatives", [q[0], p[0]])
    con.execute("create or replace temp view raw_input as select * from _one")
    from kalm_core.config import BUNDLED_MINILM
    from kalm_core.staging import STAGING_SQL
    from kalm_core.token_length import TokenCounter, load_tokenizer

    TokenCounter(load_tokenizer(BUNDLED_MINILM)).register(con)
    staged = con.execute(STAGING_SQL.read_text(), {"task_type": "retrieval", "instruction": "", "language": "en",
                                                    "is_held_out": False, "max_query_tokens": 100,
                                                    "max_passage_tokens": 100, "folder_task_types": False}).fetchall()
    assert staged[0][0] == ids[0]
