"""The head-CT protocol: fold plan, chained starting weights, contract tables, tests and verdict."""

import numpy as np
import pandas as pd
import pytest
import torch

from mstl_utils.report import analysis, statistics as st
from mstl_utils.core import config
from mstl_utils.data import folds as folds_mod
from mstl_utils.experiments import protocol
from mstl_utils.engine import executors, lifecycle, stages, train


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    return config.get_profile("smoke", data="real", seeds=(0, 1), cv_repeats=2)


def _first_weight(state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    return next(v for k, v in state_dict.items() if k.endswith("weight"))


def test_plan_pairs_every_arm_on_every_fold_with_shared_seeds(profile):
    folds, origin = protocol.target_folds(profile)
    assert "made for real data" in origin  # 30 synthetic images do not match the committed file
    runs = protocol.plan(profile, folds)
    assert len(runs) == len(config.ARM_INIT) * profile.cv_folds * profile.cv_repeats
    by_fold = pd.DataFrame([{"arm": r.arm, "key": r.split.key, "seed": r.seed, "init_seed": r.init_seed,
                             "test": r.split.test_ids} for r in runs])
    per_key = by_fold.groupby("key")
    assert (per_key["arm"].nunique() == len(config.ARM_INIT)).all()
    assert (per_key["seed"].nunique() == 1).all() and (per_key["test"].nunique() == 1).all()
    for run in runs:
        assert run.seed == run.split.repeat and run.init_seed == profile.seeds[run.split.repeat % 2]
        _, expected = folds_mod.split_of(folds, repeat=run.split.repeat, fold=run.split.fold)
        assert run.split.test_ids == tuple(expected)
    assert sorted((b.name, b.seed) for b in protocol.bridges(runs)) == [
        ("stage1", 0), ("stage1", 1), ("stage1_scratch", 0), ("stage1_scratch", 1)]
    with pytest.raises(ValueError, match="unknown arm"):
        protocol.plan(profile, folds, arms=("imagenet", "bridge"))


@pytest.mark.slow
def test_chained_arms_start_from_their_bridge_checkpoint(profile):
    bridge = {name: lifecycle.run(protocol.bridge_spec(profile, init=init, seed=1))
              for name, init in config.STAGE1_INIT.items()}
    saved = {name: _first_weight(train.load_checkpoint(r.run_dir / "checkpoint.pt")["state_dict"])
             for name, r in bridge.items()}
    folds, _ = protocol.target_folds(profile)
    split = [s for s in protocol.splits(folds) if s.repeat == 1][0]
    for arm in ("multistage", "bridge_only"):
        spec = protocol.fold_spec(profile, arm, split)
        model, weights = stages.initial_model(spec, num_classes=2)
        assert torch.equal(_first_weight(model.state_dict()), saved[spec.init.name]), arm
        assert weights.source == spec.init.name and weights.file == f"{spec.init.name}/seed1/checkpoint.pt"
    scratch, _ = stages.initial_model(protocol.fold_spec(profile, "scratch", split), num_classes=2)
    assert not torch.equal(_first_weight(scratch.state_dict()), saved["stage1"])


@pytest.mark.slow
def test_protocol_writes_paired_contract_tables(profile):
    results = protocol.run_protocol(profile, arms=("imagenet", "multistage"))
    folds, _ = protocol.target_folds(profile)
    table = protocol.fold_table(results)
    assert list(table.columns) == protocol.FOLD_RESULT_COLUMNS
    assert len(table) == 2 * profile.cv_folds * profile.cv_repeats
    assert (table["n_test"] + table["n_train"] < folds["image_id"].nunique()).all()  # validation part held out
    # A fold run's test part is exactly the fold; its bridge is the one of its repeat's seed.
    for result in results:
        split = result.config["split"]
        _, expected = folds_mod.split_of(folds, repeat=split["repeat"], fold=split["fold"])
        assert sorted(result.predictions["image_id"]) == sorted(expected)
        if result.provenance["init_from"] == "stage1":
            assert result.provenance["weights"]["file"] == f"stage1/seed{split['repeat']}/checkpoint.pt"
    oof = protocol.oof_table(results)
    assert list(oof.columns) == protocol.OOF_COLUMNS
    per = oof.groupby(["arm", "repeat"])["image_id"]
    assert (per.nunique() == folds["image_id"].nunique()).all() and (per.size() == per.nunique()).all()
    labels = folds.drop_duplicates("image_id").set_index("image_id")["label"]
    assert (oof["label"].to_numpy() == labels.loc[oof["image_id"]].to_numpy()).all()
    assert protocol.load_protocol(profile, arms=("imagenet", "multistage"))[0].run_dir == results[0].run_dir
    tests = analysis.protocol_tests(table, oof)
    assert list(tests.columns) == analysis.TEST_COLUMNS
    assert set(tests["test"]) == {"nadeau_bengio", "mcnemar_exact/repeat0", "mcnemar_exact/repeat1",
                                  "delong/repeat0", "delong/repeat1"}
    # The probability scores of each fold run, from its own test images.
    scores = protocol.fold_scores(results)
    assert list(scores.columns) == protocol.SCORE_COLUMNS and len(scores) == len(table)
    first = results[0].predictions
    p1, y = first.filter(like="prob_").iloc[:, 1].to_numpy(), first["label"].to_numpy()
    assert scores["brier"].iloc[0] == pytest.approx(np.mean((p1 - y) ** 2))
    assert scores["log_loss"].iloc[0] == pytest.approx(-np.mean(np.log(np.where(y == 1, p1, 1 - p1))), rel=1e-6)


@pytest.fixture
def fold_results():
    rng = np.random.default_rng(0)
    rows = []
    for repeat in range(2):
        for fold in range(5):
            base = rng.normal(0.8, 0.04)
            for arm, shift in (("scratch", -0.10), ("imagenet", 0.0), ("bridge_only", -0.05), ("multistage", 0.01)):
                rows.append({"arm": arm, "repeat": repeat, "fold": fold, "n_train": 128, "n_test": 40,
                             "accuracy": base + shift + rng.normal(0, 0.02), "auc": base + shift / 2})
    return pd.DataFrame(rows)


def test_corrected_tests_match_the_nadeau_bengio_formula_by_hand(fold_results):
    tests = analysis.corrected_tests(fold_results, metrics=("accuracy",))
    wide = fold_results.pivot(index=["repeat", "fold"], columns="arm", values="accuracy")
    d = (wide["multistage"] - wide["imagenet"]).to_numpy()
    se = np.sqrt((1 / 10 + 40 / 128) * d.var(ddof=1))
    t = d.mean() / se
    from scipy import stats

    row = tests.iloc[0]
    assert (row["arm_a"], row["arm_b"]) == analysis.PAIRS[0]
    assert row["statistic"] == pytest.approx(t) and row["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 9))
    assert row["ci_high"] - row["mean_diff"] == pytest.approx(stats.t.ppf(0.975, 9) * se)
    assert np.allclose(tests["p_adjusted"], st.adjust_pvalues(tests["p_value"]))
    assert len(tests) == len(analysis.PAIRS)


def test_pooled_tests_use_exact_mcnemar_and_delong_per_repeat():
    y = np.array([1] * 10 + [0] * 10)
    a = np.where(y == 1, 0.9, 0.1)
    b = a.copy()
    b[:6] = 0.2  # b misses six positives that a finds
    oof = pd.concat([pd.DataFrame({"arm": arm, "repeat": 0, "image_id": [f"{i:03d}" for i in range(20)],
                                   "label": y, "prob": p}) for arm, p in (("multistage", a), ("imagenet", b))])
    tests = analysis.pooled_tests(oof).set_index("test")
    mc = tests.loc["mcnemar_exact/repeat0"]
    assert mc["statistic"] == 6 and mc["p_value"] == pytest.approx(2 * 0.5 ** 6)
    assert mc["mean_diff"] == pytest.approx(0.3)
    dl = tests.loc["delong/repeat0"]
    assert dl["mean_diff"] == pytest.approx(st.delong_test(y, a, b)["diff"])
    with pytest.raises(ValueError, match="lacks out-of-fold probabilities"):
        analysis.pooled_tests(oof.iloc[:-1])


def test_verdict_is_written_from_the_numbers(fold_results):
    tests = analysis.corrected_tests(fold_results)
    text = analysis.verdict(tests, arm_a="imagenet", arm_b="scratch")
    row = tests[(tests["arm_a"] == "imagenet") & (tests["arm_b"] == "scratch") & (tests["metric"] == "accuracy")].iloc[0]
    assert text.startswith("Yes: imagenet did better than scratch")
    assert f"by {100 * row['mean_diff']:+.1f} percentage points" in text and f"{100 * row['ci_low']:+.1f} to" in text
    assert analysis.verdict(tests, arm_a="scratch", arm_b="imagenet").startswith("No, the opposite")
    flat = fold_results.assign(accuracy=np.where(fold_results["arm"] == "multistage",
                                                 fold_results["accuracy"] - 0.01, fold_results["accuracy"]))
    null = analysis.verdict(analysis.corrected_tests(flat), paper_gain=0.125)
    assert null.startswith("No detectable effect") and "rule out a gain that large" in null
    changed = analysis.verdict(analysis.corrected_tests(flat.assign(accuracy=flat["accuracy"] * 0.9)))
    assert changed != null.split(" The paper")[0]
    with pytest.raises(ValueError, match="no corrected t-test"):
        analysis.verdict(tests, arm_a="multistage", arm_b="nothing")


@pytest.mark.slow
def test_force_reruns_the_folds_but_reuses_complete_bridges(profile):
    profile = profile.replace(cv_repeats=1)
    first = protocol.run_protocol(profile, arms=("multistage",))
    bridge = lifecycle.run_dir(protocol.bridge_spec(profile, seed=0)) / "metrics.json"
    stamps = bridge.stat().st_mtime_ns, (first[0].run_dir / "metrics.json").stat().st_mtime_ns
    again = protocol.run_protocol(profile, arms=("multistage",), force=True)
    assert bridge.stat().st_mtime_ns == stamps[0]
    assert (again[0].run_dir / "metrics.json").stat().st_mtime_ns != stamps[1]


def test_minimum_detectable_difference_by_hand_and_its_floor():
    from scipy import stats

    mdd = st.minimum_detectable_difference(0.045, n_folds=15, n_train=128, n_test=40)
    se = np.sqrt((1 / 15 + 40 / 128) * 0.045**2)
    assert mdd == pytest.approx((stats.t.ppf(0.975, 14) + stats.t.ppf(0.8, 14)) * se)
    more = [st.minimum_detectable_difference(0.045, n_folds=5 * r, n_train=128, n_test=40) for r in (3, 10, 1000)]
    assert more[0] > more[1] > more[2] > (1.96 + 0.84) * np.sqrt(40 / 128) * 0.045 * 0.99  # n_test/n_train: a floor


def test_power_table_and_the_design_verdict(fold_results):
    power = analysis.power_table(fold_results)
    assert list(power.columns) == analysis.POWER_COLUMNS
    assert set(power["design"]) == {"this study (2 x 5 folds)", "10 x 5 folds"}
    row = power[(power["arm_a"] == "multistage") & (power["arm_b"] == "imagenet") & (power["metric"] == "accuracy")
                & (power["folds"] == 10)].iloc[0]
    wide = fold_results.pivot(index=["repeat", "fold"], columns="arm", values="accuracy")
    sd = (wide["multistage"] - wide["imagenet"]).std(ddof=1)
    assert row["mdd"] == pytest.approx(st.minimum_detectable_difference(sd, n_folds=10, n_train=128, n_test=40))
    tests = analysis.corrected_tests(fold_results)
    text = analysis.design_verdict(tests, power, fold_results, paper_accuracy={"imagenet": 0.75, "multistage": 0.875})
    baseline = fold_results.loc[fold_results["arm"] == "imagenet", "accuracy"].mean()
    assert f"at most {100 * (1 - baseline):+.1f} points" in text and f"{100 * row['mdd']:.1f} points or more" in text
    assert "The paper's absolute gain (+12.5 points)" in text and "50 % fewer errors" in text
    assert "paper" not in analysis.design_verdict(tests, power, fold_results, paper_accuracy=None)


def test_the_secondary_verdict_counts_every_repeat_and_says_what_it_ignores():
    tests = pd.DataFrame({"arm_a": "multistage", "arm_b": "imagenet", "metric": ["accuracy", "accuracy", "auc", "auc"],
                          "mean_diff": [0.02, -0.03, -0.02, 0.01], "test": ["mcnemar_exact/repeat0", "mcnemar_exact/repeat1",
                                                                           "delong/repeat0", "delong/repeat1"],
                          "p_adjusted": [0.5, 0.01, 0.02, 0.9]})
    text = analysis.secondary_verdict(tests, alpha=0.05)
    assert "McNemar (accuracy): multistage significantly better in 0 and significantly worse in 1 of 2" in text
    assert "DeLong (AUC): multistage significantly better in 0 and significantly worse in 1 of 2" in text
    assert "ignore training variance" in text


def test_a_paper_gain_beyond_the_headroom_is_not_called_ruled_out(fold_results):
    tests = analysis.corrected_tests(fold_results)
    text = analysis.verdict(tests, paper_gain=0.125, headroom=0.05)
    assert "more than imagenet's errors leave possible here (+5.0 points)" in text and "rule out" not in text


def test_no_two_repeats_share_a_bridge_run(synthetic_root, monkeypatch):
    from mstl_utils.experiments import architectures, chain

    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    profile = config.get_profile("smoke", data="real", seeds=(0, 1), cv_repeats=4)
    folds, _ = protocol.target_folds(profile)
    assert [protocol.repeat_seed((0, 1), r) for r in range(4)] == [0, 1, 2, 3]
    assert [protocol.repeat_seed((5, 2), r) for r in range(4)] == [5, 2, 6, 7]
    plans = {"protocol": [(r.split.repeat, r.spec.init) for r in protocol.plan(profile, folds)
                          if not isinstance(r.spec.init, str)],
             "chain": [(s.split.repeat, s.init) for s in chain.fold_specs(profile, "imagenet,chest_xray3,head_ct",
                                                                          folds, seeds=(0,))],
             "architectures": [(r.split.repeat, r.spec.init) for r in architectures.plan(
                 profile, "efficientnet_lite0", folds, seeds=(0,), allow_random=True) if not isinstance(r.spec.init, str)]}
    for chapter, starts in plans.items():
        owner = {}
        for repeat, bridge in starts:
            key = (bridge.name, bridge.relpath)
            assert owner.setdefault(key, repeat) == repeat, f"{chapter}: repeats {owner[key]} and {repeat} share {key}"
        assert len({r for r, _ in starts}) == 4, chapter


def test_what_a_change_of_folds_did_to_each_arm(fold_results):
    before = fold_results.assign(accuracy=fold_results["accuracy"] + 0.01)
    change = analysis.folds_change(before, fold_results)
    assert set(change["arm"]) == set(fold_results["arm"]) and len(change) == 8
    assert np.allclose(change.loc[change["metric"] == "accuracy", "change"], -0.01)
    assert analysis.folds_change(None, fold_results).empty
