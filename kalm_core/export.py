"""Export curated pairs in FlagEmbedding's jsonl layout: {query, pos: [..], neg: [..], prompt, type}.

One line per pair, so loading the file back as a source gives the same (query, positive, negatives).
"""

from __future__ import annotations

import os
from pathlib import Path

from kalm_core.identifiers import table
from kalm_core.prompts import NO_INSTRUCTION_TASK_TYPES

FORMATS = ("flagembedding",)


def export_flagembedding(con, out: str | Path, layer: str = "marts", name: str = "training_pairs",
                         overwrite: bool = False) -> int:
    """Write layer.name to `out` as FlagEmbedding jsonl; returns the number of lines written.

    The file is written under a temporary name and renamed, so a reader never sees half a file; an existing
    regular file is replaced only with `overwrite`, and nothing else (a device, a FIFO, a link) ever is."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_file()):  # the rename would replace the link or the node
        kind = "a symbolic link" if out.is_symlink() else "a folder" if out.is_dir() else "not a regular file"
        raise ValueError(f"cannot write {out}: it is {kind} (a device, FIFO or socket is not replaced); give the "
                         "path of a regular file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --force to overwrite it")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise ValueError(f"cannot write {out}: {next(p for p in out.parents if p.exists() and not p.is_dir())} "
                         "is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    src = table(layer, name)
    bare = ", ".join(f"'{t}'" for t in NO_INSTRUCTION_TASK_TYPES)  # the one instruction policy (prompts.py)
    query = (f"select query, [positive] as pos, negatives as neg, "
             f"case when task_type in ({bare}) then null else instruction end as prompt, task_type as type "
             f"from {src} order by pair_id")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        con.execute(f"copy ({query}) to '{_literal(tmp)}' (format json)")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return con.execute(f"select count(*) from {src}").fetchall()[0][0]


def _literal(path: Path) -> str:
    return str(path.resolve()).replace("'", "''")
