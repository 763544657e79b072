"""One source of truth per number (issue #24 item 5): what several layers need is derived from one setting."""

import json
from dataclasses import asdict, replace

import pytest

from assets.versions import LAYER_CODE, layer_settings
from kalm_core.config import PROFILES, get_profile
from kalm_core.token_length import TRUNCATION_CAP, length_limits
from kalm_core.versions import code_version


def version(layer, profile):
    return code_version(LAYER_CODE[layer], layer_settings(layer, profile))


@pytest.mark.parametrize("name", ["demo", "kalm-mini"])
def test_derived_numbers_follow_their_one_setting(name):
    p = PROFILES[name]
    assert p.n_negatives == p.train.group_size - 1
    assert p.global_batch == p.batch.per_device_batch * p.train.nproc
    limits = length_limits(p.model)
    assert limits.tokenizer == p.model.base_model
    assert (limits.max_query_tokens, limits.max_passage_tokens) == (TRUNCATION_CAP * p.model.query_max_len,
                                                                    TRUNCATION_CAP * p.model.passage_max_len)
    assert not hasattr(p.filter, "n_negatives") and not hasattr(p.batch, "world_size")


def test_each_setting_marks_exactly_the_layers_that_derive_from_it_stale():
    p = PROFILES["demo"]
    bigger_group = replace(p, train=replace(p.train, group_size=4))
    assert version("filtered", bigger_group) != version("filtered", p)  # mines 3 negatives now
    assert version("staged", bigger_group) == version("staged", p)
    more_devices = replace(p, train=replace(p.train, nproc=2))
    assert version("batched", more_devices) != version("batched", p)  # global batches of 2 x 32
    assert version("filtered", more_devices) == version("filtered", p)
    longer = replace(p, model=replace(p.model, passage_max_len=256))
    assert version("staged", longer) != version("staged", p)  # the length limit follows the model
    assert version("batched", longer) == version("batched", p)


def test_a_profile_file_with_a_removed_duplicate_is_a_clear_error(tmp_path):
    data = asdict(PROFILES["demo"])
    data["filter"]["n_negatives"] = 3
    data["batch"]["world_size"] = 2
    f = tmp_path / "old.json"
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="FilterConfig has no setting n_negatives"):
        get_profile(str(f))
    del data["filter"]["n_negatives"]
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="BatchConfig has no setting world_size"):
        get_profile(str(f))
