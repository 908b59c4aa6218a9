"""Extractions killed or interrupted at every stage resume to bit-identical features.

The SIGKILL cases run the workload in a fresh process that kills itself at a
chosen point (slow: one process start each). The fast cases interrupt the
workload in this process, or plant what a killed writer leaves behind.
"""

import fcntl
import signal

import pytest

from layerprobe.features.store import FeatureStore, IncompleteEntryError, PartialEntry

FIRST = "block1_pool"

# Batch 5 is the first of chunk 2: chunk 0 is committed (waited for, the writer is a thread),
# chunk 1's batches are on the device. Resuming computes chunks 1 and 2.
_KILL_IN_FORWARD_PASS = """
on_batch(lambda: (wait_for_chunk_files(2), die()), 5)
"""

# A slow writer: chunks wait in the writer's queue when the process is killed in the last batch.
_KILL_WITH_CHUNKS_QUEUED = """
from layerprobe.features.store import PartialEntry
_write_chunk = PartialEntry.write_chunk
def _write_slowly(self, *args):
    import time
    time.sleep(0.5)
    _write_chunk(self, *args)
PartialEntry.write_chunk = _write_slowly
on_batch(die, 6)
"""

# A chunk is built in memory and written in one go (see store/hdf5.py): die halfway through that write.
_KILL_IN_CHUNK_WRITE = """
from layerprobe.features.store import hdf5 as hdf5_module
_write_image, _calls = hdf5_module._write_image, []
def _write_half_or_die(handle, image):
    _calls.append(1)
    if len(_calls) == 3:  # chunk 1 of block1_pool (after chunk 0 of both layers)
        handle.write(image[: len(image) // 2])
        handle.flush()
        die()
    return _write_image(handle, image)
hdf5_module._write_image = _write_half_or_die
"""

_KILL_IN_COMMIT = """
_read, _calls = store_module.PartialEntry.read_chunk, []
def _read_or_die(self, index):
    _calls.append(index)
    if len(_calls) == {n}:
        die()
    return _read(self, index)
store_module.PartialEntry.read_chunk = _read_or_die
"""

_KILL_BEFORE_RENAME = """
_replace = os.replace
def _replace_or_die(source, destination):
    destination = os.fspath(destination)
    if os.path.dirname(destination) == STORE and not os.path.basename(destination).startswith("."):
        die()  # the entry file is written and fsynced under its temporary name
    return _replace(source, destination)
os.replace = _replace_or_die
"""

_KILL_AFTER_RENAME = """
store_module.PartialEntry.discard = lambda self: die()  # block1_pool's entry is in place, its chunks not yet deleted
"""

# name: (fault, layers complete after the kill, where the killed writer left a temporary file, resumed n_forward)
KILLS = {
    "forward-pass": (_KILL_IN_FORWARD_PASS, [], None, 16),
    "chunks-queued-for-the-writer": (_KILL_WITH_CHUNKS_QUEUED, [], None, None),
    "chunk-write": (_KILL_IN_CHUNK_WRITE, [], "chunk", 16),
    "commit-after-1-chunk-copied": (_KILL_IN_COMMIT.replace("{n}", "2"), [], "entry", 0),
    "commit-of-second-layer": (_KILL_IN_COMMIT.replace("{n}", "5"), [FIRST], "entry", 0),
    "commit-before-rename": (_KILL_BEFORE_RENAME, [], "entry", 0),
    "commit-after-rename": (_KILL_AFTER_RENAME, [FIRST], "chunks-of-complete-entry", 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILLS))
def test_sigkill_then_resume_gives_identical_features(harness, helpers, tmp_path, case):
    fault, complete, leftover, n_forward = KILLS[case]
    process = harness.run_script(tmp_path, fault)
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]

    store = FeatureStore(tmp_path)
    keys = harness.keys
    incomplete = [name for name in harness.layers if name not in complete]
    for name in incomplete:
        assert not store.has(keys[name])
        with pytest.raises(IncompleteEntryError, match="resume"):
            store.load(keys[name])
    harness.assert_matches_reference(store, complete)
    # What the killed writer left is there, and ignored by listings.
    if leftover == "chunk":
        assert list((tmp_path / ".partial" / keys[FIRST].digest).glob(".tmp-chunk_000001.h5.*"))
    elif leftover == "entry":
        assert list(tmp_path.glob(f".tmp-{keys[incomplete[0]].entry_name}.h5.*"))
    elif leftover == "chunks-of-complete-entry":
        assert (tmp_path / ".partial" / keys[FIRST].digest).is_dir()
    assert [row["entry"] for row in store.entries()] == sorted(keys[name].entry_name for name in complete)
    assert all(row["status"] == "ok" for row in store.entries())

    committed = [len(list((tmp_path / ".partial" / keys[name].digest).glob("chunk_*.h5"))) for name in incomplete]
    resumed = harness.extract(store)
    if n_forward is None:  # as many chunks as the writer managed: none computed again, the others were lost
        assert resumed.n_forward == 8 * (3 - min(committed)) and min(committed) < 2
    else:
        assert resumed.n_forward == n_forward  # nothing committed is computed again
    assert resumed.cached == complete and resumed.computed == incomplete
    harness.assert_matches_reference(store)
    assert helpers.stray_files(tmp_path) == []
    assert not any((tmp_path / ".partial").iterdir())


@pytest.mark.parametrize("files", [False, True], ids=["arrays", "files"])
def test_interrupted_run_releases_everything_and_resumes(harness, helpers, tmp_path, monkeypatch, files):
    store = FeatureStore(tmp_path)
    harness.interrupt(store, monkeypatch, files=files, at="dispatch")
    assert helpers.decoder_threads_stop()
    assert helpers.stray_files(tmp_path) == []
    for key in (harness.file_keys if files else harness.keys).values():
        assert not store.has(key)
        with open(tmp_path / ".locks" / f"{key.digest}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: does not raise
    resumed = harness.extract(store, files=files)
    assert resumed.n_forward == 16  # chunk 0 was committed; chunk 1 was in flight
    harness.assert_matches_reference(store, files=files)


@pytest.mark.slow
def test_sigkill_of_a_file_extraction_then_resume_gives_identical_features(harness, tmp_path):
    process = harness.run_script(tmp_path, _KILL_IN_FORWARD_PASS, files=True)  # decoding PNGs, stat digest
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    store = FeatureStore(tmp_path)
    assert not any(store.has(key) for key in harness.file_keys.values())
    resumed = harness.extract(store, files=True)
    assert resumed.n_forward == 16
    harness.assert_matches_reference(store, files=True)
    # Sample ids are stored relative to the dataset root and come back absolute.
    assert all(sample_id.startswith(str(harness.images)) for sample_id in store.load(harness.file_keys[FIRST]).sample_ids)


def test_what_killed_writers_leave_is_ignored_then_cleaned(harness, helpers, tmp_path):
    store = FeatureStore(tmp_path)
    keys = harness.keys
    # A killed commit's temporary entry (here: garbage) for each key, named as now and as
    # stores written before atomic.temporary_path named them ...
    for key in keys.values():
        (tmp_path / f".tmp-{key.entry_name}.h5.killed").write_bytes(b"\x89HDF\r\n\x1a\n half written")
        (tmp_path / f".tmp-{key.entry_name}-killed.h5").write_bytes(b"\x89HDF\r\n\x1a\n half written")
    # ... and a killed chunk write in an unfinished extraction.
    partial = store.partial(keys[FIRST], {"batch_size": 4, "chunk_size": 8, "n_samples": 24})
    (partial.directory / ".tmp-chunk_000000.h5.killed").write_bytes(b"half written")
    assert store.entries() == []
    with pytest.raises(IncompleteEntryError):
        store.load(keys[FIRST])

    assert harness.extract(store).n_forward == 24
    harness.assert_matches_reference(store)
    assert helpers.stray_files(tmp_path) == []


def test_chunks_left_beside_a_complete_entry_are_removed_unless_being_written(harness, tmp_path):
    store = FeatureStore(tmp_path)
    harness.extract(store)
    key = harness.keys[FIRST]
    leftover = tmp_path / ".partial" / key.digest
    leftover.mkdir(parents=True)
    (leftover / "chunk_000000.h5").write_bytes(b"chunks of an entry committed just before a kill")

    with open(tmp_path / ".locks" / f"{key.digest}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another process is writing this key: hands off
        store.clean_up([key])
        assert leftover.is_dir()
    report = harness.extract(store)  # every layer cached: cleans what nobody is writing
    assert report.cached == harness.layers and report.n_forward == 0
    assert not leftover.exists()


def test_partial_entry_reports_nothing_discarded_on_a_clean_resume(harness, tmp_path):
    store = FeatureStore(tmp_path)
    fingerprint = {"batch_size": 4, "chunk_size": 8, "n_samples": 24}
    first = store.partial(harness.keys[FIRST], fingerprint)
    first.write_chunk(0, harness.reference[FIRST].X[:8], list(range(8)), [])
    again = store.partial(harness.keys[FIRST], fingerprint)
    assert isinstance(again, PartialEntry) and again.committed() == {0} and again.discarded == []
