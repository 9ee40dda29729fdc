"""Grad-CAM maps, the choice of examples, the region measure and the colour data path, on tiny inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mstl_utils import data, models
from mstl_utils.core import config
from mstl_utils.data import decoded
from mstl_utils.engine import executors, lifecycle, train
from mstl_utils.engine.spec import RunSpec
from mstl_utils.experiments import explain, protocol
from mstl_utils.report import plots


@pytest.fixture
def scratch_model():
    torch.manual_seed(0)
    model, _ = models.build_model("mobilenet_v2", num_classes=2, init="scratch")
    return model.eval()


# --------------------------------------------------------------------------- maps


def test_target_layer_is_the_last_feature_block(scratch_model):
    assert explain.target_layer(scratch_model, "mobilenet_v2") is scratch_model.backbone.features[-1]
    assert explain.layer_side("mobilenet_v2", 128) == 4 and explain.layer_side("mobilenet_v2", 64) == 2
    with pytest.raises(ValueError, match="no Grad-CAM layer registered for 'resnet'"):
        explain.target_layer(scratch_model, "resnet")


def test_cams_have_the_image_shape_and_lie_in_unit_range(scratch_model):
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    cams = explain.compute_cams(scratch_model, images, target_class=1, batch_size=2)
    assert cams.shape == (3, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1 + 1e-6


def test_cam_follows_the_class_weights_on_the_target_layer(scratch_model):
    # With one feature channel j feeding class 1 positively and class 0 negatively, Grad-CAM of
    # class 1 is that channel's activation map (non-negative after ReLU6), and class 0's map is empty.
    j = 7
    head = scratch_model.backbone.classifier[1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, j], head.weight[0, j] = 1.0, -1.0
    images = torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    activations = []
    hook = scratch_model.backbone.features[-1].register_forward_hook(lambda _m, _i, out: activations.append(out))
    with torch.no_grad():
        scratch_model(images.float() / 255)
    hook.remove()
    channel = activations[0][:, j]  # [N, 2, 2] at 64 px
    positive = explain.compute_cams(scratch_model, images, target_class=1)
    negative = explain.compute_cams(scratch_model, images, target_class=0)
    assert np.all(negative == 0)
    for cam, act in zip(positive, channel):
        if act.max() > act.min():  # a constant channel gives an empty map after min-max scaling
            quadrant = np.unravel_index(cam.argmax(), cam.shape)
            assert (quadrant[0] // 32, quadrant[1] // 32) == np.unravel_index(int(act.argmax()), act.shape)


# --------------------------------------------------------------------------- which model explains which image


def _fake_run(root, fold, test_ids, marker):
    """A complete fold run of the imagenet arm whose classifier bias is ``marker`` (to recognise it)."""
    run_dir = root / "cv_imagenet" / f"repeat00_fold{fold}"
    run_dir.mkdir(parents=True)
    model, _ = models.build_model("mobilenet_v2", num_classes=2, init="scratch")
    with torch.no_grad():
        model.backbone.classifier[1].bias.fill_(marker)
    train.save_checkpoint(run_dir / "checkpoint.pt", {
        "model": "mobilenet_v2", "num_classes": 2, "class_names": ["normal", "hemorrhage"],
        "state_dict": model.state_dict(), "config": {"name": "cv_imagenet"}, "weights": {}})
    labels = [int(i) % 2 for i in test_ids]
    probs = [0.9 if label else 0.2 for label in labels]
    pd.DataFrame({"image_id": test_ids, "file": [f"head_ct/head_ct/{i}.png" for i in test_ids], "label": labels,
                  "prob_normal": [1 - p for p in probs], "prob_hemorrhage": probs,
                  "pred": [int(p >= 0.5) for p in probs]}).to_csv(run_dir / "predictions.csv", index=False)
    (run_dir / "config.json").write_text(json.dumps(
        {"name": "cv_imagenet", "seed": 0, "split": {"repeat": 0, "fold": fold, "test_ids": list(test_ids)}}))
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "history.csv").write_text("epoch\n1\n")
    return lifecycle.load(run_dir)


def _marker_cams(model, images, *, target_class, model_name="mobilenet_v2", batch_size=32):
    """Stands in for Grad-CAM: a map filled with the explaining model's classifier bias."""
    return np.full((len(images), *images.shape[-2:]), model.backbone.classifier[1].bias[0].item(), np.float32)


def test_each_image_is_explained_by_the_model_of_its_own_test_fold(tmp_path, monkeypatch):
    runs = [_fake_run(tmp_path, 0, ["000", "001", "002"], 0.25), _fake_run(tmp_path, 1, ["003", "004", "005"], 0.75)]
    monkeypatch.setattr(explain, "compute_cams", _marker_cams)
    oof = explain.oof_predictions(runs, repeat=0)
    # Shuffled, so that rows of the two folds interleave.
    oof = oof.sample(frac=1.0, random_state=0).reset_index(drop=True)
    images = torch.zeros((len(oof), 1, 32, 32), dtype=torch.uint8)
    cams = explain.explain_rows(oof, images, target_class=1)
    expected = np.where(oof["image_id"].isin(["000", "001", "002"]), 0.25, 0.75)
    assert np.allclose(cams[:, 0, 0], expected)
    wrong = oof.assign(run_dir=str(runs[0].run_dir))  # every image put to fold 0's model
    with pytest.raises(ValueError, match="not in its test part"):
        explain.explain_rows(wrong, images, target_class=1)


def test_examples_are_the_most_confident_per_outcome_and_keep_their_rows():
    predictions = pd.DataFrame({
        "arm": "imagenet", "image_id": ["a", "b", "c", "d", "e", "f"], "file": list("abcdef"),
        "label": [1, 1, 0, 0, 1, 0], "prob": [0.99, 0.8, 0.7, 0.95, 0.1, 0.05], "pred": [1, 1, 1, 1, 0, 0]})
    predictions["outcome"] = ["TP", "TP", "FP", "FP", "FN", "TN"]
    predictions["confidence"] = np.maximum(predictions["prob"], 1 - predictions["prob"])
    picked = explain.pick_examples(predictions.iloc[::-1], n_examples=1)
    assert picked["image_id"].tolist() == ["a", "d", "e"] and picked.index.tolist() == [0, 3, 4]
    assert explain.pick_examples(predictions, n_examples=5, outcomes=("FP",))["image_id"].tolist() == ["d", "c"]


# --------------------------------------------------------------------------- regions


def _head(background: int = 0) -> torch.Tensor:
    """A 64 px 'scan': a bright disc of radius 24 on a dark background."""
    yy, xx = np.mgrid[:64, :64]
    image = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 24 ** 2, 200, background).astype(np.uint8)
    return torch.from_numpy(image)[None, None]


@pytest.mark.parametrize("background", [0, 60])  # black, and the dark grey some scans lie on
def test_head_share_of_a_constructed_case(background):
    regions = explain.head_regions(_head(background).expand(3, -1, -1, -1))
    inside, corner, even = (np.zeros((1, 64, 64), np.float32) for _ in range(3))
    inside[0, 28:36, 28:36] = 1
    corner[0, :4, :4] = 1
    even[:] = 1
    shares = explain.mass_shares(np.concatenate([inside, corner, even]), regions).pivot(
        index="image", columns="region", values="mass_share")
    assert shares.loc[0, "interior"] == 1 and shares.loc[1, "background"] == 1
    area = explain.mass_shares(np.concatenate([even] * 3), regions).query("image == 0").set_index("region")["area_share"]
    assert np.allclose(shares.loc[2, area.index], area)  # an even map: mass share = area share
    assert area.sum() == pytest.approx(1)
    rim = round(explain.RIM_FRACTION * 64)
    assert area["interior"] == pytest.approx(np.pi * (24 - rim) ** 2 / 64 ** 2, abs=0.03)
    assert area["background"] == pytest.approx(1 - np.pi * 24 ** 2 / 64 ** 2, abs=0.01)


def test_an_empty_map_has_no_share_and_the_summary_says_so():
    regions = explain.head_regions(_head().expand(2, -1, -1, -1))
    cams = np.stack([np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)])
    rows = pd.DataFrame({"arm": "imagenet", "outcome": ["TP", "FN"], "image_id": ["0", "1"]})
    summary = explain.cam_summary(explain.region_table(rows, cams, regions), dataset="head_ct")
    assert list(summary.columns) == explain.SUMMARY_COLUMNS
    every = summary[(summary["outcome"] == "all") & (summary["region"] == "interior")].iloc[0]
    assert (every["n"], every["n_empty"]) == (2, 1) and every["ratio"] == pytest.approx(1)


def test_border_and_coloured_pixels():
    images = np.zeros((1, 3, 20, 20), np.uint8)
    images[0, 0, 5:10, 5:10] = 200  # a red square
    assert explain.coloured_pixels(images)["coloured"].sum() == 25
    border = explain.border_regions(images, fraction=0.1)
    assert border["border"].sum() == 20 * 20 - 16 * 16 and not (border["border"] & border["centre"]).any()


# --------------------------------------------------------------------------- the colour path


def test_colour_file_keeps_three_channels_and_the_grey_path_is_unchanged(tmp_path):
    rgba = tmp_path / "tinted.png"
    Image.new("RGBA", (48, 36), (200, 40, 40, 255)).save(rgba)
    colour = data.load_image(rgba, 8, in_chans=3)
    assert colour.shape == (3, 8, 8) and colour.dtype == np.uint8
    assert colour[:, 0, 0].tolist() == [200, 40, 40]
    assert data.load_image(rgba, 8).shape == (8, 8)
    assert data.load_image(rgba, 8)[0, 0] == round(0.299 * 200 + 0.587 * 40 + 0.114 * 40)
    transparent = tmp_path / "clear.png"
    Image.new("RGBA", (40, 40), (200, 40, 40, 0)).save(transparent)
    assert data.load_image(transparent, 8, in_chans=3).max() == 0  # alpha over black, as the grey path does
    with pytest.raises(ValueError, match="in_chans=2"):
        data.load_image(rgba, 8, in_chans=2)


def test_prepare_in_colour_and_in_grey(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MSTL_CACHE_DIR", str(tmp_path / "cache"))
    grey = data.prepare("head_ct", data="real", data_dir=synthetic_root, image_size=32)
    colour = data.prepare("head_ct", data="real", data_dir=synthetic_root, image_size=32, in_chans=3)
    assert grey.images.shape == (30, 1, 32, 32) and colour.images.shape == (30, 3, 32, 32)
    assert (grey.in_chans, colour.in_chans) == (1, 3)
    # The synthetic scans are grey whatever their file mode: every colour channel equals the grey image.
    for channel in range(3):
        assert torch.equal(colour.images[:, channel], grey.images[:, 0])
    # The grey cache entry keeps the key it had before colour existed; colour gets its own entry.
    old_key = hashlib.sha256(json.dumps({"fingerprint": grey.checksum, "image_size": 32,
                                         "decode_version": decoded.DECODE_VERSION}).encode()).hexdigest()[:24]
    names = sorted(p.name for p in (tmp_path / "cache" / "decoded").glob("*.npy"))
    assert names == sorted([f"32px-{old_key}.npy", f"32px-3ch-{decoded.cache_key(grey.checksum, 32, 3)}.npy"])
    again = data.prepare("head_ct", data="real", data_dir=synthetic_root, image_size=32, in_chans=3)
    assert again.decoded_cache == "hit" and torch.equal(again.images, colour.images)
    files = [Path(p).relative_to(grey.source.root).as_posix() for p in grey.table["path"]]
    assert grey.rows_of([files[3], files[0]]).tolist() == [3, 0]
    with pytest.raises(KeyError, match="not in these data"):
        grey.rows_of(["nope.png"])


def test_colour_model_takes_three_channels_with_the_same_weights():
    grey, _ = models.build_model("mobilenet_v2", num_classes=2, init="scratch")
    colour, _ = models.build_model("mobilenet_v2", num_classes=2, init="scratch", in_chans=3)
    assert colour(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    assert list(grey.state_dict()) == list(colour.state_dict())  # checkpoints keep their layout
    with pytest.raises(ValueError, match="takes in_chans=1"):
        grey(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="takes in_chans=3"):
        colour(torch.rand(2, 1, 32, 32))
    checkpoint = {"model": "mobilenet_v2", "num_classes": 2, "state_dict": colour.state_dict(), "in_chans": 3}
    assert models.load_from_checkpoint(checkpoint, num_classes=2, stage="x")[0].in_chans == 3
    del checkpoint["in_chans"]  # every checkpoint written before the colour path existed
    assert models.load_from_checkpoint(checkpoint, num_classes=2, stage="x")[0].in_chans == 1


@pytest.mark.slow
def test_colour_run_is_recorded_and_never_taken_for_a_grey_one(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    profile = config.get_profile("smoke", data="real").replace(stage2={"num_epochs": 1})
    colour_spec = RunSpec(name="colour", stage="stage2", profile=profile, init="scratch", in_chans=3)
    run = lifecycle.run(colour_spec)
    assert run.config["in_chans"] == 3
    assert train.load_checkpoint(run.run_dir / "checkpoint.pt")["in_chans"] == 3
    assert lifecycle.is_complete(colour_spec)
    assert not lifecycle.is_complete(colour_spec.replace(in_chans=1))
    grey = lifecycle.run(colour_spec.replace(name="grey", in_chans=1))
    assert "in_chans" not in grey.config  # grey runs' settings are what they always were
    assert "in_chans" not in train.load_checkpoint(grey.run_dir / "checkpoint.pt")


def test_colour_accuracy_counts_each_view_on_the_coloured_and_other_images():
    table = pd.DataFrame({"image_id": list("abcd"), "label": [0, 0, 1, 0], "coloured": [True, True, False, False],
                          "prob_grey": [0.6, 0.4, 0.7, 0.2], "prob_colour": [0.1, 0.2, 0.9, 0.3],
                          "prob_colour_on_grey": [0.9, 0.3, 0.9, 0.3]})
    accuracy = explain.colour_accuracy(table).set_index(["model", "input", "images"])
    assert list(explain.colour_accuracy(table).columns) == explain.COLOUR_COLUMNS
    coloured = accuracy.xs("visibly coloured", level="images")["accuracy"].tolist()
    assert coloured == [0.5, 1.0, 0.5] and accuracy["n"].tolist() == [2, 1, 1] * 3
    assert accuracy.loc[("grey", explain.COLOUR_VIEWS[0][1], "other normal"), "accuracy"] == 1.0
    verdict = explain.colour_verdict(explain.colour_accuracy(table), pd.DataFrame(columns=["map", "region"]))
    assert "2 visibly coloured" in verdict and "costs the colour model 1 of the 2 files" in verdict
    assert "cannot be shown" in explain.colour_verdict(explain.colour_accuracy(table.assign(coloured=False)),
                                                       pd.DataFrame(columns=["map", "region"]))


def test_cam_grid_draws_maps_blanks_and_colour():
    grey = np.zeros((1, 16, 16), np.uint8)
    rgb = np.zeros((3, 16, 16), np.uint8)
    fig = plots.cam_grid([grey, None, rgb], [np.ones((16, 16)), None, None], ["a", "", "c"], ncols=2,
                         row_labels=["TP", "FP"])
    axes = fig.axes
    assert len(axes) == 4 and len(axes[0].images) == 2 and len(axes[1].images) == 0 and len(axes[2].images) == 1
    assert axes[0].get_ylabel() == "TP" and axes[2].get_ylabel() == "FP"
    assert len(plots.cam_grid([], [], []).axes) == 1


def test_map_agreement_is_one_for_the_same_place_and_leaves_out_empty_maps():
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))
    cams = {"colour": np.stack([ramp, ramp]), "colour_on_grey": np.stack([ramp, np.zeros_like(ramp)]),
            "grey_model": np.stack([ramp[:, ::-1], ramp[:, ::-1]])}
    agreement = explain.map_agreement(cams)
    assert agreement["n"].tolist() == [1, 2]
    assert agreement["correlation"].tolist() == pytest.approx([1.0, -1.0])


def test_no_coloured_files_give_empty_measures_not_errors():
    # Synthetic data hold no coloured file: every colour measure must still run.
    empty = {"rgb": torch.zeros((0, 3, 16, 16), dtype=torch.uint8), "grey": torch.zeros((0, 1, 16, 16), dtype=torch.uint8),
             **{key: np.zeros((0, 16, 16), np.float32) for key in explain.MAP_LABELS}}
    assert explain.head_regions(empty["grey"])["interior"].shape == (0, 16, 16)
    assert explain.colour_shares(empty).empty
    assert explain.map_agreement(empty)["n"].tolist() == [0, 0]


# --------------------------------------------------------------------------- the chapter


def test_plan_of_each_profile_and_its_changes():
    assert set(explain.PLANS) == {"smoke", "quick", "paper"}
    plan = explain.get_plan("quick", repeats=[1, 2], arms="imagenet", n_examples=None)
    assert (plan.repeats, plan.arms, plan.n_examples, plan.colour) == ((1, 2), ("imagenet",), 4, 1)
    assert explain.get_plan("quick", repeats=2, colour_repeat=0).colour == 0
    with pytest.raises(ValueError, match="no explanations plan for profile 'nope'"):
        explain.get_plan("nope")
    with pytest.raises(ValueError, match="expected some of"):
        explain.get_plan("quick", arms=["imagenet", "bogus"])
    with pytest.raises(ValueError, match="at least one protocol repeat"):
        explain.get_plan("quick", repeats=[])


def _folds(n_repeats=2, n_folds=3, n_images=12):
    ids = [f"{i:03d}" for i in range(n_images)]
    return pd.DataFrame([{"repeat": r, "fold": (i + r) % n_folds, "image_id": image_id, "label": i % 2}
                         for r in range(n_repeats) for i, image_id in enumerate(ids)])


def test_colour_specs_are_the_imagenet_folds_of_one_repeat_in_rgb(monkeypatch):
    profile = config.get_profile("smoke")
    folds = _folds()
    specs = explain.colour_specs(profile, folds, repeat=1)
    grey = [r.spec for r in protocol.plan(profile, folds, arms=("imagenet",)) if r.split.repeat == 1]
    assert len(specs) == 3 and all(s.name == explain.COLOUR_RUN and s.in_chans == 3 for s in specs)
    for colour, same in zip(specs, grey):  # the same folds, seed, start and settings; only the input differs
        assert (colour.split, colour.seed, colour.init, colour.stage) == (same.split, same.seed, same.init, same.stage)
        assert colour.replace(name=same.name, in_chans=1) == same and colour.relpath != same.relpath
    with pytest.raises(ValueError, match="repeat 5 is not in the folds"):
        explain.colour_specs(profile, folds, repeat=5)
    asked = {}
    monkeypatch.setattr(executors, "run_specs", lambda specs, **options: asked.update(specs=specs, **options) or [])
    explain.run_colour_folds(profile, repeat=1, folds=folds, executor="ray", workers=2, force=True)
    assert asked["specs"] == specs and (asked["executor"], asked["workers"], asked["force"]) == ("ray", 2, True)


def test_cam_figure_adds_a_colour_bar_only_over_maps():
    grey = np.zeros((1, 16, 16), np.uint8)
    with_maps = explain.cam_figure({"images": [grey, grey], "cams": [np.ones((16, 16)), None], "titles": ["a", "b"],
                                    "ncols": 2}, title="t")
    assert len(with_maps.axes) == 3 and with_maps.axes[-1].get_ylabel() == explain.CAM_SCALE_LABEL
    without = explain.cam_figure({"images": [grey], "cams": [None], "titles": ["a"], "ncols": 1}, title="t")
    assert len(without.axes) == 1
    assert len(explain.cam_figure({"images": [grey], "cams": [np.ones((16, 16))], "titles": ["a"], "ncols": 1},
                                  title="t", colour_bar=False).axes) == 1


@pytest.mark.slow
def test_the_chapter_runs_end_to_end_on_synthetic_data(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    # 64 px: a 2 x 2 map (at the smoke profile's 32 px the layer is 1 x 1 and every scaled map is empty)
    profile = config.get_profile("smoke", data="real").replace(image_size=64, stage2={"num_epochs": 1})
    plan = explain.get_plan("smoke", arms=["imagenet"], n_examples=1, n_colour=2)
    found = explain.run(profile, plan, workers=1)
    assert {r.name for r in found.fold_runs} == {"cv_imagenet"} and len(found.fold_runs) == profile.cv_folds
    assert [r.spec.in_chans for r in found.colour_runs] == [3] * profile.cv_folds
    assert len(found.runs()) == 2 * profile.cv_folds + 1  # grey folds (shared), colour folds, the bridge
    tables = explain.tables(found)
    assert list(tables) == ["gradcam_summary.csv", "gradcam_colour.csv", "gradcam_colour_maps.csv"]
    assert list(tables["gradcam_summary.csv"].columns) == explain.SUMMARY_COLUMNS
    assert set(tables["gradcam_summary.csv"]["dataset"]) == {"head_ct", "chest_xray"}
    assert list(tables["gradcam_colour.csv"].columns) == explain.COLOUR_COLUMNS
    assert list(tables["gradcam_colour_maps.csv"].columns) == ["map", "region", "n", "mass_share", "area_share",
                                                               "ratio"]
    values = explain.glue_values(found, tables)
    assert {"repeat", "cam_side", "n_head", "interior_imagenet", "interior_scratch", "regions_verdict",
            "chest_verdict", "colour_verdict", "agree_own", "agree_models", "n_colour_images"} <= set(values)
    assert values["n_head"] == 30 and values["n_colour_images"] == 30 and values["cam_side"] == 2
    assert np.isnan(values["interior_scratch"])  # an arm not explained
    head = tables["gradcam_summary.csv"].query("dataset == 'head_ct' and outcome == 'all' and region == 'interior'")
    assert head["arm"].tolist() == ["imagenet"] and head["n"].tolist() == [30]  # every image once, out of fold
    assert np.isnan(values["interior_imagenet"]) or 0 <= values["interior_imagenet"] <= 1  # NaN: every map empty
    text = explain.verdict(found, tables)
    assert text.startswith("- Head CT:") and "imagenet" in text and "cannot be shown" in text
    figures = {"regions": explain.region_figure(found), **explain.arm_figures(found),
               "chest": explain.chest_figure(found), "colour": explain.colour_figure(found)}
    assert set(figures) == {"regions", "imagenet", "chest", "colour"}
    assert figures["imagenet"].axes[-1].get_ylabel() == explain.CAM_SCALE_LABEL
    titles = [ax.get_title() for fig in figures.values() for ax in fig.axes]
    assert not any("/" in t or ".png" in t or ".jpeg" in t for t in titles)  # images named by id, never by path
