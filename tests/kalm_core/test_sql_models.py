from pathlib import Path

import pytest

from kalm_core.sql_models import SqlModel, discover, parse_header, run_incremental, run_model


def _model(tmp_path, layer, name, text):
    d = tmp_path / layer
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.sql").write_text(text)
    return d / f"{name}.sql"


def test_discover_reads_headers_and_skips_per_source_templates():
    models = {(m.layer, m.name): m for m in discover()}
    assert ("marts", "training_pairs") in models and ("marts", "eval_pairs") in models
    assert ("staged", "stg_source") not in models
    assert models[("marts", "training_pairs")].header["key"] == "pair_id"


def test_refs_resolve_wildcards_and_render_a_union(tmp_path, con):
    _model(tmp_path, "marts", "all_things", "-- grain: one row per thing\n-- key: id\n"
           "select * from {{ ref('staged.*') }} where id > 0")
    (model,) = discover(tmp_path)
    built = {"staged": ["a", "b"]}
    assert model.refs == [("staged", "*", "")]
    assert model.dependencies(built) == [("staged", "a"), ("staged", "b")]
    con.execute('create table staged."a" as select 1 as id, \'x\' as t')
    con.execute('create table staged."b" as select 2 as id')
    assert run_model(con, model, built) == 2
    assert con.execute("select t from marts.all_things order by id").fetchall() == [("x",), (None,)]


def test_a_subset_ref_depends_on_its_tables_only_and_an_empty_one_has_no_rows(tmp_path, con):
    _model(tmp_path, "marts", "held", "select * from {{ ref('staged.*', 'held_out') }}")
    (model,) = discover(tmp_path)
    con.execute('create table staged."a" as select 1 as id')
    con.execute('create table staged."b" as select 2 as id')
    built = {"staged": ["a", "b"], "staged/held_out": ["b"]}
    assert model.dependencies(built) == [("staged", "b")]  # a training source never makes it stale
    assert run_model(con, model, built) == 1
    assert run_model(con, model, {"staged": ["a", "b"], "staged/held_out": []}) == 0
    with pytest.raises(ValueError, match="no subset 'held_out'"):
        model.dependencies({"staged": ["a"]})


def test_code_version_follows_the_sql_text(tmp_path):
    p = _model(tmp_path, "marts", "m", "select 1")
    v1 = discover(tmp_path)[0].code_version
    p.write_text("select 2")
    assert discover(tmp_path)[0].code_version != v1


def test_bad_refs_and_folders_are_refused(tmp_path):
    model = SqlModel("marts", "m", tmp_path / "m.sql", "select * from {{ ref('staged.*') }}")
    with pytest.raises(ValueError, match="matches no table"):
        model.dependencies({})
    bad = SqlModel("marts", "m", tmp_path / "m.sql", "select * from {{ ref('nowhere.x') }}")
    with pytest.raises(ValueError, match="unknown layer"):
        bad.dependencies({})
    _model(tmp_path, "notalayer", "m", "select 1")
    with pytest.raises(ValueError, match="not a layer"):
        discover(tmp_path)


def test_parse_header_stops_at_the_first_sql_line():
    assert parse_header("-- grain: one row\n-- key: id\nselect 1\n-- key: other") == {"grain": "one row", "key": "id"}


def test_a_header_reads_as_sentences_with_its_fields_as_metadata():
    text = ("-- grain: one row per pair\n-- key: pair_id\n-- invariants: no pair twice; a note:\n"
            "--   continued: here\n-- macros: kalm_norm\nselect 1 as pair_id")
    model = SqlModel("marts", "m", Path("kalm_core/sql/marts/m.sql"), text, parse_header(text))
    assert model.header["invariants"] == "no pair twice; a note: continued: here"  # not a key `continued`
    assert model.description == "One row per pair. Key: pair_id. Built by the SQL model m.sql."
    assert model.metadata == {"sql_file": "kalm_core/sql/marts/m.sql", "sql_grain": "one row per pair",
                              "sql_key": "pair_id", "sql_invariants": "no pair twice; a note: continued: here",
                              "sql_macros": "kalm_norm"}


REPORT = """-- grain: one row per source
-- key: source
-- incremental: source (a comment after the column)
select source, count(*) as n, max(x) as top from {{ ref('filtered.*') }} group by source order by source
"""


def _rows(con, t="marts.report"):
    return con.execute(f"select * from {t} order by source").fetchall()


def test_an_incremental_model_recomputes_the_changed_tables_rows_only_and_equals_a_whole_build(tmp_path, con):
    _model(tmp_path, "marts", "report", REPORT)
    (model,) = discover(tmp_path)
    assert model.partition == "source"
    built = {"filtered": ["a", "b", "c"]}
    for name, n in (("a", 3), ("b", 2), ("c", 4)):
        con.execute(f"create table filtered.{name} as select '{name}' as source, range as x from range({n})")
    con.execute('create table filtered."d" as select \'d\' as source, 1 as x')  # not an input: never read
    run_model(con, model, built)
    # b changes (fewer rows under b, new ones under b/two), c is emptied, a is untouched
    con.execute("create or replace table filtered.b as select case when range = 0 then 'b' else 'b/two' end "
                "as source, range + 10 as x from range(3)")
    con.execute("create or replace table filtered.c as select 'c' as source, 1 as x where false")
    con.execute("delete from filtered.a")  # a change no one reported: an incremental build does not see it
    assert run_incremental(con, model, built, [("filtered", "b"), ("filtered", "c")]) == 3
    assert _rows(con) == [("a", 3, 2), ("b", 1, 10), ("b/two", 2, 12)]
    con.execute("create or replace table filtered.b as select 'b' as source, 5 as x")  # b/two is gone again
    assert run_incremental(con, model, built, [("filtered", "b")]) == 2
    assert _rows(con) == [("a", 3, 2), ("b", 1, 5)]
    con.execute("insert into filtered.a select 'a', 7")
    run_model(con, model, built)
    assert _rows(con) == [("a", 1, 7), ("b", 1, 5)]  # a whole build reads every table again


def test_an_incremental_update_is_refused_for_other_models_inputs_and_rows_and_changes_nothing(tmp_path, con):
    _model(tmp_path, "marts", "report", REPORT)
    _model(tmp_path, "marts", "plain", "select * from {{ ref('filtered.*') }}")
    report, plain = sorted(discover(tmp_path), key=lambda m: m.name, reverse=True)
    built = {"filtered": ["a", "b"]}
    con.execute("create table filtered.a as select 'a' as source, 1 as x")
    con.execute("create table filtered.b as select 'b' as source, 2 as x")
    run_model(con, report, built)
    with pytest.raises(ValueError, match="not an incremental model"):
        run_incremental(con, plain, built, [("filtered", "a")])
    with pytest.raises(ValueError, match="only tables of its ref"):
        run_incremental(con, report, built, [("staged", "a")])
    con.execute("create or replace table filtered.a as select 'b' as source, 9 as x")  # a row that names table b
    with pytest.raises(ValueError, match="1 row\\(s\\) from a have a source that names no input table"):
        run_incremental(con, report, built, [("filtered", "a")])
    assert _rows(con) == [("a", 1, 1), ("b", 1, 2)]


def _filtered(con, name: str, pairs: list[tuple[str, str]]) -> None:
    rows = ", ".join(f"('{name}', {i + 1}, 1, md5('{q}' || chr(31) || '{p}'), '{q}', '{p}')"
                     for i, (q, p) in enumerate(pairs))
    con.execute(f"""create table filtered."{name}" as
        select source, row_number, positive_index, pair_id, query, positive, true as kept,
               'retrieval' as task_type, '' as instruction, 'en' as language, cast([] as varchar[]) as negatives,
               1 as pos_rank, 0.9 as pos_score, 0 as n_given_negatives, 0 as n_mined_negatives,
               0 as n_filled_negatives, null as record_id, 'h' as content_hash
        from (values {rows}) v(source, row_number, positive_index, pair_id, query, positive)""")


def _curation(con, built, eval_pairs: list[tuple[str, str]], eval_sets: list[tuple[str, str, str]] = ()) -> dict:
    """marts.eval_pairs and marts.evaluation_sets (source, kind, text) planted, then the models that decontaminate
    against them built."""
    rows = ", ".join(f"('heldout', '{q}', '{p}')" for q, p in eval_pairs) or "(null, null, null)"
    con.execute(f"create or replace table marts.eval_pairs as select source::varchar as source, query::varchar as "
                f"query, positive::varchar as positive from (values {rows}) v(source, query, positive) "
                "where source is not null")
    rows = ", ".join(f"('{s}', '{k}', '{t}')" for s, k, t in eval_sets) or "(null, null, null)"
    con.execute(f"create or replace table marts.evaluation_sets as select source::varchar as source, kind::varchar "
                f"as kind, text::varchar as text from (values {rows}) v(source, kind, text) where source is not null")
    models = {m.name: m for m in discover() if m.layer == "marts"}
    for name in ("evaluation_texts", "evaluation_ngrams", "contamination"):
        run_model(con, models[name], built)
    return models


def test_a_pair_found_twice_trains_once_after_normalisation_and_the_other_copy_says_which_it_duplicates(con):
    """#23 item 4: case, whitespace and end-punctuation variants, in one source or across two, are one pair; the
    first source by name keeps it, and every kept filtered pair is in training_pairs or duplicate_pairs."""
    _filtered(con, "beta", [("What is a tensor?", "An array."), ("what is a graph", "nodes and edges"),
                            ("what  is a tensor", "an array")])
    _filtered(con, "alpha", [("what is a tensor", "an array"), ("What is C++?", "A language.")])
    _filtered(con, "gamma", [("what is c", "a language")])  # C++ is not C
    built = {"filtered": ["alpha", "beta", "gamma"]}
    models = _curation(con, built, [])
    assert run_model(con, models["training_pairs"], built) == 4
    assert run_model(con, models["duplicate_pairs"], built) == 2
    kept = con.execute("select source, query from marts.training_pairs order by source, query").fetchall()
    assert kept == [("alpha", "What is C++?"), ("alpha", "what is a tensor"), ("beta", "what is a graph"),
                    ("gamma", "what is c")]
    dups = con.execute("select source, row_number, reason, duplicate_of_source from marts.duplicate_pairs "
                       "order by row_number").fetchall()
    assert dups == [("beta", 1, "duplicate of alpha row 1", "alpha"), ("beta", 3, "duplicate of alpha row 1", "alpha")]
    assert con.execute("select count(*) from marts.duplicate_pairs where duplicate_of not in "
                       "(select pair_id from marts.training_pairs)").fetchall() == [(0,)]


def test_training_pairs_touching_the_evaluation_split_are_left_out_with_the_evaluation_source_named(con):
    """#23 item 2: the planted leaks an md5 of the exact pair missed (case, a double space, `?` added, the same query
    with another positive, a `.` after the positive, a positive that is an evaluation query) are all caught."""
    evaluation = [("How do I sort a list", "Use sorted(xs)"), ("what is a tensor", "a multi-dimensional array")]
    leaks = [("HOW DO I SORT A LIST", "Use sorted(xs)"), ("how do I  sort a list", "use sorted(xs)"),
             ("How do I sort a list?", "Use sorted(xs)"), ("how do i sort a list", "call list.sort()"),
             ("tensors?", "A multi-dimensional array."), ("which question", "What is a tensor")]
    clean = [("how do I reverse a list", "Use reversed(xs)"), ("what is a sorted list", "a list in order")]
    _filtered(con, "train", leaks + clean)
    built = {"filtered": ["train"]}
    models = _curation(con, built, evaluation)
    assert run_model(con, models["training_pairs"], built) == 2
    assert {q for (q,) in con.execute("select query from marts.training_pairs").fetchall()} == {q for q, _ in clean}
    got = con.execute("select row_number, reason, eval_source from marts.contamination order by row_number").fetchall()
    assert [r[0] for r in got] == [1, 2, 3, 4, 5, 6] and {r[2] for r in got} == {"heldout"}
    assert got[4][1] == "contaminated: positive is a relevant text of heldout"
    assert got[5][1] == "contaminated: positive is a query of heldout"
    assert run_model(con, models["duplicate_pairs"], built) == 0  # a left-out pair is not also a duplicate


def test_a_training_text_holding_half_an_evaluation_documents_13_grams_is_left_out(con):
    """#23 item 2, containment: a positive that quotes most of an evaluation document inside other text is left
    out, naming the rule; one that shares a single 13-word run of a long document (under half its 13-grams) stays."""
    doc = " ".join(f"w{i}" for i in range(40))  # 28 distinct 13-grams
    quoting = "Preface words here. " + " ".join(f"w{i}" for i in range(2, 40)) + " and an epilogue"  # 26 of 28
    sharing = "other text " + " ".join(f"w{i}" for i in range(0, 20)) + " then something else entirely"  # 8 of 28
    short = " ".join(f"w{i}" for i in range(12))  # 12 words: no 13-gram, not equal to the document
    _filtered(con, "train", [("q one", quoting), ("q two", sharing), ("q three", short)])
    built = {"filtered": ["train"]}
    models = _curation(con, built, [("an evaluation query", doc)])
    grams = con.execute("select distinct n_grams from marts.evaluation_ngrams").fetchall()
    assert grams == [(28,)]
    got = con.execute("select row_number, reason from marts.contamination").fetchall()
    assert got == [(1, "contaminated: positive holds half the 13-grams of a relevant text of heldout")]
    assert run_model(con, models["training_pairs"], built) == 2
