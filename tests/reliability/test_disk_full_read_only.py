"""A full disk mid-extraction, and a store that cannot be written."""

import errno
import os

import h5py
import pytest

from layerprobe.features import atomic as atomic_module
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.store import feature_store as store_module
from layerprobe.features.store import FeatureStore, IncompleteEntryError, StoreError

_NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


def _fail_dataset(name_or_count):
    """A create_dataset that raises ENOSPC for a dataset name, or at the n-th call."""
    original, calls = h5py.Group.create_dataset, []

    def create(self, name, *args, **kwargs):
        calls.append(name)
        if name == name_or_count or len(calls) == name_or_count:
            raise _NO_SPACE
        return original(self, name, *args, **kwargs)

    return create


_fsync = os.fsync


def _fail_fsync(descriptor):
    """An fsync that raises ENOSPC for chunk files (other files, e.g. fingerprint.json, are synced)."""
    if ".tmp-chunk_" in os.readlink(f"/proc/self/fd/{descriptor}"):
        raise _NO_SPACE
    return _fsync(descriptor)


# name: (what to patch, replacement, resumed n_forward)
DISK_FULL = {
    "writing-a-chunk": (h5py.Group, "create_dataset", lambda: _fail_dataset(9), 16),  # chunk 1 of block1_pool
    "flushing-a-chunk": (os, "fsync", lambda: _fail_fsync, 24),  # the very first chunk
    "writing-the-entry": (h5py.Group, "create_dataset", lambda: _fail_dataset("labels"), 0),  # inside commit
}


@pytest.mark.parametrize("case", list(DISK_FULL))
def test_disk_full_is_a_clear_error_and_the_rerun_resumes(harness, helpers, tmp_path, monkeypatch, case):
    target, attribute, make, n_forward = DISK_FULL[case]
    monkeypatch.setattr(target, attribute, make())
    store = FeatureStore(tmp_path)
    with pytest.raises(StoreError, match="disk is full") as info:
        harness.extract(store)
    monkeypatch.undo()

    assert "Free some space" in str(info.value) and "resumes" in str(info.value)
    assert helpers.stray_files(tmp_path) == []
    assert helpers.decoder_threads_stop()
    for key in harness.keys.values():
        assert not store.has(key)
        with pytest.raises(IncompleteEntryError):
            store.load(key)
    assert store.entries() == []

    resumed = harness.extract(store)  # space freed
    assert resumed.n_forward == n_forward
    harness.assert_matches_reference(store)


def test_disk_full_while_creating_the_temporary_file(harness, tmp_path, monkeypatch):
    original = h5py.File

    def no_inode(name, mode="r", *args, **kwargs):
        if mode != "r":  # creating the temporary file of a chunk or entry
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", no_inode)
    with pytest.raises(StoreError, match="disk is full"):
        harness.extract(FeatureStore(tmp_path))


def _denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))


def test_read_only_store_fails_before_any_work(harness, tmp_path, monkeypatch):
    # As root, chmod does not stop writes: simulate the refusal on the write probe.
    monkeypatch.setattr(store_module.tempfile, "NamedTemporaryFile", _denied)

    def forbidden(*args, **kwargs):
        raise AssertionError("the model ran although the store is read-only")

    monkeypatch.setattr(FeatureExtractor, "_forward", forbidden)
    store = FeatureStore(tmp_path)
    with pytest.raises(StoreError, match="Cannot write to the feature store") as info:
        harness.extract(store)
    message = str(info.value)
    assert str(tmp_path) in message and "Permission denied" in message
    assert "Nothing was computed" in message and "--store" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock, no partial work


def test_read_only_store_still_serves_cached_features(harness, tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    harness.extract(store)
    monkeypatch.setattr(store_module.tempfile, "NamedTemporaryFile", _denied)
    monkeypatch.setattr(atomic_module, "temporary_path", _denied)  # every committed file starts as one
    report = harness.extract(store)
    assert report.cached == harness.layers and report.n_forward == 0
    harness.assert_matches_reference(store)
