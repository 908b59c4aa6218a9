"""A disk that fills up mid-extraction, a read-only file system, a store this user may not write.

The faults are real, not mocked: the store lives on a 2 MiB tmpfs mounted for
the test, filled to leave a chosen amount of space (ENOSPC), or remounted
read-only (EROFS); the permission case runs as user `nobody` in a child forked
from this process. Mounting needs root (CAP_SYS_ADMIN); where it is not
permitted these cases skip and say so.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.store import FeatureStore, IncompleteEntryError, StoreError

PAGE = 4096


@pytest.fixture
def tmpfs(tmp_path):
    """`mount(size)`: a fresh tmpfs of `size` under tmp_path; unmounted after the test."""
    mounted = []

    def mount(size="2m"):
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); these cases need "
                        f"root with CAP_SYS_ADMIN to make a real full or read-only file system")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _fill(point: Path, leave_bytes: int) -> Path:
    """A file filling the file system at `point` up to `leave_bytes` of free space."""
    stats = os.statvfs(point)
    free = stats.f_bavail * stats.f_frsize
    filler = point / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    return filler


def _committed(store_dir: Path, key) -> set:
    return {p.name for p in (store_dir / ".partial" / key.digest).glob("chunk_*.h5")}


# free space left (bytes): where the disk fills up in the 24-image, 3-chunk workload
DISK_FULL = {
    "before-the-first-chunk": 0,  # fingerprint.json cannot be written
    "between-chunks": 16 * PAGE,  # chunk 0 of both layers fits, chunk 1 does not
    "in-the-commit": 31 * PAGE,  # every chunk fits, the entries do not
}


@pytest.mark.parametrize("case", list(DISK_FULL))
def test_disk_full_is_a_clear_error_and_the_rerun_resumes(harness, helpers, tmpfs, case):
    point = tmpfs("2m")
    store_dir = point / "store"
    store = FeatureStore(store_dir)
    filler = _fill(point, DISK_FULL[case])
    with pytest.raises(StoreError, match="disk is full") as info:
        harness.extract(store)
    assert "No space left on device" in str(info.value)
    assert "Free some space" in str(info.value) and "resumes" in str(info.value)
    assert helpers.stray_files(store_dir) == []  # every temporary file was removed
    assert helpers.decoder_threads_stop()
    committed = [_committed(store_dir, key) for key in harness.keys.values()]
    done_everywhere = set.intersection(*committed)
    if case == "before-the-first-chunk":
        assert committed == [set(), set()]
    elif case == "between-chunks":
        assert "chunk_000000.h5" in done_everywhere and len(done_everywhere) < 3
    else:
        assert len(done_everywhere) == 3
    for key in harness.keys.values():
        assert not store.has(key)
        with pytest.raises(IncompleteEntryError):
            store.load(key)
    assert store.entries() == []

    filler.unlink()  # space freed
    resumed = harness.extract(store)
    assert resumed.n_forward == 8 * (3 - len(done_everywhere))  # committed chunks are not recomputed
    harness.assert_matches_reference(store)
    assert helpers.stray_files(store_dir) == []


def test_read_only_file_system(harness, tmpfs, monkeypatch):
    point = tmpfs("2m")
    store = FeatureStore(point / "store")
    harness.extract(store)
    done = subprocess.run(["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
    with pytest.raises(OSError, match="Read-only file system"):
        (point / "store" / "probe").write_text("")  # the fault is real

    # Cached features are still served, nothing is written (no lock, no clean-up).
    report = harness.extract(FeatureStore(point / "store"))
    assert report.cached == harness.layers and report.n_forward == 0
    harness.assert_matches_reference(FeatureStore(point / "store"))

    # A new key fails before any work, with what to do.
    def forbidden(*args, **kwargs):
        raise AssertionError("the model ran although the store is read-only")

    monkeypatch.setattr(FeatureExtractor, "iter_features", forbidden)
    with pytest.raises(StoreError, match="Cannot write to the feature store") as info:
        harness.extract(FeatureStore(point / "store"), files=True)  # other data: new keys
    message = str(info.value)
    assert "Read-only file system" in message and "Nothing was computed" in message and "--store" in message


def test_store_this_user_may_not_write_fails_before_any_work(harness, as_nobody):
    shared = Path(tempfile.mkdtemp(prefix="layerprobe-ro-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        store_dir = shared / "store"
        store_dir.mkdir(mode=0o755)  # another user's store, under umask 022

        def extract():
            harness.extractor.extract(harness.dataset(), FeatureStore(store_dir), progress=False)

        failed = as_nobody(extract)  # a real EACCES: root would write anyway
        assert failed is not None
        classes, message = failed
        assert "StoreError" in classes and "Cannot write to the feature store" in message
        assert "Permission denied" in message and "Nothing was computed" in message
        assert sorted(p.name for p in store_dir.iterdir()) == []  # no lock, no partial work
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# ---------------------------------------------------------------- the output folder of `layerprobe run` (issue 24, item 11)


def test_a_full_disk_under_the_output_folder_is_one_line_and_the_rerun_resumes(helpers, tmpfs, tmp_path, capsys):
    from layerprobe.pipeline.cli import main

    point = tmpfs("12k")  # room for the folders and a file or two, not for a fitted row
    helpers.write_images(tmp_path / "images", {"train": {"red": 4, "green": 4}, "test": {"red": 2, "green": 2}})
    config = helpers.write_experiment(tmp_path / "run.toml", output={"dir": str(point / "out")})
    assert main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1  # before the fix: a chained OSError traceback
    assert err.startswith(f"layerprobe run: error: The disk is full while writing the run's outputs in {point / 'out'}")
    assert "No space left on device" in err and "Free some space" in err and "resumes" in err

    done = subprocess.run(["mount", "-o", "remount,size=8m", str(point)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert main(["run", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "0 images through a backbone" in out  # the features committed before the failure were kept
    assert len(pd.read_csv(point / "out" / "results.csv")) == 4


def test_a_read_only_output_folder_is_one_line(helpers, tmpfs, tmp_path, capsys):
    from layerprobe.pipeline.cli import main

    point = tmpfs("2m")
    (point / "out").mkdir()
    done = subprocess.run(["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
    helpers.write_images(tmp_path / "images", {"train": {"red": 4, "green": 4}, "test": {"red": 2, "green": 2}})
    config = helpers.write_experiment(tmp_path / "run.toml", output={"dir": str(point / "out")})
    assert main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"layerprobe run: error: Cannot write the output folder {point / 'out'}")
    assert "Read-only file system" in err and "--out" in err and "Nothing was run" in err
    assert not (tmp_path / "store").exists()  # found before any work


def _run_with_file_size_limit(config, limit):
    """`layerprobe run CONFIG` in a child whose files may not exceed `limit` bytes (`ulimit -f`), with SIGXFSZ
    ignored (as Python does), so that a write past the limit fails with EFBIG."""
    import resource
    import signal
    import sys

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = f"import sys; from layerprobe.pipeline.cli import main; sys.exit(main(['run', {str(config)!r}, '--no-progress']))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_a_clean_exit_and_the_rerun_resumes(helpers, tmp_path):
    helpers.write_images(tmp_path / "images", {"train": {"red": 4, "green": 4}, "test": {"red": 2, "green": 2}})
    config = helpers.write_experiment(tmp_path / "run.toml")
    # Before the fix: HDF5 hit EFBIG inside an entry, the line came, and then a segmentation fault (rc -11/139).
    done = _run_with_file_size_limit(config, 300_000)
    assert done.returncode == 2, done.stderr[-3000:]
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("layerprobe run: error: Could not write VGG16.block1_pool.") and (
        "File too large: the file-size limit is 300,000 bytes" in message and "`ulimit -f unlimited`" in message)
    assert not list((tmp_path / "store").glob("*.h5"))  # refused before the first byte of an entry

    assert _run_with_file_size_limit(config, None).returncode == 0
    expected = pd.read_csv(tmp_path / "out" / "results.csv")
    shutil.rmtree(tmp_path / "out")
    done = _run_with_file_size_limit(config, 20_000)  # the features are cached: an output file hits the limit
    assert done.returncode == 2, done.stderr[-3000:]
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"layerprobe run: error: A file of the run's outputs in {tmp_path / 'out'} grew past "
                              f"this process's file-size limit (`ulimit -f`)") and "File too large" in message
    assert _run_with_file_size_limit(config, None).returncode == 0
    same = ["layer", "classifier", "cv_score", "test_accuracy"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "results.csv")[same], expected[same])
