"""The nested hyperparameter search: its space, study names, no leakage of the test fold,
several workers (through the executors) on one SQLite study, and the tuned-vs-paper test."""

import multiprocessing
import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from mstl_utils.core import config, paths
from mstl_utils.data import folds as folds_mod
from mstl_utils.engine import executors, lifecycle
from mstl_utils.experiments import protocol, search
from mstl_utils.report import analysis

#: Every key notebook 07 glues (its prose reads them).
GLUE_KEYS = {"search_n_studies", "search_arms", "search_n_folds", "search_outer_repeats", "search_n_trials",
             "search_startup", "search_n_workers", "search_wall_min", "search_trial_min", "search_verdict"}


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    return config.get_profile("smoke", data="real")


def _first_fold(folds):
    """The rows of fold 0 only: one study per arm (the other images still train; only fold 0 is tested)."""
    return folds[folds["fold"] == 0].reset_index(drop=True)


def test_search_space_and_tuned_profile(profile):
    s = search.get_search("quick")
    assert s.n_trials == 20 and s.arms == ("imagenet", "multistage")
    assert search.get_plan is search.get_search and search.PLANS is search.SEARCHES
    assert search.get_plan("quick", n_trials=None, repeats=None) == s  # None: the profile's value
    assert search.get_plan("quick", arms=["imagenet"]).arms == ("imagenet",)
    params = search.suggest(optuna.trial.FixedTrial({"lr": 3e-4, "batch_size": 16, "weight_decay": 1e-5}), s)
    assert params == {"lr": 3e-4, "batch_size": 16, "weight_decay": 1e-5}
    tuned = search.tuned_profile(profile, params)
    assert (tuned.stage2.lr, tuned.stage2.batch_size, tuned.stage2.weight_decay) == (3e-4, 16, 1e-5)
    assert tuned.stage2.num_epochs == profile.stage2.num_epochs and tuned.stage1 == profile.stage1
    with pytest.raises(ValueError, match="no search settings for profile 'nope'"):
        search.get_search("nope")
    with pytest.raises(ValueError, match="n_trials=0"):
        search.get_search("quick", n_trials=0)


def test_study_names_change_with_what_a_study_depends_on(profile):
    folds, _ = protocol.target_folds(profile)
    s = search.get_search("smoke")
    studies = search.plan_studies(profile, s, folds)
    names = [p.name for p in studies]
    assert names == [p.name for p in search.plan_studies(profile, s, folds)]  # stable: workers agree
    assert len(names) == len(set(names)) == len(s.arms) * profile.cv_folds
    assert names[0].startswith("imagenet/repeat00_fold0/")
    # A study trains like the protocol's run of its arm and fold.
    assert [p.spec for p in studies] == [r.spec for r in protocol.plan(profile, folds, arms=s.arms)]
    more_trials = [p.name for p in search.plan_studies(profile, search.get_search("smoke", n_trials=4), folds)]
    other_lr = [p.name for p in search.plan_studies(profile.replace(stage2={"lr": 1e-4}), s, folds)]
    assert not set(names) & set(more_trials) and not set(names) & set(other_lr)
    # Another bridge checkpoint (its sha256) renames the multi-stage studies, not the single-stage ones.
    bridge = next(p.spec.init for p in studies if p.arm == "multistage")
    checkpoint = lifecycle.run_dir(bridge) / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"other weights")
    other_bridge = [p.name for p in search.plan_studies(profile, s, folds)]
    changed = {a for a, b in zip(names, other_bridge) if a != b}
    assert changed == {p.name for p in studies if p.arm == "multistage"}
    with pytest.raises(ValueError, match="repeats=2 but the folds have 1 repeat"):
        search.plan_studies(profile, search.get_search("smoke", repeats=2), folds)


def test_a_worker_needs_the_bridge_checkpoints(profile):
    with pytest.raises(FileNotFoundError, match=r"bridge run smoke/stage1/seed0 \(smoke/stage1-\w+/seed0 in the runs "
                                                r"folder\) missing"):
        search.work(profile, search.get_search("smoke", arms=("multistage",)))


def test_a_worker_that_plans_other_studies_stops(profile, tmp_path):
    folds, _ = protocol.target_folds(profile)
    s = search.get_search("smoke", arms=("imagenet",))
    names = tuple(p.name for p in search.plan_studies(profile, s, folds))
    task = search.WorkerTask(profile, s, f"sqlite:///{tmp_path / 'x.db'}", 0, folds, None,
                             str(paths.runs_dir()), ("imagenet/repeat00_fold0/0000000000",) + names[1:])
    with pytest.raises(RuntimeError, match="plans study 'imagenet/repeat00_fold0/.*', not the driver's"):
        search.run_worker(task)


def _copy_with_other_test_fold(source, target, test_ids, *, change_training_image=False):
    """A copy of the synthetic head-CT set whose test-fold images are blanked and labels flipped."""
    shutil.copytree(source, target)
    labels = pd.read_csv(target / "head_ct" / "labels.csv")
    labels.columns = [c.strip() for c in labels.columns]
    ids = labels["id"].map(lambda i: f"{int(i):03d}")
    in_test = ids.isin(test_ids)
    labels.loc[in_test, "hemorrhage"] = 1 - labels.loc[in_test, "hemorrhage"]
    labels.to_csv(target / "head_ct" / "labels.csv", index=False)
    for image_id in (ids[~in_test].iloc[:1] if change_training_image else ids[in_test]):
        path = target / "head_ct" / "head_ct" / "head_ct" / f"{image_id}.png"
        size = Image.open(path).size
        Image.fromarray(np.full(size[::-1], 255 if change_training_image else 0, np.uint8)).save(path)


@pytest.mark.slow
def test_trials_never_see_the_test_fold(profile, synthetic_root, tmp_path, monkeypatch):
    """Trial scores must not change when the test fold's images and labels do, and must
    change when one training image does (so the comparison can detect a leak)."""
    folds, _ = protocol.target_folds(profile)
    folds = _first_fold(folds)
    s = search.get_search("smoke", arms=("imagenet",), n_trials=2, startup_trials=2)
    first = search.plan_studies(profile, s, folds)[0]
    test_ids = first.run.split.test_ids

    def scores(data_dir):
        monkeypatch.setenv("MSTL_DATA_DIR", str(data_dir))
        storage = f"sqlite:///{tmp_path / data_dir.name}.db"
        search.work(profile, s, storage=storage, folds=folds)
        trials = optuna.load_study(study_name=first.name, storage=storage).get_trials()
        return [(t.params["lr"], t.value) for t in sorted(trials, key=lambda t: t.number)]

    original = scores(synthetic_root)
    _copy_with_other_test_fold(synthetic_root, tmp_path / "other_test", test_ids)
    _copy_with_other_test_fold(synthetic_root, tmp_path / "other_train", test_ids, change_training_image=True)
    assert scores(tmp_path / "other_test") == original
    changed = scores(tmp_path / "other_train")
    assert [lr for lr, _ in changed] == [lr for lr, _ in original]  # same proposals ...
    assert [v for _, v in changed] != [v for _, v in original]  # ... scored on other training data


def _start_after_barrier(item):
    barrier, task = item
    barrier.wait(timeout=300)  # both workers are up before either takes a trial
    return search.run_worker(task)


def _tasks(profile, s, storage, folds, n):
    names = tuple(p.name for p in search.plan_studies(profile, s, folds))
    return [search.WorkerTask(profile, s, storage, k, folds, None, str(paths.runs_dir().resolve()), names)
            for k in range(n)]


@pytest.mark.slow
def test_two_worker_processes_fill_one_sqlite_storage(profile, tmp_path):
    """Two search workers, processes of the local executor's ``map``, share one SQLite study."""
    folds = _first_fold(protocol.target_folds(profile)[0])
    s = search.get_search("smoke", arms=("imagenet",), n_trials=4)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    with multiprocessing.get_context("spawn").Manager() as manager:
        barrier = manager.Barrier(2)
        ran = executors.get_executor("local").map(_start_after_barrier,
                                                  [(barrier, t) for t in _tasks(profile, s, storage, folds, 2)],
                                                  workers=2)
    trials = search.trial_table(search.plan_studies(profile, s, folds), storage)
    finished = trials[trials["state"].isin(["COMPLETE", "PRUNED"])]
    assert len(trials) == len(finished) == sum(ran), "no trial left running or failed"
    per_study = finished.groupby("study").size()
    assert len(per_study) == 1
    assert ((per_study >= s.n_trials) & (per_study <= s.n_trials + 1)).all(), per_study.to_dict()
    assert finished["worker"].nunique() == 2, "both worker processes ran trials of the shared study"
    assert finished.groupby("study")["trial"].apply(lambda t: sorted(t) == list(range(len(t)))).all()


@pytest.mark.slow
def test_search_workers_run_as_ray_tasks(profile, tmp_path, monkeypatch):
    """With the Ray executor the search's workers are Ray tasks writing into the same storage."""
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    folds = _first_fold(protocol.target_folds(profile)[0])
    s = search.get_search("smoke", arms=("imagenet",), n_trials=2, startup_trials=2)
    storage = f"sqlite:///{tmp_path / 'ray.db'}"
    with executors.get_executor("ray", num_cpus=2) as ex:
        ran = ex.map(search.run_worker, _tasks(profile, s, storage, folds, 2))
    trials = search.trial_table(search.plan_studies(profile, s, folds), storage)
    assert sum(ran) == len(trials) >= s.n_trials and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert not trials["worker"].str.endswith(f":{__import__('os').getpid()}").any(), "trials ran in Ray workers"


@pytest.mark.slow
def test_search_writes_the_contract_tables_and_a_rerun_resumes(profile):
    s = search.get_plan("smoke", arms=("imagenet",), n_trials=2, startup_trials=2)
    found = search.run(profile, s, workers=1)
    assert found.storage.startswith("sqlite:///") and found.storage.endswith("smoke/search/optuna.db")
    assert found.trials_run == len(found.studies) * s.n_trials == len(found.trials)
    files = search.tables(found)
    assert list(files) == ["search_trials.csv", "search_outer.csv", "search_best.csv", "search_tests.csv"]
    assert list(files["search_trials.csv"].columns) == search.TRIAL_COLUMNS
    assert list(files["search_best.csv"].columns) == search.BEST_COLUMNS
    assert list(files["search_outer.csv"].columns) == search.OUTER_COLUMNS
    assert list(files["search_tests.csv"].columns) == ["arm", *analysis.TEST_COLUMNS]
    outer = found.outer
    assert len(outer) == 2 * profile.cv_folds
    tuned = outer[outer["setting"] == "tuned"].merge(found.best, on=["arm", "repeat", "fold"], suffixes=("", "_best"))
    assert len(tuned) == profile.cv_folds
    assert np.allclose(tuned["lr"], tuned["lr_best"]) and (tuned["batch_size"] == tuned["batch_size_best"]).all()
    assert (outer.loc[outer["setting"] == "paper", "lr"] == profile.stage2.lr).all()
    best = found.best.set_index(["repeat", "fold"])
    for planned, result in zip(found.studies, found.tuned):  # the final run trained with its study's best settings
        chosen = best.loc[(result.config["split"]["repeat"], result.config["split"]["fold"])]
        assert result.config["name"] == "tuned_imagenet" and result.spec.split == planned.spec.split
        assert result.config["config"]["lr"] == pytest.approx(chosen["lr"])
        assert result.config["config"]["batch_size"] == chosen["batch_size"]
        # ... and trained exactly as its best trial did: same data, seed and starting weights.
        assert result.history["val_loss"].iloc[-1] == pytest.approx(chosen["value"], abs=1e-7)
    assert [r.spec for r in found.paper] == [p.spec for p in found.studies]  # the protocol's runs of those folds
    glued = search.glue_values(found, files)
    assert set(glued) == GLUE_KEYS | {"search_imagenet_tuned", "search_imagenet_paper"}
    assert glued["search_n_studies"] == profile.cv_folds and glued["search_outer_repeats"] == 1
    assert search.verdict(found, files).startswith("**imagenet**: ")
    top = search.header(found)
    assert "**Profile:** `smoke`" in top and "Search storage" in top and "trials run by this execution: 6" in top
    again = search.run(profile, s, workers=1)
    assert again.trials_run == 0
    pd.testing.assert_frame_equal(again.best, found.best)
    # An extra worker started when every study is full runs nothing and exits cleanly.
    assert search.main(["--profile", "smoke", "--data", "real", "--trials", "2", "--arms", "imagenet"]) == 0
    assert len(search.trial_table(found.studies, found.storage)) == len(found.trials)


def test_best_table_takes_the_lowest_complete_loss():
    trials = pd.DataFrame({
        "study": ["a"] * 4 + ["b"] * 2, "trial": [0, 1, 2, 3, 0, 1],
        "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "FAIL"],
        "lr": [1e-3, 1e-4, 1e-5, 1e-2, 1e-3, None], "batch_size": [8, 16, 8, 32, 8, None],
        "weight_decay": [1e-6] * 6, "value": [0.6, 0.4, 0.1, 0.4, 0.7, None], "duration_s": [1.0] * 6,
        "arm": ["imagenet"] * 4 + ["multistage"] * 2, "repeat": 0, "fold": 0, "epochs": 10,
        "val_accuracy": 0.8, "worker": "w"})
    best = search.best_table(trials).set_index("study")
    assert best.loc["a", "trial"] == 1 and best.loc["a", "lr"] == 1e-4  # pruned 0.1 is not final; tie -> earlier
    assert (best.loc["a", "n_complete"], best.loc["a", "n_pruned"]) == (3, 1)
    assert best.loc["b", "trial"] == 0
    with pytest.raises(ValueError, match="study 'b' has no complete trial"):
        search.best_table(trials[~((trials["study"] == "b") & (trials["state"] == "COMPLETE"))])


def test_tuning_tests_pair_settings_fold_by_fold():
    rng = np.random.default_rng(0)
    rows = []
    for arm, gain in (("imagenet", 0.05), ("multistage", 0.0)):
        for fold in range(5):
            base = 0.8 + rng.normal(0, 0.02)
            for setting, acc in (("paper", base), ("tuned", base + gain + rng.normal(0, 0.01))):
                rows.append({"arm": arm, "setting": setting, "repeat": 0, "fold": fold, "accuracy": acc,
                             "auc": acc, "n_train": 128, "n_test": 40})
    outer = pd.DataFrame(rows)
    tests = analysis.tuning_tests(outer)
    assert list(tests.columns) == ["arm", *analysis.TEST_COLUMNS]
    wide = outer.pivot_table(index=["arm", "fold"], columns="setting", values="accuracy")
    for arm in ("imagenet", "multistage"):
        row = tests[(tests["arm"] == arm) & (tests["metric"] == "accuracy")].iloc[0]
        assert row["mean_diff"] == pytest.approx((wide.loc[arm, "tuned"] - wide.loc[arm, "paper"]).mean())
    acc = tests[tests["metric"] == "accuracy"]
    assert np.allclose(acc["p_adjusted"], np.minimum(1, np.maximum.accumulate(
        np.sort(acc["p_value"].to_numpy()) * np.array([2, 1])))[np.argsort(np.argsort(acc["p_value"].to_numpy()))])
    assert analysis.verdict(tests[tests["arm"] == "imagenet"], arm_a="tuned", arm_b="paper").startswith("Yes: tuned")


def test_storage_description_hides_passwords_and_absolute_paths():
    assert search.describe_storage("postgresql://mstl:secret@db.example/mstl") == "postgresql://mstl:***@db.example/mstl"
    inside = paths.project_root() / "runs" / "quick" / "search" / "optuna.db"
    assert search.describe_storage(f"sqlite:///{inside}") == "sqlite:///runs/quick/search/optuna.db"


def test_folds_of_later_repeats_are_not_searched(profile):
    folds = folds_mod.make_folds([f"{i:03d}" for i in range(30)], np.array([0, 1] * 15), n_splits=3, n_repeats=2,
                                 seed=0)
    kept = search.searched_folds(folds, search.get_search("smoke", repeats=1))
    assert set(kept["repeat"]) == {0} and len(kept) == 30
