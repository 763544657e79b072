"""The raw schema every layout converter returns, and the one way a layout row becomes it."""

from __future__ import annotations

import polars as pl

# one row per record, in record order (kalm_core/extract.py writes it into raw.<source>)
PAIR_SCHEMA = {"ordinal": pl.Int64, "query": pl.Utf8, "positives": pl.List(pl.Utf8), "negatives": pl.List(pl.Utf8),
               "record_id": pl.Utf8, "load_error": pl.Utf8, "raw_record": pl.Utf8, "kept_out": pl.Utf8}
NO_TEXTS = pl.lit([], pl.List(pl.Utf8))


class LayoutError(ValueError):
    """The source's rows cannot be converted as its catalogue entry says; the message says what to set."""


def as_pairs(frame: pl.DataFrame, query: pl.Expr, positive: pl.Expr, negatives: pl.Expr,
             kept_out: pl.Expr) -> pl.DataFrame:
    """The raw schema from a layout frame (ordinal, record_id, load_error, raw_record, ...): a malformed or kept-out
    record keeps its original text and makes no pair; a pair keeps no copy of it."""
    frame = frame.with_columns(pl.when(pl.col("load_error").is_null()).then(kept_out).alias("kept_out"))
    out = pl.col("kept_out").is_not_null() | pl.col("load_error").is_not_null()
    return frame.with_columns(
        pl.when(out).then(None).otherwise(query).alias("query"),
        pl.when(out).then(NO_TEXTS).otherwise(pl.concat_list(positive)).alias("positives"),
        pl.when(out).then(NO_TEXTS).otherwise(negatives).alias("negatives"),
        pl.when(out).then(pl.col("raw_record")).otherwise(None).alias("raw_record"),
    ).select(list(PAIR_SCHEMA)).cast(PAIR_SCHEMA).sort("ordinal")
