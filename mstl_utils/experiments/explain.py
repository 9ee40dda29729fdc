"""Grad-CAM: where the trained models look, measured so that the maps are evidence, not decoration.

Every image is explained by the run that tested it: a head-CT image by the model of
the cross-validation fold in which it was a test image, a chest X-ray by the stage-1
run that predicted the official test split (``explain_rows`` refuses anything else),
so no map comes from a model that trained on its image. The target layer is the
registered model's last feature block (``CAM_LAYERS``); at 128 px that block is a
4 x 4 grid, so a map tells which part of the image drove the score, not which
structure. ``pytorch_grad_cam`` scales each map to [0, 1] (its own minimum to 0,
maximum to 1).

The measure: ``mass_shares`` gives the share of a map's total mass inside a region
(the head's interior, its rim, the background; the image border; coloured pixels)
beside the share of the image's area the region covers. A map spread evenly has
mass share = area share; a ratio above 1 means the model looks there more than by chance.

The colour shortcut: ``run_colour_folds`` trains the imagenet arm's folds of one
repeat again on RGB images (runs ``COLOUR_RUN``), to compare with the grey runs on
the files the data audit found visibly coloured (all of them normal scans).

The chapter (notebook 08): ``get_plan`` (what is shown), ``run`` (the runs, trained when missing,
then the maps and measures), ``tables`` (``gradcam_*.csv``), ``glue_values``, ``verdict`` and the
figures (``region_figure``, ``arm_figures``, ``chest_figure``, ``colour_figure``, each map with
a colour bar of its [0, 1] scale). Figures and tables name images by their id, never by a path.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import ndimage
from torch import nn

from ..core.config import ARM_INIT, Profile
from ..data import audit
from ..data.batches import TensorBatches
from ..data.datasets import StageData
from ..engine import executors, stages, train
from ..engine.lifecycle import RunResult
from ..engine.spec import RunSpec
from ..models import registry as models
from . import protocol

log = logging.getLogger(__name__)

#: Grad-CAM target layer of each registered model, a path inside ``model.backbone``: the last block
#: of ``features`` (MobileNetV2: the 1 x 1 convolution to 1280 channels, stride 32).
CAM_LAYERS = {"mobilenet_v2": "features.18"}
#: Run name of the imagenet arm trained on RGB images (``runs/<profile>/cv_imagenet_colour/``).
COLOUR_RUN = "cv_imagenet_colour"
#: Outcomes of a binary prediction; class 1 (hemorrhage, pneumonia) is the positive one.
OUTCOMES = ("TP", "FP", "FN", "TN")
#: Head mask: a pixel belongs to the head when brighter than this grey level (of 255) and than the
#: image's surroundings (the median of its outer band) by ``HEAD_MARGIN``: some scans lie on dark grey.
HEAD_THRESHOLD = 30
HEAD_MARGIN = 25
#: The head's rim: the outer band of the head mask, this share of the image side wide (skull and scalp).
RIM_FRACTION = 0.08
#: The image border: the outer band of the image, this share of the side wide (markers, labels, edges).
BORDER_FRACTION = 0.1


# --------------------------------------------------------------------------- maps


def target_layer(model: models.GreyInput, name: str) -> nn.Module:
    """The Grad-CAM target layer of ``model``, a registered model called ``name``."""
    if name not in CAM_LAYERS:
        raise ValueError(f"no Grad-CAM layer registered for {name!r}; expected one of {sorted(CAM_LAYERS)}")
    return model.backbone.get_submodule(CAM_LAYERS[name])


def layer_side(model_name: str, image_size: int) -> int:
    """Side of the target layer's output grid for ``image_size`` input (the maps' real resolution)."""
    model, _ = models.build_model(model_name, num_classes=2, init="scratch")
    sides = []
    handle = target_layer(model, model_name).register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, image_size, image_size))
    handle.remove()
    return int(sides[0])


def load_model(run_dir: str | Path) -> tuple[models.GreyInput, dict]:
    """The trained model of a run directory, in eval mode, and its checkpoint."""
    checkpoint = train.load_checkpoint(Path(run_dir) / "checkpoint.pt")
    model, _ = models.load_from_checkpoint(checkpoint, num_classes=checkpoint["num_classes"],
                                           stage=checkpoint["config"]["name"])
    return model.eval(), checkpoint


def compute_cams(model: models.GreyInput, images: torch.Tensor, *, target_class: int,
                 model_name: str = "mobilenet_v2", batch_size: int = 32) -> np.ndarray:
    """Grad-CAM of ``target_class`` for uint8 images ``[N, C, H, W]``: float32 ``[N, H, W]`` in [0, 1]."""
    model = model.cpu().eval()
    cam = GradCAM(model=model, target_layers=[target_layer(model, model_name)])
    maps = []
    try:  # not ``with``: the library's __exit__ swallows IndexErrors
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].float().div(255)
            maps.append(cam(input_tensor=batch, targets=[ClassifierOutputTarget(target_class)] * len(batch)))
    finally:
        cam.activations_and_grads.release()
    return np.concatenate(maps) if maps else np.zeros((0, *images.shape[-2:]), dtype=np.float32)


def predict_probs(model: models.GreyInput, images: torch.Tensor) -> np.ndarray:
    """Class probabilities ``[N, C]`` of uint8 images ``[N, C, H, W]`` (the study's own inference code)."""
    loader = TensorBatches(images.contiguous(), np.zeros(len(images)), batch_size=64)
    probs, _ = train.predict(model, loader, device=torch.device("cpu"))
    return probs


# --------------------------------------------------------------------------- which images


def prediction_table(result: RunResult) -> pd.DataFrame:
    """A binary run's test predictions with outcome (TP/FP/FN/TN) and confidence (probability of the
    predicted class), labelled with the run: arm, repeat, fold, run_dir."""
    pred = result.predictions
    prob_columns = [c for c in pred.columns if c.startswith("prob_")]
    if len(prob_columns) != 2:
        raise ValueError(f"{result.run_dir}: {len(prob_columns)} classes; outcomes need a binary run")
    prob, label, predicted = pred[prob_columns[1]].to_numpy(), pred["label"].to_numpy(), pred["pred"].to_numpy()
    outcome = np.select([(label == 1) & (predicted == 1), (label == 0) & (predicted == 1), label == 1],
                        ["TP", "FP", "FN"], "TN")
    split = result.config.get("split") or {}
    return pd.DataFrame({
        "arm": result.name.removeprefix("cv_"), "repeat": split.get("repeat"), "fold": split.get("fold"),
        "run_dir": str(result.run_dir), "image_id": pred["image_id"], "file": pred["file"], "label": label,
        "prob": prob, "pred": predicted, "outcome": outcome, "confidence": np.maximum(prob, 1 - prob),
    })


def oof_predictions(fold_runs: list[RunResult], *, repeat: int) -> pd.DataFrame:
    """Every out-of-fold prediction of one repeat (each image once per arm), as ``prediction_table`` rows."""
    tables = [prediction_table(r) for r in fold_runs if r.config["split"]["repeat"] == repeat]
    if not tables:
        raise ValueError(f"no fold runs of repeat {repeat}")
    return pd.concat(tables, ignore_index=True)


def pick_examples(predictions: pd.DataFrame, *, n_examples: int,
                  outcomes: tuple[str, ...] = ("TP", "FP", "FN")) -> pd.DataFrame:
    """The ``n_examples`` most confident predictions per arm and outcome (ties broken by file name):
    the same choice on every run of the notebook. The index of ``predictions`` is kept, so that
    maps computed for all of them can be picked out with it."""
    chosen = predictions[predictions["outcome"].isin(outcomes)].assign(
        outcome=lambda t: pd.Categorical(t["outcome"], categories=list(outcomes), ordered=True))
    chosen = chosen.sort_values(["arm", "outcome", "confidence", "file"], ascending=[True, True, False, True])
    picked = chosen.groupby(["arm", "outcome"], sort=False, observed=True).head(n_examples)
    return picked.assign(outcome=picked["outcome"].astype(str))


def images_of(stage_data: StageData, rows: pd.DataFrame) -> torch.Tensor:
    """The decoded images of ``rows`` (by their ``file``), in row order."""
    return stage_data.images[torch.from_numpy(stage_data.rows_of(rows["file"].tolist()))]


def explain_rows(rows: pd.DataFrame, images: torch.Tensor, *, target_class: int) -> np.ndarray:
    """Grad-CAM ``[N, H, W]`` of each row's image (``images``, in row order) by the model of the row's
    own run. A row whose image is not in that run's test part is an error: no image is ever
    explained by a model that trained on it."""
    rows = rows.reset_index(drop=True)
    cams = np.zeros((len(rows), *images.shape[-2:]), dtype=np.float32)
    for run_dir, group in rows.groupby("run_dir", sort=False):
        tested = set(pd.read_csv(Path(run_dir) / "predictions.csv", dtype={"file": str})["file"])
        foreign = sorted(set(group["file"]) - tested)
        if foreign:
            raise ValueError(f"{Path(run_dir).name}: {len(foreign)} image(s) are not in its test part "
                             f"(e.g. {foreign[0]}); each image is explained by the run that tested it")
        model, checkpoint = load_model(run_dir)
        where = np.array(group.index, dtype=np.int64)
        cams[where] = compute_cams(model, images[torch.from_numpy(where)], target_class=target_class,
                                   model_name=checkpoint["model"])
    return cams


# --------------------------------------------------------------------------- regions and shares


def _grey(images: torch.Tensor | np.ndarray) -> np.ndarray:
    array = np.asarray(images, dtype=np.float32)
    return array.mean(axis=1)  # [N, C, H, W] -> [N, H, W]; grey images have one channel


def head_regions(images: torch.Tensor | np.ndarray, *, threshold: int = HEAD_THRESHOLD,
                 rim_fraction: float = RIM_FRACTION) -> dict[str, np.ndarray]:
    """Boolean masks ``[N, H, W]``: ``interior``, ``rim`` and ``background`` of each head.

    The head is every pixel brighter than ``threshold`` and than the surroundings (the median of
    the image's outer band, ``rim_fraction`` of the side wide) by ``HEAD_MARGIN``, holes filled,
    its largest connected piece; the rim is its outer band ``rim_fraction`` of the side wide (skull
    and scalp), the interior the rest (the brain and the ventricles), the background everything
    else (the surroundings, text, the image border).
    """
    grey = _grey(images)
    width = max(1, round(rim_fraction * grey.shape[-1]))
    outer = ~border_regions(np.zeros((1, *grey.shape[-2:])), fraction=rim_fraction)["centre"][0]
    head = np.zeros(grey.shape, dtype=bool)
    for i, image in enumerate(grey):
        level = max(threshold, float(np.median(image[outer])) + HEAD_MARGIN)
        pieces, count = ndimage.label(ndimage.binary_fill_holes(image > level))
        if count:
            head[i] = pieces == 1 + np.argmax(ndimage.sum_labels(np.ones_like(image), pieces, range(1, count + 1)))
    interior = np.stack([ndimage.binary_erosion(h, iterations=width) for h in head]) if len(head) else head
    return {"interior": interior, "rim": head & ~interior, "background": ~head}


def border_regions(images: torch.Tensor | np.ndarray, *, fraction: float = BORDER_FRACTION) -> dict[str, np.ndarray]:
    """Boolean masks ``[N, H, W]``: the image ``border`` (outer band ``fraction`` of the side) and the ``centre``."""
    n, height, width = len(images), images.shape[-2], images.shape[-1]
    band = max(1, round(fraction * min(height, width)))
    centre = np.zeros((height, width), dtype=bool)
    centre[band:height - band, band:width - band] = True
    return {"centre": np.broadcast_to(centre, (n, height, width)), "border": np.broadcast_to(~centre, (n, height, width))}


def coloured_pixels(images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask ``[N, H, W]`` ``coloured``: R, G, B spread as the data audit counts a coloured pixel."""
    array = np.asarray(images, dtype=np.int16)
    return {"coloured": (array.max(axis=1) - array.min(axis=1)) > audit.COLOURED_PIXEL_SPREAD}


def mass_shares(cams: np.ndarray, regions: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per image and region: ``mass_share`` (share of the map's mass inside; NaN for an empty map)
    and ``area_share`` (share of the image's pixels inside). Columns image, region, mass_share, area_share."""
    for region, mask in regions.items():
        if mask.shape != cams.shape:
            raise ValueError(f"region {region!r} has shape {mask.shape}; the maps have {cams.shape}")
    total = cams.sum(axis=(1, 2))
    rows = []
    for region, mask in regions.items():
        inside = (cams * mask).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            mass = np.where(total > 0, inside / total, np.nan)
        rows.append(pd.DataFrame({"image": np.arange(len(cams)), "region": region, "mass_share": mass,
                                  "area_share": mask.mean(axis=(1, 2))}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["image", "region", "mass_share",
                                                                                  "area_share"])


def region_table(rows: pd.DataFrame, cams: np.ndarray, regions: dict[str, np.ndarray]) -> pd.DataFrame:
    """``mass_shares`` joined with the rows they belong to (one row per image and region)."""
    shares = mass_shares(cams, regions)
    return shares.merge(rows.reset_index(drop=True).drop(columns="run_dir", errors="ignore"),
                        left_on="image", right_index=True).drop(columns="image")


#: Columns of ``gradcam_summary.csv``.
SUMMARY_COLUMNS = ["dataset", "arm", "outcome", "region", "n", "n_empty", "mass_share", "area_share", "ratio"]


def cam_summary(table: pd.DataFrame, *, dataset: str) -> pd.DataFrame:
    """Mean mass and area share per arm, outcome (and ``all`` outcomes together) and region (``n``
    images, ``n_empty`` of them with an all-zero map, left out of the mean); ``ratio`` = mass share /
    area share (1: no preference)."""
    table = pd.concat([table, table.assign(outcome="all")], ignore_index=True)
    grouped = table.groupby(["arm", "outcome", "region"], sort=False)
    summary = grouped.agg(n=("mass_share", "size"), n_empty=("mass_share", lambda s: int(s.isna().sum())),
                          mass_share=("mass_share", "mean"), area_share=("area_share", "mean")).reset_index()
    summary["ratio"] = summary["mass_share"] / summary["area_share"]
    order = {o: i for i, o in enumerate((*OUTCOMES, "all"))}
    summary = summary.sort_values(["arm", "outcome"], key=lambda c: c.map(order) if c.name == "outcome" else c,
                                  kind="stable")
    return summary.assign(dataset=dataset)[SUMMARY_COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------- figures' contents


def grid_cells(picked: pd.DataFrame, images: torch.Tensor, cams: np.ndarray, *, n_examples: int,
               outcomes: tuple[str, ...] = ("TP", "FP", "FN")) -> dict:
    """Arguments of ``plots.cam_grid`` for one arm's picked examples (``pick_examples`` rows, whose
    index points into ``images`` and ``cams``): one row per outcome, ``n_examples`` columns, empty
    cells where an outcome has fewer examples."""
    cells: dict[str, list] = {"images": [], "cams": [], "titles": []}
    for outcome in outcomes:
        where = picked.index[picked["outcome"] == outcome].tolist()[:n_examples]
        for slot in range(n_examples):
            if slot < len(where):
                row = picked.loc[where[slot]]
                fold = "" if pd.isna(row["fold"]) else f", fold {int(row['fold'])}"
                cells["images"].append(images[where[slot]].numpy())
                cells["cams"].append(cams[where[slot]])
                cells["titles"].append(f"{row['image_id']}  p={row['prob']:.2f}{fold}")
            else:
                cells["images"].append(None)
                cells["cams"].append(None)
                cells["titles"].append("")
    return {**cells, "ncols": n_examples, "row_labels": list(outcomes)}


def region_cells(images: torch.Tensor, regions: dict[str, np.ndarray], *, limit: int) -> dict:
    """Arguments of ``plots.cam_grid`` showing ``head_regions`` on the first ``limit`` images
    (interior 1, rim 0.5, background 0 on the map's colour scale)."""
    shown = np.where(regions["interior"], 1.0, np.where(regions["rim"], 0.5, 0.0))[:limit]
    return {"images": [i.numpy() for i in images[:limit]], "cams": list(shown),
            "titles": ["interior red, rim green"] * len(shown), "ncols": min(limit, 6) or 1}


# --------------------------------------------------------------------------- the colour shortcut


def colour_specs(profile: Profile, folds: pd.DataFrame, *, repeat: int = 0,
                 data_dir: str | Path | None = None) -> list[RunSpec]:
    """The imagenet arm's fold runs of ``repeat`` on RGB images (``in_chans=3``, run name ``COLOUR_RUN``):
    the same folds, seeds and settings as the grey runs, only the input differs."""
    chosen = [split for split in protocol.splits(folds) if split.repeat == repeat]
    if not chosen:
        raise ValueError(f"repeat {repeat} is not in the folds (repeats {sorted(folds['repeat'].unique())})")
    return [protocol.fold_spec(profile, "imagenet", split, name=COLOUR_RUN, in_chans=3, data_dir=data_dir)
            for split in chosen]


def run_colour_folds(profile: Profile, *, repeat: int = 0, folds: pd.DataFrame | None = None,
                     data_dir: str | Path | None = None, executor: str | executors.Executor = "local",
                     workers: int | None = None, force: bool = False) -> list[RunResult]:
    """Train (or reuse) the colour fold runs of ``repeat`` (``colour_specs``); ``force`` trains them again."""
    if folds is None:
        folds, _ = protocol.target_folds(profile, data_dir=data_dir)
    return executors.run_specs(colour_specs(profile, folds, repeat=repeat, data_dir=data_dir), executor=executor,
                               workers=workers, force=force, description="colour fold runs")


def visibly_coloured(stage_data: StageData) -> pd.Series:
    """Per image id: is the file visibly coloured, by the data audit's rule (at full resolution)."""
    props = audit.image_properties(stage_data.table[["path", "label", "group", "split"]])
    return (props.set_index("group")["colour_fraction"] > audit.VISIBLY_COLOURED_FRACTION).rename("coloured")


def colour_predictions(colour_runs: list[RunResult], grey_runs: list[RunResult], grey_data: StageData,
                       coloured: pd.Series, *, repeat: int) -> pd.DataFrame:
    """Per head-CT image of ``repeat``, out of fold: label, coloured, and the probability of hemorrhage
    from the grey model (``prob_grey``), the colour model on the file as stored (``prob_colour``) and
    the colour model on the file's grey version, its one channel repeated three times (``prob_colour_on_grey``)."""
    colour = oof_predictions(colour_runs, repeat=repeat)
    on_grey = []
    for result in colour_runs:
        if result.config["split"]["repeat"] != repeat:
            continue
        model, _ = load_model(result.run_dir)
        rows = prediction_table(result)
        images = images_of(grey_data, rows).expand(-1, 3, -1, -1)
        on_grey.append(rows[["image_id"]].assign(prob_colour_on_grey=predict_probs(model, images)[:, 1]))
    grey = oof_predictions(grey_runs, repeat=repeat)[["image_id", "prob"]].rename(columns={"prob": "prob_grey"})
    table = (colour[["image_id", "fold", "label", "prob"]].rename(columns={"prob": "prob_colour"})
             .merge(pd.concat(on_grey), on="image_id").merge(grey, on="image_id"))
    table.insert(3, "coloured", table["image_id"].map(coloured).eq(True))  # an id the audit did not see: not coloured
    return table.sort_values("image_id", ignore_index=True)


#: Columns of ``gradcam_colour.csv``.
COLOUR_COLUMNS = ["model", "input", "images", "n", "accuracy", "mean_prob_hemorrhage"]
#: The three ways a model meets an image in the colour experiment: (model, input, probability column).
COLOUR_VIEWS = (("grey", "grey (as the study feeds it)", "prob_grey"),
                ("colour", "as stored (RGB)", "prob_colour"),
                ("colour", "grey version, repeated to RGB", "prob_colour_on_grey"))


def colour_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (0.5 threshold) and mean probability of hemorrhage of each view, on the visibly
    coloured images (all normal in the real set), the other normal images (the fair comparison:
    the same class) and the hemorrhage images."""
    subsets = (("visibly coloured", table["coloured"]), ("other normal", ~table["coloured"] & (table["label"] == 0)),
               ("hemorrhage", ~table["coloured"] & (table["label"] == 1)))
    rows = []
    for model, view, column in COLOUR_VIEWS:
        for images, part in ((name, table[where]) for name, where in subsets):
            correct = (part[column] >= 0.5).astype(int) == part["label"]
            rows.append({"model": model, "input": view, "images": images, "n": len(part),
                         "accuracy": float(correct.mean()) if len(part) else np.nan,
                         "mean_prob_hemorrhage": float(part[column].mean()) if len(part) else np.nan})
    return pd.DataFrame(rows, columns=COLOUR_COLUMNS)


#: The three maps of a coloured file, by their key in ``colour_cams``.
MAP_LABELS = {"colour": "colour model, RGB", "colour_on_grey": "colour model, grey version",
              "grey_model": "grey model"}


def colour_cams(table: pd.DataFrame, colour_runs: list[RunResult], grey_runs: list[RunResult],
                colour_data: StageData, grey_data: StageData, *, repeat: int, target_class: int = 0) -> dict:
    """Grad-CAM of ``target_class`` (0: normal) on the visibly coloured images of ``table``: the colour
    model on the file as stored and on its grey version, the grey model on the grey image; each by
    the run that tested the image. Returns rows, the RGB and grey images and the three maps."""
    ids = table.loc[table["coloured"], "image_id"]
    colour_rows = oof_predictions(colour_runs, repeat=repeat).set_index("image_id").loc[ids].reset_index()
    grey_rows = oof_predictions(grey_runs, repeat=repeat).set_index("image_id").loc[ids].reset_index()
    rgb, grey = images_of(colour_data, colour_rows), images_of(grey_data, grey_rows)
    return {"rows": colour_rows, "rgb": rgb, "grey": grey,
            "colour": explain_rows(colour_rows, rgb, target_class=target_class),
            "colour_on_grey": explain_rows(colour_rows, grey.expand(-1, 3, -1, -1), target_class=target_class),
            "grey_model": explain_rows(grey_rows, grey, target_class=target_class)}


def colour_cells(cams: dict, *, limit: int) -> dict:
    """Arguments of ``plots.cam_grid``: per coloured image (at most ``limit``), the file as stored and the
    three maps side by side."""
    cells: dict[str, list] = {"images": [], "cams": [], "titles": []}
    for i, row in cams["rows"].head(limit).iterrows():
        rgb, grey = cams["rgb"][i].numpy(), cams["grey"][i].numpy()
        cells["images"] += [rgb, rgb, grey, grey]
        cells["cams"] += [None, cams["colour"][i], cams["colour_on_grey"][i], cams["grey_model"][i]]
        cells["titles"] += [f"{row['image_id']} as stored", *MAP_LABELS.values()]
    return {**cells, "ncols": 4}


def colour_shares(cams: dict) -> pd.DataFrame:
    """Mean mass share of each of the three maps on the coloured pixels and in the head regions of the
    coloured images (columns: map, region, n, mass_share, area_share, ratio)."""
    regions = {**coloured_pixels(cams["rgb"]), **head_regions(cams["grey"])}
    parts = [mass_shares(cams[key], regions).assign(map=label) for key, label in MAP_LABELS.items()]
    table = pd.concat(parts, ignore_index=True)
    summary = table.groupby(["map", "region"], sort=False).agg(
        n=("image", "size"), mass_share=("mass_share", "mean"), area_share=("area_share", "mean")).reset_index()
    return summary.assign(ratio=summary["mass_share"] / summary["area_share"])


#: Pairs of maps compared on the coloured files: does taking the colour away move the colour model's
#: map, and does the colour model look where the grey model looks?
MAP_PAIRS = (("colour", "colour_on_grey"), ("colour", "grey_model"))


def map_agreement(cams: dict) -> pd.DataFrame:
    """Mean Pearson correlation, over the coloured files, between the pixels of two maps of the same
    file (1: the same place; 0: unrelated). Columns map_a, map_b, n, correlation."""
    rows = []
    for a, b in MAP_PAIRS:
        values = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(cams[a], cams[b])
                  if x.std() > 0 and y.std() > 0]
        rows.append({"map_a": MAP_LABELS[a], "map_b": MAP_LABELS[b], "n": len(values),
                     "correlation": float(np.mean(values)) if values else np.nan})
    return pd.DataFrame(rows, columns=["map_a", "map_b", "n", "correlation"])


# --------------------------------------------------------------------------- the text


def _lean(mass: float, area: float) -> str:
    """How a region's share of the map compares with its share of the image, in words."""
    if not np.isfinite(mass):
        return "cannot be measured (every map was empty)"
    ratio = mass / area if area else np.inf
    word = "more than" if ratio > 1.1 else "less than" if ratio < 0.9 else "about as much as"
    return f"{mass:.0%} of the map's mass on {area:.0%} of the image: {word} its area"


def regions_verdict(summary: pd.DataFrame, *, by_outcome: bool = True) -> str:
    """Markdown: where the head-CT maps lie, all arms and outcomes together; with ``by_outcome``, a
    line per outcome (arms averaged) for the interior and the background."""
    means = summary.groupby(["outcome", "region"])[["mass_share", "area_share"]].mean()
    if "all" not in means.index.get_level_values("outcome"):
        return "no maps to measure"
    every = means.loc["all"]
    text = ("Over all arms and every out-of-fold image, the head's interior gets "
            f"{_lean(*every.loc['interior'])}, the background {_lean(*every.loc['background'])}.")
    if not by_outcome:
        return text
    names = {"TP": "true positives", "FP": "false positives", "FN": "false negatives", "TN": "true negatives"}
    lines = [f"- **{outcome}** ({names[outcome]}): interior {_lean(*means.loc[(outcome, 'interior')])}; "
             f"background {_lean(*means.loc[(outcome, 'background')])}"
             for outcome in OUTCOMES if (outcome, "interior") in means.index]
    return text + " By outcome, arms averaged:\n\n" + "\n".join(lines)


def border_verdict(summary: pd.DataFrame) -> str:
    """Markdown: how much of the chest X-ray maps lies on the image's outer band, all and per outcome."""
    border = summary[summary["region"] == "border"].set_index("outcome")
    if "all" not in border.index:
        return "no maps to measure"
    text = f"the border gets {_lean(border.loc['all', 'mass_share'], border.loc['all', 'area_share'])}"
    by_outcome = [f"{o} {border.loc[o, 'mass_share']:.0%}" for o in ("TP", "FP", "FN") if o in border.index]
    return text + (" (by outcome: " + ", ".join(by_outcome) + ")" if by_outcome else "")


def colour_verdict(accuracy: pd.DataFrame, shares: pd.DataFrame) -> str:
    """Markdown: what the colour model does with the coloured files, against the grey model."""
    coloured = accuracy[accuracy["images"] == "visibly coloured"].set_index(["model", "input"])
    n = int(coloured["n"].iloc[0]) if len(coloured) else 0
    if n == 0:
        return "These data hold no visibly coloured head-CT file, so the colour shortcut cannot be shown here."
    grey_acc = coloured.loc[(COLOUR_VIEWS[0][0], COLOUR_VIEWS[0][1]), "accuracy"]
    stored, as_grey = (coloured.loc[(m, v), "accuracy"] for m, v, _ in COLOUR_VIEWS[1:])
    others = accuracy[accuracy["images"] == "other normal"].set_index(["model", "input"])["accuracy"]
    text = (f"On the {n} visibly coloured files, the grey model is right on {grey_acc:.0%}; the colour "
            f"model on {stored:.0%} of them as stored and on {as_grey:.0%} once they are turned grey. "
            f"On the other normal files the two models are right on {others.iloc[0]:.0%} and {others.iloc[1]:.0%}.")
    lost = round((stored - as_grey) * n)
    p_stored, p_grey = (coloured.loc[(m, v), "mean_prob_hemorrhage"] for m, v, _ in COLOUR_VIEWS[1:])
    if lost >= 1:
        text += (f" Taking the colour away costs the colour model {lost} of the {n} files, and its mean probability "
                 f"of hemorrhage on them rises from {p_stored:.2f} to {p_grey:.2f}: part of what it knows about "
                 "these files is their colour.")
    else:
        text += (f" Taking the colour away changes none of its answers on these files (mean probability of "
                 f"hemorrhage {p_stored:.2f} as stored, {p_grey:.2f} grey): it did not lean on the colour.")
    on_colour = shares[shares["region"] == "coloured"].set_index("map")
    if len(on_colour) and np.isfinite(on_colour["mass_share"]).all():
        rgb = on_colour.loc[MAP_LABELS["colour"]]
        text += (f" Its map (class *normal*) puts {rgb['mass_share']:.0%} of its mass on the coloured "
                 f"pixels, which cover {rgb['area_share']:.0%} of these images; the grey model's map "
                 f"puts {on_colour.loc[MAP_LABELS['grey_model'], 'mass_share']:.0%} there.")
        interior = shares.loc[shares["region"] == "interior", "area_share"]
        if len(interior) and rgb["area_share"] >= 0.8 * interior.iloc[0]:
            text += (" The tint lies on the brain itself (the coloured pixels cover about as much of the image as "
                     "the head's interior), so where a map lies cannot tell colour from anatomy; the grey "
                     "versions can.")
    return text


# --------------------------------------------------------------------------- the chapter


@dataclass(frozen=True)
class ExplainPlan:
    """What the explanations chapter shows for one profile."""

    repeats: tuple[int, ...] = (0,)  # protocol repeats whose out-of-fold images are explained (pooled)
    colour_repeat: int | None = None  # the repeat whose imagenet folds are trained again in colour (None: repeats[0])
    arms: tuple[str, ...] = tuple(ARM_INIT)  # arms explained, in this order
    n_examples: int = 4  # images per arm and outcome (TP, FP, FN) in the grids
    n_colour: int = 6  # visibly coloured head-CT files shown with their maps (all are measured)

    def __post_init__(self):
        if not self.repeats:
            raise ValueError("repeats=(): expected at least one protocol repeat to explain")
        unknown = [a for a in self.arms if a not in ARM_INIT]
        if unknown or not self.arms:
            raise ValueError(f"arms={self.arms}; expected some of {list(ARM_INIT)}")
        if self.n_examples < 1 or self.n_colour < 0:
            raise ValueError(f"n_examples={self.n_examples}, n_colour={self.n_colour}; expected >= 1 and >= 0")

    @property
    def colour(self) -> int:
        """The repeat trained again in colour."""
        return self.repeats[0] if self.colour_repeat is None else self.colour_repeat


PLANS: dict[str, ExplainPlan] = {"smoke": ExplainPlan(), "quick": ExplainPlan(), "paper": ExplainPlan()}


def get_plan(profile: str, **changes: Any) -> ExplainPlan:
    """The explanations plan of ``profile`` with ``changes`` (None values ignored; lists become tuples,
    a single repeat or arm a one-element tuple)."""
    if profile not in PLANS:
        raise ValueError(f"no explanations plan for profile {profile!r}; expected one of {sorted(PLANS)}")
    changes = {k: v for k, v in changes.items() if v is not None}
    for key in ("repeats", "arms"):
        if key in changes:
            value = changes[key]
            changes[key] = (value,) if isinstance(value, (int, str)) else tuple(value)
    return dataclasses.replace(PLANS[profile], **changes)


@dataclass
class ExplainResult:
    """The runs the chapter explains, their data, maps and measures."""

    profile: Profile
    plan: ExplainPlan
    fold_runs: list[RunResult]  # the plan's arms on every fold of the plan's repeats (grey)
    grey_runs: list[RunResult]  # the imagenet arm's folds of the colour repeat (grey): the colour runs' pairs
    colour_runs: list[RunResult]  # the same folds trained on RGB images
    stage1_run: RunResult  # the bridge of the first explained repeat: the chest X-ray maps
    head: StageData  # the head-CT images, grey
    head_regions: dict[str, np.ndarray]  # interior, rim and background of every head-CT image
    oof: pd.DataFrame  # every out-of-fold prediction explained (prediction_table rows)
    oof_cams: np.ndarray  # their hemorrhage maps, in row order
    head_summary: pd.DataFrame  # cam_summary of the head-CT maps
    picked: pd.DataFrame  # the examples shown (index into oof)
    chest_pred: pd.DataFrame  # the bridge's test predictions
    chest_images: torch.Tensor
    chest_cams: np.ndarray
    chest_summary: pd.DataFrame
    chest_picked: pd.DataFrame
    colour_table: pd.DataFrame  # colour_predictions
    colour_maps: dict  # colour_cams

    @property
    def oof_images(self) -> torch.Tensor:
        return images_of(self.head, self.oof)

    @property
    def bridge_seed(self) -> int:
        return protocol.bridge_seed(self.profile, self.plan.repeats[0])

    def runs(self) -> list[RunResult]:
        """Every run the chapter read, each once (for the provenance)."""
        found: dict[str, RunResult] = {}
        for run in [*self.fold_runs, *self.grey_runs, self.stage1_run, *self.colour_runs]:
            found.setdefault(str(run.run_dir), run)
        return list(found.values())


def run(profile: Profile, plan: ExplainPlan, *, executor: str | executors.Executor = "local",
        workers: int | None = None, force: bool = False, data_dir: str | Path | None = None) -> ExplainResult:
    """Train (or read back) what the chapter explains, then make and measure the maps.

    The protocol's fold runs of the plan's arms and repeats and the bridge of the first repeat are
    trained when missing (``force`` never retrains them); the colour fold runs are trained when
    missing, again with ``force``. Every image is explained by the run that tested it."""
    folds, _ = protocol.target_folds(profile, data_dir=data_dir)
    known = sorted(int(r) for r in folds["repeat"].unique())
    missing = sorted({*plan.repeats, plan.colour} - set(known))
    if missing:
        raise ValueError(f"repeat(s) {missing} are not in the folds (repeats {known})")
    bridge = protocol.bridge_spec(profile, seed=protocol.bridge_seed(profile, plan.repeats[0]), data_dir=data_dir)
    with executors.get_executor(executor, workers=workers) as ex:
        fold_runs = protocol.run_protocol(profile, arms=plan.arms, data_dir=data_dir, executor=ex,
                                          folds=folds[folds["repeat"].isin(plan.repeats)])
        grey_runs = protocol.run_protocol(profile, arms=("imagenet",), data_dir=data_dir, executor=ex,
                                          folds=folds[folds["repeat"] == plan.colour])
        (stage1_run,) = ex.run([bridge], description="bridge run")
        colour_runs = run_colour_folds(profile, repeat=plan.colour, folds=folds, data_dir=data_dir, executor=ex,
                                       force=force)

    head = stages.prepare_data(grey_runs[0].spec)
    colour_head = stages.prepare_data(colour_runs[0].spec)
    chest = stages.prepare_data(bridge)

    oof = pd.concat([oof_predictions(fold_runs, repeat=r) for r in plan.repeats], ignore_index=True)
    oof_images = images_of(head, oof)
    oof_cams = explain_rows(oof, oof_images, target_class=1)
    head_summary = cam_summary(region_table(oof, oof_cams, head_regions(oof_images)), dataset="head_ct")

    chest_pred = prediction_table(stage1_run)
    chest_images = images_of(chest, chest_pred)
    chest_cams = explain_rows(chest_pred, chest_images, target_class=1)
    chest_summary = cam_summary(region_table(chest_pred, chest_cams, border_regions(chest_images)),
                                dataset="chest_xray")

    colour_table = colour_predictions(colour_runs, grey_runs, head, visibly_coloured(head), repeat=plan.colour)
    colour_maps = colour_cams(colour_table, colour_runs, grey_runs, colour_head, head, repeat=plan.colour)
    return ExplainResult(
        profile=profile, plan=plan, fold_runs=fold_runs, grey_runs=grey_runs, colour_runs=colour_runs,
        stage1_run=stage1_run, head=head, head_regions=head_regions(head.images), oof=oof, oof_cams=oof_cams,
        head_summary=head_summary, picked=pick_examples(oof, n_examples=plan.n_examples), chest_pred=chest_pred,
        chest_images=chest_images, chest_cams=chest_cams, chest_summary=chest_summary,
        chest_picked=pick_examples(chest_pred, n_examples=plan.n_examples), colour_table=colour_table,
        colour_maps=colour_maps)


def tables(result: ExplainResult) -> dict[str, pd.DataFrame]:
    """The chapter's tables: where the maps lie (both datasets), the colour experiment's accuracy and maps."""
    return {"gradcam_summary.csv": pd.concat([result.head_summary, result.chest_summary], ignore_index=True),
            "gradcam_colour.csv": colour_accuracy(result.colour_table),
            "gradcam_colour_maps.csv": colour_shares(result.colour_maps)}


def summary_view(summary: pd.DataFrame, *, values: tuple[str, ...] = ("mass_share", "ratio")) -> pd.DataFrame:
    """A summary (``cam_summary``) for the page: one row per arm and outcome (per outcome when it holds one
    arm), one column per measure and region."""
    index = ["arm", "outcome"] if summary["arm"].nunique() > 1 else ["outcome"]
    return summary.pivot_table(index=index, columns="region", values=list(values), sort=False)


def _repeats_text(repeats: tuple[int, ...]) -> int | str:
    return repeats[0] if len(repeats) == 1 else ", ".join(str(r) for r in repeats)


def glue_values(result: ExplainResult, tables_: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Every value the chapter's prose glues (the markdown ones as ``IPython.display.Markdown``)."""
    from IPython.display import Markdown

    profile, plan = result.profile, result.plan
    summary = tables_["gradcam_summary.csv"]
    head_summary = summary[summary["dataset"] == "head_ct"]
    chest_summary = summary[summary["dataset"] == "chest_xray"]
    every = head_summary[(head_summary["outcome"] == "all") & (head_summary["region"] == "interior")].set_index("arm")
    table = result.colour_table
    agreement = map_agreement(result.colour_maps)
    return {
        "repeat": _repeats_text(plan.repeats),
        "colour_repeat": plan.colour,
        "image_size": profile.image_size,
        "cam_side": layer_side(profile.model, profile.image_size),
        "rim_px": max(1, round(RIM_FRACTION * profile.image_size)),
        "n_head": len(result.head.images),
        "n_no_background": int((result.head_regions["background"].mean(axis=(1, 2)) < 0.03).sum()),
        "n_examples": plan.n_examples,
        **{f"interior_{arm}": float(every["mass_share"].get(arm, np.nan)) for arm in ARM_INIT},
        "interior_area": float(every["area_share"].mean()),
        "regions_verdict": Markdown(regions_verdict(head_summary)),
        "regions_headline": Markdown(regions_verdict(head_summary, by_outcome=False)),
        "bridge_seed": result.bridge_seed,
        "n_chest_test": len(result.chest_pred),
        "border_percent": round(100 * BORDER_FRACTION),
        "chest_verdict": Markdown(border_verdict(chest_summary)),
        "n_coloured": int(table["coloured"].sum()),
        "n_coloured_normal": int((table["coloured"] & (table["label"] == 0)).sum()),
        "n_colour_runs": len(result.colour_runs),
        "n_colour_images": len(table),
        "colour_model_accuracy": float(((table["prob_colour"] >= 0.5) == table["label"]).mean()),
        "grey_model_accuracy": float(((table["prob_grey"] >= 0.5) == table["label"]).mean()),
        "colour_verdict": Markdown(colour_verdict(tables_["gradcam_colour.csv"], tables_["gradcam_colour_maps.csv"])),
        "n_colour": plan.n_colour,
        "agree_own": float(agreement["correlation"].iloc[0]),
        "agree_models": float(agreement["correlation"].iloc[1]),
    }


def _percent(value: float) -> str:
    return f"{value:.0%}" if np.isfinite(value) else "not measurable (every map empty)"


def verdict(result: ExplainResult, tables_: dict[str, pd.DataFrame]) -> str:
    """Markdown: the chapter's findings, one bullet each (head CT, chest X-ray, the colour shortcut)."""
    summary = tables_["gradcam_summary.csv"]
    head_summary = summary[summary["dataset"] == "head_ct"]
    every = head_summary[(head_summary["outcome"] == "all") & (head_summary["region"] == "interior")].set_index("arm")
    shares = ", ".join(f"{arm} {_percent(every.loc[arm, 'mass_share'])}" for arm in result.plan.arms
                       if arm in every.index)
    chest = border_verdict(summary[summary["dataset"] == "chest_xray"])
    colour = colour_verdict(tables_["gradcam_colour.csv"], tables_["gradcam_colour_maps.csv"])
    return "\n".join([
        f"- Head CT: {regions_verdict(head_summary, by_outcome=False)} Per arm, the interior's share: {shares}.",
        f"- Chest X-ray, stage 1: {chest}.",
        f"- The colour shortcut: {colour}",
    ])


# --------------------------------------------------------------------------- figures

#: What a map's colour says (``pytorch_grad_cam`` scales each map to its own [0, 1]).
CAM_SCALE_LABEL = "Grad-CAM, each map scaled to [0, 1]"


def cam_figure(cells: dict, *, title: str, colour_bar: bool = True):
    """``plots.cam_grid`` of ``cells`` with a colour bar of the maps' scale (none when no cell has a map).

    The colour bar is added here until ``plots.cam_grid`` draws one itself (the change is described
    in the refactoring notes); the maps use its colour map (jet) on [0, 1]."""
    import matplotlib as mpl

    from ..report import plots

    fig = plots.cam_grid(**cells, title=title)
    if colour_bar and any(cam is not None for cam in cells["cams"]):
        mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap="jet")
        bar = fig.colorbar(mappable, ax=fig.axes, fraction=0.025, pad=0.02)
        bar.set_label(CAM_SCALE_LABEL, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


def region_figure(result: ExplainResult, *, limit: int = 12):
    """The head regions (interior, rim, background) of the first ``limit`` head-CT images."""
    regions = {k: v[:limit] for k, v in result.head_regions.items()}
    return cam_figure(region_cells(result.head.images[:limit], regions, limit=limit),
                      title="Head regions of the first images", colour_bar=False)


def arm_figures(result: ExplainResult) -> dict[str, Any]:
    """Per arm shown: its most confident TP, FP and FN out of fold, with their hemorrhage maps."""
    images, n = result.oof_images, result.plan.n_examples
    picked = result.picked
    return {arm: cam_figure(grid_cells(picked[picked["arm"] == arm], images, result.oof_cams, n_examples=n),
                            title=f"{arm}: Grad-CAM for hemorrhage, out of fold")
            for arm in result.plan.arms if arm in set(picked["arm"])}


def chest_figure(result: ExplainResult):
    """The bridge's most confident TP, FP and FN on the official chest X-ray test split."""
    return cam_figure(grid_cells(result.chest_picked, result.chest_images, result.chest_cams,
                                 n_examples=result.plan.n_examples),
                      title="Stage 1: Grad-CAM for pneumonia, official test split")


def colour_figure(result: ExplainResult):
    """The visibly coloured files (at most ``plan.n_colour``) with the colour and the grey models' maps."""
    return cam_figure(colour_cells(result.colour_maps, limit=result.plan.n_colour),
                      title="Visibly coloured normal files: colour model vs grey model")
