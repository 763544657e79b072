"""The `python-docs` extractor: docstrings of installed packages as (summary -> documentation) pairs.

The embedded default needs real text offline (docs/DESIGN.md §5). Source files are parsed with `ast`, never
imported, so harvesting is fast, has no side effects and gives the same pairs for the same package version.
Query = the docstring's summary (first paragraph); positive = the rest of the documentation.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from collections import Counter
from pathlib import Path

import polars as pl

# A summary that is only a call signature, e.g. `any(self, axis=None, ...)` or `f(x) -> int`, is not a query.
_SIGNATURE = re.compile(r"^[\w.\[\]]+\s*\(.*\)\s*(->.*)?[.:]?$", re.S)
_MIN_QUERY_WORDS = 3
_MIN_DOC_CHARS = 40
_MAX_DOC_CHARS = 2000  # documentation beyond this adds little and only slows encoding
_MAX_PER_PREFIX = 5  # cap templated summaries ("This is the configuration class…") per 4-word prefix


def is_signature(summary: str) -> bool:
    """True when a summary line is only a call signature."""
    return bool(_SIGNATURE.match(summary.strip()))


def split_docstring(doc: str) -> tuple[str, str] | None:
    """(summary, rest) of a cleaned docstring, or None when it does not make a useful pair."""
    doc = inspect.cleandoc(doc)
    parts = re.split(r"\n\s*\n", doc, maxsplit=1)
    if len(parts) < 2:
        return None
    summary = " ".join(parts[0].split())
    rest = parts[1].strip()[:_MAX_DOC_CHARS]
    if is_signature(summary) or len(summary.split()) < _MIN_QUERY_WORDS or len(rest) < _MIN_DOC_CHARS:
        return None
    return summary, rest


def package_files(package: str) -> list[tuple[str, Path]]:
    """(module name, file) for every .py file of an installed package or stdlib module, tests skipped."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    if spec.submodule_search_locations:
        files = []
        for root in spec.submodule_search_locations:
            for f in sorted(Path(root).rglob("*.py")):
                rel = f.relative_to(root).with_suffix("")
                if any(p in ("tests", "test", "testing") or p.startswith("_") and p != "__init__" for p in rel.parts):
                    continue
                mod = ".".join((package, *rel.parts)).removesuffix(".__init__")
                files.append((mod, f))
        return files
    if spec.origin and spec.origin.endswith(".py"):
        return [(package, Path(spec.origin))]
    return []


def _docstrings(module: str, path: Path):
    """Yield (qualified name, docstring) of the public module, classes and functions in one file."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return
    if doc := ast.get_docstring(tree, clean=False):
        yield module, doc
    stack = [(module, tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name.startswith("_"):
                    continue
                name = f"{prefix}.{child.name}"
                if doc := ast.get_docstring(child, clean=False):
                    yield name, doc
                if isinstance(child, ast.ClassDef):
                    stack.append((name, child))


def package_version(package: str) -> str:
    """The installed distribution's version (the Python version for stdlib modules)."""
    try:
        return importlib.metadata.version(package.split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return "python-" + ".".join(map(str, sys.version_info[:3]))


def harvest(packages: list[str]) -> pl.DataFrame:
    """Pairs from the docstrings of `packages`: columns ordinal, query, positives, negatives, record_id.

    Identical docstrings (re-exports, overloads) count once; at most a few summaries share a 4-word prefix.
    Rows come in a stable order spread over the package (hash of the qualified name)."""
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    prefixes: Counter[str] = Counter()
    for package in packages:
        for module, path in package_files(package):
            for name, doc in _docstrings(module, path):
                pair = split_docstring(doc)
                if pair is None:
                    continue
                digest = hashlib.md5(doc.encode()).hexdigest()
                prefix = " ".join(pair[0].lower().split()[:4])
                if digest in seen or prefixes[prefix] >= _MAX_PER_PREFIX:
                    continue
                seen.add(digest)
                prefixes[prefix] += 1
                rows.append((name, *pair))
    # A stable, well-spread order, so `max_rows` takes a sample of the whole package rather than its first modules.
    rows.sort(key=lambda r: hashlib.md5(r[0].encode()).hexdigest())
    return pl.DataFrame(
        {
            "ordinal": list(range(1, len(rows) + 1)),
            "query": [r[1] for r in rows],
            "positives": [[r[2]] for r in rows],
            "negatives": [[] for _ in rows],
            "record_id": [r[0] for r in rows],
        },
        schema={"ordinal": pl.Int64, "query": pl.Utf8, "positives": pl.List(pl.Utf8),
                "negatives": pl.List(pl.Utf8), "record_id": pl.Utf8},
    )


def fingerprint(packages: list[str]) -> str:
    """Data version of a python-docs source: the packages and their installed versions."""
    text = ",".join(f"{p}=={package_version(p)}" for p in packages)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
