"""One epoch's batches built in the lake, in bounded memory (#23 item 6; KaLM §3.2 technique (4)).

Batching needs, per row, only its group, copy, pair and the hashes of its texts (kalm_core/batching.py `assign`):
those are read from the epoch's relation (kalm_core/mixing.py `epoch_sql`), never its texts. The batches, the pairs
left over are then written by DuckDB joining the placement back to the epoch's rows (and the training snapshot by
kalm_core/snapshot.py), so a million pairs with their negatives never sit in Python at once.
"""

from __future__ import annotations

import polars as pl

from kalm_core.batching import BatchStats, assign, batch_keys_sql
from kalm_core.config import BatchConfig
from kalm_core.identifiers import table

PLACED = "_kalm_placed"  # the registered placement: pair_id, copy, batch_id, position


def place(con, epoch: str, params: dict, cfg: BatchConfig,
          world_size: int = 1) -> tuple[pl.DataFrame, pl.DataFrame, BatchStats]:
    """The epoch's rows placed in batches: (pair_id, copy, batch_id, position), the per-batch purity, the stats."""
    keys = con.execute(f"select {batch_keys_sql(cfg.group_by)} from ({epoch}) order by pair_id, copy", params).pl()
    placed, purity, stats = assign(keys, cfg, world_size)
    rows = keys.select("pair_id", "copy")[placed["row"]]
    return rows.with_columns(placed["batch_id"], placed["position"]), purity, stats


def left_over_reason(rows: int, global_batch: int) -> str:
    return (f"short of a global batch: {rows} rows were left once every group's remainder had been pooled into "
            f"mixed batches of {global_batch}")


def write(con, epoch: str, params: dict, placed: pl.DataFrame, stats: BatchStats, global_batch: int) -> None:
    """batched.batches (batch_id, position, the epoch's columns; in batch order) and batched.left_over (the epoch's
    rows in no batch, with the reason), joined in DuckDB from the placement."""
    con.register(PLACED, placed.to_arrow())
    try:
        con.execute(f"""create or replace table {table('batched', 'batches')} as
                        select p.batch_id, p.position, e.* from ({epoch}) e join {PLACED} p using (pair_id, copy)
                        order by p.batch_id, p.position""", params)
        con.execute(f"""create or replace table {table('batched', 'left_over')} as
                        select e.*, $reason as reason from ({epoch}) e anti join {PLACED} p using (pair_id, copy)
                        order by pair_id, copy""",
                    {**params, "reason": left_over_reason(stats.rows_left_over, global_batch)})
    finally:
        con.unregister(PLACED)


def repeated_texts(con, batches: str = table("batched", "batches")) -> int:
    """Texts that appear more than once inside their batch, summed over batches (masked in the loss)."""
    return con.execute(f"""select count(*) from (
                               select batch_id, hash(text) from (select batch_id, unnest(list_concat(
                                   [query, positive], negatives)) as text from {batches})
                               group by all having count(*) > 1)""").fetchone()[0]
