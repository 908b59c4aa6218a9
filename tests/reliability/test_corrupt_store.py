"""Damaged store files: unfinished work is recomputed, committed entries fail clearly.

tests/features/test_store.py covers garbage, a 500-byte truncation, changed
features, a short labels dataset and a renamed entry; these are the others.
"""

import json
import shutil

import h5py
import numpy as np
import pytest

from layerprobe.features.store import CorruptEntryError, FeatureStore

FIRST, SECOND = "block1_pool", "block3_pool"


@pytest.fixture
def interrupted(harness, tmp_path, monkeypatch):
    """A store whose extraction stopped after committing chunks 0 and 1 of both layers."""
    harness.interrupt(FeatureStore(tmp_path), monkeypatch)
    return FeatureStore(tmp_path)


def _chunk(harness, store, name, index):
    return store.root / ".partial" / harness.keys[name].digest / f"chunk_{index:06d}.h5"


def _tamper(path):
    with h5py.File(path, "r+") as handle:
        handle["features"][0, 0] += 1.0


CORRUPT_CHUNKS = {
    "garbage": (lambda path: path.write_bytes(b"garbage" * 100), "unreadable"),
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "unreadable"),
    "zero-bytes": (lambda path: path.write_bytes(b""), "unreadable"),
    "changed-features": (_tamper, "checksum"),
}


@pytest.mark.parametrize("case", list(CORRUPT_CHUNKS))
def test_corrupt_partial_chunk_is_recomputed(harness, interrupted, case):
    damage, problem = CORRUPT_CHUNKS[case]
    damage(_chunk(harness, interrupted, FIRST, 1))
    log = []
    report = harness.extract(interrupted, log=log.append)
    assert report.n_forward == 16  # chunk 1 again (for block1_pool only it was bad) and chunk 2
    assert any(line.startswith(f"discarded {FIRST} chunk 1: ") and problem in line for line in log), log
    harness.assert_matches_reference(interrupted)


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_text("{not json"),
        lambda path: path.unlink(),
        lambda path: path.write_text(json.dumps({"batch_size": 2, "chunk_size": 8, "n_samples": 24})),
    ],
    ids=["garbage", "missing", "other-settings"],
)
def test_unusable_fingerprint_discards_all_chunks_of_that_layer(harness, interrupted, damage):
    damage(_chunk(harness, interrupted, FIRST, 0).parent / "fingerprint.json")
    log = []
    report = harness.extract(interrupted, log=log.append)
    assert report.n_forward == 24
    assert any(line.startswith(f"discarded {FIRST} all 2 chunk(s): computed with") for line in log), log
    harness.assert_matches_reference(interrupted)


def test_resuming_with_another_chunk_size_starts_over(harness, interrupted):
    report = harness.extract(interrupted, chunk_size=12)
    assert report.n_forward == 24
    harness.assert_matches_reference(interrupted)


def test_chunk_copied_over_another_is_a_clear_error(harness, interrupted):
    first = _chunk(harness, interrupted, FIRST, 0)
    shutil.copy(first, first.with_name("chunk_000001.h5"))  # valid file, wrong samples
    with pytest.raises(CorruptEntryError, match="exactly once") as info:
        harness.extract(interrupted)
    assert str(first.parent) in str(info.value) and "Delete that folder" in str(info.value)
    assert not list(interrupted.root.glob(".tmp-*"))
    shutil.rmtree(first.parent)
    harness.extract(interrupted)
    harness.assert_matches_reference(interrupted)


def test_foreign_files_in_a_partial_folder_are_ignored_and_reported_once(harness, interrupted):
    folder = _chunk(harness, interrupted, FIRST, 0).parent
    shutil.copy(folder / "chunk_000000.h5", folder / "chunk_000000.bak.h5")  # a user's backup copy
    (folder / "chunk_1.h5").write_bytes(b"not ours")
    (folder / "notes.txt").write_text("why this run was stopped")
    log = []
    report = harness.extract(interrupted, log=log.append)  # before the fix: ValueError, on every resume
    assert report.n_forward == 8  # chunks 0 and 1 are reused; the foreign files are not chunks
    ignoring = [line for line in log if line.startswith("ignoring")]
    assert len(ignoring) == 1, log
    assert all(name in ignoring[0] for name in ("chunk_000000.bak.h5", "chunk_1.h5", "notes.txt", str(folder)))
    harness.assert_matches_reference(interrupted)


# ---------------------------------------------------------------- committed entries


def _edit_metadata(**changes):
    def edit(handle):
        metadata = json.loads(handle.attrs["metadata"])
        metadata.update(changes)
        handle.attrs["metadata"] = json.dumps(metadata)

    return edit


def _replace_dataset(name, values):
    def edit(handle):
        del handle[name]
        handle.create_dataset(name, data=values)

    return edit


def _set_attribute(name, value):
    def edit(handle):
        handle.attrs[name] = value

    return edit


def _delete(name):
    def edit(handle):
        if name in handle:
            del handle[name]
        else:
            del handle.attrs[name]

    return edit


ENTRY_DAMAGE = {
    "metadata-n_samples": (_edit_metadata(n_samples=23), "row counts disagree"),
    "metadata-feature_shape": (_edit_metadata(feature_shape=[65]), "feature shape"),
    "labels-out-of-range": (_replace_dataset("labels", np.full(24, 7)), r"labels outside \[0, 3\)"),
    "short-splits": (_replace_dataset("splits", np.array(["all"] * 20, dtype=object)), "row counts disagree"),
    "no-features": (_delete("features"), "a dataset is missing"),
    "garbage-metadata": (_set_attribute("metadata", "{oops"), "key/metadata attributes are unreadable"),
    "no-key": (_delete("key"), "key/metadata attributes are unreadable"),
    "newer-version": (_set_attribute("encoding-version", "99"), "encoding-version '99'"),
    "foreign-file": (_set_attribute("encoding-type", "something-else"), "not a layerprobe feature entry"),
}


@pytest.mark.parametrize("case", list(ENTRY_DAMAGE))
def test_entry_inconsistent_with_itself_is_named_with_how_to_remove_it(harness, tmp_path, case):
    edit, problem = ENTRY_DAMAGE[case]
    store = FeatureStore(tmp_path)
    harness.extract(store)
    damaged = harness.keys[FIRST]
    with h5py.File(store.path_for(damaged), "r+") as handle:
        edit(handle)
    with pytest.raises(CorruptEntryError, match=problem) as info:
        store.load(damaged)
    message = str(info.value)
    assert damaged.entry_name in message
    assert f"layerprobe store rm {tmp_path} {damaged.entry_name}" in message
    statuses = {row["entry"]: row["status"] for row in store.entries()}
    assert statuses[harness.keys[SECOND].entry_name] == "ok"
    harness.assert_matches_reference(store, [SECOND])


def _truncate_to_90_percent(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 9 // 10])


@pytest.mark.parametrize(
    "damage", [lambda path: path.write_bytes(b""), _truncate_to_90_percent], ids=["zero-bytes", "truncated-90-percent"]
)
def test_broken_entry_stops_extract_with_a_clear_error_until_removed(harness, tmp_path, damage):
    store = FeatureStore(tmp_path)
    harness.extract(store)
    broken = harness.keys[FIRST]
    damage(store.path_for(broken))
    for call in (lambda: store.load(broken), lambda: store.info(broken.entry_name), lambda: harness.extract(store)):
        with pytest.raises(CorruptEntryError, match="store rm") as info:
            call()
        assert broken.entry_name in str(info.value)
    assert sorted(row["status"][:7] for row in store.entries()) == ["corrupt", "ok"]
    harness.assert_matches_reference(store, [SECOND])

    store.remove(broken.entry_name)
    report = harness.extract(store)
    assert report.computed == [FIRST] and report.cached == [SECOND]
    harness.assert_matches_reference(store)


# ---------------------------------------------------------------- bytes edited in a committed entry (issue 24, item 1)


def _heap_string(data: bytes, text: str) -> int:
    """Offset of the HDF5 global-heap object holding exactly `text` (its 8-byte size comes first)."""
    raw = text.encode()
    found = data.find(len(raw).to_bytes(8, "little") + raw)
    assert found >= 0, text
    return found + 8


def _overwrite(path, offset: int, new: bytes) -> None:
    with open(path, "r+b") as handle:  # bytes changed in place, as a bad disk or a careless edit would
        handle.seek(offset)
        handle.write(new)


def _edit_label(path):
    with h5py.File(path, "r") as handle:
        offset = handle["labels"].id.get_offset()  # the first label's 8 bytes (int64)
        first = int(handle["labels"][0])
    _overwrite(path, offset, ((first + 1) % 3).to_bytes(8, "little"))


def _edit_string(old: str, new: str):
    def edit(path):
        _overwrite(path, _heap_string(path.read_bytes(), old), new.encode())

    return edit


def _edit_metadata_bytes(path):
    data = path.read_bytes()
    offset = data.find(b'"max_pixels": 89478485')
    assert offset >= 0
    _overwrite(path, offset, b'"max_pixels": 99999999')


ENTRY_BYTE_EDITS = {
    "a-label": (_edit_label, "labels"),
    "a-sample-id": (_edit_string("class1/04.png", "class1/05.png"), "sample_ids"),
    "a-class-name": (_edit_string("class2", "class9"), "class_names"),
    "a-split": (_edit_string("all", "alt"), "splits"),
    "a-skipped-reason": (_edit_string("empty file", "EMPTY FILE"), "skipped"),
    "the-metadata": (_edit_metadata_bytes, "metadata"),
}


@pytest.fixture(scope="module")
def file_entry(harness, tmp_path_factory):
    """A committed entry of the PNG files plus one empty file (a skipped sample): the pristine bytes."""
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.inputs import from_directory

    root = tmp_path_factory.mktemp("entry-bytes")
    images = root / "images"
    shutil.copytree(harness.images, images)
    (images / "class0" / "empty.png").write_bytes(b"")
    extractor = FeatureExtractor(**{**harness.extractor.get_config(), "layers": [FIRST]})
    store = FeatureStore(root / "store")
    dataset = from_directory(images)
    extractor.extract(dataset, store, chunk_size=8, progress=False)
    key = extractor.keys(dataset)[FIRST]
    return store.path_for(key), store.path_for(key).read_bytes(), key


@pytest.mark.parametrize("case", list(ENTRY_BYTE_EDITS))
def test_bytes_edited_in_anything_load_returns_are_caught(file_entry, tmp_path, capsys, case):
    from layerprobe.pipeline.cli import main

    committed, pristine, key = file_entry
    store = FeatureStore(tmp_path)
    path = store.path_for(key)
    path.write_bytes(pristine)
    assert store.load(key).metadata["n_skipped"] == 1  # the copy loads, with its one skipped file
    edit, part = ENTRY_BYTE_EDITS[case]
    edit(path)
    with pytest.raises(CorruptEntryError, match=f"its {part} do not match the checksums recorded at commit") as info:
        store.load(key)  # before the fix only the features were checked: these loaded silently
    assert f"layerprobe store rm {tmp_path} {key.entry_name}" in str(info.value)
    assert main(["store", "info", str(tmp_path), key.entry_name, "--verify"]) == 2
    captured = capsys.readouterr()
    assert "features match" not in captured.out and "do not match the checksums" in captured.err
    assert "Traceback" not in captured.err


def test_verify_names_everything_it_checked(file_entry, tmp_path, capsys):
    from layerprobe.pipeline.cli import main

    _, pristine, key = file_entry
    FeatureStore(tmp_path).path_for(key).write_bytes(pristine)
    assert main(["store", "info", str(tmp_path), key.entry_name, "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["encoding_version"] == "3"
    assert info["verified"] == (
        "features, labels, sample_ids, splits, class_names, skipped, key and metadata match their checksums"
    )


def test_entries_written_before_all_checksums_load_with_a_note(file_entry, tmp_path, capsys):
    from layerprobe.pipeline.cli import main

    _, pristine, key = file_entry
    store = FeatureStore(tmp_path)
    path = store.path_for(key)
    path.write_bytes(pristine)
    with h5py.File(path, "r+") as handle:  # as layerprobe wrote it before version 3
        handle.attrs["encoding-version"] = "2"
        del handle.attrs["checksums"]
    _edit_label(path)  # not detectable in such an entry: it loads, and says what was not checked
    with pytest.warns(UserWarning, match="only its features are verified") as caught:
        loaded = store.load(key)
    assert "encoding version 2" in str(caught[0].message) and "store rm" in str(caught[0].message)
    assert len(loaded.y) == 24
    assert main(["store", "info", str(tmp_path), key.entry_name, "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"].startswith("features match their checksum; this entry (encoding version 2) has no "
                                       "checksum of its labels, sample_ids, splits, class_names, skipped, key "
                                       "and metadata")
