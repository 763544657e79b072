"""The shipped KaLM v1 catalogue (catalog/kalm-v1.yaml): every MTEB training task mteb records for the KaLM
models, valid as kalm sources, with the task type and instruction the installed mteb gives it."""

from pathlib import Path

import pytest

from dagster_project.cli import main
from kalm_core.catalog import load_catalog
from kalm_core.sources.kalm_mix import kalm_v1_sources, source_name

SHIPPED = Path(__file__).resolve().parents[1] / "catalog" / "kalm-v1.yaml"


def test_the_shipped_catalogue_is_what_the_installed_mteb_records():
    from mteb.models.model_implementations.kalm_models import kalm_training_data

    catalog = load_catalog(SHIPPED)
    entries, left_out = kalm_v1_sources()
    assert len(catalog.sources) + len(left_out) == len(kalm_training_data) >= 70
    shipped = {s.task: s for s in catalog.sources}
    for e in entries:
        s = shipped[e["task"]]
        assert (s.kind, s.split, s.task_type, s.instruction, s.language) == (
            "mteb", "train", e["task_type"], e["instruction"], e["language"])
    assert shipped["Banking77Classification"].instruction == ("Given an online banking query, find the "
                                                              "corresponding intents")
    assert len({s.name for s in catalog.sources}) == len(catalog.sources)
    assert len(source_name("ContractNLIPermissibleAcquirementOfSimilarInformationLegalBenchClassification")) <= 63


def test_kalm_sources_lists_every_entry_its_task_type_and_whether_its_data_is_here(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("KALM_LAKE", str(tmp_path / "lake"))
    assert main(["sources", "--catalog", str(SHIPPED)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(load_catalog(SHIPPED).sources)
    row = next(line.split() for line in lines if line.startswith("banking77classification "))
    assert row[:5] == ["banking77classification", "mteb", "classification", "train", "no"]


def test_fetch_offline_names_each_source_it_could_not_download(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert main(["fetch", "--catalog", str(SHIPPED), "--task", "Banking77Classification"]) == 1
    captured = capsys.readouterr()
    assert "banking77classification: failed: source 'banking77classification': could not download mteb/banking77" \
        in captured.err
    assert "0 of 1 MTEB sources present" in captured.out
    with pytest.raises(SystemExit):
        main(["fetch", "--nope"])
