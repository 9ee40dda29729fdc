"""Figures for the book. Functions return matplotlib figures; nothing here trains."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn import metrics as skm


def learning_curves(histories: dict[str, pd.DataFrame], *, title: str = "") -> plt.Figure:
    """Train/validation loss and accuracy per epoch; one colour per run."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    palette = sns.color_palette("colorblind", len(histories))
    for colour, (label, history) in zip(palette, histories.items()):
        for ax, metric in zip(axes, ("loss", "accuracy")):
            ax.plot(history["epoch"], history[f"train_{metric}"], "-o", color=colour, ms=3, label=f"{label} train")
            ax.plot(history["epoch"], history[f"val_{metric}"], "--s", color=colour, ms=3, label=f"{label} validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...], *, title: str = "") -> plt.Figure:
    """Confusion matrix with counts."""
    matrix = skm.confusion_matrix(y_true, y_pred, labels=range(len(class_names)))
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=class_names, yticklabels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], *, title: str = "") -> plt.Figure:
    """ROC curves from {label: (y_true, score)}."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for label, (y_true, score) in curves.items():
        fpr, tpr, _ = skm.roc_curve(y_true, score)
        ax.plot(fpr, tpr, label=f"{label} (AUC {skm.roc_auc_score(y_true, score):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, titles: list[str], *, ncols: int = 6, title: str = "") -> plt.Figure:
    """Grey images ``[N, 1, H, W]`` (uint8) in a grid with a title per image."""
    nrows = int(np.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.7 * ncols, 1.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, text in zip(axes.ravel(), images, titles):
        ax.imshow(np.asarray(image)[0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(text, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def class_counts(counts: pd.DataFrame, *, title: str = "") -> plt.Figure:
    """Bar chart of a (dataset, part, class, n) table."""
    grid = sns.catplot(data=counts, x="part", y="n", hue="class", col="dataset", kind="bar",
                       sharey=False, height=3.2, aspect=1.1, palette="colorblind")
    grid.figure.suptitle(title)
    grid.figure.tight_layout()
    return grid.figure


def arm_comparison(table: pd.DataFrame, *, metric: str = "accuracy", reference: dict[str, float] | None = None) -> plt.Figure:
    """Per-seed ``metric`` of each arm (points) with their mean; optional reference lines (the paper)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    sns.stripplot(data=table, x="arm", y=metric, hue="arm", palette="colorblind", size=7, ax=ax, legend=False)
    sns.pointplot(data=table, x="arm", y=metric, color="black", markers="_", errorbar=None, ax=ax, linestyles="none")
    for label, value in (reference or {}).items():
        ax.axhline(value, ls=":", color="grey")
        ax.text(ax.get_xlim()[1], value, f" {label}", va="center", fontsize=7, color="grey")
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    return fig


def oof_roc(oof: pd.DataFrame, arms: list[str], *, title: str = "") -> plt.Figure:
    """ROC curve of each arm's pooled out-of-fold predictions (``stage2_oof.csv``). For a target of more
    than 2 classes, the micro-averaged one-vs-rest curve: every (image, class) pair counted as one decision."""
    curves = {}
    for arm in arms:
        rows = oof[oof["arm"] == arm]
        if "prob" in rows:
            curves[arm] = (rows["label"].to_numpy(), rows["prob"].to_numpy())
        else:
            probs = rows[[c for c in rows.columns if c.startswith("prob_")]].to_numpy()
            onehot = np.eye(probs.shape[1], dtype=int)[rows["label"].to_numpy().astype(int)]
            curves[arm] = (onehot.ravel(), probs.ravel())
    return roc(curves, title=title if "prob" in oof else f"{title} (one-vs-rest, micro-averaged)")


def calibration(oof: pd.DataFrame, arms: list[str], *, bins: int = 10, title: str = "") -> plt.Figure:
    """Reliability diagram of each arm's pooled out-of-fold probabilities: the observed share of positives
    against the mean predicted probability, in ``bins`` equal-width bins (a calibrated arm follows the
    diagonal). For more than 2 classes: the arg-max class's probability against how often it is right."""
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(4.2, 4))
    colours = dict(zip(arms, sns.color_palette("colorblind", len(arms))))
    for arm in arms:
        rows = oof[oof["arm"] == arm]
        if "prob" in rows:
            hit, score = rows["label"].to_numpy(), rows["prob"].to_numpy()
        else:
            probs = rows[[c for c in rows.columns if c.startswith("prob_")]].to_numpy()
            hit, score = (probs.argmax(1) == rows["label"].to_numpy()).astype(int), probs.max(1)
        observed, predicted = calibration_curve(hit, score, n_bins=bins, strategy="uniform")
        ax.plot(predicted, observed, "o-", ms=3, color=colours[arm], label=arm)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("mean predicted probability" if "prob" in oof else "arg-max probability")
    ax.set_ylabel("observed share positive" if "prob" in oof else "share correct")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def effect_by_size(effects: pd.DataFrame, *, metric: str = "accuracy", title: str = "") -> plt.Figure:
    """The bridge's effect (``mean_diff`` with its interval) against the target's training size, log scale;
    the shaded band is each size's minimum detectable difference around zero (``target_size_effects.csv``)."""
    rows = effects[effects["metric"] == metric].sort_values("size")
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.fill_between(rows["size"], -100 * rows["mdd"], 100 * rows["mdd"], color="grey", alpha=0.15,
                    label="not detectable (80 % power)")
    ax.errorbar(rows["size"], 100 * rows["mean_diff"], yerr=[100 * (rows["mean_diff"] - rows["ci_low"]),
                                                            100 * (rows["ci_high"] - rows["mean_diff"])],
                fmt="o-", capsize=4, color="black", label="multistage - imagenet, 95 % CI")
    ax.axhline(0, ls=":", color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xticks(rows["size"], [str(n) for n in rows["size"]])
    ax.set_xlabel("training images per fold run")
    ax.set_ylabel(f"{metric} difference (points)")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def answer(summary: pd.DataFrame, *, reference: dict[str, float] | None = None, order: list[str] | None = None,
           metric: str = "accuracy") -> plt.Figure:
    """Each arm's mean ``metric`` with its interval (rows of ``analysis.arm_summary``), the paper's values beside."""
    rows = summary[summary["metric"] == metric].set_index("arm")
    order = [a for a in (order or list(rows.index)) if a in rows.index]
    fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(order) + 1.4))
    colours = dict(zip(order, sns.color_palette("colorblind", len(order))))
    for y, arm in enumerate(order):
        row = rows.loc[arm]
        ax.errorbar(row["mean"], y, xerr=[[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]], fmt="o",
                    color=colours[arm], capsize=4, lw=2)
        ax.text(row["ci_high"] + 0.005, y, f" {row['mean']:.3f}", va="center", fontsize=8)
        if reference and arm in reference:
            ax.plot(reference[arm], y, marker="D", color="black", mfc="white", ms=7, ls="none",
                    label="the paper's result" if arm == next(a for a in order if a in reference) else None)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    low = min([rows.loc[order, "ci_low"].min(), *(reference or {}).values()])
    ax.set_xlim(low - 0.03, min(1.0, rows.loc[order, "ci_high"].max()) + 0.06)  # room for the value labels
    ax.set_xlabel(f"head-CT test {metric} (mean and 95 % interval over the folds)")
    if reference:
        ax.legend(loc="lower left", fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def fold_distributions(folds: pd.DataFrame, *, metrics: tuple[str, ...] = ("accuracy", "auc"),
                       order: list[str] | None = None) -> plt.Figure:
    """One point per fold and arm (box behind), one panel per metric: the spread, not only the mean."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sns.boxplot(data=folds, x="arm", y=metric, order=order, color="0.92", showfliers=False, ax=ax)
        sns.stripplot(data=folds, x="arm", y=metric, order=order, hue="repeat", palette="colorblind", size=5,
                      jitter=0.18, alpha=0.85, ax=ax, legend=ax is axes[0][-1])
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig


def paired_differences(differences: pd.DataFrame, tests: pd.DataFrame, *, metric: str = "accuracy") -> plt.Figure:
    """Per-fold paired differences (points) with the corrected 95 % interval (bar) for each pair."""
    pairs = list(pd.unique(differences["pair"]))
    fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(pairs) + 1.4))
    sns.stripplot(data=differences, y="pair", x="difference", order=pairs, color="0.55", size=4, jitter=0.15, ax=ax)
    for i, pair in enumerate(pairs):
        a, b = pair.split(" - ")
        row = tests[(tests["arm_a"] == a) & (tests["arm_b"] == b) & (tests["metric"] == metric)].iloc[0]
        ax.errorbar(row["mean_diff"], i, xerr=[[row["mean_diff"] - row["ci_low"]], [row["ci_high"] - row["mean_diff"]]],
                    fmt="o", color="black", capsize=4, ms=6)
    ax.axvline(0, ls=":", color="grey")
    ax.set_xlabel(f"difference in {metric} (arm_a - arm_b); bar: mean with corrected 95 % CI")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


def confusion_grid(tables: dict[str, tuple[np.ndarray, np.ndarray]], class_names: tuple[str, ...], *,
                   title: str = "") -> plt.Figure:
    """One confusion matrix per entry of {label: (y_true, y_pred)}, side by side."""
    fig, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 3.3), squeeze=False)
    for ax, (label, (y_true, y_pred)) in zip(axes[0], tables.items()):
        matrix = skm.confusion_matrix(y_true, y_pred, labels=range(len(class_names)))
        sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                    xticklabels=class_names, yticklabels=class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true" if ax is axes[0][0] else "")
        ax.set_title(label)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def mean_learning_curves(histories: pd.DataFrame, *, title: str = "") -> plt.Figure:
    """Mean train/validation loss and accuracy per epoch and arm, with a 95 % band over the fold runs."""
    long = histories.melt(id_vars=["arm", "epoch"], value_vars=["train_loss", "val_loss", "train_accuracy", "val_accuracy"])
    long["part"] = long["variable"].str.split("_").str[0].map({"train": "train", "val": "validation"})
    long["metric"] = long["variable"].str.split("_", n=1).str[1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        sns.lineplot(data=long[long["metric"] == metric], x="epoch", y="value", hue="arm", style="part",
                     palette="colorblind", errorbar=("ci", 95), ax=ax, legend=ax is axes[1])
        ax.set_ylabel(metric)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def colour_gallery(paths: list[str], titles: list[str], *, ncols: int = 6, title: str = "") -> plt.Figure:
    """Files as stored (colour kept), in a grid: to show what a grey channel removes."""
    from PIL import Image

    nrows = max(1, int(np.ceil(len(paths) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.7 * ncols, 1.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, path, text in zip(axes.ravel(), paths, titles):
        with Image.open(path) as img:
            ax.imshow(np.asarray(img.convert("RGB")))
        ax.set_title(text, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def throughput(table: pd.DataFrame, *, title: str = "") -> plt.Figure:
    """Images per second of each benchmark row (``benchmark.csv``), one colour per measurement."""
    rows = table[table["measurement"] != "decoding"]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.2))
    sns.barplot(data=rows, y="variant", x="img_per_s", hue="measurement", dodge=False, palette="colorblind", ax=ax)
    for container in ax.containers:  # each bar labelled with its own length, whatever the drawing order
        ax.bar_label(container, fmt=" %.0f", fontsize=8)
    ax.set_xlabel("training images per second")
    ax.set_ylabel("")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), title="measurement")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def cam_grid(images: list, cams: list, titles: list[str], *, ncols: int = 4, row_labels: list[str] | None = None,
             title: str = "", alpha: float = 0.45) -> plt.Figure:
    """Images ``[C, H, W]`` uint8 (C = 1 grey, 3 RGB) with their Grad-CAM maps ``[H, W]`` in [0, 1]
    laid over them, in a grid; a ``None`` map shows the image alone, a ``None`` image leaves the cell
    empty. ``row_labels`` name the rows (e.g. TP, FP, FN)."""
    ncols = max(1, min(ncols, len(images)))
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.1 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
    for ax, image, cam, text in zip(axes.ravel(), images, cams, titles):
        if image is None:
            continue
        image = np.asarray(image)
        if image.shape[0] == 1:
            ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image.transpose(1, 2, 0))
        if cam is not None:
            ax.imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=alpha)
        ax.set_title(text, fontsize=7)
    for ax, label in zip(axes[:, 0], row_labels or []):
        ax.set_ylabel(label, fontsize=10)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pareto(table: pd.DataFrame, *, costs: tuple[str, ...] = ("macs", "cpu_latency_ms"), value: str = "accuracy_mean",
           front: dict[str, pd.Series] | None = None, title: str = "") -> plt.Figure:
    """Accuracy (with its interval) against each cost on a log axis, one marker per arm; the models
    on each cost's Pareto front (``front[cost]``, True = on it) are joined by a line."""
    labels = {"macs": "multiply-accumulates per image", "cpu_latency_ms": "CPU latency, batch 1 (ms)",
              "params": "parameters", "size_mb": "checkpoint size (MB)"}
    fig, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 4), squeeze=False)
    arms = list(dict.fromkeys(table["arm"]))
    palette = dict(zip(arms, sns.color_palette("colorblind", len(arms))))
    for ax, cost in zip(axes[0], costs):
        for arm, group in table.groupby("arm", sort=False):
            err = np.vstack([group[value] - group["accuracy_ci_low"], group["accuracy_ci_high"] - group[value]])
            ax.errorbar(group[cost], group[value], yerr=err, fmt="o", color=palette[arm], capsize=3, label=arm)
            for _, row in group.iterrows():
                ax.annotate(row["label"], (row[cost], row[value]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if front is not None:
            on = table[front[cost]].sort_values(cost)
            ax.plot(on[cost], on[value], ":", color="grey", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(labels.get(cost, cost))
        ax.set_ylabel("head-CT accuracy (mean over folds, 95 % CI)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def cost_bars(costs: pd.DataFrame, *, columns: tuple[str, ...] = ("params", "macs", "cpu_latency_ms", "train_img_per_s"),
              title: str = "") -> plt.Figure:
    """One horizontal bar chart per cost column, a bar per model, coloured by family."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 0.32 * len(costs) + 1.2), sharey=True)
    families = list(dict.fromkeys(costs["family"]))
    palette = dict(zip(families, sns.color_palette("colorblind", len(families))))
    ordered = costs.sort_values("macs")
    for ax, column in zip(np.atleast_1d(axes), columns):
        ax.barh(ordered["label"], ordered[column], color=[palette[f] for f in ordered["family"]])
        ax.set_xscale("log")
        ax.set_xlabel(COST_LABELS.get(column, column))
        ax.tick_params(axis="x", labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[f]) for f in families]
    np.atleast_1d(axes)[-1].legend(handles, families, fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


#: Readable axis labels of the cost columns (the review found raw column names on the bars).
COST_LABELS = {"params": "parameters", "macs": "multiply-accumulates per image", "cpu_latency_ms": "CPU latency, batch 1 (ms)",
               "train_img_per_s": "training images per second", "size_mb": "checkpoint size (MB)"}


def pruning_curves(summary: pd.DataFrame, folds: pd.DataFrame) -> plt.Figure:
    """Accuracy (mean with t interval over folds) and mean AUC against sparsity, one line per pruning method,
    one row per model; the dense model's interval as a grey band (``pruning.csv``, ``pruning_folds.csv``)."""
    model_names = list(pd.unique(summary["model"]))
    fig, axes = plt.subplots(len(model_names), 2, figsize=(10, 3.6 * len(model_names)), squeeze=False)
    methods = [m for m in pd.unique(summary["method"]) if m != "dense"]
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    for row, model in zip(axes, model_names):
        rows = summary[summary["model"] == model]
        dense = rows[rows["method"] == "dense"].iloc[0]
        for ax, metric in zip(row, ("accuracy", "auc")):
            column = f"{metric}_mean"
            ax.axhline(dense[column], color="black", lw=1)
            ax.plot([0], [dense[column]], "ks", ms=6, label="dense")
            if metric == "accuracy":
                ax.axhspan(dense["accuracy_ci_low"], dense["accuracy_ci_high"], color="0.88", label="dense 95 % CI")
            points = folds[(folds["model"] == model) & (folds["method"] != "dense")]
            for method in methods:
                line = rows[rows["method"] == method].sort_values("sparsity")
                if line.empty:
                    continue
                x = 100 * line["sparsity"]
                ax.plot(x, line[column], "-o" if len(line) > 1 else "D", color=palette[method], ms=5, label=method)
                if metric == "accuracy":
                    ax.fill_between(x, line["accuracy_ci_low"], line["accuracy_ci_high"], color=palette[method],
                                    alpha=0.12, lw=0)
                mine = points[points["method"] == method]
                ax.scatter(100 * mine["sparsity"], mine[metric], color=palette[method], s=8, alpha=0.35)
            ax.set_xlabel("eligible weights pruned (%)")
            ax.set_ylabel(f"test {metric} ({model})")
        row[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
