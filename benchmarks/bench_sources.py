"""Benchmark: real-data layouts raw -> staged against a bare DuckDB query producing the same pairs, each in a process
of its own so its peak memory is its own.

    .venv/bin/python benchmarks/bench_sources.py [--queries 100000 --passages 1000000 --texts 1000000]

1. A BEIR folder (`format: beir`): `--queries` queries with one relevant and one judged-irrelevant passage each,
   over a corpus of `--passages`; ours = kalm_core/sources/beir.py + the staging SQL into the lake, bare = the join
   of the three files into (query, positives, negatives) rows in DuckDB.
2. A classification parquet (`--texts` texts, 77 integer labels named by `label_names`, Banking77's shape); ours =
   kalm_core/sources/read.py + labels.py + staging, bare = text, its label's name and the other labels' names.

3. Staging's token-length rule (`--length-texts` passages of MS MARCO-like lengths, a tenth Chinese): ours = the
   bounds of kalm_core/token_length.py, tokenising only what they leave open; bare = tokenise every text.

Prints per layout the time and peak RSS of both, then `RATIO ours/bare = X` for each (goal <= 2) and the peak RSS
(goal: below 4 GiB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LABELS = [f"intent_{i}" for i in range(77)]


def generate(folder: Path, queries: int, passages: int, texts: int) -> None:
    import duckdb

    beir = folder / "beir"
    (beir / "qrels").mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"""copy (select 'd' || i as _id, case when i % 3 = 0 then 'Title ' || i else '' end as title,
                         'passage ' || i || ' about ' || repeat('retrieval embedding ', 5 + i % 7) as text
                         from range({passages}) r(i)) to '{beir}/corpus.jsonl' (format json)""")
    con.execute(f"""copy (select 'q' || i as _id, 'what is passage ' || i || ' about' as text from range({queries}) r(i))
                    to '{beir}/queries.jsonl' (format json)""")
    con.execute(f"""copy (select "query-id", "corpus-id", score from (
                         select 'q' || i as "query-id", 'd' || (i * 7 % {passages}) as "corpus-id", 1 as score,
                                2 * i as o from range({queries}) r(i)
                         union all
                         select 'q' || i, 'd' || (i * 13 % {passages} + 1) % {passages}, 0, 2 * i + 1
                         from range({queries}) r(i)) order by o)
                    to '{beir}/qrels/train.tsv' (format csv, delimiter '\t', header true)""")
    con.execute(f"""copy (select 'a banking question number ' || i || ' with some words' as text,
                         (hash(i) % 77)::bigint as label from range({texts}) r(i))
                    to '{folder}/classification.parquet' (format parquet)""")


def ours(folder: Path, layout: str) -> dict:
    from kalm_core import warehouse
    from kalm_core.catalog import Source
    from kalm_core.sources.beir import load_beir_source
    from kalm_core.sources.read import load_layout_source
    from kalm_core.staging import stage_source

    if layout == "beir":
        src = Source(name="beir", uri="beir", format="beir", split="train")
        load = load_beir_source
    else:
        src = Source(name="cls", uri="classification.parquet", task_type="classification",
                     columns={"text": "text", "label": "label"}, label_names=LABELS)
        load = load_layout_source
    with warehouse.connect(folder / f"lake_{layout}") as con:
        t = time.perf_counter()
        raw = load(con, src, folder)
        staged = stage_source(con, src)
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "records": raw.records, "kept": staged.kept}


def bare(folder: Path, layout: str) -> dict:
    import duckdb

    con = duckdb.connect(str(folder / f"bare_{layout}.duckdb"))
    t = time.perf_counter()
    if layout == "beir":
        b = folder / "beir"
        con.execute(f"""create or replace table pairs as
            with corpus as (select _id, trim(concat_ws(' ', nullif(title, ''), text)) as passage
                            from read_json('{b}/corpus.jsonl', format = 'newline_delimited')),
                 queries as (select _id, text from read_json('{b}/queries.jsonl', format = 'newline_delimited')),
                 qrels as (select * from read_csv('{b}/qrels/train.tsv', delim = '\t', header = true))
            select q.text as query, list(c.passage) filter (r.score > 0) as positives,
                   list(c.passage) filter (r.score <= 0) as negatives
            from qrels r join corpus c on c._id = r."corpus-id" join queries q on q._id = r."query-id"
            group by r."query-id", q.text""")
    else:
        con.execute("create or replace table names as select unnest($n) as name, range as label "
                    "from (select unnest(range(77)) as range)", {"n": LABELS})
        con.execute(f"""create or replace table pairs as
            select text as query, $n[label + 1] as positive,
                   list_filter($n, lambda x: x <> $n[label + 1])[:7] as negatives
            from read_parquet('{folder}/classification.parquet')""", {"n": LABELS})
    rows = con.execute("select count(*) from pairs").fetchall()[0][0]
    return {"seconds": time.perf_counter() - t, "records": rows}


def length_check(n: int, seed: int = 0) -> None:
    """The token-length rule on passages of MS MARCO-like lengths (log-normal, median ~300 characters, English and
    Chinese): ours decides with bounds and tokenises the rest, bare tokenises every text (the rule's definition)."""
    import math
    import random

    import pyarrow as pa

    from kalm_core.config import BUNDLED_MINILM
    from kalm_core.token_length import TokenCounter, load_tokenizer

    rng = random.Random(seed)
    words = "the of a retrieval model embedding passage query training dataset contrastive negative".split()
    texts = []
    for i in range(n):
        chars = int(math.exp(rng.gauss(math.log(300), 0.7)))
        texts.append("检索模型训练数据" * (chars // 24 + 1) if i % 10 == 0
                     else " ".join(rng.choice(words) for _ in range(chars // 7 + 1)))
    counter = TokenCounter(load_tokenizer(BUNDLED_MINILM))
    limit = 4 * 128  # the demo's passage limit
    t = time.perf_counter()
    over = counter.over(pa.array(texts), limit).to_pylist()
    ours = time.perf_counter() - t
    t = time.perf_counter()
    exact = [n > limit for n in counter.count(texts)]
    bare = time.perf_counter() - t
    assert over == exact
    print(f"length check: {n:,} passages, ours {ours:.1f}s ({counter.tokenized - n:,} tokenised), tokenise all "
          f"{bare:.1f}s, {sum(over):,} over {limit} tokens")
    print(f"RATIO length_check ours/bare = {ours / bare:.2f}")


def child(args) -> None:
    out = (ours if args.side == "ours" else bare)(Path(args.folder), args.layout)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(folder: Path, side: str, layout: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", "--side", side, "--layout", layout,
                           "--folder", str(folder)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{side} {layout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--texts", type=int, default=1_000_000)
    ap.add_argument("--length-texts", type=int, default=200_000, help="passages for the token-length check")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--layout", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        generate(folder, args.queries, args.passages, args.texts)
        print(f"generated {args.queries:,} queries over {args.passages:,} passages and {args.texts:,} labelled texts "
              f"in {time.perf_counter() - t:.1f}s")
        ratios, peak = {}, 0.0
        for layout in ("beir", "classification"):
            a, b = run(folder, "ours", layout), run(folder, "bare", layout)
            ratios[layout] = a["seconds"] / b["seconds"]
            peak = max(peak, a["peak_rss_mib"])
            print(f"{layout}: ours {a['seconds']:.1f}s ({a['records']:,} records, {a['kept']:,} kept, peak "
                  f"{a['peak_rss_mib']:.0f} MiB); bare {b['seconds']:.1f}s ({b['records']:,} rows, peak "
                  f"{b['peak_rss_mib']:.0f} MiB)")
        print(f"peak RSS ours = {peak / 1024:.2f} GiB (goal < 4)")
        for layout, r in ratios.items():
            print(f"RATIO {layout} ours/bare = {r:.2f}")
    length_check(args.length_texts)


if __name__ == "__main__":
    main()
