"""What names a training run: ``RunSpec``, a frozen dataclass from which a run's folder, its reuse
check and its ``config.json`` all derive.

A spec holds the settings the run uses (the model, image size, data mode and the settings of
its stage; the profile's other values are not part of it, so that changing stage 2's learning
rate never retrains a bridge), how it starts (``imagenet``, ``scratch`` or the spec of the run it
continues), its seed and test split, and the options of single chapters (a transfer strategy,
class balancing, generated images, RGB input, a pruning mask), each recorded only when used.

Its folder is ``runs/<profile>/<name>-<digest>/<leaf>``: ``name`` is readable (``cv_multistage``),
``digest`` the first 8 hex digits of the sha256 of the settings shared by all the runs of that
name (everything but the seed and the split), ``leaf`` the split (``repeat00_fold3``) or the seed
(``seed0``), with ``_from-<leaf>`` when the run it continues has another seed. Two specs share a
folder only when they ask for the same computation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from ..core import repro
from ..core.config import INIT_CHOICES, Profile, StageConfig
from ..data.folds import Split
from ..data.generated import BALANCE_CHOICES
from ..models import transfer
from ..models.sparsity import SCOPES
from .train import resolve_precision

#: How a pruning mask is drawn: the smallest magnitudes of a trained run's weights, or at random.
MASK_METHODS = ("l1", "random")


def digest(value: Any, length: int = 8) -> str:
    """Short sha256 of the canonical JSON of ``value``."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Mask:
    """A pruning mask applied to a run's starting weights before it trains (lottery tickets).

    The mask keeps the ``1 - sparsity`` largest-magnitude eligible weights of ``source`` (a trained
    run; pruned runs keep their own masks and lose more), or a random share when ``method`` is
    ``random`` (``source`` None: drawn on the starting weights). The survivors start from the run's
    starting weights (rewinding)."""

    sparsity: float  # share of the eligible weights pruned after this mask
    method: str = "l1"  # one of MASK_METHODS
    scope: str = "backbone"  # which weights take part (models.sparsity.SCOPES)
    seed: int = 0  # the random draw (l1 draws nothing)
    source: "RunSpec | None" = None  # the trained run whose weights are ranked (l1)

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"mask sparsity={self.sparsity}; expected 0 <= sparsity < 1")
        if self.method not in MASK_METHODS:
            raise ValueError(f"mask method={self.method!r}; expected one of {MASK_METHODS}")
        if self.scope not in SCOPES:
            raise ValueError(f"mask scope={self.scope!r}; expected one of {SCOPES}")
        if (self.source is None) != (self.method == "random"):
            raise ValueError("an l1 mask ranks the weights of a trained run (source); a random one has none")


@dataclass(frozen=True)
class RunSpec:
    """One training run: a stage's settings, how it starts, its seed and split, and its options."""

    name: str  # the run's role, readable: "stage1", "cv_multistage", "tuned_imagenet", ...
    stage: str  # "stage1" (a bridge or a source task) or "stage2" (the target): which stage settings apply
    profile: Profile  # the study's settings; the ones this run uses make its identity (``settings``)
    init: "str | RunSpec" = "imagenet"  # "imagenet", "scratch", or the spec of the run it continues
    seed: int = 0  # training seed: data order, augmentation, a fresh head
    split: Split | None = None  # a cross-validation fold's test part (None: the dataset's own test part)
    strategy: str = transfer.DEFAULT  # what is trained (models.transfer)
    balance: str | None = None  # "class_weights" or "oversample" (None: neither)
    synthetic_dir: str | None = None  # a folder of generated images added to the training part
    in_chans: int = 1  # 1: grey input (the study's); 3: RGB (the colour-shortcut experiment)
    mask: Mask | None = None  # pruning: weights removed before training (None: dense)
    train_size: int | None = None  # train on a stratified draw of this many training images (None: all)
    train_draw: int = 0  # which draw of ``train_size`` images (its seed)
    # Where the data are read from (None: $MSTL_DATA_DIR, then ./data): a location, not part of the
    # identity (the data's checksum is in the provenance; a different copy fails its manifest check).
    data_dir: str | None = field(default=None, compare=False)

    kind: ClassVar[str] = "stage"

    def __post_init__(self):
        if self.stage not in ("stage1", "stage2"):
            raise ValueError(f"stage={self.stage!r}; expected 'stage1' or 'stage2'")
        if isinstance(self.init, str) and self.init not in INIT_CHOICES:
            raise ValueError(f"init={self.init!r}; expected one of {INIT_CHOICES} or the RunSpec of an earlier run")
        transfer.get(self.strategy)
        if self.balance is not None and self.balance not in BALANCE_CHOICES:
            raise ValueError(f"balance={self.balance!r}; expected None or one of {BALANCE_CHOICES}")
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < 2):
            raise ValueError(f"train_size={self.train_size!r}; expected None (all) or a whole number >= 2")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans={self.in_chans}; expected 1 (grey) or 3 (RGB)")
        for name in ("synthetic_dir", "data_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))

    # ----------------------------------------------------------------- what the run uses

    @property
    def config(self) -> StageConfig:
        """The settings of this run's stage (dataset, epochs, batch size, learning rate, ...)."""
        return getattr(self.profile, self.stage)

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def device(self) -> str:
        """The device type the run trains on (``profile.device`` resolved on this machine)."""
        return repro.pick_device(self.profile.device).type

    @property
    def precision(self) -> str:
        """The numerics of the training step on that device (``profile.precision`` resolved)."""
        return resolve_precision(self.profile.precision, self.device)

    def settings(self) -> dict[str, Any]:
        """Everything this run's result depends on, except its seed, split and upstream run's seed."""
        p = self.profile
        values: dict[str, Any] = {
            "profile": p.name, "stage": self.stage, "model": p.model, "image_size": p.image_size, "data": p.data,
            "config": asdict(self.config), "deterministic": p.deterministic, "compile": p.compile,
            "device": self.device, "precision": self.precision,
            "allow_random_imagenet": p.allow_random,
            "init": self.init if isinstance(self.init, str) else self.init.family,
        }
        if self.split is None:  # a dataset without an official test part is split by this share
            values["test_fraction"] = p.head_ct_test_fraction
        # Options only when used: a run without them is named as before they existed.
        if self.strategy != transfer.DEFAULT:
            values["strategy"] = asdict(transfer.get(self.strategy))
        if self.balance is not None:
            values["balance"] = self.balance
        if self.synthetic_dir is not None:
            values["synthetic"] = Path(self.synthetic_dir).name
        if self.in_chans != 1:
            values["in_chans"] = self.in_chans
        if self.train_size is not None:
            values["train_size"] = {"n": self.train_size, "draw": self.train_draw}
        if self.mask is not None:
            values["mask"] = {"sparsity": self.mask.sparsity, "method": self.mask.method, "scope": self.mask.scope,
                              "seed": self.mask.seed,
                              "source": None if self.mask.source is None else self.mask.source.family}
        return json.loads(json.dumps(values))

    def identity(self) -> dict[str, Any]:
        """The whole request, as ``config.json`` holds it (with the inputs' checksums added by the lifecycle)."""
        return {"kind": self.kind, "name": self.name, "seed": self.seed, **self.settings(),
                "split": None if self.split is None else self.split.to_dict(),
                "init_run": None if isinstance(self.init, str) else str(self.init.relpath),
                "mask_source_run": (None if self.mask is None or self.mask.source is None
                                    else str(self.mask.source.relpath))}

    # ----------------------------------------------------------------- where it lives

    @property
    def family(self) -> str:
        """``<profile>/<name>-<digest>``: the folder of all runs of this name and settings."""
        return f"{self.profile.name}/{self.name}-{digest(self.settings())}"

    @property
    def leaf(self) -> str:
        base = self.split.key if self.split is not None else f"seed{self.seed}"
        upstream = [u for u in (self.init, self.mask.source if self.mask else None) if isinstance(u, RunSpec)]
        own = {base, f"seed{self.seed}"}
        others = sorted({u.leaf for u in upstream} - own)
        return base + "".join(f"_from-{leaf}" for leaf in others)

    @property
    def relpath(self) -> PurePosixPath:
        """The run folder relative to the runs root."""
        return PurePosixPath(self.family) / self.leaf

    @property
    def label(self) -> str:
        """How messages name the run: its folder without the digest."""
        return f"{self.profile.name}/{self.name}/{self.leaf}"

    def upstream(self) -> tuple["RunSpec", ...]:
        """The runs this one needs complete before it starts: the one it continues, its mask's source."""
        return tuple(u for u in (self.init, self.mask.source if self.mask else None) if isinstance(u, RunSpec))

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- what it needs

    def resources(self) -> dict[str, float]:
        """What one run asks of a machine: CPU threads are shared out by the executor; a GPU run takes a
        quarter of a GPU (stage 2, small batches) or half (stage 1), so that several share one device."""
        if self.device == "cuda":
            return {"gpu": 0.25 if self.stage == "stage2" else 0.5}
        return {}

    def execute(self, run):
        """Train the run into ``run`` (a ``lifecycle.Run``); the lifecycle calls this."""
        from . import stages  # the body of a stage run (imports the training loop and the data)

        return stages.execute(self, run)

    def inputs(self, runs_root: Path) -> dict[str, Any]:
        """Checksums of the files this run reads besides the data: a changed upstream checkpoint or a changed
        folder of generated images makes it another run."""
        found: dict[str, Any] = {}
        for key, upstream in (("init", self.init), ("mask_source", self.mask.source if self.mask else None)):
            if isinstance(upstream, RunSpec):
                checkpoint = runs_root / upstream.relpath / "checkpoint.pt"
                found[f"{key}_sha256"] = repro.sha256_file(checkpoint) if checkpoint.is_file() else None
        if self.synthetic_dir is not None:
            from ..data import generated

            found["synthetic_sha256"] = generated.folder_sha256(self.synthetic_dir)
        return found


def chain_of(spec: RunSpec) -> list[RunSpec]:
    """``spec`` and every run it needs, upstream first, each once."""
    order: list[RunSpec] = []
    seen: set[PurePosixPath] = set()

    def visit(s: RunSpec) -> None:
        for u in s.upstream():
            visit(u)
        if s.relpath not in seen:
            seen.add(s.relpath)
            order.append(s)

    visit(spec)
    return order


