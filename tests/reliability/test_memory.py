"""Memory bounds of decoding and of verified loading, measured in fresh processes (`memory_probe.py`).

The peaks are resident memory above a baseline taken just before the call, so
they include Pillow's and HDF5's own buffers. RELIABILITY.md quotes the numbers
before and after the fixes.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("memory_probe.py")


def _peak(what, folder, **env):
    import os

    process = subprocess.run(
        [sys.executable, str(PROBE), what, str(folder)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_decoding_a_16_bit_png_stays_near_its_raw_size(tmp_path):
    _peak("decode", tmp_path)  # makes the 3000x3000 16-bit PNG (18 MB of pixels, 24 KB on disk)
    measured = _peak("decode", tmp_path)
    assert measured["file_kib"] < 100
    assert measured["peak_above_baseline_mib"] < 80, measured  # before the fix: about 250 MiB (float64 path)


def test_decoding_a_large_jpeg_uses_a_reduced_scale(tmp_path):
    _peak("jpeg", tmp_path)  # makes the 6000x4000 JPEG
    measured = _peak("jpeg", tmp_path)
    assert measured["peak_above_baseline_mib"] < 40, measured  # before the fix: about 275 MiB (full decode)


@pytest.mark.slow
def test_verifying_a_loaded_entry_costs_no_copy_of_the_features(tmp_path):
    verified = _peak("load", tmp_path, ENTRY_MIB="128")  # makes the entry first
    verified = _peak("load", tmp_path, ENTRY_MIB="128")
    unverified = _peak("load-unverified", tmp_path, ENTRY_MIB="128")
    extra = verified["peak_above_baseline_mib"] - unverified["peak_above_baseline_mib"]
    assert extra < 6, (verified, unverified)  # before the fix: one 16 MiB copy per block hashed
    assert verified["peak_above_baseline_mib"] < 128 * 1.15, verified
