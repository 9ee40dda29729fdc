"""Book tables, provenance records and the loud synthetic-data banner.

Reads run directories and writes ``book/results/``; never imports training code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..core import repro

#: Columns of ``stage1_test.csv`` (the contract other chapters and reviewers read).
STAGE1_COLUMNS = ["model", "init_from", "profile", "seed", "image_size", "accuracy", "auc", "sensitivity", "specificity", "n_test"]
#: Columns of ``stage2_test.csv``: one row per arm and seed.
STAGE2_COLUMNS = ["arm", "init_from", "model", "profile", "seed", "image_size", "accuracy", "accuracy_ci_low",
                  "accuracy_ci_high", "auc", "sensitivity", "specificity", "f1", "balanced_accuracy", "n_test"]

SYNTHETIC_WARNING = (
    "SYNTHETIC DATA: the real datasets were not found, so this page shows results on generated "
    "images. They exercise the code and say nothing about medicine."
)


def metrics_row(metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One table row from a stage's ``metrics.json``."""
    prov = metrics["provenance"]
    row = {"model": prov["model"], "profile": prov["profile"], "seed": prov["seed"],
           "image_size": prov["image_size"], "init_from": prov["init_from"], "n_test": metrics["n"], **extra}
    row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "n"})
    return row


def stage_table(metrics: Iterable[dict[str, Any]], columns: list[str], **extra: Any) -> pd.DataFrame:
    return pd.DataFrame([metrics_row(m, **extra) for m in metrics]).reindex(columns=columns)


def save_table(table: pd.DataFrame, name: str, results_dir: str | Path) -> Path:
    """Write ``results_dir/name`` atomically (CSV), creating the folder."""
    return repro.atomic_write(Path(results_dir) / name, lambda tmp: table.to_csv(tmp, index=False))


def save_tables(tables: dict[str, pd.DataFrame], results_dir: str | Path) -> list[Path]:
    """Every table of a chapter (file name -> table) into ``results_dir``."""
    return [save_table(table, name, results_dir) for name, table in tables.items()]


def save_json(value: Any, name: str, results_dir: str | Path) -> Path:
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    return repro.atomic_write(Path(results_dir) / name, lambda tmp: tmp.write_text(text))


def provenance(metrics: Iterable[dict[str, Any]], *, profile: dict[str, Any]) -> dict[str, Any]:
    """The study's provenance from its runs: profile, hardware, data and weights with checksums,
    code version and time span."""
    provs = [m["provenance"] for m in metrics]
    if not provs:
        raise ValueError("no runs to describe")
    data = {p["data"]["dataset"]: p["data"] for p in provs}
    weights = sorted({(p["weights"]["source"], p["weights"]["file"], p["weights"]["sha256"]) for p in provs
                      if p["weights"]["init"] == "imagenet"}, key=str)
    return {
        "profile": profile,
        "hardware": provs[-1]["hardware"],
        "device": provs[-1]["device"],
        "data": data,
        "synthetic": any(d["kind"] == "synthetic" for d in data.values()),
        "weights": [{"source": s, "file": f, "sha256": h} for s, f, h in weights],
        "code": provs[-1]["code"],
        "runs": [{k: p.get(k) for k in ("name", "stage", "init_from", "seed", "split", "run", "started", "finished",
                                        "wall_seconds")} for p in provs],
        "started": min(p["started"] for p in provs),
        "finished": max(p["finished"] for p in provs),
        "written": repro.now(),
    }


def provenance_markdown(prov: dict[str, Any]) -> str:
    """A short 'how these numbers were made' block for the top of a results page."""
    data = "; ".join(f"{name}: {d['kind']} ({d['origin']}), {d['n_files']} files, sha256 {d['sha256'][:12]}..."
                     for name, d in prov["data"].items())
    weights = "; ".join(f"{w['file']} ({w['source']}, sha256 {(w['sha256'] or 'n/a')[:12]}...)" for w in prov["weights"]) or "none (random initialisation)"
    code = prov["code"]
    version = f"{(code.get('commit') or 'unknown')[:10]}{' + uncommitted changes' if code.get('dirty') else ''}"
    lines = [
        f"- **Profile:** `{prov['profile']['name']}` (image size {prov['profile']['image_size']} px, seeds {list(prov['profile']['seeds'])})",
        f"- **Hardware:** {prov['device']}; torch {prov['hardware']['torch']}, Python {prov['hardware']['python']}",
        f"- **Data:** {data}",
        f"- **Weights:** {weights}",
        f"- **Code version:** {version} (mstl_utils {code.get('package_version')})",
        f"- **Run:** {prov['started']} to {prov['finished']} (UTC)",
    ]
    return "\n".join(lines)


def data_banner(sources: Iterable[Any]) -> str:
    """Markdown for the top of a page: a loud warning when any data is synthetic, else a plain note."""
    sources = list(sources)
    synthetic = [s for s in sources if getattr(s, "is_synthetic", False) or (isinstance(s, dict) and s.get("kind") == "synthetic")]
    if synthetic:
        print("!" * 78 + f"\n!! {SYNTHETIC_WARNING}\n" + "!" * 78, file=sys.stderr)
        return f":::{{danger}}\n{SYNTHETIC_WARNING}\n:::\n"
    return ""


#: Columns of ``paper_split.csv``: the paper's own setting (one 80/20 split per seed).
PAPER_SPLIT_COLUMNS = ["arm", "seed", "accuracy", "n_test"]
