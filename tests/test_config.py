import dataclasses
import json

import pytest

from mstl_utils.core import config


def test_profiles_are_frozen_and_round_trip():
    for name, profile in config.PROFILES.items():
        assert profile.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            profile.image_size = 1  # type: ignore[misc]
        again = config.profile_from_dict(json.loads(json.dumps(profile.to_dict())))
        assert again == profile


def test_paper_profile_has_the_papers_settings():
    paper = config.get_profile("paper")
    assert (paper.image_size, paper.stage1.batch_size, paper.stage1.num_epochs) == (224, 16, 20)
    assert (paper.stage2.batch_size, paper.stage2.num_epochs) == (8, 10)
    assert paper.stage1.dataset == "chest_xray" and paper.stage2.dataset == "head_ct"


def test_changes_and_bad_values():
    changed = config.get_profile("quick", data="real", stage1={"num_epochs": 1})
    assert changed.data == "real" and changed.stage1.num_epochs == 1
    assert changed.stage1.batch_size == config.PROFILES["quick"].stage1.batch_size
    with pytest.raises(ValueError, match="unknown profile"):
        config.get_profile("nope")
    with pytest.raises(ValueError, match="data="):
        config.get_profile("quick", data="maybe")
