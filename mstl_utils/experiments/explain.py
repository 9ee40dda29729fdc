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
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import ndimage
from torch import nn

from ..data import audit
from ..models import registry as models
from . import protocol
from ..engine import stages, train
from ..data.batches import TensorBatches
from ..core.config import Profile
from ..data.datasets import StageData
from ..engine.stages import StageResult

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


def prediction_table(result: StageResult) -> pd.DataFrame:
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


def oof_predictions(fold_runs: list[StageResult], *, repeat: int) -> pd.DataFrame:
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


def run_colour_folds(profile: Profile, *, repeat: int = 0, folds: pd.DataFrame | None = None,
                     data_dir: str | Path | None = None, weights_dir: str | Path | None = None,
                     runs_root: str | Path | None = None, device: str = "auto", force: bool = False,
                     workers: int | None = None) -> list[StageResult]:
    """Train (or reuse) the imagenet arm's folds of ``repeat`` on RGB images (``in_chans=3``,
    run name ``COLOUR_RUN``): the same folds, seeds and settings as the grey runs, only the input differs."""
    if folds is None:
        folds, _ = protocol.head_ct_folds(profile, data_dir=data_dir, runs_root=runs_root)
    runs = [r for r in protocol.plan(profile, folds, arms=("imagenet",)) if r.split.repeat == repeat]
    if not runs:
        raise ValueError(f"repeat {repeat} is not in the folds (repeats {sorted(folds['repeat'].unique())})")
    jobs = [dict(name=COLOUR_RUN, profile=profile, stage="stage2", init_from=r.init_from, seed=r.seed,
                 split=r.split, in_chans=3, force=force, data_dir=data_dir, weights_dir=weights_dir,
                 runs_root=runs_root, device=device) for r in runs]
    return stages.run_stages(jobs, workers=workers, device=device, description="colour fold runs")


def visibly_coloured(stage_data: StageData) -> pd.Series:
    """Per image id: is the file visibly coloured, by the data audit's rule (at full resolution)."""
    props = audit.image_properties(stage_data.table[["path", "label", "group", "split"]])
    return (props.set_index("group")["colour_fraction"] > audit.VISIBLY_COLOURED_FRACTION).rename("coloured")


def colour_predictions(colour_runs: list[StageResult], grey_runs: list[StageResult], grey_data: StageData,
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


def colour_cams(table: pd.DataFrame, colour_runs: list[StageResult], grey_runs: list[StageResult],
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
