"""Chains of any length and the 3-class chest X-ray task they can use."""

import numpy as np
import pandas as pd
import pytest
import torch

from mstl_utils.experiments import chain as chain_mod, protocol
from mstl_utils.core import config
from mstl_utils import data
from mstl_utils.report import metrics
from mstl_utils.engine import stages, train

CHAIN = ("imagenet", "chest_xray3", "chest_xray", "head_ct")


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    return config.get_profile("smoke", data="real")


def test_parse_accepts_arrows_commas_and_tuples_and_names_what_is_wrong(tmp_path):
    assert chain_mod.parse("imagenet -> chest_xray3 -> chest_xray -> head_ct") == CHAIN
    assert chain_mod.parse("scratch,chest_xray,head_ct") == ("scratch", "chest_xray", "head_ct")
    assert chain_mod.parse(list(chain_mod.PAPER_CHAIN)) == chain_mod.PAPER_CHAIN
    (tmp_path / "my_bridge").mkdir()
    assert chain_mod.parse(f"imagenet -> {tmp_path / 'my_bridge'} -> head_ct")[1] == str(tmp_path / "my_bridge")
    for bad in ("imagenet -> chest_xray", "head_ct", "stage1 -> head_ct"):
        with pytest.raises(ValueError, match="ending with 'head_ct'"):
            chain_mod.parse(bad)
    with pytest.raises(ValueError, match="chain link 'mnist' is neither a dataset name"):
        chain_mod.parse("imagenet -> mnist -> head_ct")


def test_chains_sharing_a_beginning_share_its_runs():
    other = ("imagenet", "chest_xray3", "head_ct")
    assert chain_mod.link_name(CHAIN, 1) == chain_mod.link_name(other, 1) == "chain_imagenet-chest_xray3"
    assert chain_mod.arm_name(CHAIN) == "chain_imagenet-chest_xray3-chest_xray"
    assert chain_mod.arm_name(("imagenet", "head_ct")) == "chain_imagenet"


def test_three_class_labels_come_from_the_file_names(synthetic_root):
    source = data.locate("chest_xray3", data="real", data_dir=synthetic_root)
    assert source.dataset == "chest_xray3" and source.root.name == "chest_xray"
    table, classes = data.read_table(source)
    assert classes == ("normal", "bacterial", "viral")
    two, _ = data.read_table(data.locate("chest_xray", data="real", data_dir=synthetic_root))
    assert table["path"].tolist() == two["path"].tolist()
    names = table["path"].map(lambda p: p.rsplit("/", 1)[-1])
    assert (table.loc[two["label"] == 0, "label"] == 0).all()
    assert (table.loc[names.str.contains("_bacteria_"), "label"] == 1).all()
    assert (table.loc[names.str.contains("_virus_"), "label"] == 2).all()
    assert set(table["label"]) == {0, 1, 2}
    with pytest.raises(data.DataFormatError, match="person3_fungus_1.jpeg: a PNEUMONIA file name must say"):
        data.pneumonia_cause("person3_fungus_1.jpeg")


def test_multiclass_metrics_known_answer():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = metrics.multiclass_metrics(y, probs, ("normal", "bacterial", "viral"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert (m["recall_normal"], m["recall_bacterial"], m["recall_viral"]) == (0.5, 1.0, 0.5)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert 0 < m["accuracy_ci_low"] < 4 / 6 < m["accuracy_ci_high"] < 1
    assert 0.5 < m["auc_macro"] <= 1


def _first_weight(state_dict):
    return next(v for k, v in state_dict.items() if k.endswith("weight"))


@pytest.mark.slow
def test_a_chain_trains_its_links_in_order_and_every_fold_from_the_last(profile):
    plan = chain_mod.get_plan("smoke", chain=" -> ".join(CHAIN))
    found = chain_mod.run(profile, plan, workers=1)
    first, second = found.links[0]
    assert (first.name, first.provenance["init_from"]) == ("chain_imagenet-chest_xray3", "imagenet")
    assert (second.name, second.provenance["init_from"]) == ("chain_imagenet-chest_xray3-chest_xray", first.name)
    assert len([c for c in first.predictions.columns if c.startswith("prob_")]) == 3
    assert {"auc_macro", "recall_viral"} <= set(first.metrics)
    # Link 2 starts from link 1's weights (a new 2-class head), and every fold from link 2's.
    first_spec, second_spec = chain_mod.link_specs(profile, CHAIN, seed=0)
    assert second_spec.init == first_spec
    model, weights = stages.initial_model(second_spec, num_classes=2)
    saved = train.load_checkpoint(first.run_dir / "checkpoint.pt")["state_dict"]
    assert torch.equal(_first_weight(model.state_dict()), _first_weight(saved))
    assert "chain began with random (ImageNet unavailable)" in second.provenance["weights"]["note"]
    assert len(found.folds) == profile.cv_folds * profile.cv_repeats
    for run in found.folds:
        assert run.provenance["init_from"] == second.name and run.config["name"] == f"cv_{found.arm}"
    tables = chain_mod.tables(found)
    table = tables["chain_links.csv"]
    assert list(table.columns) == chain_mod.LINK_COLUMNS and table["num_classes"].tolist() == [3, 2]
    assert set(tables["chain_tests.csv"]["arm_a"]) == {found.arm}
    assert chain_mod.verdict(found, tables).startswith(f"**{found.arm} against multistage**")
    assert chain_mod.glue_values(found, tables)["chain_n_folds"] == len(found.folds)
    fold_rows = protocol.fold_table(found.folds)
    assert set(fold_rows["arm"]) == {found.arm}
    # A second call reuses every run.
    again = chain_mod.run(profile, plan, workers=1)
    pd.testing.assert_frame_equal(protocol.fold_table(again.folds), fold_rows)
    assert again.links[0][1].metrics["provenance"]["finished"] == second.metrics["provenance"]["finished"]
