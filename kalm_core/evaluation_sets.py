"""The evaluation sets a profile names, as the texts training must not contain (#23 item 2: decontamination against
every evaluation set, not only the held-out split).

`EvalConfig.beir_folders` (every qrels split the evaluation scores) and `EvalConfig.mteb_tasks` (each task's
evaluation splits, where its data is in the Hugging Face cache) give their queries and relevant documents (a
retrieval or reranking set) or their texts (classification, clustering, STS, pair classification, bitext). A task
whose data is not present is named with the reason, never a silent gap; `marts.evaluation_texts` normalises the
texts with the held-out split's, and `marts.contamination` compares training pairs with all of them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl

from kalm_core.extract import SourceError

SCHEMA = {"source": pl.Utf8, "kind": pl.Utf8, "text": pl.Utf8}
TEXT_COLUMNS = ("text", "sentence1", "sentence2", "sentences", "query")  # the texts of a non-retrieval set


def beir_texts(con, folder: Path) -> pl.DataFrame:
    """A BEIR folder's queries and relevant passages (title and text, as mteb joins them) over every qrels split."""
    qrels = sorted((folder / "qrels").glob("*.tsv"))
    if not (folder / "corpus.jsonl").is_file() or not (folder / "queries.jsonl").is_file() or not qrels:
        raise SourceError(f"{folder} is not a BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    relevant = """select distinct "query-id" as q, "corpus-id" as d from read_csv($qrels, delim = '\t', header = true,
                  auto_detect = false, columns = {'query-id': 'VARCHAR', 'corpus-id': 'VARCHAR', 'score': 'DOUBLE'})
                  where score > 0"""
    return con.execute(f"""
        with relevant as ({relevant}),
        queries as (select _id::varchar as id, text from read_json($queries, format = 'newline_delimited',
                                                                  columns = {{'_id': 'VARCHAR', 'text': 'VARCHAR'}})),
        corpus as (select _id::varchar as id, trim(concat_ws(' ', nullif(trim(title), ''), text)) as passage
                   from read_json($corpus, format = 'newline_delimited',
                                  columns = {{'_id': 'VARCHAR', 'title': 'VARCHAR', 'text': 'VARCHAR'}}))
        select 'query' as kind, text from queries where id in (select q from relevant)
        union all
        select 'relevant text', passage from corpus where id in (select d from relevant)""",
                       {"qrels": [str(p) for p in qrels], "queries": str(folder / "queries.jsonl"),
                        "corpus": str(folder / "corpus.jsonl")}).pl()


def mteb_texts(con, task: str) -> pl.DataFrame:
    """An MTEB task's evaluation splits, read from the Hugging Face cache (a SourceError with the fetch command when
    they are not there)."""
    from kalm_core.catalog import Source
    from kalm_core.sources import mteb_source

    data = mteb_source.task_data(task)
    src = Source(name=re.sub(r"\W", "_", task), kind="mteb", task=task, task_type=data.task_type,
                 min_score=0 if data.task_type == "sts" else None)
    folder = mteb_source.local_copy(src, data, Path("."))
    if data.task_type == "retrieval":
        return beir_texts(con, folder)
    frames = []
    for split in data.eval_splits:
        df, _ = mteb_source.read_split(folder, split)
        if data.task_type == "reranking":  # query, its positives (its negatives are no evaluation target)
            frames.append(df.select(pl.lit("query").alias("kind"), pl.col("query").alias("text")))
            frames.append(df.select(pl.lit("relevant text").alias("kind"), pl.col("positive").alias("text"))
                          .explode("text"))
            continue
        for column in (c for c in TEXT_COLUMNS if c in df.columns):
            texts = df.select(pl.col(column).alias("text"))
            if isinstance(texts.schema["text"], pl.List):  # mteb's clustering and per-set pair layouts
                texts = texts.explode("text")
            frames.append(texts.select(pl.lit("query").alias("kind"), pl.col("text").cast(pl.Utf8)))
    return pl.concat(frames) if frames else pl.DataFrame(schema={"kind": pl.Utf8, "text": pl.Utf8})


def read(con, beir_folders: tuple[str, ...], mteb_tasks: list[str]) -> tuple[pl.DataFrame, dict[str, str]]:
    """Every named set's texts (source = the folder's or the task's name), and for each set left out, why."""
    frames, missing = [], {}
    sets = [(Path(f).name, lambda f=f: beir_texts(con, Path(f))) for f in beir_folders]
    sets += [(t, lambda t=t: mteb_texts(con, t)) for t in mteb_tasks]
    for name, texts in sets:
        try:
            frames.append(texts().with_columns(source=pl.lit(name)).select(*SCHEMA))
        except SourceError as e:
            missing[name] = str(e)
    out = pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMA)
    return out.filter(pl.col("text").is_not_null()).unique(maintain_order=True), missing


def fingerprint(beir_folders: tuple[str, ...], mteb_tasks: tuple[str, ...]) -> str:
    """The data version of the named sets: each BEIR folder's files (path, size, change time) and each task name with
    whether its data is in the Hugging Face cache (fetching it changes the version)."""
    h = hashlib.sha256()
    for folder in beir_folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    if mteb_tasks:
        from huggingface_hub import constants

        # the cached datasets' revisions: two directory listings, where scan_cache_dir would stat every cached file
        # on every observation (each `kalm run`, each sensor tick)
        cache = Path(constants.HF_HUB_CACHE)
        cached = sorted(f"{d.name}@{rev.name}" for d in cache.glob("datasets--*") if (d / "snapshots").is_dir()
                        for rev in (d / "snapshots").iterdir())
        h.update(repr((mteb_tasks, cached)).encode())
    return h.hexdigest()[:16]
