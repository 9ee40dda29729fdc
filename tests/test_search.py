"""The nested hyperparameter search: its space, study names, no leakage of the test fold,
several worker processes on one SQLite study, and the tuned-vs-paper test."""

import multiprocessing
import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from mstl_utils.report import analysis
from mstl_utils.core import config
from mstl_utils.data import folds as folds_mod
from mstl_utils.experiments import protocol, search


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    return config.get_profile("smoke", data="real")


def test_search_space_and_tuned_profile(profile):
    s = search.get_search("quick")
    assert s.n_trials == 20 and s.arms == ("imagenet", "multistage")
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
    folds, _ = protocol.head_ct_folds(profile)
    s = search.get_search("smoke")
    names = [p.name for p in search.plan(profile, s, folds)]
    assert names == [p.name for p in search.plan(profile, s, folds)]  # stable: workers agree
    assert len(names) == len(set(names)) == len(s.arms) * profile.cv_folds
    assert names[0].startswith("imagenet/repeat00_fold0/")
    more_trials = [p.name for p in search.plan(profile, search.get_search("smoke", n_trials=4), folds)]
    other_lr = [p.name for p in search.plan(profile.replace(stage2={"lr": 1e-4}), s, folds)]
    assert not set(names) & set(more_trials) and not set(names) & set(other_lr)
    with pytest.raises(ValueError, match="outer_repeats=2 but the folds have 1 repeat"):
        search.plan(profile, search.get_search("smoke", outer_repeats=2), folds)


def test_a_worker_needs_the_bridge_checkpoints(profile):
    with pytest.raises(FileNotFoundError, match="smoke/stage1/seed0 .in the runs folder.: bridge run missing"):
        search.work(profile, search.get_search("smoke", arms=("multistage",)))


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


def test_trials_never_see_the_test_fold(profile, synthetic_root, tmp_path, monkeypatch):
    """Trial scores must not change when the test fold's images and labels do, and must
    change when one training image does (so the comparison can detect a leak)."""
    folds, _ = protocol.head_ct_folds(profile)
    s = search.get_search("smoke", arms=("imagenet",), n_trials=2, startup_trials=2)
    first = search.plan(profile, s, folds)[0]
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


def _start_worker(barrier, profile, s, storage, folds, worker):
    barrier.wait()  # both processes are up before either takes a trial
    search.work(profile, s, storage=storage, folds=folds, worker=worker)


def test_two_worker_processes_fill_one_sqlite_storage(profile, tmp_path):
    folds, _ = protocol.head_ct_folds(profile)
    s = search.get_search("smoke", arms=("imagenet",), n_trials=4)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [context.Process(target=_start_worker, args=(barrier, profile, s, storage, folds, k)) for k in (0, 1)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]
    trials = search.trial_table(search.plan(profile, s, folds), storage)
    finished = trials[trials["state"].isin(["COMPLETE", "PRUNED"])]
    assert len(trials) == len(finished), "no trial left running or failed"
    per_study = finished.groupby("study").size()
    assert len(per_study) == profile.cv_folds
    assert ((per_study >= s.n_trials) & (per_study <= s.n_trials + 1)).all(), per_study.to_dict()
    assert finished["worker"].nunique() == 2, "both worker processes ran trials of the shared studies"
    assert finished.groupby("study")["trial"].apply(lambda t: sorted(t) == list(range(len(t)))).all()


def test_search_writes_the_contract_tables_and_a_rerun_resumes(profile):
    s = search.get_search("smoke", arms=("imagenet",), n_trials=2, startup_trials=2)
    found = search.run_search(profile, s, workers=1)
    assert found.storage.startswith("sqlite:///") and found.storage.endswith("smoke/search/optuna.db")
    assert found.trials_run == len(found.studies) * s.n_trials == len(found.trials)
    assert list(found.trials.columns[:8]) == ["study", "trial", "state", "lr", "batch_size", "weight_decay",
                                              "value", "duration_s"]
    outer = found.outer
    assert list(outer.columns[:6]) == ["arm", "setting", "repeat", "fold", "accuracy", "auc"]
    assert len(outer) == 2 * profile.cv_folds
    tuned = outer[outer["setting"] == "tuned"].merge(found.best, on=["arm", "repeat", "fold"], suffixes=("", "_best"))
    assert len(tuned) == profile.cv_folds
    assert np.allclose(tuned["lr"], tuned["lr_best"]) and (tuned["batch_size"] == tuned["batch_size_best"]).all()
    assert (outer.loc[outer["setting"] == "paper", "lr"] == profile.stage2.lr).all()
    for result in found.tuned:  # the final run trained with its study's best settings
        best = found.best.set_index(["repeat", "fold"]).loc[(result.config["split"]["repeat"],
                                                            result.config["split"]["fold"])]
        assert result.config["name"] == "tuned_imagenet"
        assert result.config["profile"]["stage2"]["lr"] == pytest.approx(best["lr"])
    again = search.run_search(profile, s, workers=1)
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
    from mstl_utils.core import paths
    inside = paths.project_root() / "runs" / "quick" / "search" / "optuna.db"
    assert search.describe_storage(f"sqlite:///{inside}") == "sqlite:///runs/quick/search/optuna.db"


def test_folds_of_later_repeats_are_not_searched(profile):
    folds = folds_mod.make_folds([f"{i:03d}" for i in range(30)], np.array([0, 1] * 15), n_splits=3, n_repeats=2,
                                 seed=0)
    kept = search.searched_folds(folds, search.get_search("smoke", outer_repeats=1))
    assert set(kept["repeat"]) == {0} and len(kept) == 30
