"""`kind: mteb` sources: an MTEB task's training split, found through mteb's own metadata (KaLM §3.1 trains on the
MTEB training splits; mteb records which ones for the KaLM models).

The task names its hub dataset and revision (`task.metadata.dataset`); the split is read with `datasets` from a
local copy laid out like the hub dataset (the catalogue's `uri`) or from the Hugging Face cache, where `kalm fetch`
downloads it (`huggingface_hub.snapshot_download` at the pinned revision). Offline, a split that is not cached fails
its source with one line naming the dataset and the command that fetches it. Rows are converted by the task's type
with the same rules as a file in that layout (labels.py, sentence_pairs.py, beir.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kalm_core.catalog import Source
from kalm_core.extract import RawStats, SourceError, load_frame_source
from kalm_core.sources import labels, sentence_pairs
from kalm_core.sources.schema import LayoutError

# mteb's task types -> the catalogue's
TASK_TYPES = {"Classification": "classification", "MultilabelClassification": "classification",
              "Clustering": "clustering", "STS": "sts", "PairClassification": "pair_classification",
              "Retrieval": "retrieval", "Reranking": "reranking", "BitextMining": "bitext"}


@dataclass(frozen=True)
class TaskData:
    task: str
    path: str  # the hub dataset
    revision: str
    task_type: str
    instruction: str | None
    language: str
    eval_splits: tuple[str, ...] = ("test",)  # the splits mteb scores (decontamination reads them)

    def fetch_hint(self) -> str:
        return (f"kalm fetch --task {self.task} (or: huggingface-cli download {self.path} --repo-type dataset "
                f"--revision {self.revision})")


def task_data(name: str) -> TaskData:
    """The task's hub dataset, revision, type, KaLM instruction and language, from mteb's installed metadata."""
    import mteb

    from kalm_core.prompts import kalm_instruction

    try:
        task = mteb.get_task(name)
    except KeyError as e:
        raise SourceError(f"{name!r} is not an MTEB task known to the installed mteb ({e})") from None
    m = task.metadata
    langs = m.eval_langs if isinstance(m.eval_langs, list) else sorted({x for v in m.eval_langs.values() for x in v})
    codes = {lang.split("-")[0] for lang in langs}
    language = {"eng": "en", "cmn": "zh", "zho": "zh"}.get(next(iter(codes)), next(iter(codes))) \
        if len(codes) == 1 else "multi"
    return TaskData(name, m.dataset["path"], m.dataset["revision"], TASK_TYPES.get(m.type, m.type.lower()),
                    kalm_instruction(task, "{instruction}{query}") or None, language, tuple(m.eval_splits))


def local_copy(src: Source, data: TaskData, base_dir: Path, download: bool = False) -> Path:
    """The folder holding the dataset: the catalogue's `uri` (a copy laid out like the hub dataset), else the
    Hugging Face cache at the task's revision, downloaded there first when `download`."""
    if src.uri:
        folder = Path(src.resolved_uri(base_dir))
        if not folder.is_dir():
            raise SourceError(f"source {src.name!r}: {folder} is not a folder laid out like {data.path}")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(data.path, repo_type="dataset", revision=data.revision,
                                      local_files_only=not download))
    except Exception as e:
        if download:  # offline, gated, a revision gone: hub_access says which
            raise SourceError(f"source {src.name!r}: could not download {data.path}@{data.revision[:8]}: "
                              f"{str(e).splitlines()[0][:200]}") from None
        if not isinstance(e, LocalEntryNotFoundError):
            raise
        raise SourceError(f"source {src.name!r}: {data.path}@{data.revision[:8]} (MTEB {data.task}) is not in the "
                          f"Hugging Face cache; fetch it on a machine with hub access: {data.fetch_hint()}") from None


def is_present(src: Source, base_dir: Path) -> bool:
    """Whether the source's data can be read without the hub."""
    try:
        local_copy(src, task_data(src.task), base_dir)
        return True
    except SourceError:
        return False


def fingerprint(src: Source, base_dir: Path) -> str:
    """The data version: a local copy's files, or the pinned revision and whether it is cached (fetching it
    changes the version, so the source builds once its data arrives)."""
    import hashlib

    data = task_data(src.task)
    h = hashlib.sha256(f"{data.path}@{data.revision}:{src.split or 'train'}".encode())
    if src.uri:
        for f in sorted(p for p in Path(src.resolved_uri(base_dir)).rglob("*") if p.is_file()):
            h.update(str(f).encode())
            h.update(f.read_bytes())
    else:
        h.update(b"cached" if is_present(src, base_dir) else b"absent")
    return h.hexdigest()[:16]


def read_split(folder: Path, split: str) -> tuple[pl.DataFrame, dict]:
    """The split as a frame and its features (ClassLabel names), read by `datasets` as the hub would serve it."""
    import datasets

    try:
        ds = datasets.load_dataset(str(folder), split=split)
    except ValueError as e:  # an unknown split names the ones there are
        raise SourceError(f"{folder}: {e}") from None
    return pl.from_arrow(ds.data.table), dict(ds.features)


def _frame(df: pl.DataFrame, **fields: str) -> pl.DataFrame:
    """A layout frame (kalm_core/sources/schema.py): the dataset's columns as the layout's fields, as text."""
    out = df.select(*(pl.col(c).cast(pl.Utf8).alias(f) for f, c in fields.items()))
    raw = df.select(pl.struct(pl.all()).struct.json_encode().alias("raw_record"))  # kept for kept-out rows
    return pl.concat([out, raw], how="horizontal").with_row_index("ordinal", 1).with_columns(
        pl.col("ordinal").cast(pl.Int64), record_id=pl.lit(None, pl.Utf8), load_error=pl.lit(None, pl.Utf8))


def to_pairs(df: pl.DataFrame, features: dict, src: Source, task_type: str) -> pl.DataFrame:
    """The task type's conversion rule over a split, as for a file in that layout."""
    if task_type in ("classification", "clustering"):
        if "sentences" in df.columns and df.schema["sentences"] == pl.List(pl.Utf8):  # mteb's clustering sets
            df = df.explode("sentences", "labels").rename({"sentences": "text", "labels": "label"})
        names = src.label_names or getattr(features.get("label"), "names", None)
        extra = {"label_text": "label_text"} if "label_text" in df.columns else {}
        return labels.to_pairs(_frame(df, text="text", label="label", **extra), src.pairing, names)
    if task_type in ("sts", "pair_classification", "bitext"):
        if "labels" in df.columns and isinstance(df.schema["labels"], pl.List):  # one row of lists per set
            df = df.explode("sentence1", "sentence2", "labels")
        df = df.rename({"labels": "label"}) if "labels" in df.columns else df
        extra = {"score": "score"} if task_type == "sts" else {"label": "label"} if task_type != "bitext" else {}
        return sentence_pairs.to_pairs(_frame(df, sentence1="sentence1", sentence2="sentence2", **extra),
                                       task_type, src.min_score)
    if task_type == "reranking":  # query, positive list, negative list
        return pl.DataFrame({"ordinal": range(1, df.height + 1), "query": df["query"],
                             "positives": df["positive"], "negatives": df["negative"],
                             "record_id": [None] * df.height}).cast({"ordinal": pl.Int64, "record_id": pl.Utf8})
    raise LayoutError(f"MTEB task type {task_type!r} has no conversion rule")


def load_mteb_source(con, src: Source, base_dir: Path) -> RawStats:
    """raw.<name> from the task's split: one record per row (per text for a clustering set)."""
    data = task_data(src.task)
    if data.task_type != src.task_type:
        raise SourceError(f"source {src.name!r}: MTEB {src.task} is a {data.task_type} task, the catalogue says "
                          f"{src.task_type}")
    folder = local_copy(src, data, base_dir)
    split = src.split or "train"
    if data.task_type == "retrieval":  # BEIR's layout: corpus, queries, qrels/<split>.tsv
        from kalm_core.sources.beir import load_beir_source

        return load_beir_source(con, src.model_copy(update={"uri": str(folder), "split": split}), base_dir)
    df, features = read_split(folder, split)
    try:
        pairs = to_pairs(df, features, src, data.task_type)
    except (LayoutError, pl.exceptions.ColumnNotFoundError) as e:
        raise SourceError(f"source {src.name!r} ({data.path}, split {split}): {e}; columns: {df.columns}") from None
    return load_frame_source(con, src, pairs)


def fetch(catalog, tasks: list[str] | None = None, log=print) -> tuple[int, int]:
    """Download each mteb source's split (only `tasks`' when given) that is not here yet; huggingface_hub shows its
    progress, and a failure is named while the rest go on. Returns (sources wanted, how many failed)."""
    import sys

    wanted = [s for s in catalog.sources if s.kind == "mteb" and (not tasks or s.task in tasks)]
    unknown = set(tasks or ()) - {s.task for s in wanted}
    if unknown:
        raise ValueError(f"no mteb source of the catalogue has task {sorted(unknown)}")
    failed = 0
    for s in wanted:
        try:
            data = task_data(s.task)
            if s.uri or is_present(s, catalog.base_dir):
                log(f"{s.name}: present")
                continue
            log(f"{s.name}: downloading {data.path}@{data.revision[:8]}")
            local_copy(s, data, catalog.base_dir, download=True)
        except SourceError as e:  # offline, a gated dataset, a revision gone
            print(f"{s.name}: failed: {str(e).splitlines()[0][:200]}", file=sys.stderr)
            failed += 1
    return len(wanted), failed
