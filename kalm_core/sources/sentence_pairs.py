"""Sentence pairs (sentence1, sentence2) as pairs: STS by score, pair classification by label, bitext as given
(KaLM §3.1). Query = sentence1, positive = sentence2; these symmetric tasks carry no instruction
(kalm_core/prompts.py). A pair below the bar is kept out with its score or label, never trained on."""

from __future__ import annotations

import polars as pl

from kalm_core.sources.schema import NO_TEXTS, as_pairs

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no", "-1")


def to_pairs(frame: pl.DataFrame, task_type: str, min_score: float | None = None) -> pl.DataFrame:
    if task_type == "sts":
        score = pl.col("score").str.strip_chars().cast(pl.Float64, strict=False)
        kept_out = (pl.when(pl.col("score").is_null()).then(pl.lit("no score"))
                    .when(score.is_null()).then(pl.format("score {} is not a number", pl.col("score")))
                    .when(score < min_score)
                    .then(pl.format("score {} below min_score {}", pl.col("score"), pl.lit(min_score))))
    elif task_type == "pair_classification":
        label = pl.col("label").str.strip_chars().str.to_lowercase()
        kept_out = (pl.when(label.is_in(_TRUE)).then(None)
                    .when(label.is_null()).then(pl.lit("no label"))
                    .when(label.is_in(_FALSE)).then(pl.format("label {}: not a positive pair", pl.col("label")))
                    .otherwise(pl.format("label {} is not 0 or 1", pl.col("label"))))
    else:  # bitext: a sentence and its translation
        kept_out = pl.lit(None, pl.Utf8)
    return as_pairs(frame, pl.col("sentence1"), pl.col("sentence2"), NO_TEXTS, kept_out)
