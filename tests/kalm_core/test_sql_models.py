import pytest

from kalm_core.sql_models import SqlModel, discover, parse_header, run_model


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
