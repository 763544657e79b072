import pytest
import yaml

from kalm_core.catalog import CatalogError, Source, load_catalog
from kalm_core.identifiers import InvalidIdentifier, check_identifier, table


def _write(tmp_path, text):
    p = tmp_path / "cat.yaml"
    p.write_text(text)
    return p


def test_default_catalogue_loads_with_held_out_sources():
    cat = load_catalog()
    assert any(s.held_out for s in cat.sources) and any(not s.held_out for s in cat.sources)
    assert all(s.kind == "python-docs" for s in cat.sources)


def test_invalid_yaml_names_the_file(tmp_path):
    p = _write(tmp_path, "sources: [\n  - name: a\n uri: x")
    with pytest.raises(CatalogError, match=str(p)):
        load_catalog(p)


def test_unknown_key_names_the_file_the_source_and_the_key(tmp_path):
    p = _write(tmp_path, "sources:\n  - name: alpha\n    uri: a.jsonl\n    colums: {query: q}\n")
    with pytest.raises(CatalogError, match=r"cat\.yaml.*'alpha'.*colums.*unknown key"):
        load_catalog(p)


def test_source_name_must_be_a_plain_identifier(tmp_path):
    p = _write(tmp_path, "sources:\n  - name: 'x; drop table raw.y'\n    uri: a.jsonl\n")
    with pytest.raises(CatalogError, match="not a plain identifier"):
        load_catalog(p)
    with pytest.raises(InvalidIdentifier):
        table("raw", 'a"b')
    with pytest.raises(InvalidIdentifier):
        table("nolayer", "a")
    assert check_identifier("ok_name1") == "ok_name1"


def test_names_of_the_pipelines_own_tables_are_reserved(tmp_path):
    for name in ("rejects", "synthetic"):
        with pytest.raises(CatalogError, match=f"source name '{name}' is reserved"):
            load_catalog(_write(tmp_path, f"sources:\n  - {{name: {name}, uri: x.jsonl}}\n"))


def test_duplicate_names_and_missing_uri_are_refused(tmp_path):
    with pytest.raises(CatalogError, match="appears twice"):
        load_catalog(_write(tmp_path, "sources:\n  - {name: a, uri: x.jsonl}\n  - {name: a, uri: y.jsonl}\n"))
    with pytest.raises(CatalogError, match="needs a 'uri'"):
        load_catalog(_write(tmp_path, "sources:\n  - {name: a}\n"))


def test_format_inferred_from_the_uri():
    assert Source(name="a", uri="hf://datasets/o/d/train.parquet").resolved_format() == "parquet"
    assert Source(name="a", uri="s3://b/x/*.jsonl").resolved_format() == "jsonl"
    assert Source(name="a", uri="https://h/x.csv").resolved_format() == "csv"
    assert Source(name="a", uri="x.data", format="csv").resolved_format() == "csv"
    with pytest.raises(CatalogError, match="cannot infer"):
        Source(name="a", uri="x.data").resolved_format()


def test_names_equal_ignoring_case_are_refused_naming_both_entries(tmp_path):
    for a, b in (("clean", "CLEAN"), ("alpha", "Alpha")):
        text = f"sources:\n  - {{name: {a}, uri: x.jsonl}}\n  - {{name: {b}, uri: y.jsonl}}\n"
        with pytest.raises(CatalogError, match=f"'{b}' \\(entry 2\\) equals source '{a}' ignoring case \\(entry 1\\)"):
            load_catalog(_write(tmp_path, text))
    for name in ("Rejects", "SYNTHETIC"):
        with pytest.raises(CatalogError, match=f"source name '{name}' is reserved in any case"):
            load_catalog(_write(tmp_path, f"sources:\n  - {{name: {name}, uri: x.jsonl}}\n"))


def test_an_over_long_name_is_refused_naming_the_limit():
    from kalm_core.identifiers import InvalidIdentifier, check_identifier

    assert check_identifier("a" * 63) == "a" * 63
    with pytest.raises(InvalidIdentifier, match="200 characters long: at most 63"):
        check_identifier("a" * 200, "source name")


@pytest.mark.parametrize("entry, message", [
    ({"task_type": "retrieval", "columns": {"text": "t", "label": "l"}}, "layout of task_type classification or "
                                                                         "clustering, not 'retrieval'"),
    ({"task_type": "classification", "columns": {"text": "t"}}, r"needs columns \['text', 'label'\]; missing"),
    ({"task_type": "sts", "columns": {"sentence1": "a", "sentence2": "b"}}, "needs columns.score and min_score"),
    ({"task_type": "nli", "columns": {"premise": "p", "hypothesis": "h", "label": "l", "score": "s"}},
     r"columns \['score'\] belong to another task layout"),
    ({"task_type": "classification", "columns": {"label": "l"}}, r"columns \['label'\] belong to another"),
    ({"pairing": "same_label"}, "'pairing' applies to a classification or clustering source"),
    ({"min_score": 3.0}, "'min_score' applies to an sts source"),
])
def test_a_task_layout_needs_its_columns_and_its_task_type(tmp_path, entry, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": "s", "uri": "s.parquet", **entry}]}))
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_changes_name_the_added_removed_and_edited_entries(tmp_path):
    from kalm_core.catalog import changes

    def cat(sources, personas=None):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"sources": sources, **({"personas": personas} if personas else {})}))
        return load_catalog(path)

    a, b = {"name": "a", "uri": "a.jsonl"}, {"name": "b", "uri": "b.jsonl"}
    assert changes(cat([a, b]), cat([a, b])) == []
    assert changes(cat([a, b]), cat([{**a, "instruction": "Find it"}, {"name": "c", "uri": "c.jsonl"}])) == \
        ["added c", "removed b", "edited a"]
