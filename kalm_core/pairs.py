"""The pair contract, defined once: how texts are normalised and how a pair is identified (layer 1 dedup).

Both are DuckDB macros, registered on every connection the project opens (`warehouse.new_connection`), so the
staging SQL and the synthetic path call the same definition: a pair id is md5 of the NFC-normalised, trimmed query
and positive joined by the unit separator, the same pair getting the same id in every source.
"""

from __future__ import annotations

MACROS = {
    "kalm_clean": "(t) as nfc_normalize(trim(t))",  # DuckDB's trim: leading and trailing spaces
    "kalm_pair_id": "(q, p) as md5(q || chr(31) || p)",  # over cleaned texts
}


def register(con) -> None:
    for name, body in MACROS.items():
        con.execute(f"create or replace temp macro {name}{body}")


def pair_ids(con, queries: list[str], positives: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(cleaned queries, cleaned positives, pair ids) through the same macros the staging SQL uses."""
    import polars as pl

    con.register("_kalm_pairs", pl.DataFrame({"q": queries, "p": positives},
                                              schema={"q": pl.Utf8, "p": pl.Utf8}).to_arrow())
    try:
        rows = con.execute("select kalm_clean(q), kalm_clean(p), kalm_pair_id(kalm_clean(q), kalm_clean(p)) "
                           "from _kalm_pairs").fetchall()
    finally:
        con.unregister("_kalm_pairs")
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
