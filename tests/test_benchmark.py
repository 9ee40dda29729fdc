"""The benchmark's ratios, targets and findings, on constructed tables (the measuring runs in the smoke study)."""

import pandas as pd

from mstl_utils.core import config
from mstl_utils.experiments import benchmark


def _table(device="cpu", pipeline=95.0, plain=40.0, side_by_side=120.0):
    rows = [
        ("ceiling", "in-memory batch, fp32, channels_last", 100.0, "fp32", 1, ""),
        ("ceiling", "in-memory batch, fp32, contiguous", 70.0, "fp32", 1, "ceiling"),
        ("ceiling", "in-memory batch, bf16, channels_last", 80.0, "bf16", 1, "ceiling"),
        ("pipeline", "decoded-image cache + on-device augmentation", pipeline, "fp32", 1, "ceiling"),
        ("plain", "ImageFolder + PIL + DataLoader(2 workers), fp32", plain, "fp32", 1, "pipeline"),
        ("side_by_side", "1 run x 2 threads", 90.0, "fp32", 1, ""),
        ("side_by_side", "2 runs x 1 thread(s)", side_by_side, "fp32", 2, "side_by_side"),
        ("decoding", "decode 100 files with PIL", 50.0, "fp32", 1, ""),
        ("decoding", "read 100 images from the decoded-image cache", 5000.0, "fp32", 1, "decoding"),
    ]
    table = pd.DataFrame([{"measurement": m, "variant": v, "img_per_s": s, "precision": p, "processes": n,
                           "ratio_to": r, "device": device, "batch_size": 8, "images": 100, "seconds": 100 / s, "repeats": 1, "spread": 0.0}
                          for m, v, s, p, n, r in rows])
    return benchmark.with_ratios(table.reindex(columns=benchmark.COLUMNS))


def test_ratios_compare_with_the_first_row_of_the_named_measurement():
    table = _table()
    assert table.loc[1, "ratio"] == 0.7 and table.loc[3, "ratio"] == 0.95
    assert table.loc[4, "ratio"] == 40 / 95 and pd.isna(table.loc[0, "ratio"])
    assert benchmark.summary(table) == {"pipeline_over_ceiling": 0.95, "pipeline_over_plain": 95 / 40}


def test_targets_are_met_missed_or_not_measured_from_the_numbers():
    core = [f"{c}.ipynb" for c in config.CORE_CHAPTERS]
    times = pd.DataFrame({"notebook": core + ["gan.ipynb"], "profile": "quick",
                          "seconds": [100.0, 300.0, 300.0, 100.0, 100.0, 400.0, 20.0, 5000.0], "force": True})
    met = benchmark.targets(_table(), times).set_index("target")["met"]
    # The study target counts the core chapters only: 22 min > 20, the GAN chapter's 83 min aside.
    assert list(met) == ["yes", "not measured (no GPU)", "no", "not measured", "not measured (no GPU)"]
    assert benchmark.targets(_table(), times.assign(seconds=times["seconds"] / 2))["met"].tolist()[2] == "yes"
    assert benchmark.targets(_table(), times.iloc[1:])["met"].tolist()[2] == "not measured"  # a core step missing
    # The GPU targets come from the GPU check's table when a GPU ran it.
    gpu = pd.DataFrame({"measurement": ["paper", "paper"], "variant": ["stage 1: one epoch of 4172 images (median of 2)",
                                                                      "paper study: 6 bridges + 200 fold runs"],
                        "img_per_s": [3500.0, float("nan")], "seconds": [1.2, 540.0]})
    with_gpu = benchmark.targets(_table(), times, gpu).set_index("target")["met"]
    assert list(with_gpu)[3:] == ["yes", "yes"]
    reused = times.assign(force=False)
    assert benchmark.targets(_table(pipeline=90.0), reused)["met"].tolist() == [
        "no", "not measured (no GPU)", "not measured", "not measured", "not measured (no GPU)"]
    gpu = benchmark.targets(_table(device="cuda", plain=40.0), None)["met"].tolist()
    assert gpu[1] == "yes"


def test_findings_follow_the_numbers():
    text = " ".join(benchmark.findings(_table()))
    assert "0.70 times" in text and "rightly keeps fp32" in text and "in parallel processes" in text
    assert "does not pay" in " ".join(benchmark.findings(_table(side_by_side=60.0)))


def test_throughput_figure_labels_each_bar_with_its_own_value():
    import matplotlib

    matplotlib.use("Agg")
    from mstl_utils.report import plots

    table = _table().iloc[[0, 3, 4, 1, 2, 5, 6, 7, 8]]  # the benchmark's own order: ceiling rows apart
    fig = plots.throughput(table)
    ax = fig.axes[0]
    labels = {text.get_text().strip() for text in ax.texts if text.get_text().strip()}
    shown = table[table["measurement"] != "decoding"]
    assert labels == {f"{v:.0f}" for v in shown["img_per_s"]}
    for text in ax.texts:  # every label sits at the end of a bar of the same length
        if text.get_text().strip():
            assert abs(text.xy[0] - float(text.get_text())) < 0.5


def test_the_benchmark_times_the_studys_own_step_in_deterministic_mode(monkeypatch):
    import torch

    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = True
    settings = benchmark.Settings("mobilenet_v2", 32, 4, 4, steps=1, warmup=0, compile=False)
    images, seconds, _ = benchmark.ceiling(settings, torch.device("cpu"), precision="fp32", channels_last=True)
    assert images == 4 and seconds > 0
    assert torch.are_deterministic_algorithms_enabled()  # seeded as a study run is
    assert torch.utils.deterministic.fill_uninitialized_memory is False
