"""Several processes on one store: a shared key is computed once; readers never fail."""

import time

import numpy as np
import pytest

from layerprobe.features.store import FeatureStore, IncompleteEntryError

# The process that gets the lock stops in its first batch until the other one says it waits,
# so the two always overlap, whichever starts first.
_RENDEZVOUS = """
import time
MARKERS = {markers!r}
def _rendezvous():
    open(os.path.join(MARKERS, "computing-{me}"), "w").close()
    deadline = time.time() + 120
    while not any(n.startswith("waiting-") for n in os.listdir(MARKERS)) and time.time() < deadline:
        time.sleep(0.05)
on_batch(_rendezvous, 1)
def log(message, _log=log):
    if message.startswith("waiting"):
        open(os.path.join(MARKERS, "waiting-{me}"), "w").close()
    _log(message)
"""


@pytest.mark.slow
def test_two_processes_extracting_one_key_compute_it_once(harness, helpers, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    store_dir = tmp_path / "store"
    processes = [
        harness.run_script(store_dir, _RENDEZVOUS.format(markers=str(markers), me=me), background=True)
        for me in ("a", "b")
    ]
    outputs = [process.communicate(timeout=240) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    waiter, computer = sorted((helpers.report_of(stdout) for stdout, _ in outputs), key=lambda r: r["n_forward"])
    assert computer["computed"] == harness.layers and computer["n_forward"] == 24
    assert waiter["cached"] == harness.layers and waiter["computed"] == [] and waiter["n_forward"] == 0
    assert any(line.startswith("waiting") for line in waiter["log"])
    assert sorted(p.name[:-2] for p in markers.iterdir()) == ["computing", "waiting"]

    store = FeatureStore(store_dir)
    assert [row["status"] for row in store.entries()] == ["ok", "ok"]
    harness.assert_matches_reference(store)  # load() verifies each entry's checksum
    assert helpers.stray_files(store_dir) == []


_SLOW_WRITER = """
import time
def _slowly():
    open(os.path.join(STORE, "..", "writing"), "w").close()
    time.sleep(0.2)
on_batch(_slowly)
_discard = store_module.PartialEntry.discard
def _discard_then_pause(self):
    _discard(self)
    time.sleep(1.0)  # after each commit: readers see one layer complete while the writer still runs
store_module.PartialEntry.discard = _discard_then_pause
"""


@pytest.mark.slow
def test_reader_polling_the_key_being_written_sees_nothing_then_exactly_the_result(harness, tmp_path):
    store_dir = tmp_path / "store"
    store = FeatureStore(store_dir)
    key = harness.keys["block1_pool"]  # the very key the other process is writing
    writer = harness.run_script(store_dir, _SLOW_WRITER, background=True)

    incomplete = complete_while_writing = 0
    deadline = time.monotonic() + 240
    while writer.poll() is None and time.monotonic() < deadline:
        try:
            loaded = store.load(key)  # verifies the checksum every time
        except IncompleteEntryError:
            incomplete += 1  # not committed yet: never a partial, corrupt or locked read
        else:
            assert np.array_equal(loaded.X, harness.reference["block1_pool"].X)
            complete_while_writing += writer.poll() is None
        assert all(row["status"] == "ok" for row in store.entries())
        time.sleep(0.01)  # leave the writer some CPU
    _, stderr = writer.communicate(timeout=60)
    assert writer.returncode == 0, stderr[-3000:]
    assert incomplete >= 5 and complete_while_writing >= 1, (incomplete, complete_while_writing)
    assert len(store.entries()) == 2 and all(row["status"] == "ok" for row in store.entries())
    harness.assert_matches_reference(store)
