"""The model registry, transfer strategies and cost measurements of the "Which architecture?" chapter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mstl_utils.experiments import architectures, protocol
from mstl_utils.core import config
from mstl_utils import models
from mstl_utils.data.folds import Split
from mstl_utils.engine import lifecycle, train
from mstl_utils.models import transfer


@pytest.fixture(scope="module", params=sorted(models.MODELS))
def name(request):
    return request.param


def test_every_model_builds_resets_its_head_and_trains_on_grey_input(name):
    torch.manual_seed(0)
    spec = models.spec_of(name)
    for classes in (2, 3):
        model, info = models.build_model(name, num_classes=classes, init="scratch")
        assert info.source == "random" and models.num_outputs(model, spec) == classes
    model.train()
    out = model(torch.rand(2, 1, 64, 64))  # one grey channel
    assert out.shape == (2, 3)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_every_parameter_belongs_to_a_block_or_the_head(name):
    """Partial freezing counts blocks; a parameter outside them would be frozen by accident."""
    spec = models.spec_of(name)
    backbone = spec.build()
    owned = {id(p) for _, block in models.blocks(backbone, spec) for p in block.parameters()}
    owned |= {id(p) for p in backbone.get_submodule(models.head_path(spec)).parameters()}
    loose = [n for n, p in backbone.named_parameters() if id(p) not in owned]
    assert not loose, loose[:5]
    assert len(models.blocks(backbone, spec)) >= 5


@pytest.mark.parametrize("model_name", ["mobilenet_v2", "efficientnet_lite0", "resnet18", "squeezenet1_1"])
@pytest.mark.parametrize("strategy", sorted(transfer.STRATEGIES))
def test_freezing_leaves_exactly_the_intended_parameters_trainable(model_name, strategy):
    model, _ = models.build_model(model_name, num_classes=2, init="scratch")
    spec, chosen = models.spec_of(model_name), transfer.get(strategy)
    groups = transfer.apply(model, model_name, strategy, lr=1e-3)
    blocks = models.blocks(model.backbone, spec)
    head = {id(p) for p in model.backbone.get_submodule(models.head_path(spec)).parameters()}
    top = blocks if chosen.trainable_blocks is None else blocks[len(blocks) - chosen.trainable_blocks:]
    expected = head | {id(p) for _, block in top for p in block.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    assert {id(p) for g in groups for p in g["params"]} == expected
    assert max(g["lr"] for g in groups) == pytest.approx(1e-3)  # the head keeps the stage's rate
    if chosen.lowest_lr_factor < 1:
        lrs = [g["lr"] for g in groups]
        assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-3 * chosen.lowest_lr_factor)
    # Batch norm of frozen blocks: kept in eval mode by model.train() unless the strategy leaves it training.
    frozen = blocks[:len(blocks) - len(top)]
    norms = [m for _, block in frozen for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.train()
    assert all(m.training == (chosen.frozen_bn == "train") for m in norms)
    trained_norms = [m for _, block in top for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(m.training for m in trained_norms)
    model.eval()
    assert not any(m.training for m in model.modules())


def test_frozen_batch_norm_keeps_its_statistics_only_when_asked():
    torch.manual_seed(0)
    for strategy, moves in (("features", False), ("features_bn_train", True)):
        model, _ = models.build_model("mobilenet_v2", num_classes=2, init="scratch")
        groups = transfer.apply(model, "mobilenet_v2", strategy, lr=1e-2)
        before = model.backbone.features[1].conv[0][1].running_mean.clone()
        weight = model.backbone.features[1].conv[0][0].weight.clone()
        optimizer = torch.optim.Adam(groups, lr=1e-2)
        model.train()
        loss = nn.functional.cross_entropy(model(torch.rand(4, 1, 32, 32) * 3), torch.tensor([0, 1, 0, 1]))
        loss.backward()
        optimizer.step()
        assert torch.equal(model.backbone.features[1].conv[0][0].weight, weight)  # frozen either way
        assert (not torch.equal(model.backbone.features[1].conv[0][1].running_mean, before)) == moves


def test_unknown_strategy_and_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown transfer strategy 'nope'"):
        transfer.get("nope")
    with pytest.raises(ValueError, match="frozen_bn"):
        transfer.Strategy("x", frozen_bn="sometimes")
    with pytest.raises(ValueError, match="lowest_lr_factor"):
        transfer.Strategy("x", lowest_lr_factor=0)


def test_strategy_is_recorded_only_when_it_is_not_the_default():
    profile = config.get_profile("smoke")
    split = Split(0, 0, ("000", "001"))
    plain = protocol.fold_spec(profile, "imagenet", split)
    assert "strategy" not in plain.settings()  # runs made before strategies existed are still reused
    frozen = protocol.fold_spec(profile, "imagenet", split, strategy="features")
    assert frozen.settings()["strategy"]["trainable_blocks"] == 0
    assert frozen.relpath.parent != plain.relpath.parent  # its own folder, under the same name


def _folds(repeats: int = 1) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"{i:03d}" for i in range(6)] * repeats, "label": [0, 1] * 3 * repeats,
                         "repeat": [r for r in range(repeats) for _ in range(6)], "fold": [0, 0, 1, 1, 2, 2] * repeats})


def test_run_names_keep_the_protocol_runs_for_the_profile_model():
    assert architectures.run_name("imagenet", "mobilenet_v2", "full", "mobilenet_v2") == "cv_imagenet"
    assert architectures.run_name("multistage", "resnet18", "top3", "mobilenet_v2") == "cv_multistage_resnet18_top3"
    assert architectures.bridge_name("stage1", "mobilenet_v2", "mobilenet_v2") == "stage1"
    assert architectures.bridge_name("stage1", "efficientnet_lite0", "mobilenet_v2") == "stage1_efficientnet_lite0"
    folds = _folds()
    profile = config.get_profile("smoke")
    runs = architectures.plan(profile, "resnet18", folds, strategy="features")
    bridges = {r.spec.init for r in runs if not isinstance(r.spec.init, str)}
    assert [b.name for b in bridges] == ["stage1_resnet18"]
    (bridge,) = bridges
    assert bridge.profile.model == "resnet18" and bridge.stage == "stage1" and bridge.init == "imagenet"
    assert bridge.strategy == transfer.DEFAULT  # a strategy is the target stage's
    assert {r.name for r in runs} == {"cv_imagenet_resnet18_features", "cv_multistage_resnet18_features"}
    assert {r.init_from for r in runs} == {"imagenet", "stage1_resnet18"}
    assert all(r.spec.profile.model == "resnet18" and r.spec.strategy == "features" for r in runs)
    # The profile's own model with full fine-tuning plans exactly the protocol's runs: reused, not retrained.
    own = architectures.plan(profile, profile.model, folds)
    assert [r.spec for r in own] == [r.spec for r in protocol.plan(profile, folds, arms=architectures.ARMS)]
    # A changed model is another folder, whatever its name.
    other = protocol.fold_spec(profile.replace(model="resnet18"), "imagenet", own[0].split)
    assert other.relpath.parent != own[0].spec.relpath.parent
    # Bridge seeds: repeat r starts from a bridge of its own (seeds[r], past the last new ones); None: the protocol's.
    two = profile.replace(seeds=(0, 1))
    seeded = architectures.plan(two, "resnet18", _folds(2), arms=("multistage",), seeds=(5,))
    assert {(r.split.repeat, r.init_seed) for r in seeded} == {(0, 5), (1, 6)}
    by_protocol = architectures.plan(two, "resnet18", _folds(2), arms=("multistage",))
    assert {(r.split.repeat, r.init_seed) for r in by_protocol} == {(0, 0), (1, 1)}


def test_random_starts_only_where_no_local_weights_are(tmp_path, monkeypatch):
    profile = config.get_profile("smoke", allow_random=False)
    monkeypatch.setenv("MSTL_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / models.spec_of("mobilenet_v2").local_file).write_bytes(b"")
    assert architectures.model_profile(profile, "resnet18", allow_random=True).allow_random
    assert not architectures.model_profile(profile, "resnet18").allow_random
    # The profile's own model with its weight file keeps the profile: the protocol's runs stay its runs.
    assert architectures.model_profile(profile, "mobilenet_v2", allow_random=True) == profile
    assert architectures.default_models(profile) == ["mobilenet_v2"]


def test_plans_are_checked_and_changed_by_name():
    assert architectures.get_plan("smoke") == architectures.PLANS["smoke"]
    plan = architectures.get_plan("quick", seeds=[0, 1], strategies=["full", "top3"], arms=None)
    assert plan.seeds == (0, 1) and plan.strategies == ("full", "top3") and plan.arms == architectures.ARMS
    with pytest.raises(ValueError, match="no architectures plan for profile 'nope'"):
        architectures.get_plan("nope")
    with pytest.raises(ValueError, match="unknown arm"):
        architectures.get_plan("smoke", arms=["imagenet", "bridge"])
    with pytest.raises(ValueError, match="unknown transfer strategy"):
        architectures.get_plan("smoke", strategies=["full", "nope"])
    with pytest.raises(ValueError, match="unknown model"):
        architectures.get_plan("smoke", trained_models=["alexnet"])


def test_chapter_plan_groups_every_model_and_strategy_once():
    profile = config.get_profile("smoke")
    folds = _folds(2)
    plan = architectures.get_plan("smoke", trained_models=["mobilenet_v2", "resnet18"], strategies=["full", "top3"],
                                  strategy_repeats=1)
    groups = architectures.chapter_plan(profile, plan, folds)
    assert set(groups) == {("mobilenet_v2", "full", "imagenet"), ("mobilenet_v2", "full", "multistage"),
                           ("resnet18", "full", "imagenet"), ("resnet18", "full", "multistage"),
                           ("mobilenet_v2", "top3", "imagenet")}
    assert len(groups[("resnet18", "full", "imagenet")]) == 6  # every fold of both repeats
    assert {s.split.repeat for s in groups[("mobilenet_v2", "top3", "imagenet")]} == {0}  # strategy_repeats
    # A strategy model outside the trained models gets its full-fine-tuning reference on the strategy folds.
    apart = architectures.chapter_plan(profile, dataclasses.replace(plan, strategy_model="resnet18",
                                                                    trained_models=("mobilenet_v2",)), folds)
    assert len(apart[("resnet18", "full", "imagenet")]) == 3 and ("resnet18", "top3", "imagenet") in apart


def test_cost_settings_follow_the_profile_device_and_precision(monkeypatch):
    profile = config.get_profile("smoke")
    settings = architectures.CostSettings.from_profile(profile, train_steps=1, latency_runs=1, warmup=1)
    assert (settings.image_size, settings.batch_size) == (profile.image_size, profile.stage1.batch_size)
    assert (settings.device, settings.deterministic) == (profile.device, profile.deterministic)
    # A GPU study trains in bf16, and so its throughput is measured (resolved here without a GPU).
    gpu = architectures.CostSettings.from_profile(profile.replace(device="cuda"))
    assert gpu.train_precision == "bf16" and gpu.torch_device.type == "cuda"
    assert architectures.CostSettings.from_profile(profile.replace(device="cpu")).train_precision == "fp32"
    seen = []
    real = train.run_epoch
    monkeypatch.setattr(train, "run_epoch", lambda *a, **k: seen.append(k["precision"]) or real(*a, **k))
    cost = architectures.measure_cost("squeezenet1_1", dataclasses.replace(settings, image_size=32, batch_size=2,
                                                                           device="cpu", precision="bf16"))
    assert seen == ["bf16", "bf16"] and cost["precision"] == "bf16" and cost["train_img_per_s"] > 0


def test_pareto_labels_do_not_overlap():
    table = pd.DataFrame({"model": ["a", "b", "c"], "label": ["Model A", "Model B", "Model C"],
                          "arm": ["imagenet", "multistage", "imagenet"], "macs": [1e6, 1e6, 1.05e6],
                          "cpu_latency_ms": [2.0, 2.0, 2.1], "accuracy_mean": [0.80, 0.801, 0.802],
                          "accuracy_ci_low": [0.7] * 3, "accuracy_ci_high": [0.9] * 3})
    fig = architectures.spread_labels(architectures.plots.pareto(table))
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == 3
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    architectures.plt.close(fig)


@pytest.fixture
def synthetic_profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    return config.get_profile("smoke", data="real")


GLUE_KEYS = {"arch_image_size", "arch_batch", "arch_device", "arch_precision", "arch_n_folds", "arch_bridges",
             "arch_strategy_model", "arch_strategy_arms", "arch_strategy_n_folds", "arch_strategy_repeats",
             "arch_minutes", "arch_not_trained"}


@pytest.mark.slow
def test_chapter_reuses_the_protocol_runs_and_writes_its_contract(synthetic_profile):
    profile = synthetic_profile
    folds, _ = protocol.target_folds(profile)
    crossval = protocol.run_protocol(profile, arms=architectures.ARMS, folds=folds)  # the crossval chapter's runs
    finished = {str(r.run_dir): r.provenance["finished"] for r in crossval}
    plan = architectures.get_plan("smoke", trained_models=["mobilenet_v2", "squeezenet1_1"],
                                  strategies=["full", "features"])
    settings = architectures.CostSettings(profile.image_size, 2, train_steps=1, latency_runs=1, warmup=1)
    result = architectures.run(profile, plan, folds=folds, cost_settings=settings)
    own = [r for arm in architectures.ARMS for r in result.groups[("mobilenet_v2", "full", arm)]]
    assert {str(r.run_dir): r.provenance["finished"] for r in own} == finished  # reused, not retrained
    assert result.trained == ["mobilenet_v2", "squeezenet1_1"]
    squeeze = result.groups[("squeezenet1_1", "full", "multistage")]
    assert all(r.config["model"] == "squeezenet1_1" and r.config["profile"] == "smoke" for r in squeeze)
    assert {r.provenance["init_run"] for r in squeeze} == {str(s.spec.init.relpath) for s in squeeze}
    assert {b.name for b in result.bridges} == {"stage1", "stage1_squeezenet1_1"}

    tables = architectures.tables(result)
    assert set(tables) == {"architectures.csv", "architectures_folds.csv", "architectures_tests.csv",
                           "strategies_tests.csv"}
    table = tables["architectures.csv"]
    assert list(table.columns) == architectures.COLUMNS
    trained = table[table["accuracy_mean"].notna()]
    assert set(zip(trained["model"], trained["strategy"], trained["arm"])) == {
        ("mobilenet_v2", "full", "imagenet"), ("mobilenet_v2", "full", "multistage"),
        ("squeezenet1_1", "full", "imagenet"), ("squeezenet1_1", "full", "multistage"),
        ("mobilenet_v2", "features", "imagenet")}
    assert (trained["profile"] == "smoke").all()
    assert len(table) == len(trained) + len(models.MODELS) - 2  # the others: cost only
    assert list(tables["architectures_folds.csv"].columns) == protocol.FOLD_RESULT_COLUMNS + ["model", "strategy",
                                                                                              "arm_name"]
    assert len(tables["architectures_folds.csv"]) == 5 * profile.cv_folds
    for name in ("architectures_tests.csv", "strategies_tests.csv"):
        assert list(tables[name].columns) == architectures.analysis.TEST_COLUMNS
    assert ("squeezenet1_1 multistage", "squeezenet1_1 imagenet") in set(
        zip(tables["architectures_tests.csv"]["arm_a"], tables["architectures_tests.csv"]["arm_b"]))
    assert set(tables["strategies_tests.csv"]["arm_a"]) == {"mobilenet_v2 imagenet features"}

    values = architectures.glue_values(result, tables)
    assert set(values) == GLUE_KEYS
    assert values["arch_n_folds"] == profile.cv_folds and values["arch_bridges"] == 1
    assert values["arch_precision"] == "fp32" and values["arch_minutes"] > 0
    text = architectures.verdict(result, tables)
    assert text.startswith("Most accurate trained model and arm")
    assert "**squeezenet1_1 imagenet against mobilenet_v2 imagenet**" in text
    assert "**mobilenet_v2 imagenet features against mobilenet_v2 imagenet**" in text
    times = architectures.stage_time_table(result)
    assert set(times["stage"]) >= {"bridge stage1", "bridge stage1_squeezenet1_1", "head-CT fold run cv_imagenet"}
    assert (times["seconds"] > 0).all()
    assert list(architectures.strategy_table(result)["name"]) == ["full", "features"]
    fig = architectures.pareto_figure(result, tables)
    architectures.plt.close(fig)

    # force: this chapter's fold runs again; never the protocol's own runs nor the bridges.
    bridge_done = {b.name: b.provenance["finished"] for b in result.bridges}
    again = architectures.run(profile, dataclasses.replace(plan, trained_models=("mobilenet_v2",)), folds=folds,
                              cost_settings=settings, force=True)
    assert {str(r.run_dir): r.provenance["finished"] for arm in architectures.ARMS
            for r in again.groups[("mobilenet_v2", "full", arm)]} == finished
    assert {b.name: b.provenance["finished"] for b in again.bridges} == {"stage1": bridge_done["stage1"]}
    before = [r.provenance["finished"] for r in result.groups[("mobilenet_v2", "features", "imagenet")]]
    after = [r.provenance["finished"] for r in again.groups[("mobilenet_v2", "features", "imagenet")]]
    assert all(a != b for a, b in zip(after, before))
    assert lifecycle.is_complete(again.groups[("mobilenet_v2", "features", "imagenet")][0].spec)


def test_macs_match_a_hand_count_and_costs_are_complete():
    conv = nn.Sequential(nn.Conv2d(1, 4, kernel_size=3, padding=1, bias=False))
    assert architectures.count_macs(conv, 8) == 4 * 9 * 8 * 8
    model, _ = models.build_model("mobilenet_v2", num_classes=1000, init="scratch")
    # MobileNetV2's published cost at 224 px: 300 million multiply-accumulates (Sandler et al. 2018).
    assert architectures.count_macs(model, 224) == pytest.approx(300e6, rel=0.01)
    cost = architectures.measure_cost("squeezenet1_1", architectures.CostSettings(32, 4, train_steps=1, latency_runs=2))
    assert cost["params"] > 7e5 and cost["size_mb"] >= cost["params"] * 4 / 1e6
    assert cost["cpu_latency_ms"] > 0 and cost["train_img_per_s"] > 0


def test_pareto_front_keeps_only_the_undominated():
    table = pd.DataFrame({"macs": [1, 2, 3, 4], "accuracy_mean": [0.7, 0.9, 0.8, 0.95]})
    assert architectures.pareto_front(table, cost="macs").tolist() == [True, True, False, True]


def test_keras_mobilenet_v1_conversion_puts_every_array_in_its_place(tmp_path):
    """A synthetic Keras file made from a timm model's own weights converts back to them exactly."""
    torch.manual_seed(0)
    spec = models.spec_of("mobilenet_v1_075")
    source = spec.build()
    state = source.state_dict()
    arrays = {"conv1/kernel": state["conv_stem.weight"].permute(2, 3, 1, 0).numpy()}
    def bn(keras, prefix):
        arrays.update({f"{keras}/gamma": state[f"{prefix}.weight"].numpy(), f"{keras}/beta": state[f"{prefix}.bias"].numpy(),
                       f"{keras}/moving_mean": torch.rand_like(state[f"{prefix}.running_mean"]).numpy(),
                       f"{keras}/moving_variance": torch.rand_like(state[f"{prefix}.running_var"]).numpy()})
    bn("conv1_bn", "bn1")
    index = 0
    for s, stage in enumerate(source.blocks):
        for b in range(len(stage)):
            index += 1
            arrays[f"conv_dw_{index}/depthwise_kernel"] = state[f"blocks.{s}.{b}.conv_dw.weight"].permute(2, 3, 0, 1).numpy()
            arrays[f"conv_pw_{index}/kernel"] = state[f"blocks.{s}.{b}.conv_pw.weight"].permute(2, 3, 1, 0).numpy()
            bn(f"conv_dw_{index}_bn", f"blocks.{s}.{b}.bn1")
            bn(f"conv_pw_{index}_bn", f"blocks.{s}.{b}.bn2")
    arrays["conv_preds/kernel"] = state["classifier.weight"].t()[None, None].numpy()
    arrays["conv_preds/bias"] = state["classifier.bias"].numpy()
    np.savez(tmp_path / spec.local_file, **arrays)
    target = spec.build()
    info = models.load_imagenet(target, spec, weights_dir=tmp_path)
    assert info.source == "local-file"
    for key in ("conv_stem.weight", "blocks.3.2.conv_dw.weight", "blocks.4.1.conv_pw.weight", "classifier.weight"):
        assert torch.equal(target.state_dict()[key], state[key]), key
    assert torch.equal(target.state_dict()["blocks.1.0.bn2.running_var"],
                       torch.from_numpy(arrays["conv_pw_2_bn/moving_variance"]))
    del arrays["conv_dw_7/depthwise_kernel"]
    np.savez(tmp_path / spec.local_file, **arrays)
    with pytest.raises(ValueError, match="conv_dw_7/depthwise_kernel"):
        models.load_imagenet(spec.build(), spec, weights_dir=tmp_path)


def test_a_converted_file_of_the_wrong_shape_names_the_file(tmp_path):
    spec = models.spec_of("efficientnet_lite0")
    bad = {k: v[..., :1] if v.ndim == 4 else v for k, v in spec.build().state_dict().items()}
    torch.save(bad, tmp_path / spec.local_file)
    with pytest.raises(ValueError, match=spec.local_file):
        models.load_imagenet(spec.build(), spec, weights_dir=tmp_path)


PHOTOS = {"coffee": {967, 504}, "chelsea": {281, 282, 283, 284, 285, 287}}  # espresso/mug; cats


@pytest.mark.real_data
@pytest.mark.parametrize("model_name", ["mobilenet_v1_075", "efficientnet_lite0"])
def test_converted_imagenet_weights_recognise_photographs(real_weights_dir, model_name):
    """Each converted weight file, with its own input normalisation, names the photographs
    scikit-image ships (top-1 among the right ImageNet classes)."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image not installed")
    spec = models.spec_of(model_name)
    backbone = spec.build()
    info = models.load_imagenet(backbone, spec, weights_dir=real_weights_dir)
    assert info.file == spec.local_file and len(info.sha256) == 64
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    for photo, classes in PHOTOS.items():
        image = torch.from_numpy(getattr(skimage_data, photo)()).permute(2, 0, 1).float().div(255)
        image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            top1 = backbone.eval()((image - mean) / std).argmax(1).item()
        assert top1 in classes, (photo, top1)
