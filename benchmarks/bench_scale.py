"""Benchmark the data mix at scale: 70 sources, a million pairs, decontamination of a million pairs.

    .venv/bin/python benchmarks/bench_scale.py [--part a b c] [--sources 70] [--source-pairs 1500]
        [--million 1000000] [--filter-pairs 50000] [--pairs 1000000] [--eval 50000] [--leaks 2000]

(a) `--sources` file sources of `--source-pairs` pairs each (plus a held-out source) through raw -> staged ->
filtered -> marts, one `kalm run` in a subprocess, against one source holding the same pairs in another project:
`RATIO 70 sources/one source = X` (goal <= 3); then one source's file edited and `kalm run --stale`:
`RATIO one/full = X` (goal <= 0.05). The filter is off (`filter.enabled: false`): encoding 105k pairs on this CPU
takes hours, and what this part measures is the per-source orchestration, not the model.

(b) one source of `--million` pairs through raw -> staged -> filtered (off, as in (a)) -> marts -> batched, one
`kalm run` in a subprocess with KALM_DUCKDB_MEMORY=`--duckdb-memory`: its wall time and peak RSS (goal <= 2 GiB).
Then the filter pass itself (the demo's MiniLM on this CPU) over the first `--filter-pairs` of them, in a
subprocess: its time (the encode bounds it), peak RSS and the embedding matrices' share; then over a quarter, a
half and all of them again with every vector cached, so the memory besides the matrices shows whether it grows
with the source: `RATIO filter memory besides the matrices, all/a quarter = X` (goal: about 1).

(c) `--pairs` kept filtered training pairs and `--eval` held-out pairs (an evaluation query and its relevant
document each) in a fresh lake; `--leaks` training pairs reuse an evaluation query or document with case,
whitespace and end punctuation changed, or hold an evaluation document inside a longer text. Ours: the shipped SQL
models `marts.evaluation_texts` and `marts.evaluation_ngrams` (built once per evaluation split) and
`marts.contamination`, which normalise with `kalm_norm` (NFKC width folding, case, whitespace, end punctuation),
also drop a text holding half an evaluation text's word 13-grams, and name the evaluation source each leak matches.
Bare: two hash joins in DuckDB on exact text with lower(trim()) as the only normalisation, which misses the
punctuation variants and the contained documents. `RATIO decontamination ours/bare = X` (goal <= 3).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402
import yaml  # noqa: E402

from kalm_core import evaluation_sets, filtering, sql_models, warehouse  # noqa: E402
from kalm_core.config import PROFILES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = "group:raw or group:staged or group:synthetic or group:filtered or (group:marts and not key:marts/mteb_summary)"
GiB = 2**30

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


def decontamination(args) -> None:
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


def pairs_frame(n: int, seed: int, prefix: str) -> pl.DataFrame:
    """n FlagEmbedding-style rows (query, pos: [one], neg: [one]), every text distinct, built in Polars."""
    rng = random.Random(seed)
    words = pl.Series(WORDS)

    def text(kind: str, k: int) -> pl.Series:  # "<prefix><kind><i> w1 ... wk"
        cols = {f"w{j}": words.sample(n, with_replacement=True, seed=rng.randrange(2**31)) for j in range(k)}
        return pl.DataFrame(cols).select(pl.concat_str(
            pl.format(f"{prefix}{kind}{{}}", pl.int_range(pl.len())), *cols, separator=" ")).to_series()

    return pl.DataFrame({"query": text("q", 8) + "?", "pos": text("p", 40), "neg": text("n", 40)}).with_columns(
        pl.concat_list("pos"), pl.concat_list("neg"))


def project(root: Path, files: dict[str, pl.DataFrame], heldout: pl.DataFrame, filter_on: bool = False) -> dict:
    """A kalm project in `root`: one jsonl source per entry, a held-out source, the demo profile with the batches
    grouped by task type (and the filter off unless `filter_on`); returns the environment its `kalm run` needs."""
    root.mkdir(parents=True, exist_ok=True)
    sources = []
    for name, frame in {**files, "heldout": heldout}.items():
        frame.write_ndjson(root / f"{name}.jsonl")
        sources.append({"name": name, "uri": f"{name}.jsonl", "held_out": name == "heldout"})
    (root / "sources.yaml").write_text(yaml.safe_dump({"sources": sources}))
    demo = PROFILES["demo"]
    bench = replace(demo, name="bench", batch=replace(demo.batch, group_by="task_type"),
                    filter=replace(demo.filter, enabled=filter_on))
    (root / "profile.json").write_text(json.dumps(asdict(bench), default=list))
    return {**os.environ, "KALM_CATALOG": str(root / "sources.yaml"), "KALM_LAKE": str(root / "data" / "lake"),
            "KALM_PROFILE": str(root / "profile.json"), "DAGSTER_HOME": str(root / "dagster_home"),
            "HF_HUB_OFFLINE": "1"}


def measured(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """(seconds, peak RSS in bytes) of a command, in a fresh process that waits for it (its own children's peak)."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "code = subprocess.call(sys.argv[1:]); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    with open(log, "a") as out:
        line = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, stdout=subprocess.PIPE, stderr=out,
                              text=True, check=True, cwd=ROOT).stdout.strip().splitlines()[-1]
    seconds, rss_kib, code = line.split()
    if code != "0":
        raise SystemExit(f"{' '.join(cmd)} exited with {code}:\n{log.read_text()[-3000:]}")
    return float(seconds), int(rss_kib) * 1024


def kalm(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "kalm"), "run", *args]


def sources_part(args, tmp: Path) -> None:
    n, per = args.sources, args.source_pairs
    every = pairs_frame(n * per, 1, "t")
    heldout = pairs_frame(500, 2, "h")
    many = project(tmp / "many", {f"src{i:02d}": every.slice(i * per, per) for i in range(n)}, heldout)
    one = project(tmp / "one", {"all": every}, heldout)
    log = tmp / "a.log"
    one_s, _ = measured(kalm("--select", DATA), one, log)
    print(f"(a) one source of {n * per:,} pairs, raw -> marts: {one_s:.1f}s")
    many_s, _ = measured(kalm("--select", DATA), many, log)
    print(f"(a) {n} sources x {per:,} pairs, raw -> marts: {many_s:.1f}s ({n * 3} per-source assets)")
    print(f"RATIO {n} sources/one source = {many_s / one_s:.2f}")  # goal <= 3
    path = tmp / "many" / f"src{n // 2:02d}.jsonl"
    rows = pl.read_ndjson(path)
    rows.head(rows.height - 10).write_ndjson(path)  # ten pairs removed
    stale_s, _ = measured(kalm("--stale", "--select", DATA), many, log)
    print(f"(a) one source file edited, kalm run --stale: {stale_s:.1f}s")
    print(f"RATIO one/full = {stale_s / many_s:.3f}")  # goal <= 0.05


def million_part(args, tmp: Path) -> None:
    env = project(tmp / "million", {"big": pairs_frame(args.million, 3, "m")}, pairs_frame(500, 4, "h"))
    env[warehouse.MEMORY_ENV] = args.duckdb_memory  # DuckDB's joins and sorts spill past it
    log = tmp / "b.log"
    seconds, rss = measured(kalm("--select", f"{DATA} or group:batched"), env, log)
    print(f"(b) {args.million:,} pairs raw -> staged -> filtered (off) -> marts -> batched "
          f"({warehouse.MEMORY_ENV}={args.duckdb_memory}): {seconds:.1f}s, peak RSS {rss / GiB:.2f} GiB (goal <= 2 GiB)")
    filter_cmd = [sys.executable, str(Path(__file__).resolve()), "--pair-chunk", str(args.pair_chunk),
                  "--filter-child"]
    rest = {}
    for i, n in enumerate((args.filter_pairs, args.filter_pairs // 4, args.filter_pairs // 2, args.filter_pairs)):
        seconds, rss = measured([*filter_cmd, str(n)], env, log)
        matrices = json.loads((tmp / "million" / "data" / "filter.json").read_text())
        if i:  # every vector cached: the memory of the pass itself
            rest[n] = rss - matrices["bytes"]
        print(f"(b) filter pass over {n:,} pairs ({matrices['encoded']:,} texts encoded): {seconds:.1f}s, peak RSS "
              f"{rss / GiB:.2f} GiB, embedding matrices {matrices['bytes'] / GiB:.3f} GiB, the rest "
              f"{(rss - matrices['bytes']) / GiB:.2f} GiB")
    quarter = args.filter_pairs // 4
    print(f"RATIO filter memory besides the matrices, {args.filter_pairs:,}/{quarter:,} pairs = "
          f"{rest[args.filter_pairs] / rest[quarter]:.2f}")  # goal: about 1, it does not grow with the source


def filter_child(n: int) -> None:
    """The filter pass over the first n staged pairs of source `big`, as filtered/big runs it (the demo's MiniLM,
    rows streamed out of the lake), its results counted and dropped."""
    from kalm_core import filter_model
    from kalm_core.config import data_dir, get_profile
    from kalm_core.filtering import CachedEncoder, filter_results

    profile = get_profile(os.environ["KALM_PROFILE"])
    cfg = replace(profile.filter, enabled=True)
    fm = filter_model.resolve(replace(profile, filter=cfg))
    encoder = CachedEncoder.load(fm.path, fm.config, data_dir() / "embedding_cache", batch_size=cfg.batch_size)
    first = f"(select * from staged.big where row_number <= {n})"  # record numbers start at 1
    with warehouse.connect(read_only=True) as con:
        stats = filter_results(con, first, encoder, cfg, lambda part: None, n_negatives=profile.n_negatives)
        queries, one = con.execute(f"select count(distinct query), any_value(query) from {first}").fetchone()
    dim = encoder.queries([one]).shape[1]  # cached by now
    (data_dir() / "filter.json").write_text(json.dumps({"encoded": encoder.encoded, "pairs": stats.pairs,
                                                        "bytes": (queries + stats.corpus_size) * dim * 4}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    ap.add_argument("--sources", type=int, default=70)
    ap.add_argument("--source-pairs", type=int, default=1500)
    ap.add_argument("--million", type=int, default=1_000_000)
    ap.add_argument("--filter-pairs", type=int, default=50_000)
    ap.add_argument("--duckdb-memory", default="1GB", help="(b): each DuckDB instance's memory limit")
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--eval", type=int, default=50_000)
    ap.add_argument("--leaks", type=int, default=2_000)
    ap.add_argument("--pair-chunk", type=int, default=filtering.PAIR_CHUNK,
                    help="(b): pairs the filter ranks and mines at once; its memory grows with a source up to this")
    ap.add_argument("--filter-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.filter_child:
        filtering.PAIR_CHUNK = args.pair_chunk
        return filter_child(args.filter_child)
    with tempfile.TemporaryDirectory() as tmp:
        if "a" in args.part:
            sources_part(args, Path(tmp))
        if "b" in args.part:
            million_part(args, Path(tmp))
    if "c" in args.part:
        decontamination(args)


if __name__ == "__main__":
    main()
