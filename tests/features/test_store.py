"""The HDF5 store: round trips, integrity checks, listing and removal."""

import os
import stat

import h5py
import numpy as np
import pytest

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_arrays
from layerprobe.features.keys import FeatureKey
from layerprobe.features.store import CorruptEntryError, EntryNotFoundError, FeatureStore, IncompleteEntryError, StoreError


def _key(layer="block1_pool"):
    return FeatureKey("VGG16", "sha256:w", layer, "avg", 32, "p", "float32", "float32", "sha256:d")


def _commit(store, key, X, y, splits, *, chunk=4):
    partial = store.partial(key, {"batch_size": 2, "chunk_size": chunk, "n_samples": len(X)})
    starts = range(0, len(X), chunk)
    for index, start in enumerate(starts):
        rows = np.arange(start, min(start + chunk, len(X)))
        partial.write_chunk(index, X[rows], rows, [])
    return store.commit(
        key,
        partial,
        len(starts),
        sample_ids=[f"img{i}.png" for i in range(len(X))],
        labels=y,
        splits=splits,
        class_names=["a", "b"],
        metadata={"note": "test"},
    )


@pytest.fixture
def filled(tmp_path):
    store = FeatureStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 6)).astype("float32")
    y = np.arange(10) % 2
    splits = ["train"] * 7 + ["test"] * 3
    _commit(store, _key(), X, y, splits)
    return store, X, y


def test_round_trip_with_splits_and_sample_index(filled):
    store, X, y = filled
    loaded = store.load(_key())
    np.testing.assert_array_equal(loaded.X, X)
    np.testing.assert_array_equal(loaded.y, y)
    train = store.load(_key(), split="train")
    np.testing.assert_array_equal(train.X, X[:7])
    samples = store.load(_key(), split="test").samples
    assert list(samples.columns) == ["sample_id", "label", "class_name", "split"]
    assert samples.sample_id.tolist() == ["img7.png", "img8.png", "img9.png"]
    assert samples.class_name.tolist() == ["b", "a", "b"]
    with pytest.raises(ValueError, match="Available splits"):
        store.load(_key(), split="val")


def test_committed_entry_is_a_single_file_and_partial_work_is_gone(filled):
    store, _, _ = filled
    assert [p.name for p in store.root.glob("*.h5")] == [f"{_key().entry_name}.h5"]
    assert not list((store.root / ".partial").iterdir())


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=["022", "002", "077"])
def test_committed_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        store = FeatureStore(tmp_path)
        entry = _commit(store, _key(), np.zeros((6, 2), "float32"), np.arange(6) % 2, ["train"] * 6, chunk=4)
        partial = store.partial(_key("block2_pool"), {"chunk_size": 4})
        partial.write_chunk(0, np.zeros((4, 2), "float32"), np.arange(4), [])
    finally:
        os.umask(previous)
    assert stat.S_IMODE(entry.stat().st_mode) == mode
    assert stat.S_IMODE((partial.directory / "chunk_000000.h5").stat().st_mode) == mode


def test_listing_info_and_removal(filled):
    store, _, _ = filled
    rows = store.entries()
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["n_samples"] == 10
    info = store.info(_key().digest[:8])
    assert info["key"]["layer"] == "block1_pool" and info["metadata"]["note"] == "test"
    store.remove(_key().entry_name)
    assert store.entries() == []
    with pytest.raises(EntryNotFoundError, match="store ls"):
        store.info("nothing")


def test_missing_key_is_incomplete_not_empty(tmp_path):
    with pytest.raises(IncompleteEntryError, match="never extracted"):
        FeatureStore(tmp_path).load(_key())


def test_garbage_and_truncated_files_are_reported_as_corrupt(filled):
    store, _, _ = filled
    good = store.path_for(_key())
    garbage = store.path_for(_key("block2_pool"))
    garbage.write_bytes(b"this is not hdf5" * 10)
    truncated = store.path_for(_key("block3_pool"))
    truncated.write_bytes(good.read_bytes()[:500])
    for key in (_key("block2_pool"), _key("block3_pool")):
        with pytest.raises(CorruptEntryError, match="store rm"):
            store.load(key)
    statuses = {row["entry"]: row["status"] for row in store.entries()}
    assert statuses[_key().entry_name] == "ok"
    assert sum(status.startswith("corrupt") for status in statuses.values()) == 2
    store.load(_key())  # the good entry stays readable


def test_features_changed_after_commit_fail_the_checksum(filled):
    store, _, _ = filled
    with h5py.File(store.path_for(_key()), "r+") as handle:
        handle["features"][0, 0] += 1.0
    with pytest.raises(CorruptEntryError, match="checksum"):
        store.load(_key())


def test_metadata_that_disagrees_with_the_data_is_detected(filled):
    store, _, _ = filled
    with h5py.File(store.path_for(_key()), "r+") as handle:
        del handle["labels"]
        handle.create_dataset("labels", data=np.zeros(9, dtype=np.int64))
    with pytest.raises(CorruptEntryError, match="row counts disagree"):
        store.load(_key(), verify=False)


def test_entry_renamed_to_another_key_is_detected(filled):
    store, _, _ = filled
    store.path_for(_key()).rename(store.path_for(_key("block5_pool")))
    with pytest.raises(CorruptEntryError, match="belongs to entry"):
        store.load(_key("block5_pool"))


def test_store_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file.h5").write_bytes(b"")
    with pytest.raises(StoreError, match="must be a directory"):
        FeatureStore(tmp_path / "file.h5")


def test_read_only_store_fails_before_any_work(as_nobody):
    import shutil
    import tempfile

    shared = tempfile.mkdtemp(prefix="layerprobe-ro-", dir="/tmp")  # pytest's tmp_path is private to root
    try:
        os.chmod(shared, 0o755)
        store_dir = os.path.join(shared, "ro")
        os.mkdir(store_dir)
        os.chmod(store_dir, 0o555)
        X = np.zeros((4, 32, 32, 3), dtype=np.uint8)
        extractor = FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32)
        failed = as_nobody(lambda: extractor.extract(from_arrays(X, [0, 1, 0, 1]), FeatureStore(store_dir), progress=False))
        assert failed is not None and "StoreError" in failed[0], failed
        assert "Cannot write" in failed[1] and "Permission denied" in failed[1]
        assert os.listdir(store_dir) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_stream_hands_out_row_blocks_of_a_split_equal_to_load(tmp_path):
    store = FeatureStore(tmp_path)
    X = np.random.default_rng(1).normal(size=(23, 2, 3)).astype("float32")
    splits = ["train", "test"] * 6 + ["train"] * 11
    _commit(store, _key(), X, np.arange(23) % 2, splits, chunk=5)
    train = store.stream(_key(), split="train")
    blocks = list(train.blocks(block_rows=4))
    assert max(len(block) for block in blocks) <= 4 and all(not block.flags.writeable for block in blocks)
    expected = store.load(_key(), split="train")
    np.testing.assert_array_equal(np.concatenate(blocks), expected.X.reshape(len(expected.X), -1))
    np.testing.assert_array_equal(train.y, expected.y)
    np.testing.assert_array_equal(train.load().X, expected.X)
    assert (len(train), train.n_features, train.dtype) == (17, 6, np.float32)


def test_stream_of_a_contiguous_entry_is_memory_mapped(filled):
    store, X, _ = filled
    view = store.stream(_key()).view()
    assert isinstance(view, np.memmap) and not view.flags.writeable
    np.testing.assert_array_equal(view, X)
    first = next(store.stream(_key()).blocks(block_rows=3))
    assert isinstance(first.base, np.memmap) or isinstance(first, np.memmap)


def test_stream_detects_a_flipped_byte_in_the_middle_block(tmp_path):
    store = FeatureStore(tmp_path)
    X = np.random.default_rng(2).normal(size=(30, 4)).astype("float32")
    _commit(store, _key(), X, np.arange(30) % 2, ["train"] * 30, chunk=10)
    path = store.path_for(_key())
    with h5py.File(path, "r") as handle:
        offset = handle["features"].id.get_offset()
    with open(path, "r+b") as handle:  # row 15 of 30: the middle of three blocks of 10
        handle.seek(offset + 15 * 4 * 4 + 1)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x10]))
    stream = store.stream(_key())
    seen = []
    with pytest.raises(CorruptEntryError, match="features do not match the checksum"):
        for block in stream.blocks(block_rows=10):
            seen.append(len(block))
    assert seen == [10, 10, 10]  # every block was handed out, and the pass ends with the error
    with pytest.raises(CorruptEntryError):  # still unverified: the next pass checks again
        stream.load()
    assert len(list(store.stream(_key(), verify=False).blocks(block_rows=10))) == 3


def test_stream_of_a_chunked_entry_reads_blocks(filled):
    store, X, _ = filled
    with h5py.File(store.path_for(_key()), "r+") as handle:  # the layout entries had before they were contiguous
        data = handle["features"][()]
        del handle["features"]
        handle.create_dataset("features", data=data, chunks=(4, 6))
    stream = store.stream(_key())
    assert stream.view() is None
    np.testing.assert_array_equal(np.concatenate(list(stream.blocks(block_rows=3))), X)


def _commit_files(store, n, root, *, chunk):
    """An entry of `n` one-feature samples whose ids are file paths under `root`, stored relative to it."""
    key = _key()
    partial = store.partial(key, {"batch_size": 2, "chunk_size": chunk, "n_samples": n})
    starts = range(0, n, chunk)
    for index, start in enumerate(starts):
        rows = np.arange(start, min(start + chunk, n))
        partial.write_chunk(index, rows[:, None].astype("float32"), rows, [])
    sample_ids = [os.path.join(root, f"class{i % 2}", f"{i // 1000:02d}", f"{i:07d}.jpg") for i in range(n)]
    return key, partial, len(starts), sample_ids


def test_sample_ids_written_a_block_at_a_time_read_back_and_verify_as_before(tmp_path, monkeypatch):
    from layerprobe.core.digests import strings_digest
    from layerprobe.features.store import hdf5

    monkeypatch.setattr(hdf5, "STRING_BLOCK", 3)  # 10 ids: four blocks
    store, root = FeatureStore(tmp_path / "store"), str(tmp_path / "images")
    key, partial, n_chunks, sample_ids = _commit_files(store, 10, root, chunk=4)
    splits = ["train"] * 7 + ["test"] * 3
    store.commit(key, partial, n_chunks, sample_ids=sample_ids, labels=np.arange(10) % 2, splits=splits,
                 class_names=["a", "b"], metadata={}, root=root)
    loaded = store.load(key, verify=True)
    assert list(loaded.sample_ids) == sample_ids and list(loaded.splits) == splits
    relative = [os.path.relpath(path, root) for path in sample_ids]
    with hdf5.open_entry(store.path_for(key)) as entry:  # the checksums entries written whole have always had
        assert entry.checksums()["sample_ids"] == strings_digest([hdf5.SAMPLE_IDS_RELATIVE, *relative])
        assert entry.checksums()["splits"] == strings_digest(splits)


def test_commit_memory_does_not_grow_with_copies_of_the_sample_ids(tmp_path, monkeypatch):
    """A commit once held every sample id three more times (relative, as an array, encoded): 0.3 GiB at
    a million images, per layer (benchmarks/RESULTS.md, scale). Now it holds a block of them."""
    import tracemalloc

    from layerprobe.features.store import hdf5

    monkeypatch.setattr(hdf5, "STRING_BLOCK", 4096, raising=False)
    peaks = {}
    for n in (20_000, 60_000):
        store, root = FeatureStore(tmp_path / f"store{n}"), str(tmp_path / "images")
        key, partial, n_chunks, sample_ids = _commit_files(store, n, root, chunk=20_000)
        labels, splits = np.arange(n) % 2, np.full(n, "train", dtype=object)
        tracemalloc.start()
        store.commit(key, partial, n_chunks, sample_ids=sample_ids, labels=labels, splits=splits,
                     class_names=["a", "b"], metadata={}, root=root)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    per_sample = (peaks[60_000] - peaks[20_000]) / 40_000
    assert per_sample < 100, f"{per_sample:.0f} bytes a sample"


def test_reading_holds_each_sample_id_once(tmp_path, monkeypatch):
    """Reading an entry once held its sample ids as bytes, as relative strings and as absolute ones,
    and its splits as a million strings: 0.3 GB at a million images (benchmarks/RESULTS.md, scale)."""
    import tracemalloc

    from layerprobe.features.store import hdf5

    monkeypatch.setattr(hdf5, "STRING_BLOCK", 4096)
    per_sample = {}
    for n in (20_000, 60_000):
        store, root = FeatureStore(tmp_path / f"store{n}"), str(tmp_path / "images")
        key, partial, n_chunks, sample_ids = _commit_files(store, n, root, chunk=n)
        store.commit(key, partial, n_chunks, sample_ids=sample_ids, labels=np.arange(n) % 2,
                     splits=["train"] * n, class_names=["a", "b"], metadata={}, root=root)
        del sample_ids
        tracemalloc.start()
        stream = store.stream(key, split="train")
        per_sample[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stream.sample_ids[-1] == os.path.join(root, "class1", f"{(n - 1) // 1000:02d}", f"{n - 1:07d}.jpg")
    growth = (per_sample[60_000] - per_sample[20_000]) / 40_000
    length = len(os.path.join(str(tmp_path / "images"), "class0", "00", "0000000.jpg"))
    # Each absolute path once (a str: 49 bytes and its characters), and the entry's and the split's
    # arrays of pointers, labels and indices (about 8 x 8 bytes); before: 304 bytes for 91 characters.
    assert growth < length + 49 + 10 * 8, f"{growth:.0f} bytes a sample for a {length}-character path"
