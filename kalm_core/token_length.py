"""Staging's length limits in tokens of the profile's own tokenizer (#22 item 5), not characters.

English runs at ~4 characters per token, Chinese at ~1 to 1.5, so a character limit either lets long Chinese
texts through or drops good English ones. KaLM §3.1 truncates at the model's window; a text longer than
TRUNCATION_CAP windows would lose most of itself to that truncation, and staging quarantines it instead.

Tokenising every text is the expensive part (~3.5M characters/s on two cores), so a text is tokenised only when
cheap bounds cannot decide (`TokenCounter.over`):
- at most one token per UTF-8 byte (WordPiece and BPE tokens each cover at least one byte; a SentencePiece-style
  word-start marker can add one more per word, so those tokenizers get two per byte): short texts pass untouched;
- at least one token per whitespace-separated word, where the tokenizer's pre-tokenizer splits on whitespace;
- a long text is judged on a whole-word prefix first: when that prefix alone is over the limit, so is the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from kalm_core.config import ModelConfig, resolve_model_path

TRUNCATION_CAP = 4  # a text over 4 windows keeps under a quarter of itself: quarantined, not truncated
PREFIX_CHARS_PER_TOKEN = 8  # a long text's prefix of 8 characters per limit token decides most texts alone


@dataclass(frozen=True)
class LengthLimits:
    """(query, passage) token limits and the tokenizer that counts them: one source of truth, the model config."""

    tokenizer: str
    max_query_tokens: int
    max_passage_tokens: int


def length_limits(model: ModelConfig) -> LengthLimits:
    return LengthLimits(model.base_model, model.query_max_len * TRUNCATION_CAP,
                        model.passage_max_len * TRUNCATION_CAP)


class TokenizerLoadError(RuntimeError):
    """The profile's tokenizer is not on this machine (offline, not in the Hugging Face cache)."""


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """The model's fast tokenizer: its tokenizer.json read by `tokenizers` (0.05 s; transformers' AutoTokenizer
    costs 3 s of imports per staging step), else transformers' AutoTokenizer (a model shipping only a slow one)."""
    from tokenizers import Tokenizer

    path = resolve_model_path(name)
    try:
        if (Path(path) / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        if not Path(path).exists():
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import RemoteEntryNotFoundError

            try:  # the Hugging Face cache, or the hub when it is reachable
                return Tokenizer.from_file(hf_hub_download(path, "tokenizer.json"))
            except RemoteEntryNotFoundError:  # the repository has no tokenizer.json
                pass
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise TokenizerLoadError(
            f"staging counts text lengths in tokens of {name!r} (the profile's model.base_model) and cannot load "
            f"its tokenizer: {str(e).rstrip('.')}. Offline, put the model in the Hugging Face cache or point "
            f"base_model at a local copy") from None


class TokenCounter:
    """Decides `token count > limit` for many texts, tokenising only those the bounds leave open."""

    def __init__(self, tokenizer):
        """`tokenizer`: a `tokenizers.Tokenizer` or a transformers fast tokenizer."""
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        # the Rust tokenizer (batch encoding without Python objects), copied: a saved one may pad and truncate
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()
        self.specials = len(self.backend.encode("").ids)  # what encoding adds around any text
        model_kind = type(self.backend.model).__name__
        pre = type(self.backend.pre_tokenizer).__name__ if self.backend.pre_tokenizer is not None else ""
        self.tokens_per_byte = 1 if model_kind in ("WordPiece", "BPE") and "Metaspace" not in pre else 2
        self.splits_words = self._splits_on_whitespace()
        self.tokenized = 0  # texts the bounds could not decide (for the metadata and the benchmark)

    def _splits_on_whitespace(self) -> bool:
        """Whether no token spans a space: then a text has at least as many tokens as words."""
        if self.backend.pre_tokenizer is None:
            return False
        probe = "alpha beta\tgamma\ndelta  epsilon"
        return len(self.backend.pre_tokenizer.pre_tokenize_str(probe)) >= 5

    def count(self, texts: list[str]) -> list[int]:
        """Exact token counts, special tokens included (what the model's window holds)."""
        self.tokenized += len(texts)
        return [len(e.ids) for e in self.backend.encode_batch_fast(texts, add_special_tokens=True)]

    def over(self, texts: pa.Array, limit: int) -> pa.Array:
        """Boolean per text: more than `limit` tokens (null text: null)."""
        texts = texts.cast(pa.large_string())
        max_tokens = pc.add(pc.multiply(pc.binary_length(texts.cast(pa.large_binary())), self.tokens_per_byte),
                            self.specials)
        open_ = pc.greater(max_tokens, limit)
        if self.splits_words:
            min_tokens = pc.add(pc.count_substring_regex(texts, r"\S+"), self.specials)
            decided_over = pc.greater(min_tokens, limit)
            open_ = pc.and_(open_, pc.invert(decided_over))
        else:
            decided_over = pc.equal(max_tokens, -1)  # all false
        result = decided_over.to_pylist()
        idx = pc.indices_nonzero(pc.fill_null(open_, False)).to_pylist()
        if idx:
            for i, is_over in zip(idx, self._over_exact(pc.take(texts, pa.array(idx)).to_pylist(), limit)):
                result[i] = is_over
        return pa.array(result, pa.bool_())

    def _over_exact(self, texts: list[str], limit: int) -> list[bool]:
        cut = limit * PREFIX_CHARS_PER_TOKEN
        heads = {}
        if self.splits_words:  # a prefix of whole words has no more tokens than the text it starts
            for i, t in enumerate(texts):
                if len(t) > cut and (end := t.rfind(" ", 0, cut)) > 0:
                    heads[i] = t[:end]
        verdict: list[bool | None] = [None] * len(texts)
        if heads:
            for i, n in zip(heads, self.count(list(heads.values()))):
                if n > limit:
                    verdict[i] = True
        rest = [i for i, v in enumerate(verdict) if v is None]
        for i, n in zip(rest, self.count([texts[i] for i in rest])):
            verdict[i] = n > limit
        return verdict  # type: ignore[return-value]

    def unregister(self, con, name: str = "kalm_over_tokens") -> None:
        con.remove_function(f"{name}_udf_{id(self):x}")

    def register(self, con, name: str = "kalm_over_tokens") -> None:
        """`name(text, limit) -> boolean` on a DuckDB connection: a macro that settles a text short enough in bytes
        in SQL, and hands only the others to a vectorised Arrow UDF (a UDF call per text doubled staging's time).
        `unregister` removes the UDF: a process's lake connections share one DuckDB instance (warehouse.py)."""
        import duckdb

        udf = f"{name}_udf_{id(self):x}"  # functions belong to the instance, which a cursor shares: one per counter
        try:
            con.create_function(
                udf, lambda texts, limits: self.over(texts, limits[0].as_py() if len(limits) else 0),
                [duckdb.sqltypes.VARCHAR, duckdb.sqltypes.INTEGER], duckdb.sqltypes.BOOLEAN, type="arrow",
                null_handling="special")
        except duckdb.CatalogException:  # this counter's, registered already through another cursor
            pass
        con.execute(f"create or replace temp macro {name}(t, lim) as case when strlen(t) * {self.tokens_per_byte} "
                    f"+ {self.specials} <= lim then false else {udf}(t, lim) end")
