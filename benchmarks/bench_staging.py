"""Benchmark: 1M generated pairs through raw -> staged (our DuckDB SQL path, into the lake) against two anchors
measured in the same run: a plain-Python jsonl normalise-and-dedup loop (the peer) and a bare DuckDB `read_json`
of the same file into a lake table (the floor: reading and storing, no normalising).

    .venv/bin/python benchmarks/bench_staging.py [--rows 1000000]

Last lines: `RATIO staging rows/s ours/python = X.XX` (goal >= 2) and
`RATIO staging time ours/bare-scan = X.XX` (goal <= 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kalm_core import warehouse  # noqa: E402
from kalm_core.catalog import Source  # noqa: E402
from kalm_core.extract import load_file_source  # noqa: E402
from kalm_core.config import ModelConfig  # noqa: E402
from kalm_core.staging import stage_source  # noqa: E402
from kalm_core.token_length import length_limits, load_tokenizer  # noqa: E402

LIMITS = length_limits(ModelConfig())  # what stage_source applies by default


_TOKENIZER = load_tokenizer(LIMITS.tokenizer)


def too_long(text: str, limit: int, tokenizer=getattr(_TOKENIZER, "backend_tokenizer", _TOKENIZER)) -> bool:
    """The baseline's length rule: a text of fewer bytes than the limit cannot be over it; others are tokenised."""
    return len(text.encode()) + 2 > limit and len(tokenizer.encode(text).ids) > limit

WORDS = ("embedding model query passage retrieval vector index batch negative positive token layer "
         "attention pooling matryoshka dimension contrastive temperature gradient cache warehouse").split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """FlagEmbedding jsonl: ~5% duplicate pairs, ~1% bad rows (empty query, query == positive)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            r = rng.random()
            if r < 0.05 and i > 0:
                j = rng.randrange(i)
                q, p = f"question {j} " + WORDS[j % len(WORDS)], f"answer {j} " + " ".join(WORDS[: 20 + j % 20])
            else:
                q, p = f"question {i} " + WORDS[i % len(WORDS)], f"answer {i} " + " ".join(WORDS[: 20 + i % 20])
            if r > 0.995:
                q = ""
            elif r > 0.99:
                p = q
            negs = [f" negative {i} {k} " + " ".join(rng.sample(WORDS, 12)) for k in range(2)]
            f.write(json.dumps({"query": " " + q, "pos": [p], "neg": negs}) + "\n")


def python_baseline(path: Path, out: Path) -> tuple[int, int]:
    """The same normalise, quarantine and dedup in a plain Python loop, writing the kept pairs as jsonl
    (our path persists its output too); returns (rows in, kept)."""
    seen: set[tuple[str, str]] = set()
    kept, rows_in = [], 0
    with path.open("rb") as f:
        for line in f:
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                rows_in += 1
                continue
            negs = [unicodedata.normalize("NFC", n.strip()) for n in rec.get("neg") or [] if n and n.strip()]
            for pos in rec.get("pos") or [None]:
                rows_in += 1
                q = unicodedata.normalize("NFC", (rec.get("query") or "").strip())
                p = unicodedata.normalize("NFC", (pos or "").strip())
                if (not q or not p or q == p or too_long(q, LIMITS.max_query_tokens)
                        or too_long(p, LIMITS.max_passage_tokens) or p in negs):
                    continue
                if (q, p) in seen:
                    continue
                seen.add((q, p))
                kept.append((hashlib.md5(f"{q}\x1f{p}".encode()).hexdigest(), q, p, negs))
    with out.open("w", encoding="utf-8") as f:
        for pair_id, q, p, negs in kept:
            f.write(json.dumps({"pair_id": pair_id, "query": q, "pos": [p], "neg": negs}) + "\n")
    return rows_in, len(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        t = time.perf_counter()
        generate(data, args.rows)
        print(f"generated {args.rows:,d} pairs ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s")

        lake = Path(tmp) / "lake"
        src = Source(name="bench", uri=str(data))
        with warehouse.connect(lake) as con:
            t = time.perf_counter()
            load_file_source(con, src, Path(tmp))
            raw_s = time.perf_counter() - t
            stats = stage_source(con, src)
            ours_s = time.perf_counter() - t
            assert stats.balanced
            t = time.perf_counter()
            con.execute("create table raw.bare as select * from read_json($u, format = 'newline_delimited')",
                        {"u": str(data)})
            bare_s = time.perf_counter() - t

        t = time.perf_counter()
        rows_in, kept = python_baseline(data, Path(tmp) / "staged.jsonl")
        py_s = time.perf_counter() - t
        assert (rows_in, kept) == (stats.rows_in, stats.kept), ((rows_in, kept), stats)

    ours, py = stats.rows_in / ours_s, rows_in / py_s
    print(f"ours   (raw -> staged, lake)  : {ours_s:6.2f}s  {ours:12,.0f} rows/s  kept {stats.kept:,d}, "
          f"rejected {stats.rejected:,d}, duplicates {stats.duplicates:,d} (raw {raw_s:.2f}s, staged "
          f"{ours_s - raw_s:.2f}s)")
    print(f"python (jsonl loop)           : {py_s:6.2f}s  {py:12,.0f} rows/s  kept {kept:,d}")
    print(f"bare   (read_json into lake)  : {bare_s:6.2f}s  {stats.rows_in / bare_s:12,.0f} rows/s")
    print(f"RATIO staging rows/s ours/python = {ours / py:.2f}")
    print(f"RATIO staging time ours/bare-scan = {ours_s / bare_s:.2f}")


if __name__ == "__main__":
    main()
