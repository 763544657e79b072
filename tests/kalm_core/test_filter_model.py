"""The filter model is an embedder (issue #24 item 1): a plain LM is refused, an embedder's own pooling is used,
`embedder:latest` is the promoted model, and the model is in the filtered layer's version and the cache key."""

import json
import os
from dataclasses import replace

import polars as pl
import pytest

from assets.versions import layer_settings
from kalm_core import filter_model
from kalm_core import warehouse as wh
from kalm_core.config import FilterConfig, ModelConfig, Profile
from kalm_core.embedding_cache import encoder_id
from kalm_core.model import Embedder
from kalm_core.versions import code_version


def profile(model: str | None, base: str = "bundled:all-MiniLM-L6-v2") -> Profile:
    return Profile(name="t", model=ModelConfig(base_model=base), filter=FilterConfig(model=model))


def test_the_bundled_minilm_is_an_embedder_with_its_own_pooling():
    fm = filter_model.resolve(profile(None), allow_lm=False)
    assert fm.is_embedder and fm.config.pooling == "mean" and fm.config.normalize


def test_a_language_model_is_refused_unless_allowed(tiny_qwen2_dir):
    lm_base = profile(None, base=str(tiny_qwen2_dir))
    with pytest.raises(filter_model.FilterModelError, match="base model .* is not an embedding model.*--allow-lm-filter"):
        filter_model.resolve(lm_base, allow_lm=False)
    with pytest.raises(filter_model.FilterModelError, match="filter.model .* is not an embedding model"):
        filter_model.resolve(profile(str(tiny_qwen2_dir)), allow_lm=False)
    allowed = filter_model.resolve(lm_base, allow_lm=True)
    assert not allowed.is_embedder and allowed.path == str(tiny_qwen2_dir) and allowed.config == lm_base.model
    os.environ[filter_model.ALLOW_LM_ENV] = "1"  # what `--allow-lm-filter` sets for the steps
    try:
        assert not filter_model.resolve(lm_base).is_embedder
    finally:
        del os.environ[filter_model.ALLOW_LM_ENV]


def test_a_saved_embedder_filters_with_the_pooling_it_was_saved_with(tmp_path, tiny_qwen2_dir):
    emb = Embedder.from_pretrained(ModelConfig(pooling="last_token", normalize=False), str(tiny_qwen2_dir))
    emb.save(tmp_path / "st")
    fm = filter_model.resolve(profile(str(tmp_path / "st")), allow_lm=False)
    assert fm.is_embedder and fm.config.pooling == "last_token" and not fm.config.normalize
    # a Pooling module whose config names two modes at once is not one we can reproduce: a clear error
    cfg = tmp_path / "st" / "1_Pooling" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "pooling_mode": ["cls", "mean"]}))
    with pytest.raises(filter_model.FilterModelError, match="not one of mean, cls or last-token alone"):
        filter_model.resolve(profile(str(tmp_path / "st")), allow_lm=False)
    # the layout of sentence-transformers before 5 (one bool per mode), as the bundled MiniLM and hub models have it
    cfg.write_text(json.dumps({"word_embedding_dimension": 64, "pooling_mode_cls_token": True,
                               "pooling_mode_mean_tokens": False}))
    assert filter_model.resolve(profile(str(tmp_path / "st")), allow_lm=False).config.pooling == "cls"


def test_missing_and_unreachable_models_are_clear_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, before the fixture
    with pytest.raises(filter_model.FilterModelError, match="does not exist"):
        filter_model.resolve(profile(str(tmp_path / "nothing")), allow_lm=False)
    # offline, a hub id that is not cached cannot be checked, and the error says what to do
    with pytest.raises(filter_model.FilterModelError, match="cannot check whether filter model .* is an embedder"):
        filter_model.resolve(profile("HIT-TMG/KaLM-embedding-multilingual-mini-instruct-v1"), allow_lm=False)


def test_embedder_latest_is_the_promoted_model_and_versions_follow_it(tmp_path, tiny_qwen2_dir, monkeypatch):
    lake = tmp_path / "lake"
    monkeypatch.setenv("KALM_LAKE", str(lake))
    latest = profile(filter_model.EMBEDDER_LATEST)
    with pytest.raises(filter_model.FilterModelError, match="no run has promoted an embedder yet"):
        filter_model.resolve(latest, allow_lm=False)
    assert filter_model.identity(latest).startswith("unresolved")  # a version can be computed, the step fails

    first, second = tmp_path / "run1", tmp_path / "run2"
    for path in (first, second):
        Embedder.from_pretrained(ModelConfig(), str(tiny_qwen2_dir)).save(path)
    versions = []
    for path in (first, second):
        with wh.connect(read_only=False) as con:
            wh.write(con, "training", "embedder", pl.DataFrame({"model_path": [str(path)], "run_id": [path.name]}))
        fm = filter_model.resolve(latest, allow_lm=False)
        assert fm.path == str(path) and fm.is_embedder
        versions.append(code_version((), layer_settings("filtered", latest)))
    assert versions[0] != versions[1]  # a newly promoted embedder makes the filtered tables stale

    # retraining in place (the same path, new weights) changes the version and the embedding cache's key
    key = encoder_id(str(second), filter_model.resolve(latest, allow_lm=False).config)
    weights = next(second.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert code_version((), layer_settings("filtered", latest)) != versions[1]
    assert encoder_id(str(second), filter_model.resolve(latest, allow_lm=False).config) != key
    # and a different filter model never shares cache entries with another, whatever the settings
    assert encoder_id(str(first), replace(latest.model)) != encoder_id(str(second), replace(latest.model))
