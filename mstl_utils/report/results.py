"""Book tables, provenance records and the loud synthetic-data banner.

Reads run directories and writes ``book/results/``; never imports training code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..core import config, environment, paths, repro

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


def optional_table(results_dir: str | Path, name: str) -> pd.DataFrame | None:
    """A table only some studies or machines make (``executors.csv``, ``gpu_check.csv``, ``stage2_folds_v1.csv``);
    None when it is not there."""
    path = Path(results_dir) / name
    return pd.read_csv(path) if path.is_file() else None


def save_table(table: pd.DataFrame, name: str, results_dir: str | Path) -> Path:
    """Write ``results_dir/name`` atomically (CSV), creating the folder."""
    return repro.atomic_write(Path(results_dir) / name, lambda tmp: table.to_csv(tmp, index=False))


def save_tables(tables: dict[str, pd.DataFrame], results_dir: str | Path) -> list[Path]:
    """Every table of a chapter (file name -> table) into ``results_dir``."""
    return [save_table(table, name, results_dir) for name, table in tables.items()]


def save_json(value: Any, name: str, results_dir: str | Path) -> Path:
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    return repro.atomic_write(Path(results_dir) / name, lambda tmp: tmp.write_text(text))


def changed_settings(profile: dict[str, Any]) -> dict[str, Any]:
    """The settings (``config.SETTINGS`` names) in which ``profile`` differs from the named profile it came from."""
    named = config.PROFILES.get(profile["name"])
    if named is None:
        return {}
    base = named.to_dict()
    changed = {}
    for name, places in config.SETTINGS.items():
        value = [profile[p[0]] if len(p) == 1 else profile[p[0]][p[1]] for p in places][0]
        default = [base[p[0]] if len(p) == 1 else base[p[0]][p[1]] for p in places][0]
        if json.dumps(value, default=str) != json.dumps(default, default=str):
            changed[name] = value
    return changed


def public_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """``profile`` as a page may show it: a dataset given as a folder is named relative to the project, or
    as ``<external>/<folder name>`` (published pages carry no absolute paths)."""
    shown = json.loads(json.dumps(profile, default=str))
    for stage in ("stage1", "stage2"):
        dataset = str(shown[stage]["dataset"])
        if "/" in dataset or "\\" in dataset:
            shown[stage]["dataset"] = paths.relative(dataset)
    return shown


def provenance(metrics: Iterable[dict[str, Any]], *, profile: dict[str, Any]) -> dict[str, Any]:
    """The provenance of a chapter: the profile and the settings changed in it, this execution (code version,
    time), and the runs it read, with their data and weights checksums, hardware and the code versions that
    made them (a run made earlier with identical settings is reused, and says when and by which commit)."""
    provs = [m["provenance"] for m in metrics]
    if not provs:
        raise ValueError("no runs to describe")
    data = {p["data"]["dataset"]: p["data"] for p in provs}
    weights = sorted({(p["weights"]["source"], p["weights"]["file"], p["weights"]["sha256"]) for p in provs
                      if p["weights"]["init"] == "imagenet"}, key=str)
    commits = sorted({(p["code"].get("commit") or "unknown")[:10] for p in provs})
    profile = public_profile(profile)
    return {
        "profile": profile,
        "changed_settings": changed_settings(profile),
        "executed": {"code": {**repro.git_version(paths.project_root())}, "at": repro.now(),
                     "environment": environment.status()},
        "hardware": provs[-1]["hardware"],
        "device": provs[-1]["device"],
        "data": data,
        "synthetic": any(d["kind"] == "synthetic" for d in data.values()),
        "weights": [{"source": s, "file": f, "sha256": h} for s, f, h in weights],
        "code": provs[-1]["code"],
        "run_commits": commits,
        "runs": [{k: p.get(k) for k in ("name", "stage", "init_from", "seed", "split", "run", "started", "finished",
                                        "wall_seconds")} for p in provs],
        "started": min(p["started"] for p in provs),
        "finished": max(p["finished"] for p in provs),
        "written": repro.now(),
    }


def provenance_markdown(prov: dict[str, Any]) -> str:
    """A short 'how these numbers were made' block for the top of a results page: which execution produced
    the page (profile, changed settings, commit, date, hardware) and which runs it read."""
    data = "; ".join(f"{name}: {d['kind']} ({d['origin']}), {d['n_files']} files, sha256 {d['sha256'][:12]}..."
                     for name, d in prov["data"].items())
    weights = "; ".join(f"{w['file']} ({w['source']}, sha256 {(w['sha256'] or 'n/a')[:12]}...)" for w in prov["weights"]) or "none (random initialisation)"
    executed = prov.get("executed", {"code": prov["code"], "at": prov.get("written", "")})
    code = executed["code"]
    version = f"{(code.get('commit') or 'unknown')[:10]}{' + uncommitted changes' if code.get('dirty') else ''}"
    changed = prov.get("changed_settings") or {}
    settings = ", ".join(f"`{k}={v}`" for k, v in changed.items()) or "none"
    commits = prov.get("run_commits") or [(prov["code"].get("commit") or "unknown")[:10]]
    lines = [
        f"- **Profile:** `{prov['profile']['name']}` (image size {prov['profile']['image_size']} px, seeds "
        f"{list(prov['profile']['seeds'])}); settings changed from it: {settings}",
        f"- **Code version:** {version} (this page executed {executed['at']} UTC)",
        f"- **Runs read:** {len(prov['runs'])}, made {prov['started']} to {prov['finished']} (UTC) by code version(s) "
        f"{', '.join(commits)} (a complete run with the same settings is reused, never trained again)",
        f"- **Hardware:** {prov['device']}; torch {prov['hardware']['torch']}, Python {prov['hardware']['python']}"
        f"{environment_text(executed.get('environment'))}",
        f"- **Data:** {data}",
        f"- **Weights:** {weights}",
    ]
    # "$" would start inline mathematics in the rendered page (an environment variable in a data origin).
    return "\n".join(lines).replace("$", "\\$")


def environment_text(env: dict[str, Any] | None) -> str:
    """How the environment compares with the lock file, for the page header ("" where not recorded)."""
    if not env or env.get("sha256") is None:
        return ""
    differs = env["differs"] or {}
    where = (f"{len(differs)} version(s) differ: " + ", ".join(
        f"{name} {v['installed']} for {v['locked']}" for name, v in sorted(differs.items())[:4])
        + (", ..." if len(differs) > 4 else "")) if differs else "every locked version installed"
    return f"; environment: `{env['file']}` (sha256 {env['sha256'][:12]}...), {where}"


def page_header(prov: dict[str, Any]):
    """What a chapter shows first: the loud synthetic-data banner when the data were generated, then how its
    numbers were made (``provenance_markdown``), as one Markdown display (never an empty one, which a page
    would print as ``<IPython.core.display.Markdown object>``)."""
    from IPython.display import Markdown

    return Markdown(data_banner(prov["data"].values()) + provenance_markdown(prov))


def banner(sources: Iterable[Any]):
    """The synthetic-data banner as a Markdown display, or a plain note that the data are real (never empty)."""
    from IPython.display import Markdown

    return Markdown(data_banner(sources) or "Real data (see the data chapter for their checksums).")


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
