"""benchmarks/pixel_cache.py runs in its quick form and ends with its summary line."""

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_pixel_cache_benchmark(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/pixel_cache.py", "--quick", "--n-images", "12", "--size", "64", "--repeats", "1",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.rstrip().splitlines()[-1]
    assert re.fullmatch(r"pixel cache: reading back is \d+\.\d× faster than decoding again \(fill costs [+-]\d+% "
                        r"over a decode\)", last), last
    row = json.loads((tmp_path / "quick" / "results.json").read_text())
    assert row["n_images"] == 12 and row["cache_bytes"] > 12 * 64 * 64 * 3
    assert row["read_wall_s"] > 0 and row["decode_wall_s"] > 0
