"""Task-layout and BEIR sources through the DAG: the raw assets read them, the blocking file-accounting and
staging checks hold, and the kept-out records are in staged.rejects with their reasons."""

import polars as pl
import yaml

from dagster_project.cli import main
from kalm_core import warehouse
from tests.kalm_core.test_beir_source import write_folder


def test_a_classification_source_and_a_beir_folder_build_through_staging(env, capsys):
    data = env["dir"] / "sources"
    pl.DataFrame({"text": ["card not arrived", "where is my card", "link my card", "stolen card"],
                  "label": [0, 0, 1, 2]}).write_parquet(data / "banking.parquet")
    write_folder(data / "fiqa", [{"_id": "d1", "title": "", "text": "Index funds track a market."},
                                 {"_id": "d2", "title": "Bonds", "text": "Bonds pay coupons."}],
                 [{"_id": "q1", "text": "What is an index fund?"}, {"_id": "q2", "text": "Orphan query"}],
                 [("q1", "d1", 1), ("q1", "d2", 0), ("q2", "missing", 1)])
    catalog = yaml.safe_load(env["catalog"].read_text())
    catalog["sources"] += [
        {"name": "banking", "uri": "sources/banking.parquet", "task_type": "classification",
         "columns": {"text": "text", "label": "label"}, "label_names": ["card_arrival", "card_linking", "stolen"],
         "instruction": "Given an online banking query, find the corresponding intents"},
        {"name": "fiqa", "uri": "sources/fiqa", "format": "beir", "split": "train"}]
    env["catalog"].write_text(yaml.safe_dump(catalog))
    assert main(["run", "--select", "*staged/banking"]) == 0
    assert main(["run", "--select", "*staged/fiqa"]) == 0
    with warehouse.connect(read_only=True) as con:
        banking = con.sql('select query, positive, task_type from staged."banking" order by row_number').pl()
        fiqa = con.sql('select query, positive, negatives from staged."fiqa"').pl()
        rejects = con.execute("select source, reason from staged.rejects where source = 'fiqa'").fetchall()
    assert banking["positive"].to_list() == ["card_arrival", "card_arrival", "card_linking", "stolen"]
    assert set(banking["task_type"]) == {"classification"}
    assert fiqa.rows() == [("What is an index fund?", "Index funds track a market.", ["Bonds Bonds pay coupons."])]
    assert rejects == [("fiqa", "none of its relevant passages is in corpus.jsonl")]
