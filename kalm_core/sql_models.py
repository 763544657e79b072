"""The SQL-file loader: each `sql/<layer>/<name>.sql` is one model of table layer.name (dbt's idea, ~100 lines).

A model declares its inputs in the file with `{{ ref('layer.name') }}`; `{{ ref('layer.*') }}` is every table
the pipeline builds in that layer, unioned by name; `{{ ref('layer.*', 'subset') }}` only the tables of a named
subset (`held_out`: the evaluation sources), so the model depends on nothing else. A header of `-- key: value` lines documents the grain, key and
invariants; `-- materialization: per_source` marks a template run once per source instead (staging).
`-- incremental: <column>` marks a model whose rows each come from one table of its `ref('layer.*')`, the column
naming which (`source`: the table's name, or name/part): when only some of those tables changed, their rows alone are
recomputed (`run_incremental`, dbt's incremental model with a delete+insert strategy).
The code version is a hash of the SQL text, so an edited model shows as stale.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from kalm_core.identifiers import LAYERS, check_identifier, table
from kalm_core.warehouse import replace_rows

SQL_DIR = Path(str(files("kalm_core") / "sql"))  # package data: the repository's sql/, shipped in the wheel
_REF = re.compile(r"\{\{\s*ref\(\s*['\"]([A-Za-z_]+)\.([A-Za-z0-9_*]+)['\"]\s*(?:,\s*['\"]([a-z_]+)['\"]\s*)?\)\s*\}\}")
_HEADER = re.compile(r"^--\s*([a-z_]+)\s*:\s*(.*)$")
_CONTINUATION = re.compile(r"^--\s{2,}(\S.*)$")


@dataclass(frozen=True)
class SqlModel:
    layer: str
    name: str
    path: Path
    text: str
    header: dict[str, str] = field(default_factory=dict)

    @property
    def code_version(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    @property
    def refs(self) -> list[tuple[str, str, str]]:
        """(layer, name or '*', subset or '') of every `ref()` in the file, in order, without repeats."""
        return list(dict.fromkeys(_REF.findall(self.text)))

    @property
    def wildcard_layers(self) -> set[str]:
        """The layers it reads whole through `ref('layer.*')` (a named subset does not count)."""
        return {layer for layer, name, subset in self.refs if name == "*" and not subset}

    @property
    def partition(self) -> str | None:
        """The column of an incremental model (`-- incremental: <column>`): the input table a row comes from."""
        column = (self.header.get("incremental") or "").split(" ", 1)[0]  # the rest of the line is a comment
        return check_identifier(column, "incremental column") if column else None

    @property
    def description(self) -> str:
        """Sentences for the UI's asset page: the grain and the key; the header's other fields are `metadata`."""
        grain = self.header.get("grain", f"the {self.layer}.{self.name} model").rstrip(".")
        key = f" Key: {self.header['key'].rstrip('.')}." if "key" in self.header else ""
        return f"{grain[:1].upper()}{grain[1:]}.{key} Built by the SQL model {Path(self.path).name}."

    @property
    def metadata(self) -> dict[str, str]:
        """The header's fields, one entry each (grain, key, invariants, macros, ...), and the model's file."""
        path = Path(str(self.path))
        root = Path(__file__).resolve().parent.parent
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        return {"sql_file": str(shown), **{f"sql_{k}": v for k, v in self.header.items()}}

    def dependencies(self, built: dict[str, list[str]]) -> list[tuple[str, str]]:
        """Resolve refs against the tables the pipeline builds (`{layer: [names]}`); wildcards expand."""
        deps: list[tuple[str, str]] = []
        for layer, name, subset in self.refs:
            if layer not in LAYERS:
                raise ValueError(f"{self.path}: ref to unknown layer {layer!r}")
            if name == "*" and subset:
                deps += [(layer, n) for n in _subset(built, layer, subset, self.path)]
            elif name == "*":
                names = built.get(layer, [])
                if not names:
                    raise ValueError(f"{self.path}: ref('{layer}.*') matches no table")
                deps += [(layer, n) for n in names]
            else:
                deps.append((layer, check_identifier(name, "table name")))
        return list(dict.fromkeys(deps))

    def render(self, built: dict[str, list[str]]) -> str:
        """The SQL with every ref replaced by its quoted table, or a union of the layer's tables."""

        def sub(m: re.Match) -> str:
            layer, name, subset = m.group(1), m.group(2), m.group(3)
            if name != "*":
                return table(layer, name)
            names = _subset(built, layer, subset, self.path) if subset else built.get(layer, [])
            if subset and not names and built.get(layer):  # an empty subset: the layer's columns, no rows
                return f"(select * from {table(layer, built[layer][0])} where false)"
            parts = [f"select * from {table(layer, n)}" for n in names]
            if not parts:
                raise ValueError(f"{self.path}: ref('{layer}.*') matches no table")
            return "(" + " union all by name ".join(parts) + ")"

        return _REF.sub(sub, self.text)


def _subset(built: dict[str, list[str]], layer: str, subset: str, path) -> list[str]:
    key = f"{layer}/{subset}"
    if key not in built:
        raise ValueError(f"{path}: ref('{layer}.*', '{subset}'): no subset {subset!r} of layer {layer!r}")
    return built[key]


def parse_header(text: str) -> dict[str, str]:
    """`-- key: value` lines up to the first SQL line; a line indented further (`--   more`) continues the value."""
    header: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        if last and (m := _CONTINUATION.match(line)):
            header[last] += " " + m.group(1).strip()
        elif m := _HEADER.match(line):
            last = m.group(1)
            header[last] = m.group(2).strip()
    return header


def discover(sql_dir: Path = SQL_DIR, include_templates: bool = False) -> list[SqlModel]:
    """Every `<layer>/<name>.sql` under sql_dir, sorted; per-source templates only when asked."""
    if not any(Path(sql_dir).glob("*/*.sql")):  # an install without its package data must not lose the marts
        raise FileNotFoundError(f"no SQL models under {sql_dir}: the installation lacks kalm_core's package data")
    models = []
    for path in sorted(sql_dir.glob("*/*.sql")):
        layer, name = path.parent.name, path.stem
        if layer not in LAYERS:
            raise ValueError(f"{path}: folder {layer!r} is not a layer ({', '.join(LAYERS)})")
        text = path.read_text(encoding="utf-8")
        header = parse_header(text)
        if header.get("materialization") == "per_source" and not include_templates:
            continue
        models.append(SqlModel(layer, check_identifier(name, "model name"), path, text, header))
    return models


def run_model(con, model: SqlModel, built: dict[str, list[str]]) -> int:
    """Materialise the model as table layer.name; returns its row count."""
    (rows,) = con.execute(f"create or replace table {table(model.layer, model.name)} as {model.render(built)}"
                          ).fetchone()  # CREATE TABLE AS returns the rows it wrote
    return rows


def run_incremental(con, model: SqlModel, built: dict[str, list[str]], changed: list[tuple[str, str]]) -> int:
    """Recompute an incremental model's rows for the `changed` tables of its `ref('layer.*')` only, in one commit: its
    SQL over those tables alone replaces the rows whose `model.partition` names one of them (the table's name, or
    that name, '/' and a part: `synthetic/retrieval` comes from filtered.synthetic). A new row that names another
    table breaks that contract and is refused. Returns the row count."""
    column, target = model.partition, table(model.layer, model.name)
    if column is None:
        raise ValueError(f"{model.path}: not an incremental model (no `-- incremental: <column>` header)")
    wildcard = model.wildcard_layers
    if not changed or any(layer not in wildcard for layer, _ in changed):
        raise ValueError(f"{model.path}: only tables of its ref('layer.*') can be recomputed alone, not {changed}")
    names = sorted({name for _, name in changed})
    only = {**built, **{layer: [n for n in built.get(layer, []) if (layer, n) in changed] for layer in wildcard}}
    owned = f"list_contains($names, split_part({column}, '/', 1))"
    con.execute(f"create or replace temp table _kalm_increment as select * from ({model.render(only)})")
    try:
        (stray,) = con.execute(f"select count(*) from _kalm_increment where not {owned}", {"names": names}).fetchone()
        if stray:
            raise ValueError(f"{model.path}: {stray} row(s) from {', '.join(names)} have a {column} that names no "
                             f"input table: `-- incremental: {column}` needs it to name the table each row came from")
        replace_rows(con, target, owned, "_kalm_increment", {"names": names})
    finally:
        con.execute("drop table if exists _kalm_increment")
    return con.execute(f"select count(*) from {target}").fetchall()[0][0]
