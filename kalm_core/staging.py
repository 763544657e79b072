"""staged/<source>: run the per-source staging SQL (sql/staged/stg_source.sql) over raw.<source> (layer 1).

The SQL gives every raw row a disposition. Kept rows become staged.<source>; rejected rows and duplicates go
to the shared quarantine table staged.rejects with their reason, so rows in = kept + rejected + duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from kalm_core.catalog import Source
from kalm_core.config import ModelConfig
from kalm_core.identifiers import table
from kalm_core.token_length import TokenCounter, length_limits, load_tokenizer
from kalm_core.warehouse import transaction

STAGING_SQL = Path(str(files("kalm_core") / "sql" / "staged" / "stg_source.sql"))  # package data (sql/)

KEPT_COLUMNS = ("pair_id, source, row_number, positive_index, record_id, query, positive, negatives, "
                "task_type, instruction, language, is_held_out, teacher_pos_score, teacher_neg_scores, file, "
                "content_hash")
REJECTS_DDL = f"""create table if not exists {table('staged', 'rejects')} (
    source varchar, row_number bigint, positive_index bigint, record_id varchar, status varchar,
    reason varchar, duplicate_of varchar, query varchar, positive varchar, negatives varchar[],
    raw_record varchar, content_hash varchar, rejected_at timestamp)"""


@dataclass(frozen=True)
class StageStats:
    rows_in: int
    kept: int
    rejected: int
    duplicates: int
    reasons: dict[str, int]
    tokenized: int = 0  # texts whose token count the cheap bounds left open (token_length.TokenCounter)

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.kept + self.rejected + self.duplicates


def stage_source(con, src: Source, sql_text: str | None = None,
                 model: ModelConfig = ModelConfig()) -> StageStats:
    """raw.<src> -> staged.<src> (kept rows) + its rows of staged.rejects; returns the row accounting. Texts too
    long for `model`'s window (token_length.length_limits, counted by its tokenizer) are quarantined."""
    limits = length_limits(model)
    counter = TokenCounter(load_tokenizer(limits.tokenizer))
    counter.register(con)
    try:
        sql_text = sql_text if sql_text is not None else STAGING_SQL.read_text(encoding="utf-8")
        params = {
            "task_type": src.task_type, "instruction": src.instruction, "language": src.language,
            "is_held_out": src.held_out, "max_query_tokens": limits.max_query_tokens,
            "max_passage_tokens": limits.max_passage_tokens,
            "folder_task_types": src.folder_task_types,
        }
        con.execute(f"create or replace temp view raw_input as select * from {table('raw', src.name)}")
        con.execute(f"create or replace temp table _kalm_staged as {sql_text}", params)
        with transaction(con):  # the kept rows and the source's quarantine rows change together
            con.execute(
                f"create or replace table {table('staged', src.name)} as select {KEPT_COLUMNS} from _kalm_staged "
                "where status = 'kept'"
            )
            con.execute(REJECTS_DDL)
            con.execute(f"delete from {table('staged', 'rejects')} where source = ?", [src.name])
            con.execute(
                f"""insert into {table('staged', 'rejects')}
                select source, row_number, positive_index, record_id, status, reason,
                       case when status = 'duplicate' then pair_id end, query, positive, negatives, raw_record,
                       content_hash, current_localtimestamp()
                from _kalm_staged where status <> 'kept'"""
            )
        counts = dict(con.execute("select status, count(*) from _kalm_staged group by status").fetchall())
        reasons = dict(con.execute(
            "select reason, count(*) from _kalm_staged where status = 'rejected' group by reason order by 2 desc"
        ).fetchall())
        rows_in = con.execute(f"select count(*) from {table('raw', src.name)}").fetchall()[0][0]
        con.execute("drop table _kalm_staged")
    finally:
        counter.unregister(con)
    return StageStats(rows_in=rows_in, kept=counts.get("kept", 0), rejected=counts.get("rejected", 0),
                      duplicates=counts.get("duplicate", 0), reasons=reasons,
                      tokenized=counter.tokenized)


def accounting(con, name: str) -> dict[str, int]:
    """Recount a staged source from the tables themselves (used by the blocking asset checks), in one query."""
    rows_in, kept, rejected, duplicates = con.execute(f"""
        select (select count(*) from {table('raw', name)}), (select count(*) from {table('staged', name)}),
               count(*) filter (status = 'rejected'), count(*) filter (status = 'duplicate')
        from {table('staged', 'rejects')} where source = ?""", [name]).fetchall()[0]
    return {"rows_in": rows_in, "kept": kept, "rejected": rejected, "duplicates": duplicates}
