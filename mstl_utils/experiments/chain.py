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

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data import datasets as data_mod
from ..engine import stages
from ..core.config import INIT_CHOICES, Profile
from .protocol import head_ct_folds, plan as protocol_plan
from ..engine.stages import StageResult

#: The paper's own chain, as a chain.
PAPER_CHAIN = ("imagenet", "chest_xray", "head_ct")
#: The dataset every chain ends on: the protocol's folds are head-CT folds.
TARGET = "head_ct"


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
    """The arm a chain's target runs form in the fold tables (its run folders: ``cv_<arm>``)."""
    return link_name(chain, len(chain) - 2)


@dataclass
class ChainResult:
    """A chain's bridge runs (per seed, in order) and its target's fold runs."""

    chain: tuple[str, ...]
    links: dict[int, list[StageResult]]  # seed -> the bridge links' runs, first to last
    folds: list[StageResult]  # the target's run on every protocol fold

    @property
    def arm(self) -> str:
        return arm_name(self.chain)


def run_links(profile: Profile, chain: tuple[str, ...], *, seed: int, data_dir: str | Path | None = None,
              weights_dir: str | Path | None = None, runs_root: str | Path | None = None, device: str = "auto",
              force: bool = False) -> list[StageResult]:
    """Train (or reuse) the bridge links of ``chain`` one after the other, from its starting weights."""
    init_from, results = chain[0], []
    for k, dataset in enumerate(chain[1:-1], start=1):
        link_profile = profile.replace(stage1={"dataset": dataset})
        result = stages.run_stage(link_name(chain, k), link_profile, stage="stage1", init_from=init_from, seed=seed,
                                  data_dir=data_dir, weights_dir=weights_dir, runs_root=runs_root, device=device,
                                  force=force)
        results.append(result)
        init_from = result.name
    return results


def run_chain(
    profile: Profile,
    chain: str | tuple[str, ...],
    *,
    seeds: tuple[int, ...] | None = None,
    folds: pd.DataFrame | None = None,
    data_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
    runs_root: str | Path | None = None,
    device: str = "auto",
    force: bool = False,
    workers: int | None = None,
) -> ChainResult:
    """The bridge links for each of ``seeds`` (default: the profile's first seed), then the
    target on every protocol fold; repeat ``r`` starts from the links of ``seeds[r % len(seeds)]``,
    as the protocol's chained arms do with their bridge."""
    chain = parse(chain)
    seeds = tuple(seeds) if seeds else profile.seeds[:1]
    if folds is None:
        folds, _ = head_ct_folds(profile, data_dir=data_dir, runs_root=runs_root)
    common = dict(data_dir=data_dir, weights_dir=weights_dir, runs_root=runs_root, device=device)
    links = {seed: run_links(profile, chain, seed=seed, force=force, **common) for seed in seeds}
    last = link_name(chain, len(chain) - 2) if len(chain) > 2 else chain[0]
    jobs = []
    for run in protocol_plan(profile, folds, arms=("imagenet",)):  # the plan of folds and seeds, one arm
        init_seed = seeds[run.split.repeat % len(seeds)]
        jobs.append(dict(name=f"cv_{arm_name(chain)}", profile=profile, stage="stage2", init_from=last,
                         seed=run.seed, split=run.split, init_seed=init_seed, force=force, **common))
    return ChainResult(chain, links, stages.run_stages(jobs, workers=workers, device=device,
                                                       description="chain fold runs"))


#: Columns of ``chain_links.csv``: each bridge link's test result on its own dataset.
LINK_COLUMNS = ["chain", "link", "dataset", "init_from", "seed", "num_classes", "accuracy", "auc", "auc_macro",
                "balanced_accuracy", "n_test", "minutes"]


def link_table(result: ChainResult) -> pd.DataFrame:
    rows = []
    for seed, runs in result.links.items():
        for k, run in enumerate(runs, start=1):
            m = run.metrics
            rows.append({"chain": " -> ".join(result.chain), "link": k, "dataset": result.chain[k],
                         "init_from": run.config["init_from"], "seed": seed,
                         "num_classes": len([c for c in run.predictions.columns if c.startswith("prob_")]),
                         "accuracy": m["accuracy"], "auc": m.get("auc"), "auc_macro": m.get("auc_macro"),
                         "balanced_accuracy": m.get("balanced_accuracy"), "n_test": m["n"],
                         "minutes": m["provenance"]["wall_seconds"] / 60})
    return pd.DataFrame(rows, columns=LINK_COLUMNS)
