"""`layerprobe run` and finetuning killed with SIGKILL, then run again.

Each case runs in a fresh process that kills itself at a chosen point (slow:
one process start each); the rerun happens in this process. A killed batch run
keeps the rows it finished and ends with the table of an uninterrupted run; a
killed finetuning resumes from its last complete checkpoint.
"""

import importlib.util
import json
import signal
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from layerprobe.core.atomic import TMP_PREFIX
from layerprobe.features.store import FeatureStore
from layerprobe.pipeline.config import load_config
from layerprobe.pipeline.finetune import FinetuneConfig, finetune
from layerprobe.pipeline.persistence import load_classifier
from layerprobe.pipeline.run import run_experiment

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]
SPLITS = {"train": {"red": 5, "green": 5, "blue": 5}, "test": {"red": 2, "green": 2, "blue": 2}}

_RUN = """
import os, signal, sys
def die():
    os.kill(os.getpid(), signal.SIGKILL)
{fault}
from layerprobe.pipeline.cli import main
sys.exit(main(["run", {config!r}, "--no-progress"]))
"""

# persistence commits its files with the write_atomically it imports from layerprobe.core.atomic:
# the name is looked up in persistence's namespace, so that is where it is patched.
_KILL_BETWEEN_A_CLASSIFIERS_FILES = """
import layerprobe.pipeline.persistence as persistence
_write, _sidecars = persistence.write_atomically, []
def _write_or_die(path, write):
    if path.suffix == ".json":
        _sidecars.append(path)
        if len(_sidecars) == 3:
            die()  # the third row's predictions and estimator are written, its sidecar is not
    return _write(path, write)
persistence.write_atomically = _write_or_die
"""

_KILL_BEFORE_THE_TABLE_RENAME = """
_replace, _tables = os.replace, []
def _replace_or_die(source, destination):
    if os.path.basename(destination) == "results.csv":
        _tables.append(1)
        if len(_tables) == 3:
            die()  # the table with the third row is complete under its temporary name
    return _replace(source, destination)
os.replace = _replace_or_die
"""

# name: (fault, rows in results.csv, estimators, sidecars and temporary files after the kill, rows the rerun reuses)
KILLS = {
    "between-the-files-of-a-classifier": (_KILL_BETWEEN_A_CLASSIFIERS_FILES, 2, 3, 2, 0, 2),
    "before-the-table-rename": (_KILL_BEFORE_THE_TABLE_RENAME, 2, 3, 3, 1, 3),
}


def _quiet(line):
    pass


@pytest.fixture(scope="module")
def uninterrupted(helpers, tmp_path_factory):
    """The experiment run once without faults; its store is shared with the killed runs."""
    root = tmp_path_factory.mktemp("uninterrupted")
    images = helpers.write_images(root / "images", SPLITS)
    config = load_config(helpers.write_experiment(root / "run.toml"))
    return images, config.features.store, run_experiment(config, log=_quiet, progress=False)


@pytest.mark.parametrize("case", list(KILLS))
def test_killed_run_keeps_finished_rows_and_ends_like_an_uninterrupted_one(uninterrupted, helpers, tmp_path, case):
    fault, n_table, n_estimators, n_sidecars, n_temporary, n_reused = KILLS[case]
    images, store, expected = uninterrupted
    path = helpers.write_experiment(tmp_path / "run.toml", data={"path": str(images)}, features={"store": str(store)})
    process = helpers.run_python(_RUN.format(fault=fault, config=str(path)))
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]

    out = tmp_path / "out"
    assert len(pd.read_csv(out / "results.csv")) == n_table  # the last complete table
    sidecars = [path for path in out.rglob("*.json") if not path.name.endswith(".row.json")]
    assert len(list(out.rglob("*.skops"))) == n_estimators and len(sidecars) == n_sidecars
    assert len(list(out.rglob(f"{TMP_PREFIX}*"))) == n_temporary

    rerun = run_experiment(load_config(path), log=_quiet, progress=False)
    n_rows = len(expected.results)  # 2 layers x (2 classifiers + the ridge row of the layer curve)
    assert n_rows == 6 and (rerun.n_forward, rerun.n_reused, rerun.n_fitted) == (0, n_reused, n_rows - n_reused)
    same = [column for column in expected.results.columns if column not in ("fit_seconds", "model_path")]
    pd.testing.assert_frame_equal(rerun.results[same], expected.results[same], check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(rerun.results_path)[same], pd.read_csv(expected.results_path)[same])
    # Each row's estimator, sidecar and predictions belong together and equal the uninterrupted run's.
    for row, reference in zip(rerun.results.itertuples(), expected.results["model_path"]):
        estimator, sidecar = load_classifier(row.model_path)
        assert sidecar["scores"]["accuracy"] == row.test_accuracy
        test = FeatureStore(store).load(row.store_entry, split="test")
        predictions = pd.read_csv(row.model_path.replace(".skops", ".predictions.csv"))
        np.testing.assert_array_equal(np.asarray(test.class_names)[estimator.predict(test.X)],
                                      predictions["predicted_label"])
        pd.testing.assert_frame_equal(predictions, pd.read_csv(reference.replace(".skops", ".predictions.csv")))


def _test_finetune():
    """tests/pipeline/test_finetune.py, for its tiny backbone and images."""
    path = TESTS / "pipeline" / "test_finetune.py"
    spec = importlib.util.spec_from_file_location("test_finetune_for_reliability", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# One head epoch (0), then two finetuning epochs (1, 2); a checkpoint after each epoch and phase.
_FINETUNE = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import keras, numpy as np
from test_finetune import CONFIG, TINY, _images
from layerprobe.pipeline.finetune import FinetuneConfig, finetune

def die():
    os.kill(os.getpid(), signal.SIGKILL)

_save = keras.Model.save_weights
def _save_and_record(model, path, *args, **kwargs):
    np.savez(os.path.join({snapshots!r}, os.path.basename(path) + ".npz"), *model.get_weights())
    _save(model, path, *args, **kwargs)
keras.Model.save_weights = _save_and_record
CALLBACKS = []
{fault}
config = FinetuneConfig(**{{**CONFIG.to_dict(), "finetune_epochs": 2}})
finetune(TINY, _images(12, seed=0), output_dir={out!r}, weights=None, config=config, resume=True,
         callbacks=CALLBACKS)
"""

_KILL_IN_EPOCH_2 = """
class _DieInEpoch2(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch == 1:
            die()
CALLBACKS.append(_DieInEpoch2())
"""

_KILL_IN_A_CHECKPOINT_WRITE = """
_record, _calls = keras.Model.save_weights, []
def _torn_write(model, path, *args, **kwargs):
    _record(model, path, *args, **kwargs)
    _calls.append(path)
    if len(_calls) == 3:  # after epoch 1; the head's checkpoints came first
        os.truncate(path, os.path.getsize(path) // 2)
        die()
keras.Model.save_weights = _torn_write
"""

# name: (fault, checkpoint state.json names after the kill, epochs the rerun trains)
FINETUNE_KILLS = {
    "mid-epoch": (_KILL_IN_EPOCH_2, "finetune-0002.weights.h5", [[2]]),
    "in-a-checkpoint-write": (_KILL_IN_A_CHECKPOINT_WRITE, "head-0001-end.weights.h5", [[1, 2]]),
}


@pytest.mark.parametrize("case", list(FINETUNE_KILLS))
def test_killed_finetuning_resumes_from_its_last_complete_checkpoint(helpers, tmp_path, case):
    fault, checkpoint, epochs = FINETUNE_KILLS[case]
    out, snapshots = tmp_path / "run", tmp_path / "snapshots"
    snapshots.mkdir()
    script = _FINETUNE.format(tests=str(TESTS / "pipeline"), snapshots=str(snapshots), out=str(out), fault=fault)
    process = helpers.run_python(script)
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["weights_file"] == checkpoint
    assert not (out / "model.keras").exists()

    starts, trained = [], []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            starts.append(self.model.get_weights())
            trained.append([])

        def on_epoch_begin(self, epoch, logs=None):
            trained[-1].append(epoch)

    module = _test_finetune()
    config = FinetuneConfig(**{**module.CONFIG.to_dict(), "finetune_epochs": 2})
    result = finetune(module.TINY, module._images(12, seed=0), output_dir=out, weights=None, config=config,
                      resume=True, callbacks=[Record()])
    assert trained == epochs
    saved = np.load(snapshots / f"{checkpoint}.npz")
    for start, value in zip(starts[0], (saved[f"arr_{i}"] for i in range(len(saved.files))), strict=True):
        np.testing.assert_array_equal(start, value)  # the checkpoint's weights, not a fresh start
    assert result.epochs_run == 3 and (out / "model.keras").is_file()
    assert pd.read_csv(result.history_path)["epoch"].tolist() == [0, 1, 2]
    checkpoints = sorted(path.name for path in (out / "checkpoints").iterdir())
    assert checkpoints == ["finetune-0003-end.weights.h5", "state.json"]  # the torn file is gone too


_KILL_AFTER_THE_FIRST_NEW_ROW = """
from layerprobe.pipeline.run.records import RunRows
_add = RunRows.add
def _add_then_die(self, row, *, fitted, what):
    _add(self, row, fitted=fitted, what=what)
    if fitted:
        die()  # the first new row is in results.csv
RunRows.add = _add_then_die
"""


def test_a_rerun_killed_after_its_first_new_row_keeps_every_row_of_the_earlier_run(helpers, tmp_path):
    helpers.write_images(tmp_path / "images", SPLITS)
    path = helpers.write_experiment(tmp_path / "run.toml", classifiers={"names": ["logreg"]})
    earlier = run_experiment(load_config(path), log=_quiet, progress=False)
    # logreg and the ridge row of the layer curve on each layer
    assert sorted(earlier.results["layer"]) == ["block1_pool"] * 2 + ["block2_pool"] * 2
    helpers.write_experiment(tmp_path / "run.toml")  # the same, with sgd too
    process = helpers.run_python(_RUN.format(fault=_KILL_AFTER_THE_FIRST_NEW_ROW, config=str(path)))
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]

    after_kill = pd.read_csv(tmp_path / "out" / "results.csv")
    rows = set(zip(after_kill["layer"], after_kill["classifier"]))
    # Before the fix: the table held only the rows the rerun had reached, and block2_pool / logreg was lost.
    assert {("block1_pool", "logreg"), ("block2_pool", "logreg")} <= rows and len(rows) == len(after_kill) == 5
    kept = after_kill.set_index(["layer", "classifier"]).loc[("block2_pool", "logreg")]
    assert kept["test_accuracy"] == earlier.results.set_index(["layer", "classifier"]).loc[
        ("block2_pool", "logreg"), "test_accuracy"]
    rerun = run_experiment(load_config(path), log=_quiet, progress=False)
    assert (rerun.n_reused, rerun.n_fitted) == (5, 1) and len(pd.read_csv(rerun.results_path)) == 6


def test_a_classifier_taken_out_of_the_config_leaves_the_table_when_the_run_commits(helpers, tmp_path):
    helpers.write_images(tmp_path / "images", SPLITS)
    path = helpers.write_experiment(tmp_path / "run.toml")
    run_experiment(load_config(path), log=_quiet, progress=False)
    helpers.write_experiment(tmp_path / "run.toml", classifiers={"names": ["logreg"]})
    result = run_experiment(load_config(path), log=_quiet, progress=False)
    assert sorted(pd.read_csv(result.results_path)["classifier"]) == ["logreg", "logreg", "ridge", "ridge"]
