"""The source catalogue: one YAML file naming every training source (layer 1, "raw").

A file source is anything DuckDB can read (local file or glob, https://, hf://datasets/…, s3://) in parquet,
jsonl or csv, plus a column mapping. A FlagEmbedding-style jsonl (`{query, pos: [..], neg: [..]}`) needs no
mapping. The `python-docs` kind harvests docstrings of an installed package (docs/DESIGN.md §5).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kalm_core.identifiers import check_identifier

PACKAGED_CATALOG = Path(str(files("kalm_core") / "catalog" / "sources.yaml"))  # package data (catalog/)
DEFAULT_PERSONAS = PACKAGED_CATALOG.parent / "personas.jsonl"
PROJECT_CATALOG = Path("catalog") / "sources.yaml"  # relative to the working directory (`kalm --project DIR`)
TASK_TYPES = ("retrieval", "sts", "classification", "clustering", "bitext", "reranking", "nli", "pair_classification")
# Tables the pipeline itself keeps beside the per-source ones: staged.rejects, filtered.synthetic.
RESERVED_NAMES = ("rejects", "synthetic")


class CatalogError(ValueError):
    """The catalogue file cannot be used; the message names the file and the key."""


class Columns(BaseModel):
    """Where the normalised columns come from. Defaults read FlagEmbedding jsonl as is. A task layout names its own
    columns instead (kalm_core/sources): text + label (classification, clustering), premise + hypothesis + label
    (nli), sentence1 + sentence2 (+ score for sts, + label for pair_classification; bitext)."""

    model_config = ConfigDict(extra="forbid")
    query: str = "query"
    positive: str = "pos"
    negatives: str | list[str] | None = "neg"
    id: str | None = None
    text: str | None = None
    label: str | None = None
    label_text: str | None = None
    premise: str | None = None
    hypothesis: str | None = None
    sentence1: str | None = None
    sentence2: str | None = None
    score: str | None = None


# The task layouts a source's rows can come in (kalm_core/sources), the columns each needs and the task types it serves
LAYOUTS = {
    "labels": (("text", "label"), ("classification", "clustering")),
    "nli": (("premise", "hypothesis", "label"), ("nli",)),
    "sentence_pairs": (("sentence1", "sentence2"), ("sts", "pair_classification", "bitext")),
}
LAYOUT_COLUMNS = {"text", "label", "label_text", "premise", "hypothesis", "sentence1", "sentence2", "score"}


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["file", "python-docs", "sql", "mteb"] = "file"
    task: str | None = None  # kind mteb: the MTEB task whose split this is (kalm_core/sources/mteb_source.py)
    uri: str | None = None
    # beir: a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv (kalm_core/sources/beir.py)
    format: Literal["auto", "parquet", "jsonl", "json", "csv", "beir"] = "auto"
    split: str | None = None  # beir: which qrels/<split>.tsv; mteb: which split (default train)
    # kind sql (kalm_core/sources/sql_source.py): a SELECT over the named files, each a DuckDB variable of its name
    sql: str | None = None
    files: dict[str, str] = Field(default_factory=dict)
    # a folder of jsonl files (a `**` glob) whose sub-folder names give their rows' task type, as KaLM's and
    # FlagEmbedding's released training data do (`classification-no_in_batch_neg/*.jsonl`); a row's own `type` wins
    folder_task_types: bool = False
    header: bool = True  # csv/tsv: false for a headerless file (MS MARCO's), whose columns `column_names` gives
    column_names: list[str] | None = None
    columns: Columns = Field(default_factory=Columns)
    packages: list[str] = Field(default_factory=list)
    task_type: str = "retrieval"
    instruction: str = "Given a query, retrieve documents that answer the query"
    language: str = "en"
    max_rows: int | None = Field(default=None, gt=0)  # a cap: a hash sample of the records, not the first ones
    weight: float = Field(default=1.0, ge=0)  # its pull in the data mix (kalm_core/mixing.py); 0 keeps it out
    held_out: bool = False
    # label layouts (kalm_core/sources/labels.py): the label's text as the positive, or another text of the label
    pairing: Literal["label", "same_label"] = "label"
    label_names: list[str] | None = None  # names of integer labels 0..n-1 (classification, clustering, nli)
    min_score: float | None = None  # sts: a pair scoring at least this is a positive

    @field_validator("name")
    @classmethod
    def _plain_identifier(cls, v: str) -> str:
        if v.lower() in RESERVED_NAMES:  # DuckDB compares identifiers ignoring case: `Rejects` is staged.rejects
            raise ValueError(f"source name {v!r} is reserved in any case (the pipeline's own tables use "
                             f"{RESERVED_NAMES})")
        return check_identifier(v, "source name")

    @field_validator("task_type")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TASK_TYPES:
            raise ValueError(f"task_type {v!r} is not one of {', '.join(TASK_TYPES)}")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> "Source":
        if self.kind == "file" and not self.uri:
            raise ValueError("a file source needs a 'uri'")
        if self.kind == "python-docs" and not self.packages:
            raise ValueError("a python-docs source needs 'packages'")
        if self.kind == "sql":
            if not self.sql or not self.files:
                raise ValueError("a sql source needs 'sql' (its SELECT's file) and 'files' (name: path of each input)")
            for name in self.files:
                check_identifier(name, "input file name")
        elif self.sql or self.files:
            raise ValueError("'sql' and 'files' belong to a source of kind: sql")
        if self.kind == "mteb":
            if not self.task:
                raise ValueError("an mteb source needs 'task' (an MTEB task name, e.g. Banking77Classification)")
            if self.task_type == "sts" and self.min_score is None:
                raise ValueError("an sts task needs min_score (a pair scoring at least this is a positive)")
        elif self.task:
            raise ValueError("'task' belongs to a source of kind: mteb")
        return self

    @model_validator(mode="after")
    def _layout_fields(self) -> "Source":
        """A task layout's columns, all of them, for a task type it serves; its settings only with it."""
        layout = self.layout
        stray = sorted((self.columns.model_fields_set & LAYOUT_COLUMNS) - set(LAYOUTS[layout][0] if layout else ())
                       - ({"label_text"} if layout == "labels" else set())
                       - ({"score", "label"} if layout == "sentence_pairs" else set()))
        if stray:
            raise ValueError(f"columns {stray} belong to another task layout "
                             f"({'; '.join(f'{k}: {list(v[0])}' for k, v in LAYOUTS.items())})")
        if layout is not None:
            needed, types = LAYOUTS[layout]
            missing = [c for c in needed if getattr(self.columns, c) is None]
            if missing:
                raise ValueError(f"the {layout} layout needs columns {list(needed)}; missing {missing}")
            if self.task_type not in types:
                raise ValueError(f"columns {list(needed)} are the layout of task_type {' or '.join(types)}, "
                                 f"not {self.task_type!r}")
            if self.task_type == "sts" and (self.columns.score is None or self.min_score is None):
                raise ValueError("an sts source of sentence pairs needs columns.score and min_score (a pair scoring "
                                 "at least min_score is a positive)")
            if self.task_type == "pair_classification" and self.columns.label is None:
                raise ValueError("a pair_classification source needs columns.label (label 1: a positive pair)")
        if "pairing" in self.model_fields_set and layout != "labels":
            raise ValueError("'pairing' applies to a classification or clustering source with columns text and label")
        if self.label_names is not None and layout not in ("labels", "nli"):
            raise ValueError("'label_names' applies to a source with a label column (classification, clustering, nli)")
        if self.min_score is not None and self.task_type != "sts":  # (checked for mteb sources above)
            raise ValueError("'min_score' applies to an sts source")
        if self.format == "beir":
            if layout is not None or self.columns.model_fields_set:
                raise ValueError("a beir folder has fixed columns (corpus _id/title/text, queries _id/text, qrels): "
                                 "give no 'columns'")
            if self.task_type not in ("retrieval", "reranking"):
                raise ValueError(f"a beir folder holds retrieval data, not {self.task_type!r}")
        elif self.split is not None and self.kind != "mteb":
            raise ValueError("'split' applies to a source with format: beir or kind: mteb")
        if not self.header and not self.column_names:
            raise ValueError("a headerless file (header: false) needs its column_names")
        if self.column_names is not None and self.header:
            raise ValueError("column_names names the columns of a headerless file: set header: false with it")
        if not self.header and self.kind == "file" and self.uri and self.resolved_format() != "csv":
            raise ValueError("header: false applies to a csv or tsv file")
        return self

    @property
    def origin(self) -> str:
        """Where the source's data comes from, in words (the UI's source description, `kalm sources`)."""
        if self.kind == "mteb":
            return f"MTEB {self.task}, split {self.split or 'train'}"
        if self.kind == "sql":
            return f"SQL {self.sql} over {', '.join(self.files)}"
        if self.kind == "python-docs":
            return f"docstrings of {', '.join(self.packages)}"
        return self.uri or ""

    @property
    def beir_split(self) -> str:
        return self.split or "train"

    @property
    def layout(self) -> str | None:
        """The task layout the columns name (kalm_core/sources), or None for query / positive / negatives."""
        given = self.columns.model_fields_set
        for name, (needed, _) in LAYOUTS.items():
            if needed[0] in given:
                return name
        return None

    def resolved_format(self) -> str:
        """The reader to use: given, or inferred from the URI's extension."""
        if self.format != "auto":
            return self.format
        u = (self.uri or "").lower().split("?")[0]
        for ext, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"),
                         (".csv", "csv"), (".tsv", "csv"), (".jsonl.gz", "jsonl"), (".csv.gz", "csv")):
            if u.endswith(ext):
                return fmt
        raise CatalogError(f"source {self.name!r}: cannot infer the format of {self.uri!r}; set 'format'")

    def resolved_uri(self, base_dir: Path) -> str:
        """A relative local path is taken relative to the catalogue file."""
        u = self.uri or ""
        if "://" in u or os.path.isabs(u):
            return u
        return str((base_dir / u).resolve())


class Personas(BaseModel):
    """Where the synthesis personas come from: the shipped file, or e.g. hf://datasets/proj-persona/PersonaHub/..."""

    model_config = ConfigDict(extra="forbid")
    uri: str | None = None  # None: the shipped catalog/personas.jsonl
    column: str = "persona"
    max_rows: int | None = Field(default=None, gt=0)


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[Source]
    personas: Personas = Field(default_factory=Personas)
    path: Path = Path(".")

    @model_validator(mode="after")
    def _unique_names(self) -> "Catalog":
        if not self.sources:
            raise ValueError("the catalogue lists no sources: add at least one under `sources:`")
        seen: dict[str, tuple[int, str]] = {}
        for i, s in enumerate(self.sources, 1):
            key = s.name.lower()  # DuckDB compares identifiers ignoring case: alpha and ALPHA are one table
            if key in seen:
                j, other = seen[key]
                same = "appears twice" if other == s.name else "equals source " + repr(other) + " ignoring case"
                raise ValueError(f"source name {s.name!r} (entry {i}) {same} (entry {j}); DuckDB table names "
                                 "ignore case, so their rows would overwrite each other")
            seen[key] = (i, s.name)
        return self

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def get(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source named {name!r} in {self.path}")


def default_catalog() -> Path:
    return PROJECT_CATALOG if PROJECT_CATALOG.is_file() else PACKAGED_CATALOG


def load_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """Read and validate the catalogue: `path`, else $KALM_CATALOG, else catalog/sources.yaml of the working
    directory, else the catalogue shipped with the package (docstrings of installed packages)."""
    p = Path(path or os.environ.get("KALM_CATALOG") or default_catalog()).resolve()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"catalogue file {p} does not exist") from None
    except yaml.YAMLError as e:
        raise CatalogError(f"catalogue file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"catalogue file {p} must hold a mapping with a 'sources' list")
    try:
        return Catalog.model_validate({**data, "path": p})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = err["loc"]
            where = ".".join(str(x) for x in loc)
            if loc[:1] == ("sources",) and len(loc) > 1 and isinstance(loc[1], int):
                raw = data.get("sources") or []
                name = raw[loc[1]].get("name") if loc[1] < len(raw) and isinstance(raw[loc[1]], dict) else None
                where = f"source {name!r}: " + ".".join(str(x) for x in loc[2:]) if name else where
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {msg}")
        raise CatalogError(f"catalogue file {p}: " + "; ".join(problems)) from None


def changes(old: Catalog, new: Catalog) -> list[str]:
    """What an edit of the catalogue changed, in words (`added x`, `removed y`, `edited z`, `personas`); [] when the
    two hold the same entries: how a running UI tells that its definitions are out of date."""
    before = {s.name: s.model_dump() for s in old.sources}
    after = {s.name: s.model_dump() for s in new.sources}
    out = [f"added {n}" for n in after if n not in before]
    out += [f"removed {n}" for n in before if n not in after]
    out += [f"edited {n}" for n in after if n in before and after[n] != before[n]]
    if old.personas != new.personas:
        out.append("personas")
    return out
