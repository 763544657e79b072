"""Versions that cover every input of a table: the code it runs and the settings it reads.

A Dagster code version is compared between runs: when it differs, the table is stale. So the version of each table
is a hash of the source text of the kalm_core modules that compute it (and the asset module that wires them), plus
the profile sections it reads; editing `mining.py` or the filter's `top_k` then marks exactly the filtered tables
stale, and nothing is hand-bumped.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

PACKAGES = ("kalm_core", "assets", "dagster_project")  # the project's own code, which a version follows


@lru_cache(maxsize=None)
def _package_dir(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # a top-level package is found, not imported
    return Path(spec.origin).parent if spec and spec.origin else None


def source_file(module: str) -> Path | None:
    """The file of one of the project's modules (a package's __init__.py), or None for any other module."""
    top, *rest = module.split(".")
    root = _package_dir(top) if top in PACKAGES else None
    if root is None:
        return None
    base = root.joinpath(*rest)
    for path in ((base.with_suffix(".py"),) if rest else ()) + (base / "__init__.py",):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def imports(module: str) -> frozenset[str]:
    """The project's modules that `module` imports anywhere in its text (function-level imports too), with their
    parent packages; read with `ast`, never imported."""
    path = source_file(module)
    if path is None:
        raise ValueError(f"no module {module!r} in {', '.join(PACKAGES)}")
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import module` names a module
        else:
            continue
        for name in names:
            parts = name.split(".")
            out |= {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if source_file(m)}
    return frozenset(out - {module})


def import_closure(roots: tuple[str, ...], stop: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every project module `roots` import, directly or not: what a table computed by them depends on. `stop`:
    modules left out and not followed (the versioning code itself, which computes no table)."""
    packages = {".".join(r.split(".")[:i]) for r in roots for i in range(1, r.count(".") + 1)}  # run on import
    seen, todo = set(), [r for r in roots if r not in stop] + [p for p in sorted(packages) if source_file(p)]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += [m for m in imports(module) if m not in seen and m not in stop]
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def module_hash(module: str) -> str:
    """sha256 of a module's source file (read, never imported: find_spec would import a submodule's package)."""
    path = source_file(module)
    if path is None:
        raise ValueError(f"no module {module!r} to version")
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
