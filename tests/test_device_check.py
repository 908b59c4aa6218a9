"""The GPU device check (benchmarks/device_check.sh) runs end to end in its --smoke form."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("environment", "images", "decode", "jpeg[{b}]", "tests[{b}]", "bench[{b}]", "finetune[{b}]", "probes")


@pytest.mark.slow
def test_smoke_device_check_runs_every_stage(tmp_path):
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "KERAS_BACKEND": backend,
           "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--smoke", "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    output = done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    statuses = {stage["stage"]: (stage["status"], stage.get("error")) for stage in report["stages"]}
    expected = [name.format(b=backend) for name in STAGES]
    assert [name for name in expected if name not in statuses] == [], output[-3000:]
    not_ok = {name: status for name, status in statuses.items() if status[0] != "ok"}
    if "does not exist" in str(not_ok.get("probes")):  # the probes package is optional
        del not_ok["probes"]
    assert not_ok == {}, output[-3000:]
    assert done.returncode == 0, output[-3000:]

    rows = report["bench"]
    assert {row["precision"] for row in rows} == {"float32", "bfloat16"}
    for row in rows:
        assert row["status"] == "ok" and row["backend"] == backend
        assert row["device_img_s"] > 0 and row["host_img_s"] > 0 and row["layerprobe_img_s"] > 0
        assert row["arrays_img_s"] > 0 and row["layerprobe_parts_s"]["forward"] > 0
        assert row["naive_img_s"] > 0 if row["precision"] == "float32" else "naive_skipped" in row
        assert len(row["layers"]) == 5
        assert row["max_rel_diff_layerprobe_vs_host"] < 1e-4  # the device loop computes what the host path does
    (finetune,) = report["finetune"]
    assert finetune["epochs"] == 1 and finetune["steps"] >= 2 and finetune["steady_img_s"] > 0
    assert report["devices"][backend]["backend"] == backend
    assert report["decode"]["img_s"] > 0

    jpeg = next(stage["result"] for stage in report["stages"] if stage["stage"] == f"jpeg[{backend}]")
    assert jpeg["n_images"] == 48 and jpeg["image"] == "50x38" and jpeg["decoder_used"] in ("pillow", "simplejpeg")
    assert jpeg["decoder"]["device_decoding_problem"]  # no GPU here: it says why
    assert jpeg["extract"]["n_forward"] == 48 and jpeg["extract"]["img_s"] > 0 and jpeg["extract"]["of_limit"] > 0
    probes = jpeg["probes"]
    assert probes["jax_device"] == "jax" and probes["cpu_s"] > 0 and probes["jax_s"] > 0
    assert probes["prediction_agreement"] >= 0.8

    markdown = (tmp_path / "out" / "device_check.md").read_text()
    assert "files/device" in markdown and "## Finetune" in markdown and "## From JPEG files" in markdown
    assert markdown.rstrip().splitlines()[-1] in done.stdout  # the tables are printed
