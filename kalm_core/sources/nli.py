"""NLI rows (premise, hypothesis, label) as SimCSE's triplets (KaLM §3.1 trains on NLI as SimCSE does).

Query = the premise, positive = a hypothesis it entails, negatives = the hypotheses that contradict the same
premise. A neutral hypothesis is neither and is kept out with that reason; a contradiction is kept out as a
record, having become a negative of its premise's entailed pairs. Integer labels follow the hub's NLI datasets
(SNLI, MNLI, XNLI): 0 entailment, 1 neutral, 2 contradiction, -1 no gold label; `label_names` overrides the order.
"""

from __future__ import annotations

import polars as pl

from kalm_core.sources.schema import as_pairs

NLI_LABELS = ["entailment", "neutral", "contradiction"]


def to_pairs(frame: pl.DataFrame, names: list[str] | None = None) -> pl.DataFrame:
    names = [n.lower() for n in (names or NLI_LABELS)]
    label = pl.col("label").str.strip_chars()
    index = label.cast(pl.Int64, strict=False)
    kind = (pl.when(index.is_not_null())
            .then(index.replace_strict(list(range(len(names))), names, default=None, return_dtype=pl.Utf8))
            .otherwise(label.str.to_lowercase()))
    frame = frame.with_columns(kind.alias("kind"))
    live = pl.col("load_error").is_null()
    contradictions = (frame.filter(live & (pl.col("kind") == "contradiction") & pl.col("hypothesis").is_not_null())
                      .group_by("premise").agg(pl.col("hypothesis").unique(maintain_order=True).alias("negatives")))
    entailed = frame.filter(live & (pl.col("kind") == "entailment")).select("premise").unique()
    frame = (frame.join(contradictions, on="premise", how="left", nulls_equal=False)
             .join(entailed.with_columns(pl.lit(True).alias("has_entailed")), on="premise", how="left"))
    kept_out = (pl.when(pl.col("kind") == "entailment").then(None)
                .when(pl.col("label").is_null()).then(pl.lit("no label"))
                .when(index == -1).then(pl.lit("no gold label (-1): annotators did not agree"))
                .when(pl.col("kind") == "neutral")
                .then(pl.lit("neutral: the premise neither entails nor contradicts it"))
                .when((pl.col("kind") == "contradiction") & pl.col("has_entailed").fill_null(False))
                .then(pl.lit("contradiction: a negative of its premise's entailed pairs"))
                .when(pl.col("kind") == "contradiction")
                .then(pl.lit("contradiction whose premise entails no hypothesis: no pair to be a negative of"))
                .otherwise(pl.format("label {} is not one of {}", pl.col("label"), pl.lit(", ".join(names)))))
    return as_pairs(frame, pl.col("premise"), pl.col("hypothesis"),
                    pl.col("negatives").fill_null(pl.lit([], pl.List(pl.Utf8))), kept_out)
