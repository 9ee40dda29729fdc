"""The teaching page, the glossary and the launch buttons, checked against the code they describe.

A teaching page rots silently: a parameter is renamed, a function moves, a re-measured
study makes the quoted times wrong. These tests read ``book/teach.md`` as data: every
exercise's parameter must exist, every command must name real notebooks, parameters and
options, every Python script must call real functions with arguments they accept, the
guided code changes must still apply to the code and do what they claim, and the quoted
times must agree with the measurements they cite. No book is built here.
"""

from __future__ import annotations

import builtins
import csv
import dataclasses
import inspect
import json
import os
import re
import shlex
import shutil
import sys
import types
from pathlib import Path
from unittest.mock import MagicMock

import pandas as pd
import pytest
import torch
import yaml

from mstl_utils.core import config
from mstl_utils import models
from mstl_utils.experiments import protocol, search
from mstl_utils.engine import stages, train

ROOT = Path(__file__).resolve().parents[1]
TEACH = ROOT / "book" / "teach.md"
GLOSSARY = ROOT / "book" / "glossary.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
HEREDOC = re.compile(r"python - <<'EOF'\n(.*?)\nEOF", re.S)
CHANGE = re.compile(r'^# (?:In (mstl_utils/\w+\.py), after the line "(.+)"|At the end of (mstl_utils/\w+\.py)):$')
#: A quoted measurement: "<seconds> s in `<file>`" or "`<notebook>`: <seconds> s in `<file>`".
CITED = re.compile(r"(?:`(\w+\.ipynb)`:\s+)?(\d+(?:\.\d+)?)\s+s\s+in\s+`((?:book/results|runs)/[\w/.-]+)`")
#: A quoted run time: "<seconds> s for `<run name>` seed <k> in `book/results/provenance.json`".
CITED_RUN = re.compile(r"(\d+(?:\.\d+)?)\s+s\s+for\s+`(\w+)`\s+seed\s+(\d+)\s+in\s+`book/results/provenance\.json`")
#: Measured times may drift between studies; beyond this the page is stale.
TOLERANCE = 0.25
CONFIG_CLASSES = {"Profile": config.Profile, "StageConfig": config.StageConfig, "SearchConfig": search.SearchConfig}


def _exercises() -> list[dict]:
    text = TEACH.read_text()
    found = []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        if not title.startswith("Exercise"):
            continue
        # "**Label:**", "**Label (qualifier):**" or "**Label** (a note):", then the paragraph.
        fields = {label: re.search(rf"^\*\*{label}(?:[^*\n]*:\*\*|\*\*[^\n]*:)(.*?)(?:\n\n|\Z)", body, re.M | re.S)
                  for label in ("Parameter", "Re-run", "Expected time")}
        chapter = re.search(r"^Chapter: (.+)$", body, re.M)
        found.append({
            "title": title, "body": body, "chapter": chapter.group(1) if chapter else None,
            **{label.lower(): m.group(1).strip() if m else None for label, m in fields.items()},
            "blocks": [(lang, code) for lang, code in FENCE.findall(body)],
        })
    return found


EXERCISES = _exercises()
IDS = [e["title"].split(":")[0] for e in EXERCISES]


def _notebook_parameters(path: Path) -> set[str]:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return set(re.findall(r"^(\w+) = ", "".join(cell["source"]), re.M))


def _notebooks_named(text: str) -> dict[str, set[str]]:
    return {name: _notebook_parameters(ROOT / name) for name in set(re.findall(r"notebooks/\w+\.ipynb", text))
            if (ROOT / name).is_file()}


def _changes(exercise: dict) -> dict[str, str]:
    """The project's modules as the exercise's guided changes leave them: {file: source}."""
    changed: dict[str, str] = {}
    for lang, code in exercise["blocks"]:
        first, _, rest = code.partition("\n")
        match = CHANGE.match(first)
        if lang != "python" or not match:
            continue
        file = match.group(1) or match.group(3)
        source = changed.get(file, (ROOT / file).read_text())
        if match.group(2):
            lines = source.splitlines(keepends=True)
            at = [i for i, line in enumerate(lines) if match.group(2) in line]
            assert len(at) == 1, f"{file}: the line {match.group(2)!r} is found {len(at)} times, expected once"
            source = "".join(lines[: at[0] + 1]) + rest + "".join(lines[at[0] + 1:])
        else:
            source = source.rstrip("\n") + "\n\n\n" + rest
        changed[file] = source
    return changed


def _load(file: str, source: str) -> types.ModuleType:
    """Execute a changed copy of a package module, beside (not instead of) the real one."""
    module = types.ModuleType(f"mstl_utils._teach_{Path(file).stem}")
    module.__package__ = "mstl_utils"
    sys.modules[module.__name__] = module  # dataclasses look their module up while the class is made
    try:
        exec(compile(source, f"{file} (changed as on the teaching page)", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


class Checked:
    """Stands in for a package module in an exercise's script: every call is bound to the real
    function's signature (so a wrong argument fails here) and recorded; nothing trains."""

    def __init__(self, module: types.ModuleType):
        self._module, self.calls = module, []

    def __getattr__(self, name: str):
        real = getattr(self._module, name)
        if not callable(real):
            return real

        def call(*args, **kwargs):
            self.calls.append((name, inspect.signature(real).bind(*args, **kwargs).arguments))
            return MagicMock(name=f"{name}()")

        return call


def _run_script(script: str, modules: dict[str, object]) -> None:
    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "mstl_utils":
            return types.SimpleNamespace(**modules)
        return builtins.__import__(name, globals, locals, fromlist, level)

    exec(compile(script, "<teaching page script>", "exec"), {"__builtins__": {**vars(builtins), "__import__": fake_import}})


# --------------------------------------------------------------------------- the exercises


def test_one_exercise_per_chapter_of_the_experiment():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    experiment = next(p for p in toc["parts"] if p["caption"] == "The experiment")
    wanted = [c["file"].removeprefix("book/") for c in experiment["chapters"]] + ["benchmark"]
    wanted += [name for name in ("search", "chain", "pruning", "gan") if f"book/{name}" in files]  # chapters beyond the papers
    named = [re.findall(r"\{doc\}`(\w+)`", e["chapter"] or "") for e in EXERCISES]
    assert all(len(n) <= 1 for n in named)
    assert sorted(n[0] for n in named if n) == sorted(wanted)
    assert {"book/teach", "book/glossary"} <= set(files)


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_exercise_has_parameter_command_and_measured_time(exercise):
    assert exercise["parameter"] and exercise["re-run"] is not None and exercise["expected time"]
    assert any(lang == "bash" for lang, _ in exercise["blocks"]), "no command to re-run"
    assert "measured" in exercise["expected time"], "a time must say where it was measured"
    assert "TIME_" not in exercise["body"], "a placeholder is left"


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_exercise_parameters_exist(exercise):
    """Each backticked name in the Parameter line is real: a notebook parameter, a config field,
    a function, a command-line option, a file, or a field the exercise's own change adds."""
    notebooks = _notebooks_named(exercise["body"])
    added = "\n".join(_changes(exercise).values())
    commands = "\n".join(code for lang, code in exercise["blocks"] if lang == "bash")
    real = []
    for token in re.findall(r"`([^`]+)`", exercise["parameter"]):
        if token.startswith('"'):
            continue  # a value, not a name
        if token.startswith("--"):
            module = re.search(r"-m (mstl_utils\.\w+)", commands).group(1)
            assert f'"{token}"' in (ROOT / (module.replace(".", "/") + ".py")).read_text(), token
        elif "/" in token:
            assert (ROOT / token).is_file(), token
        elif "." in token:
            owner, attr = token.split(".")
            if owner in CONFIG_CLASSES and attr in {f.name for f in dataclasses.fields(CONFIG_CLASSES[owner])}:
                real.append(token)
            elif owner in CONFIG_CLASSES:
                assert callable(getattr(CONFIG_CLASSES[owner], attr, None)), f"{token}: no such field or method"
            else:
                assert hasattr({"config": config, "stages": stages, "protocol": protocol}[owner], attr), token
        elif any(token in params for params in notebooks.values()):
            real.append(token)
        elif re.search(rf"^\s+{token}: ", added, re.M):
            real.append(token)  # added by the guided change (checked to apply below)
        else:
            known = (set(config.PROFILES) | {f.name for f in dataclasses.fields(config.Profile)}
                     | set(vars(config)) | set(vars(models)))
            assert token in known, f"{token!r} is neither a notebook parameter nor a name of mstl_utils"
    assert real, "the Parameter line names no notebook parameter or configuration field"


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_exercise_commands_name_real_notebooks_and_options(exercise):
    for lang, code in exercise["blocks"]:
        if lang != "bash":
            continue
        for line in code.splitlines():
            words = shlex.split(line, comments=True) if "<<" not in line else []
            if any(w.endswith("papermill") for w in words):
                notebook = next(w for w in words if w.endswith(".ipynb") and w.startswith("notebooks/"))
                params = _notebook_parameters(ROOT / notebook)
                given = {}
                for i, word in enumerate(words):
                    if word == "-p":
                        given[words[i + 1]] = words[i + 2]
                    elif word == "-y":
                        given.update(yaml.safe_load(words[i + 1]))
                for name, value in given.items():
                    assert name in params, f"{notebook} has no parameter {name!r}"
                    assert name != "profile" or value in config.PROFILES, value
                # The settings a command changes are ones a profile takes, with values it accepts.
                settings = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in given.items()
                            if k in config.SETTINGS and k not in ("bridge", "target")}
                config.get_profile(given.get("profile", "quick"), **settings)
            if "-m" in words:
                module = words[words.index("-m") + 1]
                source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
                for option in (w for w in words if w.startswith("--")):
                    assert f'"{option}"' in source, f"{module} has no option {option}"


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_exercise_scripts_call_real_functions(exercise):
    """Run each script with the real configuration (as the exercise's change leaves it) and with
    stages/protocol stand-ins: profiles are really built, calls are checked, nothing trains."""
    scripts = [s for lang, code in exercise["blocks"] if lang == "bash" for s in HEREDOC.findall(code)]
    changed = _changes(exercise)
    cfg = _load("mstl_utils/core/config.py", changed["mstl_utils/core/config.py"]) if "mstl_utils/core/config.py" in changed else config
    for script in scripts:
        checked = {"stages": Checked(stages), "protocol": Checked(protocol)}
        _run_script(script, {"config": cfg, **checked})
        made = set()
        for name, args in checked["stages"].calls:
            if name != "run_stage":
                continue
            start = args["init_from"]
            # A chained stage must start from one the script made earlier (same profile).
            assert start in ("imagenet", "scratch") or (args["profile"].name, start) in made, start
            assert args["stage"] in ("stage1", "stage2")
            made.add((args["profile"].name, args["name"]))
        assert any(checked[m].calls for m in checked), "the script runs nothing"


def test_architecture_exercise_uses_a_registered_model():
    exercise = next(e for e in EXERCISES if "`model`" in (e["parameter"] or ""))
    named = re.findall(r"-p model (\w+)", exercise["body"])
    assert named and all(name in models.MODELS for name in named), named
    model, info = models.build_model(named[0], num_classes=2, init="scratch")
    assert info.source == "random" and model(torch.rand(2, 1, 64, 64)).shape == (2, 2)


def test_strategy_exercise_names_real_strategies_that_freeze():
    """The frozen-depth exercise: every strategy it names exists, and the one its script runs
    keeps the bottom blocks fixed while the top trains."""
    from mstl_utils.models import transfer

    exercise = next(e for e in EXERCISES if "strategy" in (e["parameter"] or ""))
    named = re.findall(r'`"(\w+)"`', exercise["parameter"]) + re.findall(r"-p strategy (\w+)", exercise["body"])
    assert named and all(name in transfer.STRATEGIES for name in named), named
    script = re.findall(r"-p strategy (\w+)", exercise["body"])[0]
    torch.manual_seed(0)
    model, _ = models.build_model("mobilenet_v2", num_classes=2, init="scratch")
    groups = transfer.apply(model, "mobilenet_v2", script, lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = [(torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 0, 1]))]
    train.run_epoch(model, batch, device=torch.device("cpu"), optimizer=torch.optim.Adam(groups, lr=1e-2))
    after = model.state_dict()
    frozen = [k for k in after if k.startswith("backbone.features.") and int(k.split(".")[2]) < 16]
    trained = [k for k in after if k.startswith("backbone.features.18.") and after[k].is_floating_point()]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), "a frozen block changed"
    assert any(not torch.equal(before[k], after[k]) for k in trained), "the top block did not train"


# --------------------------------------------------------------------------- the quoted times


def _citations() -> list[tuple[str | None, float, str]]:
    text = TEACH.read_text()
    cited = [(nb, float(s), file) for nb, s, file in CITED.findall(text)]
    cited += [(nb, float(s), "book/results/study_time.csv") for nb, s in re.findall(r"^\| `(\w+\.ipynb)` \| (\d+) s \|", text, re.M)]
    return cited


def test_study_times_agree_with_study_time_csv():
    rows = list(csv.DictReader((ROOT / "book" / "results" / "study_time.csv").open()))
    if not all(r["force"] == "True" and r["profile"] == "quick" for r in rows):
        pytest.skip("study_time.csv is not from a forced quick study: it times reused runs")
    measured = {r["notebook"]: float(r["seconds"]) for r in rows}
    cited = [(nb, s) for nb, s, file in _citations() if file == "book/results/study_time.csv"]
    assert {nb for nb, _ in cited} >= set(measured), "the table misses a notebook of the study"
    for notebook, seconds in cited:
        assert abs(seconds - measured[notebook]) <= TOLERANCE * measured[notebook], (
            f"{notebook}: the page says {seconds:.0f} s, study_time.csv {measured[notebook]:.0f} s; update book/teach.md")


def test_run_times_agree_with_the_runs():
    """Run times quoted from provenance.json (by run name and seed) and from chapter tables (a time column, or
    the sum of a fold's rounds' train_seconds) are what those files hold, within the tolerance."""
    text = TEACH.read_text()
    runs = json.loads((ROOT / "book" / "results" / "provenance.json").read_text())["runs"]
    quoted = [(float(s), name, int(seed)) for s, name, seed in CITED_RUN.findall(text)]
    assert quoted, "no run time quoted from book/results/provenance.json"
    for seconds, name, seed in quoted:
        found = [r["wall_seconds"] for r in runs if r["name"] == name and r["seed"] == seed and not r.get("split")]
        assert found, f"{name} seed {seed} is not a run of book/results/provenance.json"
        assert abs(seconds - found[0]) <= TOLERANCE * found[0], f"{name} seed {seed}: the page says {seconds} s, the run took {found[0]:.1f} s"
    tables = [(s, file) for _, s, file in _citations() if file.endswith(".csv") and file != "book/results/study_time.csv"]
    for seconds, file in tables:
        table = pd.read_csv(ROOT / file)
        values = [v for c in table.columns if "seconds" in c for v in table[c].dropna()]
        values += [60 * v for c in table.columns if c == "minutes" for v in table[c].dropna()]
        if "train_seconds" in table.columns and "round" in table.columns:
            keys = [c for c in ("model", "method", "repeat", "fold") if c in table.columns]
            values += table.groupby(keys)["train_seconds"].sum().tolist()
        assert any(abs(seconds - v) <= TOLERANCE * v for v in values), f"{file}: no time near {seconds} s in it"


# --------------------------------------------------------------------------- glossary and launch buttons


def _glossary_terms() -> list[str]:
    block = re.search(r"^```\{glossary\}\n(.*?)^```", GLOSSARY.read_text(), re.M | re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line[0].isspace() and not line.startswith(":")]


def test_glossary_defines_each_term_once_and_every_link_resolves():
    terms = _glossary_terms()
    lowered = [t.lower() for t in terms]
    assert len(lowered) == len(set(lowered)), sorted({t for t in lowered if lowered.count(t) > 1})
    for needed in ("bridge dataset", "fine-tuning", "feature extraction", "fold", "out-of-fold prediction",
                   "corrected resampled t-test", "McNemar test", "DeLong test", "Holm adjustment", "provenance",
                   "data leakage", "nested cross-validation", "TPE", "pruner", "Grad-CAM", "lottery ticket", "WGAN"):
        assert needed.lower() in lowered, needed
    pages = [p.read_text() for p in (ROOT / "book").glob("*.md")] + [p.read_text() for p in (ROOT / "book").glob("*.ipynb")]
    for page in pages:
        for link in re.findall(r"\{term\}`([^`]+)`", page):
            target = re.search(r"<([^>]+)>$", link)
            assert (target.group(1) if target else link).lower() in lowered, f"{{term}} link to an undefined term: {link}"


def test_launch_buttons_only_with_a_repository_address(tmp_path):
    from mstl_utils import study

    committed = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "launch_buttons" not in committed and "repository" not in committed  # no placeholder address
    assert study.book_config(None, ROOT) == ROOT / "_config.yml"
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    cfg = yaml.safe_load(study.book_config("https://github.com/someone/mstl", tmp_path).read_text())
    launch, repository = cfg["launch_buttons"], cfg["repository"]
    assert launch["binderhub_url"].startswith("https://") and launch["colab_url"].startswith("https://")
    assert repository["url"] == "https://github.com/someone/mstl" and repository["branch"]
    assert repository.get("path_to_book", "") in ("", None), "a path_to_book puts it into every launch link"
    assert cfg["bibtex_bibfiles"] == committed["bibtex_bibfiles"]  # the rest as committed
    with pytest.raises(ValueError, match="REPOSITORY='github.com/x'"):
        study.book_config("github.com/x", tmp_path)


def test_binder_environment():
    # repo2docker installs binder/environment.yml before it copies the repository, so the
    # project itself must be installed by postBuild, not by "-e ." in the environment.
    environment = (ROOT / "binder" / "environment.yml").read_text()
    assert "-e ." not in re.sub(r"#.*", "", environment)
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK) and re.search(r"pip install .*-e \.", post_build.read_text())
