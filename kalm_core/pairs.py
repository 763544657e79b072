"""The pair contract, defined once: how texts are normalised and how a pair is identified (layer 1 dedup).

Both are DuckDB macros, registered on every connection the project opens (`warehouse.new_connection`), so the
staging SQL and the synthetic path call the same definition: a pair id is md5 of the cleaned query and positive
joined by the unit separator, the same pair getting the same id in every source. Cleaning = NFKC's width folding
(full-width ASCII forms and the ideographic space, which Chinese and Japanese text carry: `？` is `?`, `１２` is
`12`), zero-width characters removed, trimmed, NFC: a CJK text and its half-width variant dedup as one.
"""

from __future__ import annotations

from kalm_core.catalog import TASK_TYPES

# The Unicode space separators (category Zs): exactly what DuckDB's trim() strips from either end.
SPACE_SEPARATORS = (0x20, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)
_ENDS_IN_SPACE = " or ".join(f"ends_with(t, chr({c}))" for c in SPACE_SEPARATORS)
_ZS = ", ".join(str(c) for c in SPACE_SEPARATORS)

# NFKC's width folding, the part of it CJK text needs: U+FF01-U+FF5E are U+0021-U+007E, U+3000 is a space.
FULL_WIDTH = "".join(chr(c) for c in range(0xFF01, 0xFF5F)) + "\u3000"
HALF_WIDTH = "".join(chr(c) for c in range(0x21, 0x7F)) + " "
ZERO_WIDTH = "\\x{200B}-\\x{200D}\\x{2060}\\x{FEFF}"  # zero-width space, (non-)joiners, word joiner, BOM
_sql = lambda text: "'" + text.replace("'", "''") + "'"  # noqa: E731

MACROS = {
    # A pure-ASCII text (strlen = length: the common case, 0.02 s per 1M) has nothing to fold; others are searched
    # once for a character to fold (translate over every text would cost 2.8 s per 1M).
    "kalm_fold": (f"(t) as case when strlen(t) = length(t) then t "
                  f"when regexp_matches(t, '[{ZERO_WIDTH}\\x{{FF01}}-\\x{{FF5E}}\\x{{3000}}]') "
                  f"then translate(regexp_replace(t, '[{ZERO_WIDTH}]', '', 'g'), {_sql(FULL_WIDTH)}, "
                  f"{_sql(HALF_WIDTH)}) else t end"),
    # = nfc_normalize(trim(t)) of the folded text. DuckDB's trim walks every code point to find the right end, so it
    # runs only on a text that ends in a space; ltrim stops at the first non-space (1M queries + positives: 1.0 s ->
    # 0.2 s).
    "kalm_trim": (f"(t) as case when {_ENDS_IN_SPACE} then trim(t) when unicode(t) in ({_ZS}) then ltrim(t) "
                  f"else t end"),
    "kalm_clean": "(t) as nfc_normalize(kalm_trim(kalm_fold(t)))",
    "kalm_pair_id": "(q, p) as md5(q || chr(31) || p)",  # over cleaned texts
    # a row's or a folder's task-type name as a catalogue task type, or null: a FlagEmbedding folder such as
    # `classification-no_in_batch_neg` names its type first; anything else falls back to the catalogue's
    "kalm_task_type": (f"(t) as nullif(regexp_extract(lower(t), '^({'|'.join(sorted(TASK_TYPES, key=len, reverse=True))})"
                       f"(?:$|[^a-z])', 1), '')"),
}


# The dedup normalisation (#23 items 2 and 4): case, runs of whitespace and punctuation at either end do not make
# another pair or another evaluation text ("What is X?" = "what is  x"). Arrow's utf8 kernels lower and trim 1M texts
# in 0.1 s, where DuckDB's trim(t, characters) takes 6 s: an Arrow UDF, `kalm_norm`.
# sentence punctuation, brackets and quotes; not + # % (C++, C#, 100%: not the same texts as C and 100)
END_PUNCTUATION = " !\"'(),-./:;?[]{}`*_~\u2026\u3001\u3002\u00bf\u00a1\u201c\u201d\u2018\u2019\u00ab\u00bb"
NORM_MACROS = {
    # the key two copies of one pair share: cross-source dedup keeps one (marts.training_pairs)
    "kalm_pair_key": "(q, p) as md5(kalm_norm(q) || chr(31) || kalm_norm(p))",
}
# Decontamination's containment rule (a training text holding half an evaluation text's word 13-grams:
# marts.evaluation_ngrams and marts.contamination). A text's words are hashed once, and a 13-gram is the hash of 13
# word hashes: 4x faster than hashing each 13-gram's joined string. `kalm_ngrams` takes the word hashes as a column (a
# macro's argument is re-evaluated where it is used) and gives the 13-gram hashes in order; none under 13 words.
MACROS["kalm_word_hashes"] = "(t) as list_transform(string_split(t, ' '), lambda w: hash(w))"
MACROS["kalm_ngrams"] = "(h) as list_transform(range(1, len(h) - 11), lambda i: hash(h[i:i + 12]))"


def normalise(texts):
    """kalm_norm over an Arrow array: lower case, whitespace runs as one space, punctuation and spaces trimmed from
    both ends (the cleaned text's full-width forms are already folded, kalm_clean)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = pc.utf8_trim(pc.utf8_lower(texts), characters=END_PUNCTUATION)
    spaced = pc.fill_null(pc.or_(pc.match_substring(texts, "  "), pc.match_substring_regex(texts, r"[\t\n\r\f\v]")),
                          False)
    idx = pc.indices_nonzero(spaced)
    if not len(idx):  # the common case: nothing to collapse
        return texts
    fixed = pc.replace_substring_regex(pc.take(texts, idx), r"\s+", " ")
    out = texts.to_pylist()
    for i, v in zip(idx.to_pylist(), fixed.to_pylist()):
        out[i] = v
    return pa.array(out, pa.string())


def register(con) -> None:
    """The macros on `con` (temp: each connection and cursor has its own), the Arrow UDF once per instance (a cursor
    shares its connection's functions). One statement for all macros: ~2 ms a connection where one each and a
    catalogue query for the UDF took ~14 ms."""
    import duckdb

    try:
        con.execute("select kalm_norm(null::varchar)")
    except duckdb.CatalogException:
        con.create_function("kalm_norm", normalise, [duckdb.sqltypes.VARCHAR], duckdb.sqltypes.VARCHAR,
                            type="arrow")
    macros = {**MACROS, **NORM_MACROS}
    con.execute(";".join(f"create or replace temp macro {name}{body}" for name, body in macros.items()))


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
