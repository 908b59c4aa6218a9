"""What identifies a dataset of files: its stat digest (fast), or its content digest (exact), and
root-relative sample ids, so that a moved dataset keeps its entries and its ids follow it."""

import os
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_directory
from layerprobe.features.store import FeatureStore

FIRST = "block1_pool"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        # BMP: the file size depends only on the image size, so new pixels keep the size.
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.bmp")
    return root


def _rewrite_keeping_size_and_mtime(path, seed=1):
    before = os.stat(path)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_content_digest_sees_new_pixels_written_with_the_same_size_and_mtime(tmp_path):
    root = _images(tmp_path / "data")
    stat_digest, content_digest = (from_directory(root).digest(mode) for mode in ("stat", "content"))
    _rewrite_keeping_size_and_mtime(root / "dog" / "0.bmp")
    assert from_directory(root).digest("stat") == stat_digest  # the documented blind spot of "stat"
    assert from_directory(root).digest("content") != content_digest  # before the fix: no content mode


def test_copy_without_preserved_mtimes_keeps_the_content_digest(tmp_path):
    root = _images(tmp_path / "data")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)  # like `cp -r` without -p
    os.utime(copy / "dog" / "0.bmp", ns=(1, 1))
    assert from_directory(copy).digest("stat") != from_directory(root).digest("stat")
    assert from_directory(copy).digest("content") == from_directory(root).digest("content")


def test_content_digest_reads_each_file_once_until_it_changes(tmp_path, monkeypatch, private_cache):
    from layerprobe.features.inputs import file_digests

    root = _images(tmp_path / "data")
    reads = []
    original = file_digests.file_digest
    monkeypatch.setattr(file_digests, "file_digest", lambda path: reads.append(path) or original(path))
    first = from_directory(root).digest("content", n_workers=2)
    assert len(reads) == 6 and list(private_cache.rglob("*.json"))
    reads.clear()
    assert from_directory(root).digest("content") == first and reads == []  # cached: nothing read
    _rewrite_keeping_size_and_mtime(root / "cat" / "1.bmp")  # the ctime still changes
    changed = from_directory(root).digest("content")
    assert changed != first and [os.path.basename(path) for path in reads] == ["1.bmp"]
    moved = tmp_path / "moved"
    root.rename(moved)
    reads.clear()
    assert from_directory(moved).digest("content") == changed  # relative paths: same digest


def test_unwritable_cache_only_costs_reading_again(tmp_path, monkeypatch):
    root = _images(tmp_path / "data")
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("LAYERPROBE_CACHE_DIR", str(tmp_path / "not-a-folder"))
    assert from_directory(root).digest("content") == from_directory(root).digest("content")


def test_extractor_and_extract_take_the_digest_mode(tmp_path):
    root = _images(tmp_path / "data")
    settings = dict(weights=None, layers=[FIRST], input_size=32, batch_size=2)
    by_content = FeatureExtractor("VGG16", dataset_digest="content", **settings)
    store = FeatureStore(tmp_path / "store")
    first = by_content.extract(from_directory(root), store, progress=False)
    assert first.keys[FIRST].dataset == from_directory(root).digest("content")
    _rewrite_keeping_size_and_mtime(root / "dog" / "0.bmp")
    second = by_content.extract(from_directory(root), store, progress=False)
    assert second.computed == [FIRST]  # new pixels: a new key, not stale features
    stat_report = by_content.extract(from_directory(root), store, progress=False, dataset_digest="stat")
    assert stat_report.keys[FIRST].dataset == from_directory(root).digest("stat")
    with pytest.raises(ValueError, match="dataset_digest must be one of"):
        FeatureExtractor("VGG16", dataset_digest="mtime", **settings)


def test_moved_dataset_keeps_its_entry_and_its_sample_ids_follow_it(tmp_path):
    root = _images(tmp_path / "data")
    (root / "cat" / "broken.bmp").write_bytes(b"BM not really")
    extractor = FeatureExtractor("VGG16", weights=None, layers=[FIRST], input_size=32, batch_size=2)
    store = FeatureStore(tmp_path / "store")
    report = extractor.extract(from_directory(root), store, progress=False)
    key = report.keys[FIRST]
    with h5py.File(store.path_for(key), "r") as handle:  # stored relative to the dataset root
        stored = [s.decode() for s in handle["sample_ids"][()]] + [s.decode() for s in handle["skipped/sample_ids"][()]]
    assert sorted(stored) == ["cat/1.bmp", "cat/3.bmp", "cat/5.bmp", "cat/broken.bmp", "dog/0.bmp", "dog/2.bmp", "dog/4.bmp"]

    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.move(root, moved)
    again = extractor.extract(from_directory(moved), store, progress=False)
    assert again.cached == [FIRST] and again.keys == report.keys
    assert again.skipped == [(str(moved / "cat" / "broken.bmp"), again.skipped[0][1])]  # before the fix: old path
    features = store.load(key, root=moved)
    assert all(os.path.isfile(sample_id) for sample_id in features.sample_ids)
    assert sorted(features.sample_ids) == sorted(p for p in from_directory(moved).sample_ids if "broken" not in p)
    assert store.load(key).metadata["dataset_root"] == str(root)  # default: the root at extraction
    assert store.load(key).sample_ids[0].startswith(str(root))


def test_entries_of_encoding_version_1_are_still_read(tmp_path):
    from layerprobe.features.keys import FeatureKey

    store = FeatureStore(tmp_path)
    key = FeatureKey("VGG16", "sha256:w", FIRST, "avg", 32, "p", "float32", "float32", "d" * 64)
    partial = store.partial(key, {"chunk_size": 2})
    partial.write_chunk(0, np.ones((2, 3), "float32"), np.arange(2), [])
    store.commit(key, partial, 1, sample_ids=["/old/a.png", "/old/b.png"], labels=[0, 1], splits=["all"] * 2,
                 class_names=["a", "b"], metadata={})
    with h5py.File(store.path_for(key), "r+") as handle:  # as layerprobe wrote it before version 2
        handle.attrs["encoding-version"] = "1"
        del handle.attrs["sample-ids"]
    with pytest.warns(UserWarning, match="encoding version 1.*only its features are verified"):
        loaded = store.load(key, root="/new")
    assert list(loaded.sample_ids) == ["/old/a.png", "/old/b.png"]  # absolute ids, kept as stored


# ---------------------------------------------------------------- one digest per run


@pytest.mark.parametrize("digest", [None, "content"], ids=["stat-by-default", "content"])
def test_a_file_touched_during_a_run_does_not_split_its_keys(helpers, tmp_path, monkeypatch, digest):
    from layerprobe.pipeline.config import load_config
    from layerprobe.pipeline.run import run_experiment

    images = helpers.write_images(tmp_path / "images", {"": {"red": 4, "green": 4, "blue": 4}})
    data = {"path": str(images), "test_size": 0.25, **({"digest": digest} if digest else {})}
    config = load_config(helpers.write_experiment(
        tmp_path / "run.toml", data=data, classifiers={"names": ["logreg"], "cv": 2, "grids": {"logreg": {"C": [0.1]}}},
    ))
    assert getattr(config.data, "digest", "stat") == (digest or "stat")
    original = FeatureExtractor.extract

    def touch_then_extract(self, dataset, store, **kwargs):
        # Between the run's digest and the extraction, a file changes (a sync tool, an editor...).
        touched = images / "red" / "0.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(touched)
        return original(self, dataset, store, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "extract", touch_then_extract)
    result = run_experiment(config, log=lambda line: None, progress=False)  # before the fix: "never extracted"
    assert result.n_forward == 12 and len(result.results) == 4  # logreg and the ridge curve (issue 31) on 2 layers


def test_cli_extract_takes_the_dataset_digest(tmp_path, capsys):
    from layerprobe.pipeline.cli import main

    root = _images(tmp_path / "data")
    arguments = ["extract", "--model", "VGG16", "--weights", "none", "--layers", "block1_pool", "--input-size", "32",
                 "--data", str(root), "--store", str(tmp_path / "store"), "--no-progress", "--dataset-digest", "content"]
    assert main(arguments) == 0
    (entry,) = FeatureStore(tmp_path / "store").entries()
    assert entry["dataset"] == from_directory(root).digest("content")
    assert main([*arguments[:-1], "stat"]) == 0
    assert {row["dataset"] for row in FeatureStore(tmp_path / "store").entries()} == {
        from_directory(root).digest(mode) for mode in ("stat", "content")
    }


@pytest.mark.parametrize("root", ["/data/set", "/data/set/", "/"])
@pytest.mark.parametrize(
    "sample_id",
    ["/data/set/cat/1.jpg", "/data/set/../other/2.jpg", "/data/setx/3.jpg", "/data//set/cat/4.jpg", "/elsewhere/5.jpg",
     "array:7", "relative/6.jpg"],
)
def test_stored_sample_ids_are_relpaths_of_the_root(root, sample_id):
    from layerprobe.features.store.feature_store import _relative

    expected = sample_id if sample_id.startswith("array:") or not os.path.isabs(sample_id) else os.path.relpath(sample_id, root)
    assert _relative(sample_id, root) == expected
