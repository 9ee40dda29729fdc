"""The Ray executor on a real local Ray cluster (started here, no mock): same tables as the local executor,
a killed worker's run retried and resumed, a failing run named."""

from __future__ import annotations

import os
import signal
import threading
import time

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the Ray executor's tests need Ray (pip install 'mstl[ray]')")

from mstl_utils.core import config  # noqa: E402
from mstl_utils.engine import executors, lifecycle, locks, train  # noqa: E402
from mstl_utils.engine.spec import RunSpec  # noqa: E402
from mstl_utils.experiments import protocol  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (two CPUs, as the CI machine has)."""
    executor = executors.RayExecutor(num_cpus=2)
    executor.connect()
    yield executor
    executor.close()


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    return config.get_profile("smoke", data="real").replace(stage1={"num_epochs": 1}, stage2={"num_epochs": 1})


def test_ray_gives_the_local_executors_tables(cluster, profile, tmp_path):
    arms = ("imagenet", "multistage")
    folds, _ = protocol.target_folds(profile)
    local = protocol.run_protocol(profile, arms=arms, folds=folds,
                                  executor=executors.LocalExecutor(runs_root=tmp_path / "local"))
    cluster.runs_root = (tmp_path / "ray").resolve()
    on_ray = protocol.run_protocol(profile, arms=arms, folds=folds, executor=cluster)
    assert all(str(r.run_dir).startswith(str(tmp_path / "ray")) for r in on_ray)
    pd.testing.assert_frame_equal(protocol.fold_table(local), protocol.fold_table(on_ray))
    pd.testing.assert_frame_equal(protocol.oof_table(local), protocol.oof_table(on_ray))


def test_a_killed_ray_worker_is_retried_and_its_run_resumes(cluster, profile, tmp_path, monkeypatch):
    monkeypatch.setenv(lifecycle.ENV_STATE_EVERY, "0")  # passed on to the workers: a state after every epoch
    long = profile.replace(stage2={"num_epochs": 8})
    spec = RunSpec(name="stage2_scratch", stage="stage2", profile=long, init="scratch", seed=0)
    cluster.runs_root = (tmp_path / "ray").resolve()
    run_dir = lifecycle.run_dir(spec, cluster.runs_root)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=cluster.run([spec])[0]))
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = run_dir / lifecycle.STATE_FILE
        if state.is_file():
            try:
                epoch = train.load_checkpoint(state)["epoch"]
            except (ValueError, FileNotFoundError):
                continue
            if epoch >= 2:
                killed = locks.holder(run_dir)["pid"]  # the Ray worker training it
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.05)
    thread.join(timeout=600)
    assert killed is not None and killed != os.getpid(), "the run never saved a state to resume from"
    result = outcome["result"]
    assert result.provenance["resumed_after_epoch"] >= 2
    straight = lifecycle.run(spec, runs_root=tmp_path / "straight")
    pd.testing.assert_frame_equal(result.predictions, straight.predictions)
    pd.testing.assert_frame_equal(result.history.drop(columns="seconds"), straight.history.drop(columns="seconds"))


def test_a_failing_ray_run_is_named(cluster, profile, tmp_path):
    broken = profile.replace(stage2={"dataset": "no_such_dataset"})
    cluster.runs_root = (tmp_path / "ray").resolve()
    spec = RunSpec(name="stage2_scratch", stage="stage2", profile=broken, init="scratch", seed=5)
    with pytest.raises(RuntimeError, match=r"run smoke/stage2_scratch/seed5 failed: .*no_such_dataset"):
        cluster.run([spec])
