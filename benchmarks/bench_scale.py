"""Benchmark the data mix at scale: decontamination of a million training pairs against an evaluation set.

    .venv/bin/python benchmarks/bench_scale.py [--pairs 1000000] [--eval 50000] [--leaks 2000]

(c) of the data-mix issue: `--pairs` kept filtered training pairs and `--eval` held-out pairs (an evaluation query and
its relevant document each) in a fresh lake; `--leaks` training pairs reuse an evaluation query or document with
case, whitespace and end punctuation changed, or hold an evaluation document inside a longer text. Ours: the shipped
SQL models `marts.evaluation_texts` and `marts.evaluation_ngrams` (built once per evaluation split) and
`marts.contamination`, which normalise with `kalm_norm` (NFKC width folding, case, whitespace, end punctuation), also
drop a text holding half an evaluation text's word 13-grams, and name the evaluation source each leak matches. Bare:
two hash joins in DuckDB on exact text with lower(trim()) as the only normalisation, which misses the punctuation
variants and the contained documents. Prints both times, what each found, then
`RATIO decontamination ours/bare = X` (goal <= 3).

Left out here: (a) 70 sources through the DAG and (b) one 1M-pair source to the batches with its peak RSS;
`bench_rebuild.py` and `bench_sources.py` measure the per-source rebuild and the raw -> staged side.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402

from kalm_core import evaluation_sets, sql_models, warehouse  # noqa: E402

WORDS = ("embedding model query passage retrieval vector index batch negative positive token layer attention "
         "pooling matryoshka dimension contrastive temperature gradient cache warehouse lake table source").split()


def _text(rng: random.Random, i: int, words: int) -> str:
    return f"{i} " + " ".join(rng.choice(WORDS) for _ in range(words))


def generate(pairs: int, n_eval: int, leaks: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    ev = pl.DataFrame({"query": [_text(rng, i, 8) + "?" for i in range(n_eval)],
                       "positive": [_text(rng, i, 40) + "." for i in range(n_eval)]})
    queries = [f"train {_text(rng, i, 8)}?" for i in range(pairs)]
    positives = [f"train {_text(rng, i, 40)}." for i in range(pairs)]
    for k, i in enumerate(rng.sample(range(pairs), leaks)):  # a query or a document reused, lightly edited
        j = rng.randrange(n_eval)
        if k % 4 == 1:  # exact: the bare join finds these
            queries[i] = ev["query"][j]
        elif k % 2:
            queries[i] = ev["query"][j].upper().rstrip("?")
        elif k % 4 == 2:  # the document inside a longer text: the 13-gram containment rule
            positives[i] = f"as the survey puts it, {ev['positive'][j]} {_text(rng, i, 20)}"
        else:
            positives[i] = "  " + ev["positive"][j].replace(" ", "  ").rstrip(".") + " !"
    train = pl.DataFrame({"source": "bench", "row_number": range(pairs), "positive_index": 0,
                          "pair_id": [f"p{i}" for i in range(pairs)], "query": queries, "positive": positives,
                          "kept": True})
    return train, ev.with_columns(source=pl.lit("heldout"), pair_id=pl.format("e{}", pl.int_range(pl.len())))


def ours(con) -> tuple[float, int]:
    models = {m.name: m for m in sql_models.discover() if m.layer == "marts"}
    built = {"filtered": ["bench"], "marts": ["eval_pairs"]}
    t = time.perf_counter()
    for name in ("evaluation_texts", "evaluation_ngrams"):  # once per version of the evaluation split
        sql_models.run_model(con, models[name], built)
        built["marts"].append(name)
    found = sql_models.run_model(con, models["contamination"], built)
    return time.perf_counter() - t, found


def bare(con) -> tuple[float, int]:
    t = time.perf_counter()
    (found,) = con.execute("""
        with e as (select distinct lower(trim(t)) as text from (select query as t from marts.eval_pairs
                   union all select positive from marts.eval_pairs)),
             c as (select pair_id, lower(trim(query)) as q, lower(trim(positive)) as p from filtered.bench where kept)
        select count(distinct pair_id) from (select pair_id from c join e on e.text = c.q
                                             union all select pair_id from c join e on e.text = c.p)""").fetchone()
    return time.perf_counter() - t, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--eval", type=int, default=50_000)
    ap.add_argument("--leaks", type=int, default=2_000)
    args = ap.parse_args()
    t = time.perf_counter()
    train, ev = generate(args.pairs, args.eval, args.leaks)
    print(f"generated {args.pairs:,} training pairs ({args.leaks:,} leaks) and {args.eval:,} evaluation pairs in "
          f"{time.perf_counter() - t:.1f}s")
    with tempfile.TemporaryDirectory() as tmp, warehouse.connect(Path(tmp) / "lake") as con:
        warehouse.write(con, "filtered", "bench", train)
        warehouse.write(con, "marts", "eval_pairs", ev)
        warehouse.write(con, "marts", "evaluation_sets", pl.DataFrame(schema=evaluation_sets.SCHEMA))  # none named
        del train, ev
        bare_s, bare_found = bare(con)
        ours_s, ours_found = ours(con)
    print(f"bare (lower/trim, two hash joins): {bare_s:.1f}s, {bare_found:,} of {args.leaks:,} leaks found")
    print(f"ours (marts.evaluation_texts, evaluation_ngrams + contamination: kalm_norm, 13-grams): {ours_s:.1f}s, "
          f"{ours_found:,} found")
    if ours_found != args.leaks:
        raise SystemExit(f"decontamination found {ours_found:,} leaks of {args.leaks:,} planted")
    print(f"RATIO decontamination ours/bare = {ours_s / bare_s:.2f}")


if __name__ == "__main__":
    main()
