"""Versions that cover every input of a table: the code it runs and the settings it reads.

A Dagster code version is compared between runs: when it differs, the table is stale. So the version of each table
is a hash of the source text of the kalm_core modules that compute it (and the asset module that wires them), plus
the profile sections it reads; editing `mining.py` or the filter's `top_k` then marks exactly the filtered tables
stale, and nothing is hand-bumped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from functools import lru_cache


@lru_cache(maxsize=None)
def module_hash(module: str) -> str:
    """sha256 of a module's source file (read, never imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ValueError(f"no module {module!r} to version")
    with open(spec.origin, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def settings_hash(section) -> str:
    """sha256 of a config section (a dataclass, a pydantic model or a plain JSON value), field order independent."""
    if dataclasses.is_dataclass(section):
        data = dataclasses.asdict(section)
    else:
        data = section.model_dump(mode="json") if hasattr(section, "model_dump") else section
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def code_version(modules: tuple[str, ...] = (), sections: tuple = (), base: str | None = None) -> str:
    """One version over modules' source, settings sections and a base version (e.g. a SQL model's hash)."""
    h = hashlib.sha256((base or "").encode())
    for m in sorted(modules):
        h.update(f"{m}:{module_hash(m)}".encode())
    for s in sections:
        h.update(settings_hash(s).encode())
    return h.hexdigest()[:16]
