"""The 6 synthetic task types, their sampled prompt parameters and the JSON schema each answer must follow.

Four asymmetric retrieval types brainstorm instructions first and then write
{user_query, positive_document, hard_negative_document}; STS ({S1, S2, S3}) and bitext ({S1, S2}) skip
brainstorming (Wang et al. 2024, arXiv 2401.00368, as followed by KaLM-Embedding §3.2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

PROMPTS = Path(str(files("kalm_core.synthesis") / "prompts"))  # package data
RETRIEVAL_TYPES = ("short-long", "long-short", "short-short", "long-long")
TASK_TYPES = (*RETRIEVAL_TYPES, "sts", "bitext")
LANGUAGES = ("English", "English", "English", "Chinese", "French", "German", "Spanish", "Japanese", "Russian")
BITEXT_LANGUAGES = ("English", "Chinese", "French", "German", "Spanish", "Japanese", "Russian", "Arabic", "Korean")
CLARITY = ("clear", "understandable with some effort", "ambiguous")
DIFFICULTY = ("high school", "college", "PhD")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fields: tuple[str, ...]  # required non-empty JSON string fields
    query_field: str
    positive_field: str
    negative_field: str | None
    pair_task: str  # the task_type of the resulting pairs in the warehouse
    brainstorm: bool
    hint: str = ""


SPECS: dict[str, TaskSpec] = {
    **{t: TaskSpec(t, ("user_query", "positive_document", "hard_negative_document"), "user_query",
                   "positive_document", "hard_negative_document", "retrieval", True, hint)
       for t, hint in (("short-long", " where the query is short and the documents are long"),
                       ("long-short", " where the query is long and the documents are short"),
                       ("short-short", " where both the query and the documents are short"),
                       ("long-long", " where both the query and the documents are long"))},
    "sts": TaskSpec("sts", ("S1", "S2", "S3"), "S1", "S2", "S3", "sts", False),
    "bitext": TaskSpec("bitext", ("S1", "S2"), "S1", "S2", None, "bitext", False),
}


def json_schema(task_type: str) -> dict:
    """The JSON schema of a stage-2 answer: every field a required string, nothing else."""
    fields = SPECS[task_type].fields
    return {"type": "object", "properties": {f: {"type": "string"} for f in fields}, "required": list(fields),
            "additionalProperties": False}


def template(name: str) -> str:
    return (PROMPTS / f"{name}.txt").read_text(encoding="utf-8")


def brainstorm_prompt(task_type: str, n_instructions: int = 20) -> str:
    return template("brainstorm_retrieval").format(task_hint=SPECS[task_type].hint, n_instructions=n_instructions)


def generation_prompt(task_type: str, rng: random.Random, instruction: str | None = None) -> tuple[str, dict]:
    """The stage-2 prompt with its sampled parameters filled in; returns (prompt, parameters)."""
    if task_type in RETRIEVAL_TYPES:
        q_len, d_len = task_type.split("-")
        params = {
            "instruction": instruction,
            "query_type": rng.choice(("extremely long-tail", "long-tail", "common")),
            "query_length": rng.choice(("less than 5 words", "5 to 15 words", "at least 10 words"))
            if q_len == "short" else rng.choice(("at least 30 words", "50 to 100 words")),
            "clarity": rng.choice(CLARITY),
            "num_words": rng.choice((50, 100, 200, 300)) if d_len == "long" else rng.choice((10, 20, 30)),
            "language": rng.choice(LANGUAGES),
            "difficulty": rng.choice(DIFFICULTY),
        }
        return template("generate_retrieval").format(**params), params
    if task_type == "sts":
        params = {"task_kind": rng.choice(("sentence", "short paragraph")), "language": rng.choice(LANGUAGES),
                  "high_score": rng.choice(("4", "4.5", "5")), "low_score": rng.choice(("2.5", "3", "3.5")),
                  "num_words": rng.choice(("5 to 10", "10 to 20", "20 to 50")), "difficulty": rng.choice(DIFFICULTY)}
        return template("generate_sts").format(**params), params
    src, tgt = rng.sample(BITEXT_LANGUAGES, 2)
    params = {"unit": rng.choice(("sentence", "short paragraph")), "src_lang": src, "tgt_lang": tgt,
              "num_words": rng.choice((10, 20, 50)), "difficulty": rng.choice(DIFFICULTY)}
    return template("generate_bitext").format(**params), params
