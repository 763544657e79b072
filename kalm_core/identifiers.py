"""Checked SQL identifiers: no SQL is ever built from a name that was not validated here."""

from __future__ import annotations

import re

MAX_LENGTH = 63  # PostgreSQL's limit (a shared lake's catalogue), kept for every lake alike
_IDENT = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]{{0,{MAX_LENGTH - 1}}}$")

LAYERS = ("raw", "staged", "synthetic", "filtered", "batched", "marts", "training", "evaluation")


class InvalidIdentifier(ValueError):
    """A source, table or column name that is not a plain SQL identifier."""


def check_identifier(name: str, what: str = "name") -> str:
    """Return `name` when it is a plain identifier (letters, digits, underscore; not leading digit; at most 63)."""
    if isinstance(name, str) and len(name) > MAX_LENGTH and _IDENT.match(name[:MAX_LENGTH]):
        raise InvalidIdentifier(f"{what} {name[:20]}... is {len(name)} characters long: at most {MAX_LENGTH} are "
                                "allowed")
    if not isinstance(name, str) or not _IDENT.match(name):
        raise InvalidIdentifier(
            f"{what} {name!r} is not a plain identifier: use letters, digits and '_' and start with a letter or '_'"
        )
    return name


def quote(name: str) -> str:
    """Double-quote a validated identifier."""
    return '"' + check_identifier(name) + '"'


def table(layer: str, name: str) -> str:
    """Asset key [layer, name] -> the quoted table `"layer"."name"`."""
    if layer not in LAYERS:
        raise InvalidIdentifier(f"unknown layer {layer!r}; layers are {', '.join(LAYERS)}")
    return f"{quote(layer)}.{quote(name)}"
