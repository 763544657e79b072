import csv
import io
import json

from dagster_project.cli import main, parser


def test_sql_csv_sources_and_export(env, capsys, tmp_path):
    assert main(["run"]) == 0
    capsys.readouterr()

    assert main(["sql", "select source, count(*) as n from marts.training_pairs group by source order by source",
                 "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["source", "n"], ["alpha", "2"], ["beta", "2"]]

    assert main(["sql", "select count(*) as n from marts.eval_pairs"]) == 0
    cells = [line.strip("│ ") for line in capsys.readouterr().out.splitlines()]
    assert "n" in cells and "2" in cells  # the box table: a header n and one value row 2

    assert main(["sources"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "eval" in out and "sources/a.jsonl" in out

    out_file = tmp_path / "pairs.jsonl"
    assert main(["export", "--format", "flagembedding", str(out_file)]) == 0
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert len(lines) == 4 and all(len(x["pos"]) == 1 for x in lines)


def test_sql_refuses_writes(env, capsys):
    main(["run", "--select", "key:raw/gamma"])
    capsys.readouterr()
    assert main(["sql", "drop table raw.gamma"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert main(["sql", "select count(*) from raw.gamma", "--csv"]) == 0
    assert capsys.readouterr().out.strip().endswith("2")


def test_help_lists_every_command():
    text = parser().format_help()
    for cmd in ("run", "ui", "sql", "sources", "export"):
        assert cmd in text
