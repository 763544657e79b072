"""The data mix: how many pairs of each source one epoch trains on (#23 item 1).

KaLM trains on 70+ sources whose sizes differ by three orders of magnitude. Left alone, a source's share is its
size; temperature sampling (as in multilingual pre-training mixes) flattens that: source i gets a share in
proportion to w_i * n_i^(1/T), with n_i its available pairs and w_i its catalogue `weight`. T = 1 is proportional,
a large T close to uniform. `mix.total` sets the pairs per epoch (default: every available pair once).

A source sampled above its size is upsampled: its pairs are repeated, each copy a whole pass over the source
before the next begins, so copies of one pair sit n_i rows apart and the batcher, which defers a row whose texts
are already in the batch, puts them in different batches. Which pairs a downsampled source keeps is a hash of
the pair id and the seed: deterministic, independent of file order, spread over every shard.
"""

from __future__ import annotations

import polars as pl

from kalm_core.config import MixConfig
from kalm_core.identifiers import table


class MixError(ValueError):
    pass


def plan(available: dict[str, int], weights: dict[str, float], cfg: MixConfig) -> dict[str, int]:
    """Pairs sampled per source: `total` split in proportion to w_i * n_i^(1/T), rounded by largest remainder
    (the counts sum to `total` exactly). A source with no pairs or weight 0 gets none."""
    if cfg.temperature <= 0:
        raise MixError(f"mix.temperature must be > 0, got {cfg.temperature}")
    if any(w < 0 for w in weights.values()):
        raise MixError(f"source weights must be >= 0: {weights}")
    mass = {s: weights.get(s, 1.0) * n ** (1.0 / cfg.temperature) if n > 0 else 0.0 for s, n in available.items()}
    whole = sum(mass.values())
    total = sum(available.values()) if cfg.total is None else cfg.total
    if whole == 0 or total == 0:
        return {s: 0 for s in available}
    exact = {s: total * m / whole for s, m in mass.items()}
    out = {s: int(x) for s, x in exact.items()}
    by_remainder = sorted(exact, key=lambda s: (-(exact[s] - out[s]), s))
    for s in by_remainder[:total - sum(out.values())]:
        out[s] += 1
    return out


def mix_table(con, pairs_table: str, weights: dict[str, float], cfg: MixConfig) -> pl.DataFrame:
    """One row per source of `pairs_table` and per weighted source with no pairs: (source, task_type, language,
    available, weight, sampled, share, repeats)."""
    rows = con.execute(f"""select source, string_agg(distinct task_type, ', ' order by task_type),
                                  string_agg(distinct language, ', ' order by language), count(*)
                           from {pairs_table} group by source order by source""").fetchall()
    info = {r[0]: r[1:] for r in rows}
    for s in weights:
        info.setdefault(s, (None, None, 0))
    sampled = plan({s: v[2] for s, v in info.items()}, weights, cfg)
    total = sum(sampled.values()) or 1
    return pl.DataFrame([
        {"source": s, "task_type": t, "language": lang, "available": n, "weight": weights.get(s, 1.0),
         "sampled": sampled[s], "share": sampled[s] / total, "repeats": -(-sampled[s] // n) if n else 0}
        for s, (t, lang, n) in sorted(info.items())
    ], schema={"source": pl.Utf8, "task_type": pl.Utf8, "language": pl.Utf8, "available": pl.Int64,
               "weight": pl.Float64, "sampled": pl.Int64, "share": pl.Float64, "repeats": pl.Int64})


def epoch_sql(pairs_table: str, mix: str = table("marts", "data_mix")) -> str:
    """The pairs of one epoch (parameter $seed): each source's `sampled` rows of `pairs_table` per the `mix` table,
    with a `copy` column (0 for a pair's first use). Copy c of a source's pairs comes in full before copy c + 1.
    The draw ranks pair ids alone and joins the wide rows once, so a million pairs never sort their texts."""
    return f"""
        with draws as (
            select pair_id, source,
                   row_number() over (partition by source order by md5(pair_id || ':' || $seed)) - 1 as draw,
                   count(*) over (partition by source) as available
            from {pairs_table} where source in (select source from {mix} where sampled > 0)),
        picked as (
            select d.pair_id, c.copy
            from draws d join {mix} m using (source),
                 lateral (select unnest(range(cast(ceil(m.sampled / d.available) as bigint))) as copy) c
            where c.copy * d.available + d.draw < m.sampled)
        select p.*, picked.copy from {pairs_table} p join picked using (pair_id)"""


def sample(con, pairs_table: str, mix: str = table("marts", "data_mix"), seed: int = 0) -> pl.DataFrame:
    """epoch_sql's rows as a frame, ordered by pair_id and copy."""
    return con.execute(f"{epoch_sql(pairs_table, mix)} order by pair_id, copy", {"seed": str(seed)}).pl()
