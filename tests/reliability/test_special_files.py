"""Paths that name something other than a small regular file: a FIFO, `/dev/zero`, a huge sparse file.

Every file layerprobe reads whole (configs, CSV manifests, results tables,
sidecars, row records, plans, `.layerprobe.json`) goes through
`layerprobe.core.files.read_bounded_bytes`: anything but a regular file is
refused before a byte is read, and a file above its cap is refused from its
size. Image files that are not regular files are skipped with their reason,
never read. The faults are real: `os.mkfifo`, a symbolic link to `/dev/zero`,
a sparse file of 100 GiB (`truncate`). The cases that once hung run in a child
process with a timeout, so that a regression fails instead of hanging.
"""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from layerprobe.core.errors import UnusableFileError
from layerprobe.core.files import RECORD_MAX_BYTES, read_bounded_bytes, read_bounded_text
from layerprobe.features.inputs import from_csv, from_directory
from layerprobe.pipeline.cli import main

HUGE = 100 << 30  # a sparse file: no disk space, and far above every cap


def _images(root: Path) -> Path:
    for position, name in enumerate(("red", "green")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            pixels = np.full((16, 16, 3), 40, np.uint8)
            pixels[..., position] = 200 + i
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _special(path: Path, kind: str) -> Path:
    """A real FIFO, a symbolic link to /dev/zero, or a sparse file of 100 GiB at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    else:
        with open(path, "wb") as handle:
            handle.truncate(HUGE)
    return path


def _layerprobe(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`layerprobe ARGS` in a child process: a regression that reads forever fails at `timeout`."""
    code = f"import sys; from layerprobe.pipeline.cli import main; sys.exit(main({list(args)!r}))"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("listed_in", ["folder", "csv"])
def test_a_fifo_and_a_link_to_dev_zero_among_the_images_are_skipped_with_their_reason_never_read(tmp_path, listed_in):
    images = _images(tmp_path / "images")
    fifo = _special(images / "red" / "pipe.png", "fifo")
    zero = _special(images / "green" / "zero.png", "dev-zero")
    data = images
    if listed_in == "csv":
        data = tmp_path / "list.csv"
        rows = [f"{path},{path.parent.name}" for path in sorted(images.rglob("*.png"))]
        data.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    # Before the fix: the content digest read the FIFO and /dev/zero forever; a folder dropped them unseen.
    done = _layerprobe("extract", "--model", "VGG16", "--weights", "none", "--layers", "block1_pool",
                       "--input-size", "32", "--data", str(data), "--store", str(tmp_path / "store"),
                       "--dataset-digest", "content", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipped  {fifo}: not a regular file: a FIFO (named pipe)" in done.stdout
    assert f"skipped  {zero}: not a regular file: a character device" in done.stdout
    dataset = from_directory(images) if listed_in == "folder" else from_csv(data)
    assert {str(fifo), str(zero)} <= set(dataset.sample_ids)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_layerprobe_run_on_a_fifo_dev_zero_or_a_huge_file_is_one_line_before_reading_it(tmp_path, capsys, kind):
    config = _special(tmp_path / "run.toml", kind)
    # Before the fix: `layerprobe run /dev/zero` grew to 21.7 GB; a FIFO waited for a writer.
    done = _layerprobe("run", str(config), "--no-progress", timeout=60)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"layerprobe run: error: The experiment config {config} is ")
    what = {"fifo": "a FIFO (named pipe), not a regular file", "dev-zero": "a character device, not a regular file",
            "huge": "100.0 GiB, more than the 64.0 MiB layerprobe accepts for it"}[kind]
    assert what in message and f"Received: path={str(config)!r}" in message


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_a_csv_manifest_that_is_a_fifo_dev_zero_or_huge_is_one_line(tmp_path, kind):
    csv = _special(tmp_path / "list.csv", kind)
    if kind != "huge":  # in this process only what cannot exhaust its memory should the fix regress
        with pytest.raises(UnusableFileError, match=r"^The CSV file .*list\.csv is (a FIFO|a character device)"):
            from_csv(csv)
    done = _layerprobe("extract", "--model", "VGG16", "--weights", "none", "--layers", "block1_pool",
                       "--data", str(csv), "--store", str(tmp_path / "store"), timeout=60)
    message = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and message.startswith(f"layerprobe extract: error: The CSV file {csv} is ")
    assert kind != "huge" or "is 100.0 GiB, more than the 1.0 GiB layerprobe accepts for it" in message


def test_the_bounded_reader_refuses_a_file_that_grows_past_its_cap_and_reads_small_ones_whole(tmp_path):
    small = tmp_path / "small.json"
    small.write_text('{"a": 1}', encoding="utf-8")
    assert read_bounded_text(small, "row record", 8) == '{"a": 1}'
    with pytest.raises(UnusableFileError, match=r"is 8 bytes, more than the 7 bytes layerprobe accepts for it"):
        read_bounded_bytes(small, "row record", 7)
    with pytest.raises(FileNotFoundError):
        read_bounded_bytes(tmp_path / "missing.json", "row record", RECORD_MAX_BYTES)


def _run_outputs(helpers, tmp_path):
    """A finished `layerprobe run` of the standard small experiment: (config path, output folder)."""
    helpers.write_images(tmp_path / "images", {"train": {"red": 4, "green": 4}, "test": {"red": 2, "green": 2}})
    path = helpers.write_experiment(tmp_path / "run.toml", classifiers={"names": ["logreg"]},
                                    backbones={"layers": ["block1_pool"]})
    assert main(["run", str(path), "--no-progress"]) == 0
    return path, tmp_path / "out"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_every_record_of_a_run_is_read_bounded(helpers, tmp_path, capsys, kind):
    """Row records and sidecars that are not regular files are refitted; the run ends in time and in one piece."""
    path, out = _run_outputs(helpers, tmp_path)
    record = next(out.rglob("logreg.row.json"))
    record.unlink()
    _special(record, kind)
    done = _layerprobe("run", str(path), "--no-progress", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fitted block1_pool / logreg" in done.stdout + done.stderr  # refitted, and the record is a file again
    assert json.loads(record.read_text(encoding="utf-8"))["row"]["classifier"] == "logreg"
    sidecar = record.with_name("logreg.json")
    sidecar.unlink()
    _special(sidecar, kind)
    done = _layerprobe("predict", str(sidecar.with_suffix(".skops")), "--data", str(tmp_path / "images" / "test"),
                       "--out", str(tmp_path / "p.csv"), timeout=120)
    assert done.returncode == 2 and f"The classifier sidecar {sidecar} is " in done.stderr.strip().splitlines()[-1]


def test_a_results_table_that_is_a_fifo_is_rebuilt_from_the_row_records(helpers, tmp_path, capsys):
    path, out = _run_outputs(helpers, tmp_path)
    expected = pd.read_csv(out / "results.csv")
    (out / "results.csv").unlink()
    _special(out / "results.csv", "fifo")
    done = _layerprobe("run", str(path), "--no-progress", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: the results table" in done.stdout + done.stderr
    assert (out / "results.csv").is_file()
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[["layer", "classifier", "test_accuracy"]],
                                  expected[["layer", "classifier", "test_accuracy"]])


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_weights_file_that_is_a_fifo_or_dev_zero_is_named_as_such(helpers, tmp_path, capsys, kind):
    from layerprobe.features.backbone import load_backbone
    from layerprobe.core.errors import WeightsUnavailableError

    weights = _special(tmp_path / "w.weights.h5", kind)
    what = {"fifo": "a FIFO (named pipe)", "dev-zero": "a character device"}[kind]
    with pytest.raises(WeightsUnavailableError, match=rf"^{weights} is {re.escape(what)}, not a regular file\."):
        load_backbone("VGG16", weights=str(weights), input_size=32)  # before: "Weights file not found"
    helpers.write_images(tmp_path / "images", {"train": {"red": 2, "green": 2}, "test": {"red": 1, "green": 1}})
    config = helpers.write_experiment(tmp_path / "run.toml", backbones={"weights": str(weights)})
    assert main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err  # the config names the link's target (/dev/zero)
    assert "[[backbones]] #1 weights: " in err and f" is {what}, not a regular file. Received: " in err


DAMAGED_TABLES = {
    "garbage": b"\x00\xff\x10garbage\n\"unterminated,\n" * 50,
    "foreign-columns": b"name,score\nx,1\ny,2\n",
    "unknown-mode": b"mode,backbone,layer\nfrozzen,VGG16,block1_pool\n",
    "empty": b"",
}


@pytest.mark.parametrize("damage", list(DAMAGED_TABLES))
def test_a_damaged_results_table_is_rebuilt_from_the_row_records_with_a_warning(helpers, tmp_path, capsys, damage):
    path, out = _run_outputs(helpers, tmp_path)
    expected = pd.read_csv(out / "results.csv")
    capsys.readouterr()
    (out / "results.csv").write_bytes(DAMAGED_TABLES[damage])
    # Before the fix: a pandas ParserError or "ValueError: A results row needs mode" traceback, on every rerun.
    assert main(["run", str(path), "--no-progress"]) == 0
    output = capsys.readouterr().out
    warning = next(line for line in output.splitlines() if line.startswith("warning: the results table"))
    assert f"{out / 'results.csv'} cannot be read (" in warning and warning.endswith(
        "rebuilt it from the 1 row record(s) of the output folder")
    same = ["mode", "layer", "classifier", "cv_score", "test_accuracy", "model_path"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[same], expected[same])
