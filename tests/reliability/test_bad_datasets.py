"""Awkward datasets and settings: what extraction accepts, and the errors for what it refuses.

An empty class folder is refused when listing (tests/features/test_inputs.py::
test_from_directory_errors[empty-class]); needing two classes to classify is
the pipeline's concern, extraction works with one.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import InputError, from_arrays, from_csv, from_directory
from layerprobe.features.layers import UnknownLayerError
from layerprobe.features.store import FeatureStore

LAYER = "block2_pool"


def _image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor("VGG16", weights=None, layers=[LAYER], input_size=32, batch_size=4)


def test_single_class_extracts(extractor, tmp_path):
    for i in range(3):
        _image(tmp_path / "images" / "only" / f"{i}.png", i)
    store = FeatureStore(tmp_path / "store")
    report = extractor.extract(from_directory(tmp_path / "images"), store, progress=False)
    stored = store.load(report.keys[LAYER])
    assert stored.class_names == ("only",) and stored.y.tolist() == [0, 0, 0] and stored.X.shape == (3, 128)


def test_class_whose_files_are_all_unreadable_stays_a_class_with_no_rows(extractor, tmp_path):
    _image(tmp_path / "images" / "cat" / "a.png")
    _image(tmp_path / "images" / "cat" / "b.png", 1)
    (tmp_path / "images" / "dog").mkdir()
    (tmp_path / "images" / "dog" / "broken.jpg").write_bytes(b"")
    store = FeatureStore(tmp_path / "store")
    report = extractor.extract(from_directory(tmp_path / "images"), store, progress=False)
    stored = store.load(report.keys[LAYER])
    assert stored.class_names == ("cat", "dog") and stored.y.tolist() == [0, 0]
    assert [os.path.basename(path) for path, _ in report.skipped] == ["broken.jpg"]


def test_csv_rows_of_missing_files_are_skipped_and_recorded(extractor, tmp_path):
    folder = tmp_path / "méta données"
    _image(folder / "img" / "a 1.png")
    _image(folder / "img" / "b.png", 1)
    (folder / "labels.csv").write_text(
        "path,label,split\nimg/a 1.png,chat,train\nimg/gone.png,chien,train\nimg/b.png,chien,test\n", encoding="utf-8"
    )
    store = FeatureStore(tmp_path / "store")
    report = extractor.extract(from_csv(folder / "labels.csv"), store, progress=False)
    assert report.skipped == [(str(folder / "img" / "gone.png"), "file not found")]
    assert store.info(report.keys[LAYER].entry_name)["skipped"] == report.skipped
    stored = store.load(report.keys[LAYER])
    assert [os.path.basename(p) for p in stored.sample_ids] == ["a 1.png", "b.png"]
    assert stored.splits.tolist() == ["train", "test"]


def test_csv_naming_one_file_twice_is_refused(tmp_path):
    image = _image(tmp_path / "img" / "a.png")
    (tmp_path / "labels.csv").write_text(f"path,label\nimg/a.png,cat\n{image},dog\nimg/../img/a.png,cat\n")
    with pytest.raises(ValueError, match=r"same image more than once: .* in rows 2, 3, 4"):
        from_csv(tmp_path / "labels.csv")


def test_unicode_and_spaces_in_dataset_and_store_paths(extractor, tmp_path):
    root = tmp_path / "données à voir"
    paths = [_image(root / "chat noir" / "été 1.png"), _image(root / "狗 dog" / "照片 2.jpg", 1)]
    store = FeatureStore(tmp_path / "magasin de traits ü")
    report = extractor.extract(from_directory(root), store, progress=False)
    stored = store.load(report.keys[LAYER])
    assert stored.sample_ids.tolist() == [str(path) for path in paths]
    assert stored.class_names == ("chat noir", "狗 dog")
    assert store.info(report.keys[LAYER].digest[:10])["entry"] == report.keys[LAYER].entry_name
    assert extractor.extract(from_directory(root), store, progress=False).cached == [LAYER]


def test_empty_dataset_is_refused_before_any_work(extractor, tmp_path):
    empty = from_arrays(np.zeros((2, 32, 32, 3), np.uint8), [0, 1]).select([])
    with pytest.raises(ValueError, match="no samples"):
        extractor.extract(empty, FeatureStore(tmp_path), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_input_size_below_the_backbone_minimum():
    with pytest.raises(ValueError, match=r"input_size=31 is below the minimum of 32 pixels that VGG16 accepts"):
        FeatureExtractor("VGG16", weights=None, layers=[LAYER], input_size=31)


def test_layer_of_another_family_lists_the_closest_names():
    with pytest.raises(UnknownLayerError) as info:
        FeatureExtractor("ResNet50", weights=None, layers=["block3_pool"], input_size=32)
    message = str(info.value)
    assert "ResNet50 has no layer 'block3_pool'" in message
    assert "Closest valid names: " in message and "conv3_block3_out" in message
    assert "`layerprobe layers ResNet50`" in message and "Received: layers='block3_pool'" in message


# ---------------------------------------------------------------- file names (issue 24, items 6 and 7)


def test_a_symbolic_link_loop_in_a_class_folder_is_a_one_line_error(tmp_path):
    _image(tmp_path / "images" / "cat" / "a.png")
    _image(tmp_path / "images" / "dog" / "b.png", 1)
    loop = tmp_path / "images" / "dog" / "loop.png"
    os.symlink("loop.png", loop)  # a real loop: ELOOP on every stat
    with pytest.raises(InputError) as info:  # before the fix: a bare OSError [Errno 40] from the listing
        from_directory(tmp_path / "images")
    message = str(info.value)
    assert "\n" not in message and str(loop) in message and "symbolic link" in message
    assert "Too many levels of symbolic links" in message and f"Received: root={str(tmp_path / 'images')!r}" in message
    os.symlink("gone.txt", tmp_path / "images" / "dog" / "notes")  # not an image name: never looked at
    loop.unlink()
    assert len(from_directory(tmp_path / "images")) == 2


NOT_UTF8 = b"caf\xe9"  # Latin-1 "cafe" with an accent: not valid UTF-8


def test_file_and_class_names_that_are_not_utf8_are_stored_losslessly_and_a_rerun_finishes(extractor, tmp_path):
    root = os.fsencode(tmp_path / "images")
    good = os.path.join(root, NOT_UTF8, NOT_UTF8 + b".png")  # a class folder and a file, both not UTF-8
    broken = os.path.join(root, b"plain", b"\xff\xfe.png")
    for index, path in enumerate([good, os.path.join(root, b"plain", b"a.png")]):
        _image(Path(os.fsdecode(path)), index)
    open(broken, "wb").close()  # an empty file: skipped, and its name recorded
    store = FeatureStore(tmp_path / "store")
    dataset = from_directory(tmp_path / "images")
    report = extractor.extract(dataset, store, progress=False)  # before the fix: UnicodeEncodeError at the commit
    stored = store.load(report.keys[LAYER])
    assert stored.sample_ids.tolist() == [os.fsdecode(good), os.fsdecode(os.path.join(root, b"plain", b"a.png"))]
    assert os.fsencode(stored.sample_ids[0]) == good and os.path.isfile(stored.sample_ids[0])
    assert stored.class_names == (os.fsdecode(NOT_UTF8), "plain")
    assert report.skipped == [(os.fsdecode(broken), "empty file")]
    assert store.verify(report.keys[LAYER].entry_name).endswith("match their checksums")
    again = extractor.extract(from_directory(tmp_path / "images"), store, progress=False)
    assert again.cached == [LAYER] and again.n_forward == 0  # the rerun finishes (before: died the same way)


# ---------------------------------------------------------------- CSV text (issue 24, items 8 and 9)


def _latin1_csv(folder):
    _image(folder / "img" / "été.png")
    _image(folder / "img" / "b.png", 1)
    csv = folder / "labels.csv"
    csv.write_bytes("path,label\nimg/été.png,café\nimg/b.png,thé\n".encode("latin-1"))  # a spreadsheet's export
    return csv


def test_a_latin1_csv_says_which_encoding_was_expected_and_how_to_give_another(tmp_path):
    csv = _latin1_csv(tmp_path)
    with pytest.raises(InputError) as info:  # before the fix: a bare UnicodeDecodeError
        from_csv(csv)
    message = str(info.value)
    assert "\n" not in message and f"Received: path={str(csv)!r}, encoding='utf-8'" in message
    assert "is not utf-8 text: byte 0xe9 in line 2" in message
    assert "encoding='latin-1'" in message and "[data] encoding" in message and "--encoding" in message
    dataset = from_csv(csv, encoding="latin-1")
    assert dataset.class_names == ("café", "thé") and os.path.isfile(dataset.sample_ids[0])
    with pytest.raises(InputError, match=r"Unknown text encoding 'latin-9x'.*Received: encoding='latin-9x'"):
        from_csv(csv, encoding="latin-9x")


@pytest.mark.parametrize("column", ["path", "label"])
def test_a_nul_byte_in_a_csv_cell_is_a_one_line_error_naming_the_row(tmp_path, column):
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png", 1)
    cells = {"path": "img/b\0.png", "label": "dog"} if column == "path" else {"path": "img/b.png", "label": "d\0g"}
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,label\nimg/a.png,cat\n{cells['path']},{cells['label']}\n")
    with pytest.raises(InputError) as info:  # before the fix: "ValueError: embedded null byte" (path) or a
        from_csv(csv)                       # label silently cut at the NUL by HDF5
    message = str(info.value)
    assert "\n" not in message and f"The CSV column {column!r} holds a NUL byte" in message
    assert "rows 3 (row 1 is the header)" in message and f"Received: path={str(csv)!r}" in message


def test_the_missing_column_message_says_what_to_do_from_the_command_line_too(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\nimg/a.png,cat\n")
    with pytest.raises(InputError) as info:
        from_csv(csv)
    message = str(info.value)
    assert "Rename the column(s) to ['path']" in message  # what a `layerprobe` user can do
    assert "from Python, `from_csv(path_column=..., label_column=...)`" in message


# ---------------------------------------------------------------- sizes that cannot work (issue 24, item 10 and chunk_size)


def test_an_input_size_no_memory_holds_is_refused_before_any_work(tmp_path):
    from layerprobe.features.inputs.loader import available_memory, decoded_bytes

    huge = FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=100_000, batch_size=4)
    available = available_memory()
    if available is None or available > decoded_bytes(8, 100_000):
        pytest.skip(f"this machine has {available} bytes available: 8 images of 100000x100000 pixels would fit")
    X = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(InputError) as info:  # before the fix: MemoryError allocating the first chunk
        huge.extract(from_arrays(X, np.arange(8) % 2), store, chunk_size=8, progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        "Decoding 8 images of 100000x100000 pixels at once (chunk_size) needs at least 224 GiB")
    assert "GiB of memory are available: at most input_size=" in message and "fits 8 images" in message
    assert "Nothing was computed. Received: input_size=100000, chunk_size=8" in message
    assert list(store.root.iterdir()) == []  # no lock, no partial work


def test_a_chunk_size_that_is_not_a_multiple_of_the_batch_size_leaves_nothing_behind(extractor, tmp_path):
    X = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(ValueError, match=r"chunk_size must be a multiple of batch_size=4.*Received: chunk_size=6"):
        extractor.extract(from_arrays(X, np.arange(8) % 2), store, chunk_size=6, progress=False)
    assert list(store.root.iterdir()) == []  # before the fix: .locks/<digest>.lock was left behind
