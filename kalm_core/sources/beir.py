"""BEIR-format retrieval data as pairs (KaLM §3.1's retrieval sources; the layout BEIR, mteb's retrieval tasks and
MS MARCO's BEIR release publish): a folder with `corpus.jsonl` ({_id, title, text}), `queries.jsonl` ({_id, text})
and `qrels/<split>.tsv` (query-id, corpus-id, score, with a header line).

One record per query of the split's qrels: query = its text, positives = the passages it judged relevant
(score > 0), given negatives = those it judged not relevant (score <= 0), passage = title and text, as mteb joins
them. A query without text, or none of whose relevant passages is in the corpus, is kept out with the reason.
The join runs in DuckDB: a 1M-passage corpus never passes through Python.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from kalm_core.catalog import Source
from kalm_core.extract import RawStats, SourceError, write_raw

CORPUS, QUERIES = "corpus.jsonl", "queries.jsonl"


def beir_files(folder: Path, split: str) -> dict[str, Path]:
    """The folder's three files for `split`, or a SourceError naming what is missing and the splits there are."""
    files = {"corpus": folder / CORPUS, "queries": folder / QUERIES, "qrels": folder / "qrels" / f"{split}.tsv"}
    missing = [str(p.relative_to(folder)) for p in files.values() if not p.is_file()]
    if missing:
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise SourceError(f"{folder} is not a BEIR-format folder for split {split!r}: missing {', '.join(missing)}"
                          + (f" (qrels splits there: {', '.join(splits)})" if splits else ""))
    return files


def fingerprint(folder: Path, split: str) -> str:
    """The data version: the three files' names and bytes."""
    h = hashlib.sha256()
    for path in beir_files(folder, split).values():
        h.update(str(path).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def load_beir_source(con, src: Source, base_dir: Path) -> RawStats:
    """raw.<name> from a BEIR folder's split: one record per query in its qrels."""
    folder = Path(src.resolved_uri(base_dir))
    files = beir_files(folder, src.beir_split)
    text = "{'_id': 'VARCHAR', 'title': 'VARCHAR', 'text': 'VARCHAR'}"
    try:
        con.execute(f"""create or replace temp table _beir_corpus as
            select _id as id, nullif(trim(concat_ws(' ', nullif(trim(title), ''), text)), '') as passage
            from read_json($f, format = 'newline_delimited', columns = {text})""", {"f": str(files["corpus"])})
        con.execute("""create or replace temp table _beir_queries as
            select _id as id, text from read_json($f, format = 'newline_delimited',
                                                   columns = {'_id': 'VARCHAR', 'text': 'VARCHAR'})""",
                    {"f": str(files["queries"])})
        con.execute("""create or replace temp table _beir_qrels as
            select * from read_csv($f, delim = '\t', header = true, auto_detect = false,
                columns = {'query_id': 'VARCHAR', 'corpus_id': 'VARCHAR', 'score': 'DOUBLE'})""",
                    {"f": str(files["qrels"])})
    except Exception as e:  # duckdb.Error: a malformed line, a missing field
        raise SourceError(f"source {src.name!r}: {folder} could not be read as BEIR ({str(e)[:300]})") from None
    con.execute("""create or replace temp table _kalm_norm as
        with judged as (
            select r.query_id, r.rowid as line, r.score, r.corpus_id, c.passage
            from _beir_qrels r left join _beir_corpus c on c.id = r.corpus_id
        ),
        per_query as (
            select query_id, min(line) as first_line,
                   list(passage order by line) filter (score > 0 and passage is not null) as positives,
                   list(passage order by line) filter (score <= 0 and passage is not null) as negatives,
                   count(*) filter (score > 0) as relevant,
                   list(corpus_id order by line) as judged_ids
            from judged group by query_id
        )
        select row_number() over (order by p.first_line) as ordinal,
               case when kept_out is null then q.text end as query,
               case when kept_out is null then coalesce(p.positives, []) else [] end as positives,
               case when kept_out is null then coalesce(p.negatives, []) else [] end as negatives,
               p.query_id as record_id,
               cast(null as varchar) as load_error,
               case when kept_out is not null then to_json({'query-id': p.query_id, 'corpus-ids': p.judged_ids,
                                                            'query': q.text})::varchar end as raw_record,
               kept_out
        from per_query p left join _beir_queries q on q.id = p.query_id,
        lateral (select case
            when q.text is null then 'query id ' || p.query_id || ' is not in queries.jsonl'
            when p.relevant = 0 then 'no passage judged relevant (score > 0) in the qrels'
            when len(coalesce(p.positives, [])) = 0 then 'none of its relevant passages is in corpus.jsonl'
        end as kept_out)""")
    n_queries = con.execute("select count(*) from _kalm_norm").fetchall()[0][0]
    if n_queries == 0:
        raise SourceError(f"source {src.name!r}: {files['qrels']} holds no judgements")
    stats = write_raw(con, src)
    con.execute("drop table if exists _beir_corpus; drop table if exists _beir_queries; "
                "drop table if exists _beir_qrels")
    return replace(stats, file_records=n_queries)
