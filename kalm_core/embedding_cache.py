"""An embedding cache keyed by (model id, text hash), in parquet beside the warehouse.

A rebuild after one source changes encodes only the texts it has not seen with that model. Each part is written
under a temporary name and renamed, so a killed run leaves no half-written part; a damaged part (from a disk
that filled up, say) is named in a warning, set aside and its texts encoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
SCHEMA = {"text_hash": pl.Utf8, "vector": pl.List(pl.Float32)}


def model_id(path: str) -> str:
    """A model's identity: its path plus the size and mtime of its weight files (retraining in place changes it)."""
    h = hashlib.sha256(str(Path(path).resolve() if Path(path).exists() else path).encode())
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def text_hash(kind: str, text: str) -> str:
    return hashlib.md5(f"{kind}\x1f{text}".encode()).hexdigest()


def text_hashes(kind: str, texts: pl.Series) -> pl.DataFrame:
    """text_hash of every text, in order, as a frame with one column `text_hash` (DuckDB's md5, multi-threaded)."""
    con = duckdb.connect()
    con.register("texts", pl.DataFrame({"text": texts}).to_arrow())
    return con.execute("select md5($kind || chr(31) || text) as text_hash from texts", {"kind": kind}).pl()


def encoder_id(model: str, config=None) -> str:
    """The cache key's model part: the weights (model_id) and every setting that changes a vector (pooling,
    normalisation, maximum lengths, the query template, the projection)."""
    if config is None:
        return model_id(model)
    knobs = [f"{k}={getattr(config, k)!r}" for k in VECTOR_SETTINGS]
    return hashlib.sha256("\x1f".join([model_id(model), *knobs]).encode()).hexdigest()[:16]


VECTOR_SETTINGS = ("pooling", "normalize", "query_max_len", "passage_max_len", "query_template", "projection")


class EmbeddingCache:
    def __init__(self, root: str | Path, model: str, config=None):
        self.dir = Path(root) / encoder_id(model, config)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.damaged: list[Path] = []

    chunk_texts = 16_384  # texts per part: a killed encode keeps every chunk written before it, and resumes after

    def encode(self, texts: pl.Series | list[str], kind: str,
               encode_fn: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, int]:
        """Embeddings of `texts` (kind: 'query' or 'passage'); returns (matrix, number newly encoded). The texts not
        cached are encoded and written a chunk at a time (`chunk_texts` per part), so a run killed mid-encode
        resumes from its last written chunk; hashes are computed in DuckDB and the matrix gathered by a join, so
        Python holds one chunk's texts at a time, never a list of all of them."""
        texts = pl.Series("text", texts, dtype=pl.Utf8)
        if texts.is_empty():
            return np.zeros((0, 0), dtype=np.float32), 0
        order = text_hashes(kind, texts)
        parts = self.parts()
        found = (pl.scan_parquet(parts).join(order.lazy().unique(), on="text_hash", how="semi")
                 .unique("text_hash").collect() if parts else pl.DataFrame(schema=SCHEMA))
        # each text not cached, once: its first position in `texts`
        missing = (order.with_row_index("i").join(found.select("text_hash"), on="text_hash", how="anti")
                   .unique("text_hash", keep="first", maintain_order=True)["i"].to_numpy())
        frames = [found]
        for start in range(0, len(missing), self.chunk_texts):
            chunk = missing[start:start + self.chunk_texts]
            new = encode_fn(texts.gather(chunk).to_list()).astype(np.float32)
            part = pl.DataFrame({"text_hash": order["text_hash"].gather(chunk), "vector": list(new)}, schema=SCHEMA)
            name = f"part-{uuid.uuid4().hex}.parquet"
            tmp = self.dir / f".{name}.{os.getpid()}.tmp"
            part.write_parquet(tmp)
            tmp.replace(self.dir / name)
            frames.append(part)
        vectors = order.join(pl.concat(frames), on="text_hash", how="left", maintain_order="left")["vector"]
        dim = len(vectors[0])
        return vectors.list.to_array(dim).to_numpy().astype(np.float32, copy=False), len(missing)

    def parts(self) -> list[Path]:
        """The readable parts; a damaged one is renamed `*.damaged` (kept for inspection) and named in a warning."""
        good = []
        for part in sorted(self.dir.glob("part-*.parquet")):
            try:
                pq.ParquetFile(part).metadata  # reads the footer: a truncated file has none
                good.append(part)
            except Exception as e:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
                log.warning("embedding cache part %s is damaged (%s): set aside, its texts will be encoded again",
                            part, e)
                part.replace(part.with_name(part.name + ".damaged"))
                self.damaged.append(part)
        return good
