"""Layer raw: one observable source and one raw/<source> asset per catalogue source (a factory)."""


import warnings

import dagster as dg

from assets.resources import WarehouseResource
from kalm_core import extract, python_docs
from kalm_core.catalog import Catalog, Source
from assets.common import table_metadata, with_checks
from kalm_core.identifiers import table
from kalm_core.sources.beir import load_beir_source
from kalm_core.sources.read import load_layout_source
from kalm_core.sources.mteb_source import load_mteb_source
from kalm_core.sources.sql_source import load_sql_source
from kalm_core.versions import code_version


def source_key(src: Source) -> dg.AssetKey:
    return dg.AssetKey(["sources", src.name])


def fingerprint(src: Source, catalog: Catalog) -> str:
    """The data version of a source: its file's content (or its packages' versions) and its catalogue entry, so a
    changed `max_rows`, instruction, task type, column mapping or `held_out` makes its chain stale too."""
    content = (python_docs.fingerprint(src.packages) if src.kind == "python-docs"
               else extract.file_fingerprint(src, catalog.base_dir))
    return code_version(base=content, sections=(src,))


def build_source_observer(src: Source, catalog: Catalog):
    """The file (or package set) behind a source, versioned by a hash of its content."""

    def _observe() -> dg.ObserveResult:
        return dg.ObserveResult(data_version=dg.DataVersion(fingerprint(src, catalog)),
                                metadata=extract.file_facts(src, catalog.base_dir))

    with warnings.catch_warnings():  # observable_source_asset is marked beta; it is the documented way here
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.observable_source_asset(key=source_key(src), group_name="sources", name=None,
                                          description=f"{src.task_type} source {src.name!r}: {src.origin}. "
                                                      "Observed: its files, size, records and last change.")(_observe)


def _file_accounting(context, warehouse: WarehouseResource, state: dict) -> dg.AssetCheckResult:
    key, meta = state["key"], state["meta"]
    if meta is None:  # run alone: the last build's counts
        meta = context.instance.get_latest_materialization_event(key).asset_materialization.metadata
    in_file, cap = (v.value if isinstance(v, dg.MetadataValue) else v
                    for v in (meta["records_in_file"], meta["max_rows"]))
    with warehouse.connect(read_only=True) as con:
        in_raw, errors = con.execute(
            f"select count(distinct row_number), count(distinct row_number) filter (load_error is not null) "
            f"from {table(*key.path)}").fetchall()[0]
    if in_file < 0:  # a remote file: its records are what its reader returned
        return dg.AssetCheckResult(passed=True, metadata={"records_in_raw": in_raw, "records_in_file": "remote"})
    expected = min(in_file, cap) if cap else in_file
    return dg.AssetCheckResult(
        passed=in_raw == expected,
        metadata={"records_in_file": in_file, "max_rows": cap, "expected_records": expected,
                  "records_in_raw": in_raw, "quarantined_records": errors},
        description=None if in_raw == expected else
        f"{key.path[-1]}: {expected} records in the file but {in_raw} in raw: {expected - in_raw} lost")


CHECKS = {"file_accounting": ("records in the file (counted before parsing) = records in raw, loaded or quarantined",
                              _file_accounting)}


def build_raw_asset(src: Source, catalog: Catalog) -> dg.AssetsDefinition:
    @with_checks(dg.AssetKey(["raw", src.name]), CHECKS, deps=[source_key(src)],
                 group_name="raw", kinds={"duckdb"}, description=f"Source {src.name!r} normalised to the pair schema.")
    def _raw(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings) -> dg.MaterializeResult:
        with warehouse.connect() as con:
            if src.kind == "python-docs":
                stats = extract.load_frame_source(con, src, python_docs.harvest(src.packages))
            elif src.kind == "mteb":  # an MTEB task's training split, from the hub cache or a local copy
                stats = load_mteb_source(con, src, catalog.base_dir)
            elif src.kind == "sql":  # a SELECT over several files (MS MARCO's id triples)
                stats = load_sql_source(con, src, catalog.base_dir)
            elif src.format == "beir":  # corpus, queries and qrels joined
                stats = load_beir_source(con, src, catalog.base_dir)
            elif src.layout is not None:  # classification, clustering, NLI, STS, ... rows as pairs
                stats = load_layout_source(con, src, catalog.base_dir)
            else:
                stats = extract.load_file_source(con, src, catalog.base_dir)
            meta = table_metadata(con, "raw", src.name, rows=stats.rows, records=stats.records,
                                  malformed_records=stats.malformed, kept_out_records=stats.kept_out,
                                  uri=src.resolved_uri(catalog.base_dir) if src.uri else src.sql or src.task or "python-docs",
                                  records_in_file=-1 if stats.file_records is None else stats.file_records,
                                  max_rows=src.max_rows or 0)
        kept_out = f", {stats.kept_out} kept out by its {src.layout} layout" if stats.kept_out else ""
        context.log.info(f"raw/{src.name}: {stats.rows} rows from {stats.records} records{kept_out}")
        return dg.MaterializeResult(metadata=meta)

    return _raw


def build(catalog: Catalog) -> list:
    """The observed sources and the raw assets (each with its file_accounting check in its step)."""
    return [a for s in catalog.sources for a in (build_source_observer(s, catalog), build_raw_asset(s, catalog))]
