"""Staging's length limits count tokens of the profile's tokenizer (#22 item 5): the cheap bounds never change a
verdict, Chinese is counted as Chinese, and a missing tokenizer is one clear error."""

import random

import polars as pl
import pyarrow as pa
import pytest

from kalm_core.catalog import Source
from kalm_core.config import BUNDLED_MINILM, ModelConfig, resolve_model_path
from kalm_core.extract import load_frame_source
from kalm_core.staging import stage_source
from kalm_core.token_length import TokenCounter, TokenizerLoadError, length_limits, load_tokenizer

WORDS = ("the of retrieval model embedding passage query internationalization dataset 检索 模型 中文文本 ？ ，"
         " x\ty naïve 12345").split(" ")


def _texts(n: int, seed: int = 0) -> list[str | None]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 600))) for _ in range(n)]
    return texts + ["中" * 700, "中" * 300, "x" * 3000, "word " * 2000, None, ""]


def _metaspace_tokenizer():
    """A SentencePiece-style BPE (word-start marker, no byte fallback bound of one token per byte)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator([" ".join(WORDS)] * 8, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")


@pytest.fixture(params=["wordpiece", "byte_level_bpe", "metaspace_bpe"])
def tokenizers(request, tiny_qwen2_dir):
    """(the transformers tokenizer training uses, what staging counts with)."""
    from transformers import AutoTokenizer

    if request.param == "metaspace_bpe":
        return _metaspace_tokenizer(), _metaspace_tokenizer()
    path = resolve_model_path(BUNDLED_MINILM) if request.param == "wordpiece" else str(tiny_qwen2_dir)
    return AutoTokenizer.from_pretrained(path), load_tokenizer(path)


@pytest.mark.parametrize("limit", [8, 64, 512])
def test_bounds_never_change_the_verdict(tokenizers, limit):
    training, staging = tokenizers
    texts = _texts(400)
    counter = TokenCounter(staging)
    got = counter.over(pa.array(texts), limit).to_pylist()
    exact = [None if t is None else len(training(t)["input_ids"]) > limit for t in texts]
    assert got == exact
    assert counter.tokenized < len(texts)  # the bounds decided some texts without tokenising them
    present = [t for t in texts if t is not None]
    assert counter.count(present) == [len(training(t)["input_ids"]) for t in present]  # the trainer's count


def test_chinese_counts_as_tokens_and_english_is_not_cut_by_characters(con):
    """A 1,000-character Chinese positive is ~1,000 tokens: over a 512-token limit that 2,048 characters (16 per
    token, the former rule) let through. A 2,500-character English positive is ~500 tokens: now kept."""
    english = " ".join(["retrieval model embedding passage"] * 70)  # 2,449 characters
    rows = [("中文查询", "检" * 1000), ("english query", english), ("短查询", "短的正例")]
    src = Source(name="zh", kind="python-docs", packages=["x"], language="zh")
    load_frame_source(con, src, pl.DataFrame({
        "ordinal": [1, 2, 3], "query": [r[0] for r in rows], "positives": [[r[1]] for r in rows],
        "negatives": [[], [], []], "record_id": [None] * 3,
    }, schema={"ordinal": pl.Int64, "query": pl.Utf8, "positives": pl.List(pl.Utf8),
               "negatives": pl.List(pl.Utf8), "record_id": pl.Utf8}))
    model = ModelConfig(passage_max_len=128)
    assert length_limits(model).max_passage_tokens == 512
    stats = stage_source(con, src, model=model)
    assert stats.balanced and (stats.kept, stats.rejected) == (2, 1)
    assert stats.reasons == {"positive over length limit": 1}
    kept = {q for (q,) in con.execute('select query from staged."zh"').fetchall()}
    assert kept == {"english query", "短查询"}
    assert stats.tokenized >= 1  # the English positive was near the limit and counted exactly


def test_a_tokenizer_that_is_not_here_is_one_clear_error(tmp_path):
    with pytest.raises(TokenizerLoadError, match="base_model"):
        load_tokenizer(str(tmp_path / "no-such-model"))
