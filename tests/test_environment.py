"""The locked environment: its pins match the project's dependencies, and provenance records every difference."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mstl_utils.core import environment
from mstl_utils.report import results

ROOT = Path(__file__).resolve().parents[1]


def test_the_lock_pins_every_dependency_of_the_project_and_its_dev_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {environment._key(re.split(r"[<>=!~\[ ;]", w, maxsplit=1)[0]) for w in wanted}
    pins = environment.pins()
    assert names <= set(pins), f"not in {environment.LOCK_FILE}: {sorted(names - set(pins))} (run 'make lock')"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values())


def test_differences_name_the_locked_and_the_installed_version(tmp_path):
    file = tmp_path / "requirements.lock"
    installed = __import__("importlib.metadata").metadata.version("pytest")
    file.write_text(f"# header\npytest=={installed}\n    # via x\nnumpy==0.0.1\nno-such-package-here==1.0\n")
    assert environment.differences(file) == {"numpy": {"locked": "0.0.1", "installed": __import__("numpy").__version__},
                                      "no-such-package-here": {"locked": "1.0", "installed": None}}
    status = environment.status(file)
    assert len(status["sha256"]) == 64 and set(status["differs"]) == {"numpy", "no-such-package-here"}
    text = results.environment_text(status)
    assert "2 version(s) differ" in text and "numpy" in text and "for 0.0.1" in text


def test_a_file_without_pins_is_named(tmp_path):
    file = tmp_path / "requirements.lock"
    file.write_text("# nothing here\n")
    with pytest.raises(ValueError, match="requirements.lock: no 'name==version' lines"):
        environment.pins(file)


def test_the_pins_a_capped_machine_refuses_are_read_from_pips_error():
    output = ("ERROR: Cannot install torch==2.15.0 because these package versions have conflicting dependencies.\n"
              "The conflict is caused by:\n    The user requested torch==2.15.0\n"
              "    The user requested (constraint) torch<=2.14.1\n")
    assert environment.refused_pins(output, {"torch": "2.15.0", "torchvision": "0.29.2", "numpy": "2.4.6"}) == {"torch"}


def test_a_cap_of_the_machine_drops_the_pins_it_excludes():
    locked = {"torch": "2.15.0", "torchvision": "0.29.2", "numpy": "2.4.6", "pandas": "3.1.1"}
    caps = {"torch": [("<=", "2.14.1")], "torchvision": [("<=", "0.29.1")], "numpy": [(">=", "1.26")]}
    assert environment.capped_pins(locked, caps) == {"torch", "torchvision"}
    assert environment.capped_pins({"torch": "2.14.1+cpu"}, caps) == set()


def test_a_dropped_pin_takes_the_pins_only_it_required(tmp_path):
    file = tmp_path / "requirements.lock"
    file.write_text("numpy==2.4.6\n    # via\n    #   mstl (pyproject.toml)\n    #   torch\n"
                    "torch==2.15.0\n    # via\n    #   -c .lock-pins.txt\n    #   mstl (pyproject.toml)\n"
                    "triton==3.9.0\n    # via torch\nnvidia-cublas==13.4.1.3\n    # via\n    #   cuda-toolkit\n    #   torch\n"
                    "cuda-toolkit==13.2.2\n    # via torch\n")
    via = environment.requirers(file)
    assert via["triton"] == {"torch"} and via["numpy"] == {"mstl", "torch"}
    assert environment.with_dependents({"torch"}, via) == {"torch", "triton", "cuda-toolkit", "nvidia-cublas"}
