"""Task layouts as pairs (kalm_core/sources), on fixtures laid out as the hub publishes them: integer ClassLabels
with names in the dataset card, a `label_text` column, SNLI's -1, STS-B's float scores, QQP's csv, a zh NLI set.
Every record is a pair or a row kept out with its reason, and staging accounts for all of them."""

import json

import polars as pl
import pytest

from kalm_core.catalog import Source
from kalm_core.extract import SourceError
from kalm_core.sources import labels
from kalm_core.sources.read import load_layout_source
from kalm_core.staging import stage_source

BANKING = ["card_arrival", "card_linking", "exchange_rate", "lost_or_stolen_card"]  # Banking77's first names


def raw(con, name):
    return con.sql(f'select * from raw."{name}" order by row_number').pl()


def staged_reasons(con, name) -> dict[str, int]:
    return dict(con.execute("select reason, count(*) from staged.rejects where source = ? group by reason",
                            [name]).fetchall())


@pytest.fixture
def banking(tmp_path):
    """mteb/banking77's train split: parquet, `text` and an int64 `label` whose names live in the dataset card."""
    texts = [f"where is my card {i}" for i in range(4)] + [f"link card {i}" for i in range(3)] + \
            ["rate for euros", "what is the exchange rate", "my card was stolen"]
    label = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
    pl.DataFrame({"text": texts, "label": label}, schema={"text": pl.Utf8, "label": pl.Int64}).write_parquet(
        tmp_path / "train-00000-of-00001.parquet")
    return tmp_path, texts, label


def test_label_pairing_makes_the_label_name_the_positive_and_other_labels_the_negatives(con, banking):
    path, texts, label = banking
    src = Source(name="banking", uri="train-00000-of-00001.parquet", task_type="classification",
                 columns={"text": "text", "label": "label"}, label_names=BANKING,
                 instruction="Given an online banking query, find the corresponding intents")
    stats = load_layout_source(con, src, path)
    df = raw(con, "banking")
    assert stats.records == stats.rows == 10 and stats.kept_out == 0
    assert df["query"].to_list() == texts
    assert df["positive"].to_list() == [BANKING[i] for i in label]
    for own, negs in zip(df["positive"].to_list(), df["negatives"].to_list()):
        assert sorted(negs) == sorted(set(BANKING) - {own})  # every other label, its own never
    staged = stage_source(con, src)
    assert staged.balanced and staged.kept == 10


def test_integer_labels_without_names_are_refused_naming_what_to_set(con, banking):
    path, *_ = banking
    src = Source(name="banking", uri="train-00000-of-00001.parquet", task_type="classification",
                 columns={"text": "text", "label": "label"})
    with pytest.raises(SourceError, match=r"'banking'.*labels are integers.*label_names.*label_text"):
        load_layout_source(con, src, path)


def test_a_label_text_column_names_the_labels(con, tmp_path):
    """mteb's emotion / amazon layouts: `label` an integer, `label_text` its name."""
    rows = [{"text": "i feel great", "label": 1, "label_text": "joy"},
            {"text": "this is awful", "label": 0, "label_text": "sadness"},
            {"text": "so happy today", "label": 1, "label_text": "joy"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = Source(name="emotion", uri="train.jsonl", task_type="classification",
                 columns={"text": "text", "label": "label", "label_text": "label_text"})
    load_layout_source(con, src, tmp_path)
    df = raw(con, "emotion")
    assert df["positive"].to_list() == ["joy", "sadness", "joy"]
    assert df["negatives"].to_list() == [["sadness"], ["joy"], ["sadness"]]


def test_same_label_pairing_pairs_texts_of_one_label_and_keeps_a_lonely_text_out(con, banking):
    path, texts, label = banking
    src = Source(name="banking", uri="train-00000-of-00001.parquet", task_type="clustering", pairing="same_label",
                 columns={"text": "text", "label": "label"})  # no names needed: only equality of labels counts
    stats = load_layout_source(con, src, path)
    df = raw(con, "banking")
    label_of = dict(zip(texts, label))
    pairs = df.filter(pl.col("kept_out").is_null())
    assert pairs.height == 9 and stats.kept_out == 1
    for q, p, negs in zip(pairs["query"], pairs["positive"], pairs["negatives"]):
        assert p != q and label_of[p] == label_of[q]
        assert negs.len() > 0 and all(label_of[n] != label_of[q] for n in negs)
    lonely = df.filter(pl.col("kept_out").is_not_null())
    assert lonely["raw_record"][0] and "my card was stolen" in lonely["raw_record"][0]
    assert lonely["kept_out"][0] == "the only text of label '3': no same-label positive"
    staged = stage_source(con, src)
    assert staged.balanced and staged.kept + staged.rejected + staged.duplicates == 10
    assert staged_reasons(con, "banking") == {"the only text of label '3': no same-label positive": 1}


def test_the_same_file_gives_the_same_pairs():
    frame = pl.DataFrame({"text": [f"t{i}" for i in range(50)], "label": [str(i % 5) for i in range(50)]}).with_row_index(
        "ordinal", 1).with_columns(record_id=pl.lit(None, pl.Utf8), load_error=pl.lit(None, pl.Utf8),
                                   raw_record=pl.lit("{}"))
    a, b = labels.to_pairs(frame, "same_label"), labels.to_pairs(frame, "same_label")
    assert a.equals(b) and not a.equals(labels.to_pairs(frame, "same_label", seed=1))


def test_nli_becomes_simcse_triplets_and_neutrals_stay_out_with_a_reason(con, tmp_path):
    """stanfordnlp/snli: premise, hypothesis, label (0 entailment, 1 neutral, 2 contradiction, -1 no gold label)."""
    rows = [("A man plays guitar.", "A person makes music.", 0), ("A man plays guitar.", "A man sleeps.", 2),
            ("A man plays guitar.", "The man is famous.", 1), ("A man plays guitar.", "Nobody plays.", 2),
            ("Two dogs run.", "Animals move.", 0), ("Two dogs run.", "The dogs are cats.", -1),
            ("A child reads.", "The child is asleep.", 2)]
    pl.DataFrame(rows, schema={"premise": pl.Utf8, "hypothesis": pl.Utf8, "label": pl.Int64},
                 orient="row").write_parquet(tmp_path / "snli.parquet")
    src = Source(name="snli", uri="snli.parquet", task_type="nli",
                 columns={"premise": "premise", "hypothesis": "hypothesis", "label": "label"})
    stats = load_layout_source(con, src, tmp_path)
    df = raw(con, "snli")
    pairs = df.filter(pl.col("kept_out").is_null())
    assert pairs.select("query", "positive").rows() == [("A man plays guitar.", "A person makes music."),
                                                        ("Two dogs run.", "Animals move.")]
    assert pairs["negatives"].to_list() == [["A man sleeps.", "Nobody plays."], []]
    assert stats.records == 7 and stats.kept_out == 5
    staged = stage_source(con, src)
    assert staged.balanced and staged.kept == 2
    assert staged_reasons(con, "snli") == {
        "contradiction: a negative of its premise's entailed pairs": 2,
        "neutral: the premise neither entails nor contradicts it": 1,
        "no gold label (-1): annotators did not agree": 1,
        "contradiction whose premise entails no hypothesis: no pair to be a negative of": 1}


def test_a_chinese_nli_set_with_label_names_as_text(con, tmp_path):
    """OCNLI / CMNLI layout: sentence1, sentence2 and the label as a word."""
    rows = [{"sentence1": "一个男人在弹吉他。", "sentence2": "有人在演奏音乐。", "label": "entailment"},
            {"sentence1": "一个男人在弹吉他。", "sentence2": "这个男人在睡觉。", "label": "contradiction"},
            {"sentence1": "一个男人在弹吉他。", "sentence2": "这个男人很有名。", "label": "neutral"}]
    (tmp_path / "cmnli.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                                          + "{broken\n")
    src = Source(name="cmnli", uri="cmnli.jsonl", task_type="nli", language="zh",
                 columns={"premise": "sentence1", "hypothesis": "sentence2", "label": "label"})
    stats = load_layout_source(con, src, tmp_path)
    df = raw(con, "cmnli")
    assert stats.records == 4 and stats.malformed == 1 and stats.kept_out == 2
    pair = df.filter(pl.col("query").is_not_null())
    assert pair.select("query", "positive").row(0) == ("一个男人在弹吉他。", "有人在演奏音乐。")
    assert pair["negatives"].to_list() == [["这个男人在睡觉。"]]
    assert df.filter(pl.col("load_error").is_not_null())["raw_record"].to_list() == ["{broken"]
    assert stage_source(con, src).balanced


def test_sts_pairs_at_or_above_min_score_are_positives(con, tmp_path):
    """mteb/stsbenchmark-sts: sentence1, sentence2, a float score from 0 to 5."""
    pl.DataFrame({"sentence1": ["a plane takes off", "a cat sits", "a man cuts", "kids play"],
                  "sentence2": ["an airplane departs", "a dog runs", "a man slices", "children are playing"],
                  "score": [5.0, 0.6, 4.0, 3.9]}).write_parquet(tmp_path / "sts.parquet")
    src = Source(name="stsb", uri="sts.parquet", task_type="sts", min_score=4.0,
                 columns={"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"})
    load_layout_source(con, src, tmp_path)
    df = raw(con, "stsb")
    assert df.filter(pl.col("kept_out").is_null())["query"].to_list() == ["a plane takes off", "a man cuts"]
    assert df["kept_out"].to_list() == [None, "score 0.6 below min_score 4.0", None, "score 3.9 below min_score 4.0"]


def test_pair_classification_from_a_csv_keeps_label_1(con, tmp_path):
    """QQP's layout: a csv with question1, question2, is_duplicate."""
    (tmp_path / "qqp.csv").write_text("id,question1,question2,is_duplicate\n"
                                      "1,How do I learn Python?,What is the best way to learn Python?,1\n"
                                      "2,How tall is Everest?,How old is Everest?,0\n")
    src = Source(name="qqp", uri="qqp.csv", task_type="pair_classification",
                 columns={"sentence1": "question1", "sentence2": "question2", "label": "is_duplicate", "id": "id"})
    stats = load_layout_source(con, src, tmp_path)
    df = raw(con, "qqp")
    assert stats.file_records == 2 and df["record_id"].to_list() == ["1", "2"]
    assert df["positive"].to_list() == ["What is the best way to learn Python?", None]
    assert df["kept_out"].to_list() == [None, "label 0: not a positive pair"]


def test_bitext_pairs_a_sentence_with_its_translation(con, tmp_path):
    pl.DataFrame({"en": ["good morning", "thank you"], "zh": ["早上好", "谢谢"]}).write_parquet(tmp_path / "b.parquet")
    src = Source(name="enzh", uri="b.parquet", task_type="bitext", columns={"sentence1": "en", "sentence2": "zh"})
    load_layout_source(con, src, tmp_path)
    assert raw(con, "enzh").select("query", "positive").rows() == [("good morning", "早上好"), ("thank you", "谢谢")]


def test_a_missing_layout_column_lists_what_the_file_has(con, banking):
    path, *_ = banking
    src = Source(name="banking", uri="train-00000-of-00001.parquet", task_type="classification",
                 columns={"text": "sentence", "label": "label"}, label_names=BANKING)
    with pytest.raises(SourceError, match=r"missing column\(s\) \['sentence'\].*available columns: \['text', 'label'\]"):
        load_layout_source(con, src, path)


def test_a_chinese_classification_set_with_integer_labels_and_a_label_text_column(con, tmp_path):
    """C-MTEB's TNews layout: sentence, an integer label and its Chinese name in a label_text column."""
    pl.DataFrame({"sentence": ["上课时学生手机响个不停，老师一怒之下把手机摔了", "商赢环球股份有限公司关于延期回复上海证券交易所",
                               "通过中介公司买了二手房，首付都付了，现在卖家不想卖了"],
                  "label": [108, 104, 108], "label_text": ["教育", "财经", "教育"]}).write_parquet(tmp_path / "tnews.parquet")
    src = Source(name="tnews", uri="tnews.parquet", task_type="classification", language="zh",
                 columns={"text": "sentence", "label": "label", "label_text": "label_text"},
                 instruction="Classify the fine-grained category of the given news title")
    load_layout_source(con, src, tmp_path)
    df = raw(con, "tnews")
    assert df["positive"].to_list() == ["教育", "财经", "教育"]
    assert df["negatives"].to_list() == [["财经"], ["教育"], ["财经"]]
    assert stage_source(con, src).kept == 3
