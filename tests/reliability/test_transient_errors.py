"""I/O errors are not bad images: they are retried, then stop the run; nothing is recorded as unreadable.

The fault is a real `OSError` with a real errno raised where the decoder opens
the file: `Image.open` in the decoding module, for one path only (what a flaky
NFS server or a dying disk does, without a FUSE file system).
"""

import errno
import os

import numpy as np
import pytest
from PIL import Image

from layerprobe.core.errors import InputError, LayerprobeError
from layerprobe.features.inputs import decoding
from layerprobe.features.store import FeatureStore

FIRST = "block1_pool"


def _failing_open(path, errors):
    """`Image.open` raising `errors` (popped one per call) for `path`; other files open normally."""
    original, calls = Image.open, []

    def open_or_fail(file, *args, **kwargs):
        if os.fspath(getattr(file, "name", file)) == os.fspath(path):  # a path, or the file the decoder opened
            calls.append(1)
            if errors:
                raise errors.pop(0)
        return original(file, *args, **kwargs)

    return open_or_fail, calls


def _eio(path):
    return OSError(errno.EIO, os.strerror(errno.EIO), str(path))


def test_persistent_io_error_stops_the_run_and_commits_nothing_of_its_chunk(harness, tmp_path, monkeypatch):
    monkeypatch.setattr(decoding, "IO_BACKOFF_SECONDS", 0.01, raising=False)
    dataset = harness.files_dataset()
    bad = dataset.sample_ids[10]  # chunk 1 of 3
    opener, calls = _failing_open(bad, [_eio(bad) for _ in range(10)])
    monkeypatch.setattr(decoding.Image, "open", opener)
    store = FeatureStore(tmp_path)
    with pytest.raises(InputError) as info:
        harness.extract(store, files=True)
    error = info.value
    assert isinstance(error, LayerprobeError) and type(error).__name__ == "ImageReadError"
    message = str(error)
    assert bad in message and "EIO" in message and "3 tries" in message and "not a bad image" in message
    assert "Nothing was committed for this chunk (samples 8-15" in message
    assert len(calls) == decoding.IO_ATTEMPTS
    for key in harness.file_keys.values():
        assert not store.has(key)
        assert not (tmp_path / ".partial" / key.digest / "chunk_000001.h5").exists()
    assert store.entries() == []


def test_io_error_keeps_earlier_chunks_and_the_rerun_resumes(harness, tmp_path, monkeypatch):
    monkeypatch.setattr(decoding, "IO_BACKOFF_SECONDS", 0.01, raising=False)
    dataset = harness.files_dataset()
    bad = dataset.sample_ids[10]
    opener, _ = _failing_open(bad, [_eio(bad) for _ in range(3)])
    with monkeypatch.context() as patch:
        patch.setattr(decoding.Image, "open", opener)
        store = FeatureStore(tmp_path)
        with pytest.raises(InputError, match="Nothing was committed"):
            harness.extract(store, files=True)
    for key in harness.file_keys.values():
        chunks = sorted(p.name for p in (tmp_path / ".partial" / key.digest).glob("chunk_*.h5"))
        assert chunks == ["chunk_000000.h5"]  # chunk 1 (the failing file's) was never committed
    resumed = harness.extract(store, files=True)  # the file system is healthy again
    assert resumed.n_forward == 16 and resumed.skipped == []
    harness.assert_matches_reference(store, files=True)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EIO, "Input/output error"),
        OSError(errno.ESTALE, "Stale file handle"),
        OSError(errno.EMFILE, "Too many open files"),
        MemoryError(),
    ],
    ids=["EIO", "ESTALE", "EMFILE", "MemoryError"],
)
def test_transient_error_succeeding_on_the_second_try_is_invisible(harness, tmp_path, monkeypatch, error):
    monkeypatch.setattr(decoding, "IO_BACKOFF_SECONDS", 0.01, raising=False)
    dataset = harness.files_dataset()
    flaky = dataset.sample_ids[3]
    opener, calls = _failing_open(flaky, [error])
    monkeypatch.setattr(decoding.Image, "open", opener)
    store = FeatureStore(tmp_path)
    report = harness.extract(store, files=True)
    assert len(calls) == 2  # failed once, read on the second try
    assert report.skipped == [] and report.n_forward == 24  # before the fix: skipped as "truncated or corrupt"
    monkeypatch.undo()
    harness.assert_matches_reference(store, files=True)


def test_content_errors_are_still_skipped_not_retried(tmp_path, monkeypatch):
    calls = []
    original = Image.open
    monkeypatch.setattr(decoding.Image, "open", lambda *a, **k: calls.append(1) or original(*a, **k))
    path = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(decoding.UnreadableImageError, match="truncated or corrupt image"):
        decoding.load_image(path, 8)
    assert len(calls) == 1
