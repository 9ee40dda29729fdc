"""Transfer chains of any length, the first paper's "more stages": ImageNet -> bridge 1 -> ... -> head CT.

A chain is written as the starting weights followed by the datasets fine-tuned on, in
order, e.g. ``("imagenet", "chest_xray3", "chest_xray", "head_ct")``. Every link but the
last is a bridge stage: the profile's stage-1 settings with the link's dataset, started
from the previous link. The last link is the target, trained and tested on every fold
of the head-CT protocol (the profile's stage-2 settings), so that a chain is paired
fold by fold with the protocol's arms. A link's run is named by the chain up to it
(``chain_imagenet-chest_xray3``, ``chain_imagenet-chest_xray3-chest_xray``): chains that
share a beginning share its runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.config import INIT_CHOICES, Profile
from ..data import datasets as data_mod
from ..engine import executors
from ..engine.lifecycle import RunResult
from ..engine.spec import RunSpec
from ..report import analysis
from . import protocol

#: The paper's own chain, as a chain.
PAPER_CHAIN = ("imagenet", "chest_xray", "head_ct")
#: The dataset every chain ends on: the protocol's folds are head-CT folds.
TARGET = "head_ct"


@dataclass(frozen=True)
class ChainPlan:
    """What the chain chapter runs for one profile."""

    chain: str = "imagenet -> chest_xray3 -> chest_xray -> head_ct"  # the start, then the datasets in order
    seeds: tuple[int, ...] = (0,)  # seeds of the bridge links; repeat r starts from a chain of its own (protocol.repeat_seed)


PLANS: dict[str, ChainPlan] = {"smoke": ChainPlan(), "quick": ChainPlan(), "paper": ChainPlan(seeds=(0, 1, 2))}


def get_plan(profile: str, **changes: Any) -> ChainPlan:
    """The chain plan of ``profile`` with ``changes`` (None values ignored; lists become tuples)."""
    if profile not in PLANS:
        raise ValueError(f"no chain plan for profile {profile!r}; expected one of {sorted(PLANS)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items() if v is not None}
    return dataclasses.replace(PLANS[profile], **changes)


def parse(chain: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A chain from a tuple or a string ``"imagenet -> chest_xray3 -> chest_xray -> head_ct"``
    (``,`` also separates); checked: known start, known datasets (or folders), head CT last."""
    if isinstance(chain, str):
        chain = [part for piece in chain.split("->") for part in piece.split(",")]
    links = tuple(link.strip() for link in chain if link.strip())
    if len(links) < 2 or links[0] not in INIT_CHOICES or links[-1] != TARGET:
        raise ValueError(f"chain {' -> '.join(links)!r}: expected {' or '.join(INIT_CHOICES)} first, then the datasets "
                         f"to fine-tune on in order, ending with {TARGET!r} (e.g. imagenet -> chest_xray -> head_ct)")
    for dataset in links[1:-1]:
        if dataset not in data_mod.DATASETS and not Path(dataset).expanduser().is_dir():
            raise ValueError(f"chain link {dataset!r} is neither a dataset name {sorted(data_mod.DATASETS)} "
                             "nor a folder of an ImageFolder dataset")
    return links


def _label(link: str) -> str:
    return Path(link).name if link not in data_mod.DATASETS and link not in INIT_CHOICES else link


def link_name(chain: tuple[str, ...], k: int) -> str:
    """The run name of link ``k`` (1 = the first dataset) of ``chain``."""
    return "chain_" + "-".join(_label(link) for link in chain[:k + 1])


def arm_name(chain: tuple[str, ...]) -> str:
    """The arm a chain's target runs form in the fold tables (their run name: ``cv_<arm>``)."""
    return link_name(chain, len(chain) - 2)


def link_specs(profile: Profile, chain: str | tuple[str, ...], *, seed: int,
               data_dir: str | Path | None = None) -> list[RunSpec]:
    """The bridge links of ``chain`` with ``seed``, first to last: each the profile's stage-1 settings on the
    link's dataset, starting from the link before it (the first from the chain's starting weights)."""
    chain = parse(chain)
    start: str | RunSpec = chain[0]
    specs = []
    for k, dataset in enumerate(chain[1:-1], start=1):
        start = RunSpec(name=link_name(chain, k), stage="stage1", profile=profile.replace(stage1={"dataset": dataset}),
                        init=start, seed=seed, data_dir=data_dir)
        specs.append(start)
    return specs


def fold_specs(profile: Profile, chain: str | tuple[str, ...], folds: pd.DataFrame, *, seeds: tuple[int, ...],
               data_dir: str | Path | None = None) -> list[RunSpec]:
    """The target on every protocol fold; repeat ``r`` starts from the last link of its own chain (seed
    ``protocol.repeat_seed(seeds, r)``), as the protocol's chained arms start from their own bridge."""
    chain = parse(chain)
    specs = []
    for split in protocol.splits(folds):
        seed = protocol.repeat_seed(seeds, split.repeat)
        links = link_specs(profile, chain, seed=seed, data_dir=data_dir)
        start = links[-1] if links else chain[0]
        specs.append(protocol.fold_spec(profile, "imagenet", split, start=start, name=f"cv_{arm_name(chain)}",
                                        data_dir=data_dir))
    return specs


@dataclass
class ChainResult:
    """A chain's bridge runs (per seed, in order), its target's fold runs and the protocol's arms beside them."""

    chain: tuple[str, ...]
    links: dict[int, list[RunResult]]  # seed -> the bridge links' runs, first to last
    folds: list[RunResult]  # the target's run on every protocol fold
    paired: list[RunResult]  # the protocol's imagenet and multistage runs on the same folds

    @property
    def arm(self) -> str:
        return arm_name(self.chain)

    def runs(self) -> list[RunResult]:
        return [r for seed_runs in self.links.values() for r in seed_runs] + self.folds


def run(profile: Profile, plan: ChainPlan, *, folds: pd.DataFrame | None = None, executor: str = "local",
        workers: int | None = None, force: bool = False, data_dir: str | Path | None = None) -> ChainResult:
    """The bridge links for each of the plan's seeds, then the target on every protocol fold, and the
    protocol's ``imagenet`` and ``multistage`` arms on the same folds (trained when missing)."""
    chain = parse(plan.chain)
    if folds is None:
        folds, _ = protocol.target_folds(profile, data_dir=data_dir)
    links = {seed: link_specs(profile, chain, seed=seed, data_dir=data_dir) for seed in plan.seeds}
    targets = fold_specs(profile, chain, folds, seeds=plan.seeds, data_dir=data_dir)
    paired = [r.spec for r in protocol.plan(profile, folds, arms=("imagenet", "multistage"), data_dir=data_dir)]
    with executors.using(executor, workers=workers) as ex:
        link_runs = {seed: ex.run(specs, description=f"chain links, seed {seed}") for seed, specs in links.items()}
        fold_runs = ex.run(targets, force=force, description="chain fold runs")
        paired_runs = ex.run(paired, description="protocol fold runs")
    return ChainResult(chain, link_runs, fold_runs, paired_runs)


#: Columns of ``chain_links.csv``: each bridge link's test result on its own dataset.
LINK_COLUMNS = ["chain", "link", "dataset", "init_from", "seed", "num_classes", "accuracy", "auc", "auc_macro",
                "balanced_accuracy", "n_test", "minutes"]


def link_table(result: ChainResult) -> pd.DataFrame:
    """``chain_links.csv``: each bridge link's test result on its own dataset."""
    rows = []
    for seed, runs in result.links.items():
        for k, run in enumerate(runs, start=1):
            m = run.metrics
            rows.append({"chain": " -> ".join(result.chain), "link": k, "dataset": result.chain[k],
                         "init_from": run.provenance["init_from"], "seed": seed,
                         "num_classes": len([c for c in run.predictions.columns if c.startswith("prob_")]),
                         "accuracy": m["accuracy"], "auc": m.get("auc"), "auc_macro": m.get("auc_macro"),
                         "balanced_accuracy": m.get("balanced_accuracy"), "n_test": m["n"],
                         "minutes": m["provenance"]["wall_seconds"] / 60})
    return pd.DataFrame(rows, columns=LINK_COLUMNS)


def tables(result: ChainResult) -> dict[str, pd.DataFrame]:
    """The chapter's tables: the links, the target's folds and its corrected tests against the protocol's arms."""
    chain_folds = protocol.fold_table(result.folds)
    both = pd.concat([chain_folds, protocol.fold_table(result.paired)], ignore_index=True)
    tests = analysis.corrected_tests(both, pairs=[(result.arm, "multistage"), (result.arm, "imagenet")])
    return {"chain_links.csv": link_table(result), "chain_folds.csv": chain_folds, "chain_tests.csv": tests}


def arm_means(result: ChainResult, tables_: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean test metrics per arm over the folds: the chain and the protocol's arms beside it."""
    both = pd.concat([tables_["chain_folds.csv"], protocol.fold_table(result.paired)], ignore_index=True)
    return both.groupby("arm")[["accuracy", "auc", "sensitivity", "specificity"]].mean()


def link_recalls(result: ChainResult) -> pd.DataFrame:
    """Recall per class of every multi-class link run (binary links have sensitivity and specificity instead)."""
    recalls = {r.name: {k.removeprefix("recall_"): v for k, v in r.metrics.items() if k.startswith("recall_")}
               for seed_runs in result.links.values() for r in seed_runs}
    return pd.DataFrame(recalls).T.dropna(how="all").rename_axis("link run (recall per class)")


def glue_values(result: ChainResult, tables_: dict[str, pd.DataFrame]) -> dict[str, Any]:
    means = arm_means(result, tables_)
    return {"chain_text": " -> ".join(result.chain), "chain_n_folds": int(len(tables_["chain_folds.csv"])),
            "chain_accuracy": float(means.loc[result.arm, "accuracy"]),
            "chain_minutes": float(sum(r.provenance["wall_seconds"] for r in result.runs()) / 60)}


def verdict(result: ChainResult, tables_: dict[str, pd.DataFrame]) -> str:
    """The corrected paired test's verdict of the chain against each protocol arm it is compared with."""
    return "\n\n".join(f"**{result.arm} against {other}**: "
                        + analysis.verdict(tables_["chain_tests.csv"], arm_a=result.arm, arm_b=other)
                        for other in ("multistage", "imagenet"))
