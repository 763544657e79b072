"""LLM backends behind one small protocol: an OpenAI-compatible HTTP client (vLLM's server, SGLang, hosted APIs)
and vLLM's offline engine. Both take a list of requests and report each result as it is ready."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int = 0
    json_mode: bool = True
    schema: dict | None = field(default=None, compare=False, hash=False)  # JSON schema of the answer, if any
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # lineage, never part of the key

    def key(self, model: str) -> str:
        """Identity of a request: (model, messages, sampling params, seed); a rerun never pays twice for it."""
        body = {"model": model, "messages": self.messages, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed, "json_mode": self.json_mode}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def openai_messages(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class ChatResult:
    request: ChatRequest
    key: str
    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


class Backend(Protocol):
    model: str

    def run(self, requests: list[ChatRequest], on_result: Callable[[ChatResult], None]) -> None: ...


@dataclass
class BackendConfig:
    """From the environment: KALM_LLM_BASE_URL, KALM_LLM_MODEL, KALM_LLM_API_KEY, KALM_LLM_BACKEND (openai|vllm)."""

    kind: str | None
    model: str | None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed, logged or stored
    concurrency: int = 32
    timeout_s: float = 120.0
    max_retries: int = 3
    # "json_object" (JSON mode), "json_schema" (structured outputs: vLLM, SGLang and OpenAI support it) or "none"
    response_format: str = "json_object"

    @classmethod
    def from_env(cls, **overrides) -> "BackendConfig":
        base_url = os.environ.get("KALM_LLM_BASE_URL")
        kind = os.environ.get("KALM_LLM_BACKEND") or ("openai" if base_url else None)
        overrides.setdefault("response_format", os.environ.get("KALM_LLM_RESPONSE_FORMAT", "json_object"))
        return cls(kind=kind, model=os.environ.get("KALM_LLM_MODEL"), base_url=base_url,
                   api_key=os.environ.get("KALM_LLM_API_KEY"), **overrides)

    @property
    def enabled(self) -> bool:
        return self.kind is not None and bool(self.model)

    def describe(self) -> dict:
        """Safe to log: no key."""
        return {"backend": self.kind, "model": self.model, "base_url": self.base_url, "concurrency": self.concurrency,
                "timeout_s": self.timeout_s, "max_retries": self.max_retries, "response_format": self.response_format}


class OpenAICompatible:
    """Bounded concurrency over AsyncOpenAI; its client retries 5xx, timeouts and dropped connections with
    exponential backoff (max_retries). JSON mode is asked for with response_format when the request wants it."""

    def __init__(self, cfg: BackendConfig):
        from openai import AsyncOpenAI

        self.model = cfg.model
        self.cfg = cfg
        self._client_args = {"base_url": cfg.base_url, "api_key": cfg.api_key or "EMPTY", "timeout": cfg.timeout_s,
                             "max_retries": cfg.max_retries}
        self._client_cls = AsyncOpenAI

    def _response_format(self, req: ChatRequest) -> dict:
        if self.cfg.response_format == "json_schema" and req.schema is not None:
            return {"type": "json_schema", "json_schema": {"name": "example", "schema": req.schema, "strict": True}}
        if self.cfg.response_format in ("json_object", "json_schema"):
            return {"type": "json_object"}
        raise ValueError(f"response_format {self.cfg.response_format!r}: use json_object, json_schema or none")

    async def _one(self, client, sem: asyncio.Semaphore, req: ChatRequest) -> ChatResult:
        key = req.key(self.model)
        async with sem:
            t = time.perf_counter()
            try:
                extra = {"response_format": self._response_format(req)} if req.json_mode and \
                    self.cfg.response_format != "none" else {}
                resp = await client.chat.completions.create(
                    model=self.model, messages=req.openai_messages(), temperature=req.temperature, top_p=req.top_p,
                    max_tokens=req.max_tokens, seed=req.seed, **extra)
                usage = resp.usage
                return ChatResult(req, key, resp.choices[0].message.content or "", None,
                                  usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                                  time.perf_counter() - t)
            except Exception as e:  # openai raises APIStatusError, APITimeoutError, APIConnectionError...
                return ChatResult(req, key, None, f"{type(e).__name__}: {str(e)[:300]}",
                                  latency_s=time.perf_counter() - t)

    async def _run(self, requests: list[ChatRequest], on_result: Callable[[ChatResult], None]) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        async with self._client_cls(**self._client_args) as client:
            for fut in asyncio.as_completed([self._one(client, sem, r) for r in requests]):
                on_result(await fut)

    def run(self, requests: list[ChatRequest], on_result: Callable[[ChatResult], None]) -> None:
        asyncio.run(self._run(requests, on_result))


class VLLMOffline:
    """vLLM's offline engine (GPU only): `LLM.chat` over the whole batch, imported lazily."""

    def __init__(self, cfg: BackendConfig):
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError("KALM_LLM_BACKEND=vllm needs vLLM: pip install 'kalm[gpu]' on a GPU machine") from e
        self.model = cfg.model
        self.llm = LLM(model=cfg.model)

    def run(self, requests: list[ChatRequest], on_result: Callable[[ChatResult], None]) -> None:
        from vllm import SamplingParams

        by_params: dict[tuple, list[ChatRequest]] = {}
        for r in requests:
            by_params.setdefault((r.temperature, r.top_p, r.max_tokens, r.seed), []).append(r)
        for (temperature, top_p, max_tokens, seed), reqs in by_params.items():
            t = time.perf_counter()
            params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
            outputs = self.llm.chat([r.openai_messages() for r in reqs], params, use_tqdm=True)
            per = (time.perf_counter() - t) / max(len(reqs), 1)
            for r, out in zip(reqs, outputs):
                on_result(ChatResult(r, r.key(self.model), out.outputs[0].text, None, len(out.prompt_token_ids),
                                     len(out.outputs[0].token_ids), per))


def make_backend(cfg: BackendConfig) -> Backend:
    if cfg.kind == "openai":
        return OpenAICompatible(cfg)
    if cfg.kind == "vllm":
        return VLLMOffline(cfg)
    raise ValueError(f"unknown LLM backend {cfg.kind!r}: use 'openai' (any OpenAI-compatible server) or 'vllm'")
