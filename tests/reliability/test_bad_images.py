"""A folder of every kind of awkward image, through a whole extraction run.

Decoding is unit-tested in tests/features/test_inputs.py; here the question is
what ends up in the store: which files are kept, which are skipped and why.
"""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_arrays, from_directory, load_image
from layerprobe.features.store import FeatureStore

LAYER = "block2_pool"


def _png_header(path, width, height):
    """A PNG that claims width x height and holds no pixels: only the header guard can refuse it."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _noise(size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def _make_folder(root):
    """Images of class `a` all decode (after conversion); `b` holds the bad ones and two good ones."""
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    _noise((40, 30)).save(a / "rgb.png")
    _noise((40, 30), "L", 1).save(a / "grey.png")
    _noise((40, 30), "RGBA", 2).save(a / "rgba.png")
    _noise((40, 30), "CMYK", 3).save(a / "cmyk.jpg")
    _noise((40, 30), "P", 4).save(a / "palette.gif")
    Image.fromarray(np.random.default_rng(5).integers(0, 65536, (30, 40), dtype=np.uint16)).save(a / "sixteen_bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    _noise((40, 20), seed=6).save(a / "exif_rotated.jpg", exif=exif)
    _noise((40, 30), seed=7).save(b / "good.png")
    _noise((40, 30), seed=8).save(b / "good_too.jpg")
    (b / "empty.png").write_bytes(b"")
    _noise((64, 64), seed=9).save(b / "truncated.jpg")
    (b / "truncated.jpg").write_bytes((b / "truncated.jpg").read_bytes()[:600])
    (b / "text.jpg").write_text("this is not a picture\n")
    _png_header(b / "huge.png", 10_000, 10_000)  # 1e8 pixels > the default max_pixels (89,478,485)
    _noise((40, 30), seed=10).save(b / "deleted.png")
    return {
        "empty.png": "empty file",
        "truncated.jpg": "truncated or corrupt image: ",
        "text.jpg": "not an image: ",
        "huge.png": "too large: 10000x10000 pixels > max_pixels=89478485",
        "deleted.png": "file not found",
    }


# Pillow warns when it opens huge.png; the header guard then refuses it (and records why).
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_images_are_skipped_with_reasons_and_the_others_converted(tmp_path):
    expected_skips = _make_folder(tmp_path / "images")
    dataset = from_directory(tmp_path / "images")
    os.remove(tmp_path / "images" / "b" / "deleted.png")  # between listing and reading
    store = FeatureStore(tmp_path / "store")
    extractor = FeatureExtractor("VGG16", weights=None, layers=[LAYER], input_size=32, batch_size=4)
    report = extractor.extract(dataset, store, progress=False)

    skipped = {os.path.basename(path): reason for path, reason in store.info(report.keys[LAYER].entry_name)["skipped"]}
    assert skipped.keys() == expected_skips.keys()
    for name, reason in expected_skips.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    assert sorted(report.skipped) == sorted(store.info(report.keys[LAYER].entry_name)["skipped"])

    stored = store.load(report.keys[LAYER])
    kept = [path for path in dataset.sample_ids if os.path.basename(path) not in expected_skips]
    assert stored.sample_ids.tolist() == kept and len(kept) == 9
    assert stored.metadata["n_skipped"] == 5 and np.isfinite(stored.X).all()
    assert [stored.class_names[label] for label in stored.y] == [os.path.basename(os.path.dirname(p)) for p in kept]
    # The converted images went through the model as the RGB arrays load_image makes of them.
    pixels = np.stack([load_image(path, 32) for path in kept])
    direct_store = FeatureStore(tmp_path / "direct")
    direct = extractor.extract(from_arrays(pixels, stored.y), direct_store, progress=False)
    np.testing.assert_allclose(stored.X, direct_store.load(direct.keys[LAYER]).X, rtol=1e-5, atol=1e-5)


def test_max_pixels_is_plumbed_through_and_part_of_the_key(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    for i in range(3):
        _noise((40, 30), seed=i).save(root / "a" / f"small{i}.png")
    _noise((100, 100), seed=3).save(root / "a" / "big.png")
    dataset = from_directory(root)
    store = FeatureStore(tmp_path / "store")
    settings = dict(weights=None, layers=[LAYER], input_size=32, batch_size=4)
    guarded = FeatureExtractor("VGG16", max_pixels=5000, **settings)
    report = guarded.extract(dataset, store, progress=False)
    reason = "too large: 100x100 pixels > max_pixels=5000 (decompression-bomb guard)"
    assert report.skipped == [(str(root / "a" / "big.png"), reason)]
    assert store.load(report.keys[LAYER]).metadata["max_pixels"] == 5000

    default = FeatureExtractor("VGG16", **settings).extract(dataset, store, progress=False)
    assert default.computed == [LAYER] and default.skipped == []  # a cache miss, not a silent reuse
    assert default.keys[LAYER] != report.keys[LAYER]
    with pytest.raises(ValueError, match="`max_pixels` must be a positive integer. Received: max_pixels=0"):
        FeatureExtractor("VGG16", max_pixels=0, **settings)


def test_every_file_unreadable_gives_an_empty_entry_with_the_reasons(tmp_path):
    root = tmp_path / "images"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        (root / label / "broken.jpg").write_text("no pixels here")
    store = FeatureStore(tmp_path / "store")
    report = FeatureExtractor("VGG16", weights=None, layers=[LAYER], input_size=32).extract(
        from_directory(root), store, progress=False
    )
    stored = store.load(report.keys[LAYER])
    assert stored.X.shape == (0, 128) and stored.class_names == ("a", "b")
    assert len(report.skipped) == 2 and report.n_forward == 0


def test_an_image_above_pillows_own_limit_gets_the_max_pixels_message(tmp_path):
    from layerprobe.features.inputs import UnreadableImageError

    huge = tmp_path / "huge.png"
    _png_header(huge, 30_000, 30_000)  # 9e8 pixels: above 2 x Image.MAX_IMAGE_PIXELS, where Pillow refuses to open
    with pytest.raises(UnreadableImageError) as info:
        load_image(huge, 32)
    # Before the fix: "too large: Image size (900000000 pixels) exceeds limit of 178956970 pixels, could be ..."
    assert info.value.reason == "too large: 30000x30000 pixels > max_pixels=89478485 (decompression-bomb guard)"
    with pytest.raises(UnreadableImageError) as info:
        load_image(huge, 32, max_pixels=10**9)  # layerprobe's guard would take it; Pillow's own limit does not
    assert info.value.reason == ("too large: 30000x30000 pixels > 178956970, Pillow's own limit (2 x "
                                 "PIL.Image.MAX_IMAGE_PIXELS), which max_pixels=1000000000 does not raise")
