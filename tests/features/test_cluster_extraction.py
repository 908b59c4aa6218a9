"""Extraction and classifier rows on a dask LocalCluster: bit-identical to in-process, surviving a killed worker.

One cluster of 2 worker processes (1 thread each) serves the whole module; the
images are real PNG and JPEG files, so decoding happens on the workers. The
test that kills a worker runs last.
"""

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from distributed import Client, LocalCluster  # noqa: E402
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

from layerprobe.core.errors import StoreError  # noqa: E402
from layerprobe.features.cluster_extraction import extract_on_cluster  # noqa: E402
from layerprobe.features.extract import FeatureExtractor  # noqa: E402
from layerprobe.features.inputs import from_directory  # noqa: E402
from layerprobe.features.store import FeatureStore  # noqa: E402

# The hooks below are defined here; workers receive them by value (they cannot import this file).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SETTINGS = dict(model="VGG16", weights=None, layers=["block1_pool", "block3_pool"], input_size=32, batch_size=4)
CHUNK_SIZE = 8


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    )
    with cluster, Client(cluster) as connected:
        yield connected


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two classes of 18 small images, PNG and JPEG, and one unreadable file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir()
        for i in range(18):
            pixels = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "dogs" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(**SETTINGS)


@pytest.fixture(scope="module")
def reference(images, extractor, tmp_path_factory):
    """The features of an in-process extraction with the same settings."""
    store = FeatureStore(tmp_path_factory.mktemp("reference"))
    report = extractor.extract(from_directory(images), store, chunk_size=CHUNK_SIZE, progress=False)
    return {name: store.load(key) for name, key in report.keys.items()}, report


def _assert_same_features(store, report, reference):
    expected, expected_report = reference
    assert report.keys == expected_report.keys
    assert sorted(report.skipped) == sorted(expected_report.skipped)
    for name, key in report.keys.items():
        stored = store.load(key)
        assert np.array_equal(stored.X, expected[name].X), name  # bit-identical, not just close
        assert list(stored.sample_ids) == list(expected[name].sample_ids)
        np.testing.assert_array_equal(stored.y, expected[name].y)


class ChunkHooks(WorkerPlugin):
    """Test hooks inside the workers: log every chunk committed, and optionally stall the first chunk.

    Each committed chunk file appends "<work area> <chunk> <pid>" to `log_path`.
    With `stall_marker`, the first chunk any worker starts writes "<pid> <chunk>"
    to that file and sleeps, so that the test can kill that worker while it holds the chunk.
    """

    name = "layerprobe-test-chunk-hooks"

    def __init__(self, log_path, stall_marker=None):
        self.log_path = str(log_path)
        self.stall_marker = None if stall_marker is None else str(stall_marker)

    def setup(self, worker):
        from layerprobe.features.extract import FeatureExtractor
        from layerprobe.features.store import PartialEntry

        self.saved = (PartialEntry.write_chunk, FeatureExtractor.iter_features)
        write, compute = self.saved
        log_path, marker = self.log_path, self.stall_marker

        def logged_write(partial, index, *args, **kwargs):
            write(partial, index, *args, **kwargs)
            with open(log_path, "a") as handle:
                handle.write(f"{partial.directory.name} {index} {os.getpid()}\n")

        def stalled_compute(extractor, chunks, *args, **kwargs):
            chunks = list(chunks)  # a worker computes one chunk per task
            index = chunks[0].index
            if marker is not None:
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, f"{os.getpid()} {index}".encode())
                    os.close(fd)
                    time.sleep(300)  # the test kills this process meanwhile
            return compute(extractor, chunks, *args, **kwargs)

        PartialEntry.write_chunk = logged_write
        FeatureExtractor.iter_features = stalled_compute

    def teardown(self, worker):
        from layerprobe.features.extract import FeatureExtractor
        from layerprobe.features.store import PartialEntry

        PartialEntry.write_chunk, FeatureExtractor.iter_features = self.saved


def _writes(log_path):
    lines = Path(log_path).read_text().split("\n") if Path(log_path).exists() else []
    return [tuple(line.split()) for line in lines if line]


def test_seeded_random_init_ignores_other_threads_using_random():
    """dask's event loop draws from Python's `random`; a seeded backbone must not change with it."""
    from layerprobe.features.backbone import load_backbone

    quiet = load_backbone("VGG16", weights=None, input_size=32, seed=3).weights_digest
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            random.random()

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        busy = load_backbone("VGG16", weights=None, input_size=32, seed=3).weights_digest
    finally:
        stop.set()
        thread.join()
    assert busy == quiet


def test_extraction_on_two_workers_is_bit_identical_to_in_process(client, images, extractor, reference, tmp_path):
    store = FeatureStore(tmp_path / "store")
    dataset = from_directory(images)
    lines = []
    report = extract_on_cluster(
        extractor, dataset, store, client, chunk_size=CHUNK_SIZE, progress=False, log=lines.append
    )
    assert sorted(report.computed) == sorted(SETTINGS["layers"]) and report.n_forward == len(dataset) - 1
    _assert_same_features(store, report, reference)
    assert any("submitted 5 chunk task(s) to 2 dask worker(s)" in line for line in lines), lines
    # Each worker process built the backbone once, however many chunks it computed.
    assert all(info["builds"] == 1 for info in client.run(FeatureExtractor.shared_info).values())
    assert not any((store.root / ".partial").glob("*/chunk_*")), "chunks are removed once the entry is committed"

    again = extract_on_cluster(extractor, dataset, store, client, chunk_size=CHUNK_SIZE, progress=False)
    assert again.n_forward == 0 and sorted(again.cached) == sorted(SETTINGS["layers"])


def test_store_not_visible_to_workers_fails_up_front(client, images, extractor, tmp_path, monkeypatch):
    """A store path that leads elsewhere on the workers is refused before any work.

    Simulation: `/proc/self/cwd/store` is one absolute path that names a different
    folder in each process (its current folder), as `/scratch/store` names a
    different disk on each machine of a cluster without a shared file system.
    The client's current folder holds the store; the workers are moved elsewhere.
    """
    (tmp_path / "client").mkdir()
    (tmp_path / "workers").mkdir()
    monkeypatch.chdir(tmp_path / "client")
    original = client.run(os.getcwd)
    client.run(os.chdir, str(tmp_path / "workers"))
    try:
        with pytest.raises(StoreError, match="not visible to every dask worker") as error:
            extract_on_cluster(
                extractor, from_directory(images), FeatureStore("/proc/self/cwd/store"), client,
                chunk_size=CHUNK_SIZE, progress=False,
            )
    finally:
        for address, folder in original.items():
            client.run(os.chdir, folder, workers=[address])
    for address in original:
        assert address in str(error.value)
    assert "Nothing was computed" in str(error.value)
    assert not (tmp_path / "client" / "store" / ".partial").exists()
    assert not any((tmp_path / "workers").iterdir())


def test_two_clients_without_working_locks_share_the_chunks(client, images, extractor, reference, tmp_path, monkeypatch):
    """Two clients on one cluster, on a file system where locks do nothing: no lock is needed for correctness.

    Their chunk tasks have the same names, so the cluster computes each chunk
    once for both; the entry commit is an atomic rename; whichever client
    commits second reuses the entry.
    """

    from layerprobe.core import lock_files

    monkeypatch.setattr(lock_files.fcntl, "flock", lambda handle, operation: None, raising=True)
    store_path = tmp_path / "store"
    dataset = from_directory(images)
    second = Client(client.scheduler.address)
    results, errors = {}, []

    def extract(name, connected):
        try:
            results[name] = extract_on_cluster(
                extractor, dataset, FeatureStore(store_path), connected, chunk_size=CHUNK_SIZE, progress=False
            )
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=extract, args=(name, c)) for name, c in (("a", client), ("b", second))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
    finally:
        second.close()
    assert not errors, errors
    store = FeatureStore(store_path)
    for report in results.values():
        _assert_same_features(store, report, reference)
    assert sum(report.n_forward for report in results.values()) <= 2 * (len(dataset) - 1)


def _experiment(images, folder, *, layers=SETTINGS["layers"]):
    from layerprobe.pipeline.config import config_from_dict

    raw = {
        "data": {"path": str(images), "test_size": 0.3, "seed": 1},
        "features": {"store": str(folder / "store"), "input_size": 32, "batch_size": SETTINGS["batch_size"]},
        "backbones": [{"model": "VGG16", "weights": "none", "layers": list(layers)}],
        "classifiers": {
            "names": ["logreg", "linear_svm"],
            "cv": 2,
            "seed": 3,
            "grids": {"logreg": {"C": [0.1, 10.0]}, "linear_svm": {"C": [0.01, 1.0]}},
        },
        "output": {"dir": str(folder / "out")},
    }
    return config_from_dict(raw, "/")


def test_probe_rows_on_the_cluster_give_the_in_process_table(client, images, tmp_path):
    """Rows fitted by workers (features read from the shared store) give the in-process results table."""
    from layerprobe.pipeline.run import run_experiment

    local = run_experiment(_experiment(images, tmp_path / "local"), log=lambda line: None, progress=False)
    lines = []
    remote = run_experiment(_experiment(images, tmp_path / "remote"), log=lines.append, progress=False, client=client)
    assert any("submitted 4 classifier row(s) to the dask cluster" in line for line in lines), lines
    assert remote.n_fitted == local.n_fitted == 4
    compared = [column for column in local.results.columns if column not in ("fit_seconds", "model_path")]
    assert len(local.results) == 4
    assert local.results[compared].equals(remote.results[compared]), (local.results[compared], remote.results[compared])
    for path_local, path_remote in zip(local.results["model_path"], remote.results["model_path"]):
        predictions = [Path(path).with_suffix("").with_name(Path(path).stem + ".predictions.csv").read_text()
                       for path in (path_local, path_remote)]
        assert predictions[0] == predictions[1]

    again = run_experiment(_experiment(images, tmp_path / "remote"), log=lambda line: None, progress=False, client=client)
    assert again.n_fitted == 0 and again.n_reused == 4 and again.n_forward == 0


def test_extract_command_on_a_running_scheduler(client, images, reference, tmp_path, capsys):
    from layerprobe.pipeline.cli import main

    store = tmp_path / "store"
    status = main([
        "extract", "--model", "VGG16", "--weights", "none", "--layers", ",".join(SETTINGS["layers"]),
        "--input-size", "32", "--batch-size", str(SETTINGS["batch_size"]), "--chunk-size", str(CHUNK_SIZE),
        "--data", str(images), "--store", str(store), "--scheduler", client.scheduler.address, "--no-progress",
    ])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert f"dask cluster at {client.scheduler.address}" in printed and "dashboard:" in printed
    assert "submitted 5 chunk task(s)" in printed
    expected, expected_report = reference
    for name, key in expected_report.keys.items():
        assert np.array_equal(FeatureStore(store).load(key).X, expected[name].X)


def test_worker_killed_mid_chunk_still_gives_identical_features(client, images, extractor, reference, tmp_path):
    """SIGKILL the worker holding a chunk: it is computed elsewhere, and no committed chunk is computed again."""
    log_path, marker = tmp_path / "writes.log", tmp_path / "stalled"
    client.register_plugin(ChunkHooks(log_path, stall_marker=marker))
    pids = client.run(os.getpid)
    store = FeatureStore(tmp_path / "store")
    outcome = {}

    def extract():
        try:
            outcome["report"] = extract_on_cluster(
                extractor, from_directory(images), store, client, chunk_size=CHUNK_SIZE, progress=False
            )
        except BaseException as error:  # reported below
            outcome["error"] = error

    thread = threading.Thread(target=extract)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid, chunk = map(int, marker.read_text().split())
        assert pid in pids.values()
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=240)
    finally:
        client.unregister_worker_plugin(ChunkHooks.name)
    assert "error" not in outcome, outcome.get("error")
    _assert_same_features(store, outcome["report"], reference)
    writes = _writes(log_path)
    n_chunks = 5
    # Every chunk of both layers committed exactly once; the stalled chunk by another process.
    assert sorted((area, int(index)) for area, index, _ in writes) == sorted(
        (area, index) for area in {area for area, _, _ in writes} for index in range(n_chunks)
    )
    assert len({area for area, _, _ in writes}) == 2
    assert all(int(writer) != pid for _, index, writer in writes if int(index) == chunk)
