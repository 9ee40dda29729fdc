"""Pruning: exact sparsity per round, masks that survive saving, exact rewinding, scopes, the controls, a fold run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from mstl_utils.core import config
from mstl_utils import models
from mstl_utils.experiments import protocol, pruning


class Tiny(nn.Module):
    """Every kind of layer the scopes tell apart: a stem, a depthwise and a pointwise convolution, a
    hidden linear layer and the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.depthwise = nn.Conv2d(4, 4, 3, groups=4)
        self.pointwise = nn.Conv2d(4, 8, 1)
        self.norm = nn.BatchNorm2d(8)
        self.hidden = nn.Linear(8, 16)
        self.classifier = nn.Linear(16, 2)

    def forward(self, x):
        x = self.norm(self.pointwise(self.depthwise(self.stem(x)))).relu().mean((2, 3))
        return self.classifier(self.hidden(x).relu())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


def _mobilenet() -> nn.Module:
    model, _ = models.build_model("mobilenet_v2", num_classes=2, init="scratch")
    return model.eval()


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_schedule_sparsities_and_labels():
    imp = pruning.PruneConfig()
    assert [k for k, _ in imp.schedule()] == list(range(1, 11))
    assert imp.schedule()[-1][1] == pytest.approx(1 - 0.8 ** 10)  # 89.3 %
    control = pruning.PruneConfig(method="random", scope="all", at_rounds=(3, 10))
    assert control.label == "random+all" and [k for k, _ in control.schedule()] == [3, 10]
    with pytest.raises(ValueError, match="at_rounds"):
        pruning.PruneConfig(method="oneshot")
    with pytest.raises(ValueError, match="method"):
        pruning.PruneConfig(method="magic")


def test_scopes_exclude_first_conv_depthwise_and_classifier():
    model = _mobilenet()
    backbone = pruning.eligible_parameters(model, "backbone")
    everything = pruning.eligible_parameters(model, "all")
    names = {id(m): n for n, m in model.named_modules()}
    left_out = {names[id(m)] for m, _ in everything} - {names[id(m)] for m, _ in backbone}
    assert "backbone.features.0.0" in left_out and "backbone.classifier.1" in left_out
    depthwise = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert depthwise and depthwise <= left_out
    assert left_out == depthwise | {"backbone.features.0.0", "backbone.classifier.1"}


def test_every_round_hits_its_target_and_excluded_layers_are_untouched():
    model = _model()
    before = _plain_state(model)
    params = pruning.eligible_parameters(model, "backbone")
    total = sum(m.weight.numel() for m, _ in params)
    for _, target in pruning.PruneConfig(rate=0.3, rounds=4).schedule():
        pruning.prune_global(model, params, target)
        assert abs(pruning.sparsity(params) * total - round(target * total)) <= 1
    eligible = {id(m) for m, _ in params}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in eligible:
            assert not prune.is_pruned(module)
            assert torch.equal(module.weight, before[f"{name}.weight"])


def test_random_control_hits_the_same_sparsity_with_another_mask():
    l1, rand = _model(), _model()
    rand.load_state_dict(l1.state_dict())
    for model, method in ((l1, "l1"), (rand, "random")):
        pruning.prune_global(model, pruning.eligible_parameters(model), 0.6, method=method, seed=3)
    p_l1, p_rand = pruning.eligible_parameters(l1), pruning.eligible_parameters(rand)
    assert pruning.sparsity(p_l1) == pruning.sparsity(p_rand) == round(0.6 * 160) / 160
    assert pruning.masks_of(l1).keys() == pruning.masks_of(rand).keys()
    assert any(not torch.equal(a, b) for a, b in zip(pruning.masks_of(l1).values(), pruning.masks_of(rand).values()))


def test_masks_survive_save_and_load(tmp_path):
    model = _mobilenet()
    pruning.prune_global(model, pruning.eligible_parameters(model), 0.5)
    path = pruning.save_pruned(tmp_path / "checkpoint.pt", model, {"model": "mobilenet_v2", "num_classes": 2})
    loaded, checkpoint = pruning.load_pruned(path)
    loaded.eval()
    for key, value in pruning.effective_state(model).items():
        assert torch.equal(pruning.effective_state(loaded)[key], value), key
    assert all(torch.equal(pruning.masks_of(loaded)[k], v) for k, v in pruning.masks_of(model).items())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(pruning.copy_model(model)(x), model(x))
    # The same checkpoint is a plain model for the rest of the package (a later stage can start from it).
    plain, _ = models.load_from_checkpoint(checkpoint, num_classes=2, stage="pruned")
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), model(x))


def test_rewind_restores_the_survivors_and_keeps_pruned_weights_zero():
    model = _model()
    start = _plain_state(model)
    with torch.no_grad():  # "training" moves every weight
        for p in model.parameters():
            p.add_(0.1)
    params = pruning.eligible_parameters(model)
    pruning.prune_global(model, params, 0.4)
    pruning.rewind(model, start)
    masks = pruning.masks_of(model)
    for key, value in pruning.effective_state(model).items():
        if key in masks:
            assert torch.equal(value[masks[key]], start[key][masks[key]]), key
            assert not value[~masks[key]].any(), key
        else:
            assert torch.equal(value, start[key]), key


def test_a_pruned_model_trains_with_its_masks_fixed():
    model = _model()
    params = pruning.eligible_parameters(model)
    pruning.prune_global(model, params, 0.7)
    masks = pruning.masks_of(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.rand(4, 1, 8, 8)), torch.tensor([0, 1, 0, 1])).backward()
        optimizer.step()
    state = pruning.effective_state(model)
    assert all(not state[k][~m].any() for k, m in masks.items())
    assert pruning.sparsity(params) == pytest.approx(round(0.7 * 160) / 160)
    pruning.copy_model(model)  # a trained pruned model copies (its hook-made weight is in the graph)


def test_permanent_model_sizes_and_latency():
    model = _mobilenet()
    dense_sizes = pruning.file_sizes(model)
    pruning.prune_global(model, pruning.eligible_parameters(model), 0.9)
    sizes = pruning.file_sizes(model)
    assert sizes["sparse_mb"] < 0.4 * dense_sizes["dense_mb"]
    assert sizes["dense_mb"] == pytest.approx(dense_sizes["dense_mb"], rel=0.01)  # zeros cost as much as weights
    permanent = pruning.make_permanent(model)
    assert not any(prune.is_pruned(m) for m in permanent.modules())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(permanent(x), model(x))
    assert pruning.nonzero_parameters(permanent) == pruning.nonzero_parameters(model)
    assert pruning.cpu_latency_ms(permanent, 32, repeats=2, warmup=1) > 0


def test_fold_runs_are_reused_and_tabled(synthetic_root, tmp_path):
    profile = config.get_profile("smoke")
    folds, _ = protocol.head_ct_folds(profile, data_dir=synthetic_root)
    configs = [pruning.PruneConfig(rate=0.5, rounds=2), pruning.PruneConfig(method="random", rate=0.5, rounds=2,
                                                                           at_rounds=(2,))]
    common = dict(arm="scratch", folds=folds, max_folds=1, data_dir=synthetic_root, workers=1)
    study = pruning.run_pruning(profile, configs, **common)
    assert study.dense[0].run_dir.parent.name == "cv_scratch"  # the protocol's own run
    assert pruning.dense_name(profile.replace(image_size=64), "scratch") == "cv_scratch_mobilenet_v2_64px"
    table = pruning.fold_table(study)
    assert sorted(table["method"].unique()) == ["dense", "imp", "random"]
    imp = table[table["method"] == "imp"]
    assert imp["sparsity"].to_numpy() == pytest.approx(imp["target_sparsity"].to_numpy(), abs=1e-5)
    assert (table.groupby("method")["nonzero_params"].max()["dense"]
            > table.groupby("method")["nonzero_params"].max()["imp"])
    run_dir = study.runs[0].run_dir
    first = (run_dir / "metrics.json").stat().st_mtime_ns
    again = pruning.run_pruning(profile, configs, **common)
    assert (run_dir / "metrics.json").stat().st_mtime_ns == first  # complete: reused
    pd.testing.assert_frame_equal(pruning.fold_table(again), table)
    # An interrupted run continues after its last complete round.
    (run_dir / "metrics.json").unlink()
    (run_dir / "round02" / "metrics.json").unlink()
    round1 = json.loads((run_dir / "round01" / "metrics.json").read_text())
    resumed = pruning.run_pruning(profile, configs, **common)
    assert json.loads((run_dir / "round01" / "metrics.json").read_text()) == round1
    pd.testing.assert_frame_equal(pruning.fold_table(resumed).drop(columns="train_seconds"),
                                  table.drop(columns="train_seconds"))
    measured = pruning.costs(study, repeats=1)
    summary = pruning.summary(table, measured, profile="smoke")
    assert list(summary.columns) == pruning.COLUMNS
    assert summary["cpu_latency_ms"].notna().all() and len(summary) == 1 + 2 + 1


def test_paired_differences_to_the_dense_model():
    rows = [{"model": "m", "method": method, "round": k, "sparsity": s, "repeat": 0, "fold": fold, "accuracy": acc}
            for fold in range(3) for method, k, s, acc in (("dense", 0, 0.0, 0.8 + 0.05 * fold),
                                                           ("imp", 1, 0.2, 0.7 + 0.05 * fold))]
    paired = pruning.paired_to_dense(pd.DataFrame(rows), n_train=100, n_test=25)
    row = paired.iloc[0]
    assert (row["method"], row["round"]) == ("imp", 1)
    assert row["mean_diff"] == pytest.approx(-0.1) and row["ci_low"] == row["ci_high"] == pytest.approx(-0.1)


def test_plans_name_every_profile_and_fit_the_registry():
    assert set(pruning.PLANS) == set(config.PROFILES)
    quick = pruning.get_plan("quick", rounds=4, repeats=[0, 1])
    assert quick.rounds == 4 and quick.repeats == (0, 1)
    assert [c.at_rounds for c in quick.configs()] == [(), (3,), (3,), (4,)]  # controls within the rounds run
    labels = [c.label for c in pruning.get_plan("quick").configs()]
    assert labels == ["imp", "oneshot", "random", "oneshot+all"]
    assert pruning.get_plan("smoke").second_profile(config.get_profile("smoke")) is None
    missing = pruning.get_plan("quick", second_model="no_such_net")
    assert missing.second_profile(config.get_profile("quick")) is None


def test_stage1_pruning_rewinds_to_imagenet_and_pairs_on_the_test_images(synthetic_root):
    """Stage 1 pruned: the bridge run is the dense model, rounds are tested on the same official test
    images, and the table pairs each round with the dense run image by image."""
    profile = config.get_profile("smoke")
    plan = pruning.get_plan("smoke")
    configs = plan.stage1_configs()
    assert [c.label for c in configs] == ["imp", "oneshot", "random"]
    assert all(c.schedule() == [(1, 0.5)] for c in configs)
    study = pruning.run_pruning_stage1(profile, configs, data_dir=synthetic_root, workers=1)
    assert study.dense[0].run_dir.parent.name == "stage1"  # the protocol's bridge, not a run of its own
    assert [r.run_dir.parent.name for r in study.runs] == [f"prune_stage1_mobilenet_v2_{profile.image_size}px_imagenet_{m}"
                                                           for m in ("imp", "oneshot", "random")]
    assert all(r.config["stage"] == "stage1" and r.config["split"] is None for r in study.runs)
    assert all(r.metrics["provenance"]["stage"] == "stage1" for r in study.runs)
    imp_dir = study.runs[0].run_dir
    # Rounds rewind to the stage's start (ImageNet weights), not to the dense run they prune.
    assert study.runs[0].config["init_from"] == "imagenet" and study.runs[0].config["dense"] == "stage1"
    measured = pruning.costs(study, repeats=1)
    table = pruning.stage1_table(study, measured, profile="smoke")
    assert list(table.columns) == pruning.STAGE1_COLUMNS
    assert sorted(table["method"]) == ["dense", "imp", "oneshot", "random"]
    dense = table[table["method"] == "dense"].iloc[0]
    assert dense["diff"] == 0 and dense["p_value"] == 1 and dense["n_test"] == len(study.dense[0].predictions)
    assert table.loc[table["method"] != "dense", "sparsity"].to_numpy() == pytest.approx(0.5, abs=1e-5)
    imp = table[table["method"] == "imp"].iloc[0]
    predictions = pd.read_csv(imp_dir / "round01" / "predictions.csv", dtype={"file": str})
    merged = predictions.merge(study.dense[0].predictions, on="file", suffixes=("", "_dense"))
    expected = (merged["pred"] == merged["label"]).mean() - (merged["pred_dense"] == merged["label"]).mean()
    assert imp["diff"] == pytest.approx(expected) and imp["accuracy_mean"] == pytest.approx(
        (predictions["pred"] == predictions["label"]).mean())
    # Reused when complete; a stage-1 run is no stage-2 run.
    first = (imp_dir / "metrics.json").stat().st_mtime_ns
    pruning.run_pruning_stage1(profile, configs[:1], data_dir=synthetic_root, workers=1)
    assert (imp_dir / "metrics.json").stat().st_mtime_ns == first
    with pytest.raises(ValueError, match="stage-1 pruning starts from"):
        pruning.run_pruning_stage1(profile, configs[:1], arm="multistage", data_dir=synthetic_root)
    with pytest.raises(ValueError, match="pass its split"):
        pruning.run_prune(profile, configs[0], arm="imagenet", seed=0, init_seed=0)
