"""Tiny, randomly initialised models saved to disk, for fast tests of the real loading and training code."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("embedding model query passage retrieval vector index batch negative positive token layer attention "
         "pooling matryoshka dimension contrastive temperature gradient cache warehouse python function class "
         "documentation summary returns array tensor frame column table sort open file read write").split()


def tiny_bert(path: Path, hidden: int = 32) -> Path:
    """A 2-layer BERT with the bundled MiniLM's real WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kalm_core.config import BUNDLED_MINILM, resolve_model_path

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=256)
    BertModel(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model_path(BUNDLED_MINILM)).save_pretrained(path)
    return path


def tiny_qwen2(path: Path, hidden: int = 64) -> Path:
    """A 2-layer Qwen2 decoder with a small byte-level BPE trained here (no Qwen2 weights exist offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2Model(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
