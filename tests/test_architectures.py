"""The model registry, transfer strategies and cost measurements of the "Which architecture?" chapter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mstl_utils.experiments import architectures
from mstl_utils.core import config
from mstl_utils import models
from mstl_utils.engine import stages
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


def test_strategy_is_recorded_only_when_it_is_not_the_default(tmp_path):
    profile = config.get_profile("smoke")
    plain = stages.settings(profile, "cv_imagenet", "stage2", "imagenet", 0, 0, None, tmp_path)
    assert "strategy" not in plain  # runs made before strategies existed are still reused
    frozen = stages.settings(profile, "x", "stage2", "imagenet", 0, 0, None, tmp_path, strategy="features")
    assert frozen["strategy"]["trainable_blocks"] == 0


def test_run_names_keep_the_protocol_runs_for_the_profile_model():
    assert architectures.run_name("imagenet", "mobilenet_v2", "full", "mobilenet_v2") == "cv_imagenet"
    assert architectures.run_name("multistage", "resnet18", "top3", "mobilenet_v2") == "cv_multistage_resnet18_top3"
    assert architectures.bridge_name("stage1", "mobilenet_v2", "mobilenet_v2") == "stage1"
    assert architectures.bridge_name("stage1", "efficientnet_lite0", "mobilenet_v2") == "stage1_efficientnet_lite0"
    folds = pd.DataFrame({"image_id": [f"{i:03d}" for i in range(6)], "label": [0, 1] * 3, "repeat": 0,
                          "fold": [0, 0, 1, 1, 2, 2]})
    profile = config.get_profile("smoke")
    bridges, jobs = architectures.plan(profile, "resnet18", folds, strategy="features")
    assert [b["name"] for b in bridges] == ["stage1_resnet18"] and bridges[0]["profile"].model == "resnet18"
    assert {j["name"] for j in jobs} == {"cv_imagenet_resnet18_features", "cv_multistage_resnet18_features"}
    assert {j["init_from"] for j in jobs} == {"imagenet", "stage1_resnet18"}


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
