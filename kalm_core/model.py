"""The embedder: a transformers encoder or decoder, a pooling, optional L2 normalisation (KaLM §3.1).

References: KaLM-Embedding, arXiv 2501.01028 (mean pooling over Qwen2-0.5B's last hidden state, L2-normalised;
queries carry `Instruct: {instruction} \\n Query: {query}`, documents nothing). Saving writes a
sentence-transformers directory, so `SentenceTransformer(path)` gives the same embeddings as `encode()`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from kalm_core.config import ModelConfig, resolve_model_path
from kalm_core.grad_cache import pad
from kalm_core.prompts import format_query

POOLINGS = ("mean", "last_token", "cls")


class ModelLoadError(FileNotFoundError):
    """A model path that does not exist or does not hold a model."""


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, left_padded: bool = False) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H), in fp32 whatever the hidden states' dtype: a bf16 sum over hundreds of tokens
    loses the digits the scores are made of."""
    hidden = hidden.float()
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)
    if mode == "cls":
        return hidden[:, 0]  # (B, H)
    if mode == "last_token":
        if left_padded:
            return hidden[:, -1]  # (B, H)
        last = mask.sum(1) - 1  # (B,) index of each row's last real token
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]  # (B, H)
    raise ValueError(f"pooling {mode!r} is not one of {POOLINGS}")


class Embedder(torch.nn.Module):
    """Texts -> embeddings. `forward` keeps gradients (training); `encode` is batched no-grad inference."""

    def __init__(self, model, tokenizer, config: ModelConfig, projection: torch.nn.Linear | None = None):
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling {config.pooling!r} is not one of {POOLINGS}")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.projection = projection  # (H -> H) linear map after pooling, saved as a sentence-transformers Dense
        if self.tokenizer.pad_token is None:  # decoders (Qwen2) ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(model.config, "use_cache", False):  # a decoder's KV cache only holds memory when embedding
            model.config.use_cache = False

    @classmethod
    def from_pretrained(cls, config: ModelConfig, path: str | None = None, **model_kwargs) -> "Embedder":
        """Load `path` (default: the config's base model) with AutoModel + AutoTokenizer."""
        path = resolve_model_path(path or config.base_model)
        looks_local = os.path.isabs(path) or path.startswith(".") or os.path.exists(path)
        if looks_local and not (Path(path) / "config.json").exists():
            raise ModelLoadError(f"model path {path} does not exist or holds no config.json")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path, **model_kwargs)
        except OSError as e:
            raise ModelLoadError(f"cannot load model {path!r}: {e}") from None
        return cls(model, tokenizer, config, _load_dense(path))

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, H) pooled (and normalised) embeddings."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        emb = pool(hidden, attention_mask, self.config.pooling, self.tokenizer.padding_side == "left")  # (B, H)
        if self.projection is not None:
            emb = self.projection(emb.to(self.projection.weight.dtype))  # (B, H) -> (B, H)
        return F.normalize(emb.float(), dim=-1) if self.config.normalize else emb

    @torch.no_grad()
    def init_pca_projection(self, texts: list[str], batch_size: int = 64) -> None:
        """Add an orthogonal projection whose rows are the principal axes of these texts' embeddings, largest
        variance first. Full-dim cosine similarities are unchanged; truncated (Matryoshka) dims keep the most
        information."""
        self.projection = None
        saved = self.config.normalize
        self.config = replace(self.config, normalize=False)
        x = torch.from_numpy(self.encode(texts, batch_size=batch_size)).double()  # (N, H)
        self.config = replace(self.config, normalize=saved)
        _, _, vt = torch.linalg.svd(x - x.mean(0), full_matrices=True)  # rows of vt: principal axes
        layer = torch.nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        layer.weight.copy_(vt.float())  # y = V^T x
        self.projection = layer.to(self.device)

    def count_truncated(self, texts: list[str], max_len: int, lengths: list[int] | None = None) -> int:
        """How many texts are longer than max_len tokens (and so get truncated). With `lengths` (their token counts
        after truncation) only the texts that reached max_len are tokenized again."""
        if lengths is not None:
            texts = [t for t, n in zip(texts, lengths) if n >= max_len]
            if not texts:
                return 0
        quiet = logging.getLogger("transformers.tokenization_utils_base")  # its "longer than maximum" warning
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            lengths = self.tokenizer(texts, truncation=False, add_special_tokens=True, return_length=True)["length"]
        finally:
            quiet.setLevel(level)
        return int(sum(n > max_len for n in lengths))

    @classmethod
    def for_inference(cls, config: ModelConfig, path: str | None = None) -> "Embedder":
        """Load for encoding only: on the GPU in bf16/fp16 when there is one, else on the CPU in fp32."""
        from kalm_core.device import inference_device, inference_dtype

        device = inference_device()
        embedder = cls.from_pretrained(config, path, dtype=inference_dtype(device)).to(device)
        if embedder.projection is not None:
            embedder.projection.to(inference_dtype(device))
        return embedder.eval()

    @torch.inference_mode()
    def encode(self, texts: list[str], *, is_query: bool = False, instruction: str | None = None,
               batch_size: int = 64, show_progress: bool = False, max_tokens: int | None = None,
               return_truncated: bool = False) -> np.ndarray | tuple[np.ndarray, int]:
        """(N,) texts -> (N, H) float32. Queries get the instruction template; batches are length-sorted so
        padding is minimal, and rows come back in input order. With `max_tokens`, a batch holds at most that many
        padded tokens (the GPU's token budget) instead of `batch_size` texts. `return_truncated`: also how many
        texts were cut at the max length (only those that reached it are tokenized again)."""
        if is_query:
            texts = [format_query(t, instruction, self.config.query_template) for t in texts]
        max_len = self.config.query_max_len if is_query else self.config.passage_max_len
        enc = self.tokenizer(texts, truncation=True, max_length=max_len)  # pre-tokenise once, pad per batch
        truncated = (self.count_truncated(texts, max_len, [len(ids) for ids in enc["input_ids"]])
                     if return_truncated else None)
        order = np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")
        # a text with no tokens (empty, with a tokenizer that adds no special tokens, as Qwen2's) has no embedding:
        # its row stays zero, which scores 0 against everything
        order = order[[len(enc["input_ids"][i]) > 0 for i in order]] if len(order) else order
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        was_training = self.training
        self.eval()
        lengths = [len(enc["input_ids"][i]) for i in order]
        left = self.tokenizer.padding_side == "left"
        pending: list[tuple[np.ndarray, torch.Tensor]] = []  # results left on the device: no sync per batch
        held = 0
        for idx in tqdm(_batches(order, lengths, batch_size, max_tokens), disable=not show_progress, desc="encode",
                        unit="batch"):
            ids, mask = pad([enc["input_ids"][i] for i in idx], self.tokenizer.pad_token_id, left)
            pending.append((idx, self(ids.to(self.device), mask.to(self.device))))
            held += len(idx)
            if held >= COLLECT_ROWS:
                _collect(out, pending)
                held = 0
        _collect(out, pending)
        self.train(was_training)
        return (out, truncated) if return_truncated else out

    def save(self, path: str | Path, query_instruction: str | None = None,
             task_prompts: dict[str, str] | None = None) -> Path:
        """Write a sentence-transformers directory with sentence-transformers' own `save` (its layout is its
        contract): Transformer, Pooling, the projection as Dense, Normalize when normalising, and the prompts: the
        training instruction as the default "query" prompt plus each evaluation task's own (`kalm_core.prompts`), so
        `SentenceTransformer(path)` and mteb apply them without our code."""
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)  # the weights and tokenizer that ST's Transformer module loads
        self.tokenizer.save_pretrained(path)
        modules = [Transformer(str(path), max_seq_length=self.config.passage_max_len),
                   Pooling(self.hidden_size, pooling_mode=POOLING_MODES[self.config.pooling], include_prompt=True)]
        if self.projection is not None:
            modules.append(_dense(self.projection))
        if self.config.normalize:
            modules.append(Normalize())
        prompts = {"query": format_query("", query_instruction, self.config.query_template)} if query_instruction else {}
        prompts.update(task_prompts or {})
        SentenceTransformer(modules=modules, prompts=prompts, similarity_fn_name="cosine", device="cpu").save(str(path))
        _dump(path / "kalm_model_config.json", asdict(self.config))
        return path


POOLING_MODES = {"mean": "mean", "cls": "cls", "last_token": "lasttoken"}  # ours -> sentence-transformers'


COLLECT_ROWS = 65536  # embeddings held on the device before one copy to the host (~235 MB at 896 dims, fp32)


def _collect(out: np.ndarray, pending: list[tuple[np.ndarray, torch.Tensor]]) -> None:
    """Copy the device's finished embeddings into their rows of `out`, in one transfer."""
    if pending:
        out[np.concatenate([i for i, _ in pending])] = torch.cat([e for _, e in pending]).float().cpu().numpy()
        pending.clear()


def _batches(order: np.ndarray, lengths: list[int], batch_size: int, max_tokens: int | None):
    """Index batches over length-sorted (longest first) texts: `batch_size` texts each, or, with `max_tokens`, as many
    as fit that many padded tokens (the first text of a batch is its longest)."""
    if not max_tokens:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out, start = [], 0
    while start < len(order):
        n = max(1, max_tokens // max(lengths[start], 1))
        out.append(order[start:start + n])
        start += n
    return out


def _dense(layer: torch.nn.Linear):
    from sentence_transformers.sentence_transformer.modules import Dense

    dense = Dense(layer.in_features, layer.out_features, bias=False, activation_function=torch.nn.Identity())
    dense.linear.weight.data.copy_(layer.weight.detach().float().cpu())
    return dense


def _load_dense(path: str) -> torch.nn.Linear | None:
    """The projection of a model saved by `save` (a sentence-transformers Dense module), if it has one."""
    modules = Path(path) / "modules.json"
    if not modules.exists():
        return None
    dense = [m for m in json.loads(modules.read_text()) if m["type"].endswith("Dense")]
    if not dense:
        return None
    from safetensors.torch import load_file

    weight = load_file(str(Path(path) / dense[0]["path"] / "model.safetensors"))["linear.weight"]
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    return layer


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
