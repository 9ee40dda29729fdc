"""Pruning: exact sparsity per round, masks that survive saving, exact rewinding, scopes, the controls, and the
round runs as ordinary engine runs (reused, resumed, tabled)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from mstl_utils import models
from mstl_utils.core import config
from mstl_utils.engine import lifecycle, train
from mstl_utils.engine.spec import RunSpec
from mstl_utils.experiments import protocol, pruning
from mstl_utils.models import sparsity


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


# --------------------------------------------------------------------------- masks (no training)


def test_schedule_sparsities_and_labels():
    imp = pruning.PruneConfig()
    assert [k for k, _ in imp.schedule()] == list(range(1, 11))
    assert imp.schedule()[-1][1] == pytest.approx(1 - 0.8 ** 10)  # 89.3 %
    control = pruning.PruneConfig(method="random", scope="all", at_rounds=(3, 10))
    assert control.label == "random+all" and [k for k, _ in control.schedule()] == [3, 10]
    assert control.mask_method == "random" and imp.mask_method == "l1"
    with pytest.raises(ValueError, match="at_rounds"):
        pruning.PruneConfig(method="oneshot")
    with pytest.raises(ValueError, match="method"):
        pruning.PruneConfig(method="magic")


def test_scopes_exclude_first_conv_depthwise_and_classifier():
    model = _mobilenet()
    backbone = sparsity.eligible_parameters(model, "backbone")
    everything = sparsity.eligible_parameters(model, "all")
    names = {id(m): n for n, m in model.named_modules()}
    left_out = {names[id(m)] for m, _ in everything} - {names[id(m)] for m, _ in backbone}
    assert "backbone.features.0.0" in left_out and "backbone.classifier.1" in left_out
    depthwise = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert depthwise and depthwise <= left_out
    assert left_out == depthwise | {"backbone.features.0.0", "backbone.classifier.1"}


def test_every_round_hits_its_target_and_excluded_layers_are_untouched():
    model = _model()
    before = _plain_state(model)
    params = sparsity.eligible_parameters(model, "backbone")
    total = sum(m.weight.numel() for m, _ in params)
    for _, target in pruning.PruneConfig(rate=0.3, rounds=4).schedule():
        sparsity.prune_global(model, params, target)
        assert abs(sparsity.sparsity(params) * total - round(target * total)) <= 1
    eligible = {id(m) for m, _ in params}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in eligible:
            assert not prune.is_pruned(module)
            assert torch.equal(module.weight, before[f"{name}.weight"])


def test_random_control_hits_the_same_sparsity_with_another_mask():
    l1, rand = _model(), _model()
    rand.load_state_dict(l1.state_dict())
    for model, method in ((l1, "l1"), (rand, "random")):
        sparsity.prune_global(model, sparsity.eligible_parameters(model), 0.6, method=method, seed=3)
    p_l1, p_rand = sparsity.eligible_parameters(l1), sparsity.eligible_parameters(rand)
    assert sparsity.sparsity(p_l1) == sparsity.sparsity(p_rand) == round(0.6 * 160) / 160
    assert sparsity.masks_of(l1).keys() == sparsity.masks_of(rand).keys()
    assert any(not torch.equal(a, b) for a, b in zip(sparsity.masks_of(l1).values(), sparsity.masks_of(rand).values()))


def test_masks_survive_save_and_load(tmp_path):
    model = _mobilenet()
    sparsity.prune_global(model, sparsity.eligible_parameters(model), 0.5)
    path = train.save_checkpoint(tmp_path / "checkpoint.pt",
                                 sparsity.pruned_checkpoint(model, {"model": "mobilenet_v2", "num_classes": 2}))
    checkpoint = train.load_checkpoint(path)
    loaded, _ = sparsity.load_pruned(checkpoint)
    loaded.eval()
    reloaded = sparsity.effective_state(loaded)
    for key, value in sparsity.effective_state(model).items():
        assert torch.equal(reloaded[key], value), key
    assert all(torch.equal(sparsity.masks_of(loaded)[k], v) for k, v in sparsity.masks_of(model).items())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(sparsity.copy_model(model)(x), model(x))
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
    params = sparsity.eligible_parameters(model)
    sparsity.prune_global(model, params, 0.4)
    sparsity.rewind(model, start)
    masks = sparsity.masks_of(model)
    for key, value in sparsity.effective_state(model).items():
        if key in masks:
            assert torch.equal(value[masks[key]], start[key][masks[key]]), key
            assert not value[~masks[key]].any(), key
        else:
            assert torch.equal(value, start[key]), key


def test_a_pruned_model_trains_with_its_masks_fixed():
    model = _model()
    params = sparsity.eligible_parameters(model)
    sparsity.prune_global(model, params, 0.7)
    masks = sparsity.masks_of(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.rand(4, 1, 8, 8)), torch.tensor([0, 1, 0, 1])).backward()
        optimizer.step()
    state = sparsity.effective_state(model)
    assert all(not state[k][~m].any() for k, m in masks.items())
    assert sparsity.sparsity(params) == pytest.approx(round(0.7 * 160) / 160)
    sparsity.copy_model(model)  # a trained pruned model copies (its hook-made weight is in the graph)


def test_permanent_model_sizes_and_latency():
    model = _mobilenet()
    dense_sizes = pruning.file_sizes(model)
    sparsity.prune_global(model, sparsity.eligible_parameters(model), 0.9)
    sizes = pruning.file_sizes(model)
    assert sizes["sparse_mb"] < 0.4 * dense_sizes["dense_mb"]
    assert sizes["dense_mb"] == pytest.approx(dense_sizes["dense_mb"], rel=0.01)  # zeros cost as much as weights
    permanent = sparsity.make_permanent(model)
    assert not any(prune.is_pruned(m) for m in permanent.modules())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(permanent(x), model(x))
    assert sparsity.nonzero_parameters(permanent) == sparsity.nonzero_parameters(model)
    assert pruning.cpu_latency_ms(permanent, 32, repeats=2, warmup=1) > 0


def test_paired_differences_to_the_dense_model():
    rows = [{"model": "m", "method": method, "round": k, "sparsity": s, "repeat": 0, "fold": fold, "accuracy": acc}
            for fold in range(3) for method, k, s, acc in (("dense", 0, 0.0, 0.8 + 0.05 * fold),
                                                           ("imp", 1, 0.2, 0.7 + 0.05 * fold))]
    paired = pruning.paired_to_dense(pd.DataFrame(rows), n_train=100, n_test=25)
    row = paired.iloc[0]
    assert (row["method"], row["round"]) == ("imp", 1)
    assert row["mean_diff"] == pytest.approx(-0.1) and row["ci_low"] == row["ci_high"] == pytest.approx(-0.1)
    one_fold = pruning.paired_to_dense(pd.DataFrame([r for r in rows if r["fold"] == 0]), n_train=100, n_test=25)
    assert list(one_fold.columns) == pruning.TEST_COLUMNS  # one fold: the difference, its test undefined
    assert one_fold["mean_diff"].iloc[0] == pytest.approx(-0.1) and one_fold[["ci_low", "p_value"]].isna().all().all()


def test_plans_name_every_profile_and_fit_the_registry():
    assert set(pruning.PLANS) == set(config.PROFILES)
    quick = pruning.get_plan("quick", rounds=4, repeats=[0, 1])
    assert quick.rounds == 4 and quick.repeats == (0, 1)
    assert [c.at_rounds for c in quick.configs()] == [(), (3,), (3,), (4,)]  # controls within the rounds run
    assert quick.control_round == 3
    labels = [c.label for c in pruning.get_plan("quick").configs()]
    assert labels == ["imp", "oneshot", "random", "oneshot+all"]
    assert pruning.get_plan("smoke").second_profile(config.get_profile("smoke")) is None
    missing = pruning.get_plan("quick", second_model="no_such_net")
    assert missing.second_profile(config.get_profile("quick")) is None
    # The rule for the round the chapter reports is declared in the plan, before any run.
    assert pruning.get_plan("quick").report_rule.endswith("within 1 point of the dense model's")
    assert "2 points" in pruning.get_plan("quick", report_within=0.02).report_rule


# --------------------------------------------------------------------------- round specs (no training)


def test_rounds_are_specs_that_rewind_to_the_dense_runs_start(synthetic_root):
    profile = config.get_profile("smoke")
    folds, _ = protocol.target_folds(profile, data_dir=synthetic_root)
    configs = pruning.get_plan("smoke").configs()
    plan = pruning.plan_study(profile, configs, arm="multistage", folds=folds, max_folds=1, data_dir=synthetic_root)
    dense = plan.dense[0]
    split = protocol.splits(folds)[0]
    assert dense == protocol.fold_spec(profile, "multistage", split, data_dir=synthetic_root)  # the protocol's run
    by_name = {spec.name: spec for *_, spec in plan.rounds}
    assert sorted(by_name) == ["prune_multistage_imp_r01", "prune_multistage_imp_r02",
                               "prune_multistage_oneshot+all_r02", "prune_multistage_oneshot_r02",
                               "prune_multistage_random_r02"]
    for _, config_, k, target, spec in plan.rounds:
        # Rewind to the arm's start (the bridge), with the dense run's seed and split.
        assert spec.init == dense.init == protocol.arm_start(profile, "multistage", bridge_seed=0)
        assert (spec.seed, spec.split, spec.stage) == (dense.seed, dense.split, "stage2")
        assert spec.mask.sparsity == target and spec.mask.seed == 1000 * dense.seed + k
        assert spec.mask.scope == config_.scope
    assert by_name["prune_multistage_imp_r01"].mask.source == dense
    assert by_name["prune_multistage_imp_r02"].mask.source == by_name["prune_multistage_imp_r01"]
    assert by_name["prune_multistage_oneshot_r02"].mask.source == dense
    assert by_name["prune_multistage_random_r02"].mask.source is None
    assert by_name["prune_multistage_random_r02"].mask.method == "random"
    assert by_name["prune_multistage_oneshot+all_r02"].mask.scope == "all"
    assert by_name["prune_multistage_imp_r02"].upstream() == (dense.init, by_name["prune_multistage_imp_r01"])
    # A changed profile gives other dense runs and rounds (their own folders), never the named profile's.
    other = pruning.plan_study(profile.replace(image_size=64), configs, arm="multistage", folds=folds, max_folds=1,
                               data_dir=synthetic_root)
    assert other.dense[0].name == dense.name and other.dense[0].relpath != dense.relpath
    assert {s.relpath for s in other.specs}.isdisjoint({s.relpath for s in plan.specs})


def test_clear_errors_for_bad_arms_and_missing_splits(synthetic_root):
    profile = config.get_profile("smoke")
    folds, _ = protocol.target_folds(profile, data_dir=synthetic_root)
    imp = pruning.PruneConfig(rate=0.5, rounds=1)
    with pytest.raises(ValueError, match="stage-1 pruning starts from"):
        pruning.plan_stage1(profile, [imp], arm="multistage")
    with pytest.raises(ValueError, match="unknown arm"):
        pruning.plan_study(profile, [imp], arm="no_such_arm", folds=folds)
    with pytest.raises(ValueError, match="no folds of repeats"):
        pruning.plan_study(profile, [imp], arm="scratch", folds=folds, repeats=(7,))
    paper_split = protocol.paper_split_spec(profile, "imagenet", seed=0)  # stage 2 without a fold
    with pytest.raises(ValueError, match="pass its split"):
        pruning.round_specs(paper_split, imp, arm="imagenet")
    pruned = pruning.round_specs(protocol.fold_spec(profile, "scratch", protocol.splits(folds)[0]), imp,
                                 arm="scratch")[0][2]
    with pytest.raises(ValueError, match="pruned run"):
        pruning.round_specs(pruned, imp, arm="scratch")


# --------------------------------------------------------------------------- trained (one study, shared)


SMOKE = dict(max_folds=1, stage1_rounds=0)  # the smoke plan on one fold: dense + 5 rounds


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, synthetic_root):
    """The chapter run once in the smoke profile (arm ``scratch``, one fold, no stage 1), in a runs folder of
    its own; tests copy it before changing anything."""
    runs = tmp_path_factory.mktemp("pruning_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSTL_RUNS_DIR", str(runs))
        patch.setenv("MSTL_OFFLINE", "1")
        pruning.run(config.get_profile("smoke"), pruning.get_plan("smoke", **SMOKE), arm="scratch",
                    data_dir=str(synthetic_root), workers=1)
    return runs


def _copy_runs(smoke_runs, tmp_path):
    """The shared runs, copied to this test's runs folder ($MSTL_RUNS_DIR of the ``isolated`` fixture)."""
    shutil.copytree(smoke_runs, tmp_path / "runs", dirs_exist_ok=True)
    return tmp_path / "runs"


def _run(synthetic_root, **changes):
    return pruning.run(config.get_profile("smoke"), pruning.get_plan("smoke", **{**SMOKE, **changes}), arm="scratch",
                       data_dir=str(synthetic_root), workers=1)


def _markers(runs) -> dict[str, int]:
    return {str(p.relative_to(runs)): p.stat().st_mtime_ns for p in runs.rglob(lifecycle.MARKER_FILE)}


@pytest.mark.slow
def test_round_runs_are_engine_runs_reused_and_tabled(smoke_runs, synthetic_root, tmp_path):
    runs = _copy_runs(smoke_runs, tmp_path)
    before = _markers(runs)
    result = _run(synthetic_root)
    assert _markers(runs) == before  # every run complete: read back, nothing trained
    study = result.main
    assert result.second is None and result.stage1 is None and len(study.dense) == 1
    assert study.dense[0].run_dir.parent.name.startswith("cv_scratch-")  # the protocol's own run
    assert len(study.rounds) == 5
    for r in study.rounds:  # ordinary engine runs: config.json, metrics.json, checkpoint with masks
        assert (r.run_dir / lifecycle.CONFIG_FILE).is_file() and (r.run_dir / lifecycle.MARKER_FILE).is_file()
        assert r.run_dir.parent.name.startswith(f"prune_scratch_{r.method}_r{r.round:02d}-")
        assert r.result.config["split"] == study.dense[0].config["split"]
        assert r.result.config["seed"] == study.dense[0].config["seed"]
        assert r.pruning["sparsity"] == pytest.approx(r.target, abs=1e-5)  # the target, to the weight
        assert set(sparsity.masks_of(pruning.pruned_model(r.result))) and lifecycle.is_complete(r.result.spec)
    found = pruning.tables(result)
    assert sorted(found) == ["pruning.csv", "pruning_costs.csv", "pruning_folds.csv", "pruning_tests.csv"]
    assert list(found["pruning.csv"].columns) == pruning.COLUMNS
    assert list(found["pruning_folds.csv"].columns) == pruning.FOLD_COLUMNS
    assert list(found["pruning_costs.csv"].columns) == pruning.COST_COLUMNS
    assert list(found["pruning_tests.csv"].columns) == pruning.TEST_COLUMNS
    table = found["pruning_folds.csv"]
    assert sorted(table["method"].unique()) == ["dense", "imp", "oneshot", "oneshot+all", "random"]
    pruned = table[table["method"] != "dense"]
    assert pruned["sparsity"].to_numpy() == pytest.approx(pruned["target_sparsity"].to_numpy(), abs=1e-5)
    nonzero = table.groupby("method")["nonzero_params"].max()
    assert nonzero["dense"] > nonzero["imp"] and nonzero["imp"] > nonzero["oneshot+all"]
    summary = found["pruning.csv"]
    assert summary["cpu_latency_ms"].notna().all() and len(summary) == 1 + 2 + 1 + 1 + 1
    # The prose's values and the verdict come from the module; the rule's round is one the validation allows.
    values = pruning.glue_values(result, found)
    assert {"prune_n_folds", "prune_eligible", "prune_total", "prune_sparsest_text", "prune_last_imp",
            "prune_last_oneshot_all", "prune_wide_first", "prune_excluded_pct", "prune_imp_sparse_mb",
            "prune_latency_ratio", "prune_second_text", "prune_stage1_text", "prune_minutes", "prune_trainings",
            "prune_report_rule", "prune_reported_text"} <= set(values)
    assert values["prune_trainings"] == 5 and values["prune_n_folds"] == 1
    assert values["prune_stage1_text"].data.startswith("Not measured")  # markdown, for {glue:md}
    val = pruning.validation_table(study)
    assert len(val) == 6 and val["val_accuracy"].between(0, 1).all()
    means = val.groupby(["method", "round"])["val_accuracy"].mean()
    allowed = [k for (method, k), v in means.items() if method == "imp" and v >= means[("dense", 0)] - 0.01 - 1e-9]
    picked = pruning.reported_round(study, summary, within=0.01)
    assert (None if picked["row"] is None else int(picked["row"]["round"])) == (max(allowed) if allowed else None)
    assert "Reported" in pruning.verdict(result, found)


@pytest.mark.slow
def test_a_killed_imp_chain_continues_at_its_missing_round(smoke_runs, synthetic_root, tmp_path):
    runs = _copy_runs(smoke_runs, tmp_path)
    result = _run(synthetic_root)
    round1, round2 = [r for r in result.main.rounds if r.method == "imp"]
    before = _markers(runs)
    shutil.rmtree(round2.run_dir)  # killed before round 2 finished (or its folder lost)
    again = _run(synthetic_root)
    after = _markers(runs)
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed == {str(round2.run_dir.relative_to(runs) / lifecycle.MARKER_FILE)}  # only round 2 trained
    new2 = [r for r in again.main.rounds if r.method == "imp"][1]
    assert new2.run_dir == round2.run_dir and new2.pruning == round2.pruning
    assert new2.metrics["accuracy"] == round2.metrics["accuracy"]  # the same computation, the same numbers
    assert round1.run_dir.is_dir()
    # A run started again after a kill (no metrics.json) is never read as a result, and is trained again.
    (round2.run_dir / lifecycle.MARKER_FILE).unlink()
    assert not lifecycle.is_complete(new2.result.spec)
    pruning.run_pruning(config.get_profile("smoke"), [pruning.PruneConfig(rate=0.5, rounds=2)], arm="scratch",
                        folds=protocol.target_folds(config.get_profile("smoke"), data_dir=str(synthetic_root))[0],
                        max_folds=1, data_dir=str(synthetic_root), workers=1)
    assert lifecycle.is_complete(new2.result.spec)
    assert _markers(runs)[str(round1.run_dir.relative_to(runs) / lifecycle.MARKER_FILE)] == before[
        str(round1.run_dir.relative_to(runs) / lifecycle.MARKER_FILE)]


@pytest.mark.slow
def test_stage1_pruning_rewinds_to_imagenet_and_pairs_on_the_test_images(synthetic_root):
    """Stage 1 pruned: the bridge run is the dense model, rounds are tested on the same official test
    images, and the table pairs each round with the dense run image by image."""
    profile = config.get_profile("smoke")
    plan = pruning.get_plan("smoke")
    configs = plan.stage1_configs()
    assert [c.label for c in configs] == ["imp", "oneshot", "random"]
    assert all(c.schedule() == [(1, 0.5)] for c in configs)
    study = pruning.run_pruning_stage1(profile, configs, data_dir=str(synthetic_root), workers=1)
    bridge = protocol.bridge_spec(profile, seed=0)
    assert study.dense[0].run_dir == lifecycle.run_dir(bridge)  # the protocol's bridge, not a run of its own
    assert [r.run_dir.parent.name.split("-")[0] for r in study.rounds] == [
        f"prune_stage1_imagenet_{m}_r01" for m in ("imp", "oneshot", "random")]
    assert all(r.result.config["stage"] == "stage1" and r.result.config["split"] is None for r in study.rounds)
    assert all(r.metrics["provenance"]["stage"] == "stage1" for r in study.rounds)
    # Rounds rewind to the stage's start (ImageNet weights), not to the dense run they prune.
    imp = study.rounds[0]
    assert imp.result.spec.init == "imagenet" and imp.result.spec.mask.source == bridge
    assert imp.metrics["provenance"]["init_from"] == "imagenet"
    measured = pruning.costs(study, repeats=1)
    table = pruning.stage1_table(study, measured, profile="smoke")
    assert list(table.columns) == pruning.STAGE1_COLUMNS
    assert sorted(table["method"]) == ["dense", "imp", "oneshot", "random"]
    dense = table[table["method"] == "dense"].iloc[0]
    assert dense["diff"] == 0 and dense["p_value"] == 1 and dense["n_test"] == len(study.dense[0].predictions)
    assert table.loc[table["method"] != "dense", "sparsity"].to_numpy() == pytest.approx(0.5, abs=1e-5)
    imp_row = table[table["method"] == "imp"].iloc[0]
    predictions = imp.result.predictions
    merged = predictions.merge(study.dense[0].predictions, on="file", suffixes=("", "_dense"))
    expected = (merged["pred"] == merged["label"]).mean() - (merged["pred_dense"] == merged["label"]).mean()
    assert imp_row["diff"] == pytest.approx(expected) and imp_row["accuracy_mean"] == pytest.approx(
        (predictions["pred"] == predictions["label"]).mean())
    # Reused when complete; a stage-1 round is no stage-2 round.
    first = (imp.run_dir / lifecycle.MARKER_FILE).stat().st_mtime_ns
    pruning.run_pruning_stage1(profile, configs[:1], data_dir=str(synthetic_root), workers=1)
    assert (imp.run_dir / lifecycle.MARKER_FILE).stat().st_mtime_ns == first
    assert isinstance(imp.result.spec, RunSpec) and imp.result.spec.stage == "stage1"
