"""benchmarks/scale.py runs end to end in its --quick form and prints its figures and its last line."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_scale_benchmark_prints_each_size_and_the_ratio_line(shared_dir, tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--quick", "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"scale: 3,000 images in \d+ min; time per image \d+\.\d\d× and peak RSS \d+\.\d\d× the 1,000 run",
                        last), last
    results = json.loads((tmp_path / "out" / "scale.json").read_text())
    runs = [row for row in results if row["mode"] == "run"]
    assert [row["n_train"] for row in runs] == [1000, 3000]
    for row in runs:
        assert row["computed"] == len(row["ridge"]) > 1 and row["store_bytes"] > 0 and row["peak_rss"] > 0
        assert row["best_layer"] in row["ridge"]
        assert row["logreg"]["test_accuracy"] > 0.2  # ImageNet features of CIFAR-10 at 32 px: well above chance
    comparison = next(row for row in results if row["mode"] == "compare")["comparison"]
    assert set(comparison) == {"subsampled grid, streamed fit", "full grid in memory"}
    assert not list((tmp_path / "out").glob("store-*"))  # stores are removed unless --keep-stores
