"""Task layouts as pairs: how each kind of public dataset becomes query / positive / negatives (KaLM §3.1).

KaLM trains on every MTEB task type, each turned into pairs with one instruction per task. A source's columns name
its layout (kalm_core.catalog.LAYOUTS) and one module converts it, each a plain function from the layout's rows to
the raw schema (schema.py), every record either a pair or kept out with its reason:

- labels.py: classification and clustering (text, label);
- nli.py: premise, hypothesis, label (SimCSE's triplets);
- sentence_pairs.py: sts (score), pair classification (label) and bitext;
- read.py: a file in any of these layouts, read with DuckDB, into raw.<source>.

Reranking needs no conversion: a query with lists of positives and negatives is the plain column mapping.
"""

from __future__ import annotations

import polars as pl

from kalm_core.catalog import Source
from kalm_core.sources import labels, nli, sentence_pairs
from kalm_core.sources.schema import LayoutError


def convert(frame: pl.DataFrame, src: Source, seed: int = 0) -> pl.DataFrame:
    """The layout's rows (ordinal, record_id, load_error, raw_record and the layout's columns) -> raw pairs."""
    if src.layout == "labels":
        return labels.to_pairs(frame, src.pairing, src.label_names, seed)
    if src.layout == "nli":
        return nli.to_pairs(frame, src.label_names)
    if src.layout == "sentence_pairs":
        return sentence_pairs.to_pairs(frame, src.task_type, src.min_score)
    raise LayoutError(f"source {src.name!r} has no task layout to convert")


def data_present(src: Source, base_dir) -> bool:
    """Whether a source's data is here: a file that matches, an installed package set, a cached MTEB split."""
    import glob

    from kalm_core import extract
    from kalm_core.sources import mteb_source

    if src.kind == "python-docs":
        return True
    if src.kind == "mteb":
        return mteb_source.is_present(src, base_dir)
    try:
        extract.file_fingerprint(src, base_dir)
    except (OSError, extract.SourceError):
        return False
    uri = src.resolved_uri(base_dir) if src.uri else ""
    return src.kind == "sql" or "://" in uri or bool(glob.glob(uri, recursive=True))
