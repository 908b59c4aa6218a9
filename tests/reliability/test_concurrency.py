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


# ---------------------------------------------------------------- `layerprobe run` and `layerprobe finetune` of one config
# (issue 24, item 12). Two real processes, made to overlap by markers: `finetune` starts once `run` has a row
# in the table, and `run` goes on only once `finetune` has read it; then one of them waits for the other to
# exit before its last table write, so that each order of finishing is tested.

_MARKERS = """
import atexit, os, sys, time
MARKERS = {markers!r}
def mark(name):
    open(os.path.join(MARKERS, name), "w").close()
def wait_for(name):
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(MARKERS, name)):
        if time.time() > deadline:
            sys.exit(f"gave up waiting for marker {{name}}")
        time.sleep(0.05)
atexit.register(mark, {me!r} + "-exited")
from layerprobe.pipeline.results import ResultsTable
_add = ResultsTable.add
"""

_RUN = _MARKERS + """
def add(self, row):
    if row["mode"] != "frozen" and {last!r} == "run":
        wait_for("finetune-exited")  # its end-to-end row is its last write
    _add(self, row)
    if len(self.rows) == 1:
        mark("run-has-a-row")
        wait_for("finetune-read")
ResultsTable.add = add
from layerprobe.pipeline.cli import main
sys.exit(main(["run", {config!r}, "--no-progress"]))
"""

_FINETUNE = _MARKERS + """
wait_for("run-has-a-row")
_keep = ResultsTable.keep_earlier_rows
def keep_earlier_rows(self, **kwargs):
    kept = _keep(self, **kwargs)
    mark("finetune-read")
    return kept
ResultsTable.keep_earlier_rows = keep_earlier_rows
def add(self, row):
    if {last!r} == "finetune":
        wait_for("run-exited")
    _add(self, row)
ResultsTable.add = add
from layerprobe.pipeline.cli import main
sys.exit(main(["finetune", {config!r}]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("last", ["finetune", "run"], ids=["finetune-finishes-last", "run-finishes-last"])
def test_run_and_finetune_of_one_config_at_once_lose_no_row_and_train_once(helpers, tmp_path, last):
    import pandas as pd

    helpers.write_images(tmp_path / "images", {"train": {"red": 4, "green": 4}, "test": {"red": 2, "green": 2}})
    finetune = {"modes": ["scratch"], "head_epochs": 1, "finetune_epochs": 1, "val_fraction": 0, "augmentation": {},
                "batch_size": 8}
    config = str(helpers.write_experiment(tmp_path / "run.toml", finetune=finetune))
    markers = tmp_path / "markers"
    markers.mkdir()
    processes = {
        name: helpers.run_python(code.format(markers=str(markers), me=name, last=last, config=config), background=True)
        for name, code in (("run", _RUN), ("finetune", _FINETUNE))
    }
    outputs = {name: process.communicate(timeout=600) for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, (name, outputs[name][1][-3000:])
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    # Before the fix, when finetune finished last: its snapshot of 1 frozen row plus its own row.
    assert sorted(table["mode"]) == ["frozen"] * 6 + ["scratch"]  # 2 layers x (2 classifiers + the ridge curve)
    logs = outputs["run"][0] + outputs["finetune"][0]
    # One owner per checkpoint: one process trained, the other waited and reused its row (before: both trained
    # into the same folder at once).
    assert logs.count("  training scratch VGG16") == 1 and logs.count("  reused scratch VGG16") == 1, logs
    assert "  waiting  for another process training scratch VGG16" in logs
