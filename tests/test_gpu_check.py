"""The prepared GPU check runs end to end on the CPU with tiny settings and writes its table."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_writes_its_table_on_the_cpu(tmp_path, monkeypatch):
    out = tmp_path / "gpu_check.csv"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
                           "--out", str(out), "--budget", "600"], capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "MSTL_RUNS_DIR": str(tmp_path / "runs")})
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(out)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    assert list(table.columns) == gpu_check.COLUMNS
    assert set(table["measurement"]) == {"step", "processes", "paper"}
    graphs = table[table["variant"].str.startswith("CUDA graphs")]
    assert graphs["note"].str.startswith("not measured").all()  # said so on a CPU, never invented
    measured = table[table["img_per_s"].notna()]
    assert (measured["img_per_s"] > 0).all()
    assert table.loc[table["variant"].str.contains("all .* fold runs", regex=True), "extrapolated"].all()
