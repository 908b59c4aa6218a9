"""Decode once: the pixel cache's round trip, its reuse across extractions, and its key."""

import numpy as np
import pytest
from PIL import Image

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import ImageDataset, from_directory, iter_decoded_chunks
from layerprobe.features.inputs import pixel_cache as pixel_cache_module
from layerprobe.features.inputs.pixel_cache import PixelBlock, PixelCache, PixelKey
from layerprobe.features.keys import CPU_PIXELS
from layerprobe.features.store import FeatureStore


@pytest.fixture
def images(tmp_path):
    """11 JPEGs of various sizes in two classes, one truncated, one empty."""
    rng = np.random.default_rng(0)
    for number in range(11):
        folder = tmp_path / "images" / ("a" if number % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (40 + 7 * number, 50 + 3 * number, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{number:02d}.jpg")
    truncated = tmp_path / "images" / "a" / "03.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (tmp_path / "images" / "b" / "06.jpg").write_bytes(b"")
    return from_directory(tmp_path / "images")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 4 samples, so that 11 samples make three blocks and chunks of 3 straddle them."""
    monkeypatch.setattr(pixel_cache_module, "BLOCK_SAMPLES", 4)
    import layerprobe.features.inputs.loader as loader

    monkeypatch.setattr(loader, "BLOCK_SAMPLES", 4)


def _count_decodes(monkeypatch) -> list[int]:
    calls = []
    original = ImageDataset.load

    def counted(self, index, *args, **kwargs):
        calls.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(ImageDataset, "load", counted)
    return calls


def _chunks(dataset, cache, chunks):
    return list(iter_decoded_chunks(dataset, chunks, 32, dtype="uint8", decoder="pillow", pixel_cache=cache))


def test_block_round_trip(tmp_path):
    cache = PixelCache(tmp_path, PixelKey("d" * 64, 8, CPU_PIXELS))
    block = range(0, 3)
    assert cache.load(block) is None
    pixels = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    cache.save(block, PixelBlock(np.array([0, 2]), pixels, [(1, "empty file")]))
    loaded = cache.load(block)
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.indices.tolist() == [0, 2] and loaded.skipped == [(1, "empty file")]
    assert [path.name for path in cache.folder.iterdir()] == ["block-000000000-000000003.npz"]  # no temporary left
    cache._path(block).write_bytes(b"half a file")  # unreadable: decoded again, not an error
    assert cache.load(block) is None


def test_cached_chunks_equal_decoded_chunks_and_decode_each_image_once(tmp_path, images, small_blocks, monkeypatch):
    cache = PixelCache(tmp_path / "store", PixelKey(images.digest(), 32, CPU_PIXELS))
    chunks = [range(0, 3), range(3, 6), range(6, 9), range(9, 11)]  # straddling the blocks of 4
    plain = _chunks(images, None, chunks)
    calls = _count_decodes(monkeypatch)
    first = _chunks(images, cache, chunks)
    assert sorted(calls) == list(range(11))  # each image decoded once, though chunks straddle blocks
    calls.clear()
    again = _chunks(images, cache, [range(0, 11)])
    assert calls == []  # all read back
    for cached in (first, [again[0]]):
        got = np.concatenate([chunk.images for chunk in cached])
        np.testing.assert_array_equal(got, np.concatenate([chunk.images for chunk in plain]))
        assert np.concatenate([c.sample_indices for c in cached]).tolist() == np.concatenate(
            [c.sample_indices for c in plain]).tolist()
        assert sum((c.skipped for c in cached), []) == sum((c.skipped for c in plain), [])
    reasons = dict(again[0].skipped)
    assert len(reasons) == 2 and reasons[images.sample_ids.index(str(tmp_path / "images" / "b" / "06.jpg"))] == "empty file"


def test_the_key_changes_with_decoder_and_input_size():
    base = PixelKey("d" * 64, 224, CPU_PIXELS)
    assert base.digest == PixelKey("d" * 64, 224, CPU_PIXELS).digest
    assert len({base.digest, PixelKey("d" * 64, 224, "nvimgcodec").digest, PixelKey("d" * 64, 96, CPU_PIXELS).digest,
                PixelKey("e" * 64, 224, CPU_PIXELS).digest, PixelKey("d" * 64, 224, CPU_PIXELS, "nearest").digest}) == 5


def test_a_second_backbone_decodes_nothing(tmp_path, images, monkeypatch):
    store = FeatureStore(tmp_path / "store")
    calls = _count_decodes(monkeypatch)
    first = FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32, batch_size=4, pixel_cache=True)
    first.extract(images, store, progress=False)
    assert sorted(calls) == list(range(len(images)))
    calls.clear()
    second = FeatureExtractor("VGG16", weights=None, layers=["block2_pool"], input_size=32, batch_size=4,
                              pixel_cache=True, seed=1)
    report = second.extract(images, store, progress=False)
    assert calls == [] and report.computed == ["block2_pool"]
    uncached = FeatureExtractor("VGG16", weights=None, layers=["block2_pool"], input_size=32, batch_size=4, seed=2)
    uncached.extract(images, store, progress=False)
    assert sorted(calls) == list(range(len(images)))  # opt-in: without it, decoded again
    plain = FeatureExtractor("VGG16", weights=None, layers=["block2_pool"], input_size=32, batch_size=4, seed=1)
    other = FeatureStore(tmp_path / "other")
    plain.extract(images, other, progress=False)
    key = report.keys["block2_pool"]
    np.testing.assert_array_equal(store.load(key).X, other.load(key).X)  # cached pixels, the same features
    assert len(report.skipped) == 2
