"""Tests for features.inputs: safe decoding, dataset listings, digests and chunked decoding."""

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerprobe.features.inputs import (
    UNLABELLED,
    DecodedChunk,
    ImageDataset,
    UnreadableImageError,
    from_arrays,
    from_csv,
    from_directory,
    from_image_folder,
    iter_decoded_chunks,
    load_image,
    open_dataset,
    open_images,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _solid(path, colour=RED, size=(12, 10), mode="RGB", **save_kwargs):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **save_kwargs)
    return path


def _png_header(path, width, height):
    """A PNG with a valid header and no pixel data: only a header check can classify it."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _decoder_threads():
    return [t for t in threading.enumerate() if t.name.startswith("layerprobe-decode")]


# --------------------------------------------------------------------------- load_image


@pytest.mark.parametrize(
    "mode, colour, suffix, expected",
    [
        ("RGB", (10, 200, 30), ".png", (10, 200, 30)),
        ("L", 100, ".png", (100, 100, 100)),
        ("LA", (100, 0), ".png", (100, 100, 100)),
        ("RGBA", (10, 20, 30, 0), ".png", (10, 20, 30)),
        ("1", 1, ".bmp", (255, 255, 255)),
        ("RGB", (10, 200, 30), ".webp", (10, 200, 30)),
        ("RGB", (10, 200, 30), ".tif", (10, 200, 30)),
    ],
)
def test_load_image_converts_modes_to_rgb(tmp_path, mode, colour, suffix, expected):
    save_kwargs = {"lossless": True} if suffix == ".webp" else {}
    path = _solid(tmp_path / f"image{suffix}", colour, mode=mode, **save_kwargs)
    pixels = load_image(path, 7)
    assert pixels.shape == (7, 7, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, np.broadcast_to(expected, (7, 7, 3)))


def test_load_image_cmyk_jpeg(tmp_path):
    path = _solid(tmp_path / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK")
    pixels = load_image(path, 5).astype(int)
    np.testing.assert_allclose(pixels, np.broadcast_to(RED, (5, 5, 3)), atol=8)


def test_load_image_uses_first_gif_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour).convert("P") for colour in (RED, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], transparency=0)
    np.testing.assert_array_equal(load_image(path, 4), np.broadcast_to(RED, (4, 4, 3)))


def test_load_image_palette_with_transparency_bytes(tmp_path):
    path = tmp_path / "palette.png"
    Image.new("RGB", (8, 8), BLUE).convert("P").save(path, transparency=bytes(256))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning about palette transparency
        pixels = load_image(path, 4)
    np.testing.assert_array_equal(pixels, np.broadcast_to(BLUE, (4, 4, 3)))


@pytest.mark.parametrize(
    "values, suffix, expected",
    [
        (np.array([0, 1000, 32768, 65535], np.uint16), ".png", [0, 4, 128, 255]),  # I;16
        (np.array([1000, 32768, 40000, 50000], np.uint16), ".png", [4, 128, 156, 195]),
        (np.array([1000, 32768, 40000, 50000], np.uint16), ".tif", [4, 128, 156, 195]),
        (np.array([1000, 32768, 40000, 50000], np.int32), ".tif", [4, 128, 156, 195]),  # I
        (np.array([-100, 0, 100, 70000], np.int32), ".tif", [0, 0, 1, 255]),  # min-max
        (np.array([0.25, 0.5, 0.75, 0.75], np.float32), ".tif", [64, 128, 191, 191]),  # F
        (np.array([2.0, 100.0, 200.0, 200.0], np.float32), ".tif", [2, 100, 200, 200]),
        (np.array([-1.0, 0.0, 1.0, np.nan], np.float32), ".tif", [0, 128, 255, 128]),
    ],
)
def test_load_image_scales_high_depth_grey(tmp_path, values, suffix, expected):
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(np.tile(values, (4, 1))).save(path)  # 4x4, one value per column
    pixels = load_image(path, 4)
    np.testing.assert_array_equal(pixels[0, :, 0], expected)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_load_image_applies_exif_orientation(tmp_path):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))  # top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    pixels = load_image(path, 40).astype(int)
    # After rotating clockwise the stored top-left corner is at the top right.
    assert np.abs(pixels[2, 37] - RED).max() < 40
    assert np.abs(pixels[2, 2] - BLUE).max() < 40


def test_load_image_resizes_bilinear_without_keeping_aspect(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (9, 21, 3), dtype=np.uint8))
    image.save(tmp_path / "noise.png")
    expected = np.asarray(image.resize((6, 6), Image.BILINEAR))
    np.testing.assert_array_equal(load_image(tmp_path / "noise.png", 6), expected)


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (_truncated_jpeg, "truncated or corrupt image: "),
        (lambda p: p.write_text("this is not a picture\n"), "not an image: "),
        (lambda p: None, "file not found"),
        (lambda p: p.mkdir(), "cannot open file: "),
        (lambda p: _png_header(p, 3000, 3000), "too large: 3000x3000 pixels > max_pixels=1000000"),
        (lambda p: _png_header(p, 20000, 20000), "too large: "),  # refused by Pillow itself
    ],
    ids=["empty", "truncated", "text", "missing", "directory", "header-too-large", "pillow-bomb"],
)
def test_load_image_unreadable_files(tmp_path, make, kind):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(UnreadableImageError) as info:
        load_image(path, 8, max_pixels=1_000_000)
    assert info.value.reason.startswith(kind)
    assert str(info.value).startswith(kind) and str(path) in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.path == str(path)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.reason, copy.path) == (info.value.reason, info.value.path)


def test_load_image_checks_pixels_before_decoding(tmp_path):
    path = _solid(tmp_path / "small.png", size=(20, 10))
    with pytest.raises(UnreadableImageError, match="too large: 20x10 pixels > max_pixels=199"):
        load_image(path, 8, max_pixels=199)
    assert load_image(path, 8, max_pixels=200).shape == (8, 8, 3)


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": 2.5}, {"size": 4, "max_pixels": 0}])
def test_load_image_rejects_bad_arguments(tmp_path, kwargs):
    path = _solid(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="must be a positive integer") as info:
        load_image(path, **kwargs)
    assert not isinstance(info.value, UnreadableImageError)


# --------------------------------------------------------------------------- from_directory


def test_from_directory_class_layout(tmp_path):
    for name in ("cat/b.png", "cat/a.jpg", "dog/c.PNG"):
        _solid(tmp_path / name)
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    _solid(tmp_path / "dog" / "really_a_png.txt", format="PNG")  # wrong extension: ignored
    _solid(tmp_path / "cat" / ".hidden.png")
    _solid(tmp_path / ".cache" / "x.png")
    _solid(tmp_path / "stray.png")  # files directly in the root are not samples

    dataset = from_directory(tmp_path)
    assert dataset.sample_ids == tuple(
        str(tmp_path / name) for name in ("cat/a.jpg", "cat/b.png", "dog/c.PNG")
    )
    assert dataset.class_names == ("cat", "dog")
    np.testing.assert_array_equal(dataset.labels, [0, 0, 1])
    assert dataset.labels.dtype == np.int64
    assert dataset.splits == ("all",) * 3 and dataset.split_names == ("all",)
    assert dataset.root == str(tmp_path) and len(dataset) == 3
    assert dataset.load(2, 4).shape == (4, 4, 3)


def test_from_directory_split_layout_orders_splits(tmp_path):
    for name in ("test/dog/t.png", "val/cat/v.png", "train/dog/b.png", "train/cat/a.png"):
        _solid(tmp_path / name)
    dataset = from_directory(tmp_path)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in dataset.sample_ids] == [
        "train/cat/a.png",
        "train/dog/b.png",
        "val/cat/v.png",
        "test/dog/t.png",
    ]
    assert dataset.splits == ("train", "train", "val", "test")
    assert dataset.split_names == ("train", "val", "test")
    np.testing.assert_array_equal(dataset.labels, [0, 1, 0, 1])

    train = dataset.subset("train")
    assert len(train) == 2 and train.class_names == ("cat", "dog")
    with pytest.raises(ValueError, match=r"Available splits: \['train', 'val', 'test'\]"):
        dataset.subset("validation")


def test_from_directory_split_names_only_when_all_folders_are_splits(tmp_path):
    _solid(tmp_path / "train" / "a.png")  # "train" holds no subfolders: it is a class
    _solid(tmp_path / "cat" / "b.png")
    assert from_directory(tmp_path).class_names == ("cat", "train")


def test_from_directory_unicode_and_spaces(tmp_path):
    path = _solid(tmp_path / "données à voir" / "chat noir" / "été 1.png", BLUE)
    dataset = open_dataset(tmp_path / "données à voir")
    assert dataset.class_names == ("chat noir",) and dataset.sample_ids == (str(path),)
    np.testing.assert_array_equal(dataset.load(0, 3), np.broadcast_to(BLUE, (3, 3, 3)))


def test_from_directory_keeps_bad_files_with_image_extensions(tmp_path):
    _solid(tmp_path / "cat" / "a.png")
    (tmp_path / "cat" / "fake.jpg").write_text("not an image")
    dataset = from_directory(tmp_path, extensions=["PNG", ".jpg"])
    assert len(dataset) == 2
    with pytest.raises(UnreadableImageError, match="not an image"):
        dataset.load(1, 4)


def _empty_class(root):
    _solid(root / "cat" / "a.png")
    (root / "dog").mkdir()


def _class_empty_in_every_split(root):
    _solid(root / "train" / "cat" / "a.png")
    (root / "test" / "dog").mkdir(parents=True)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.write_text("x"), "is not a folder"),
        (lambda root: _solid(root / "a.png"), "holds no class subfolders"),
        (_empty_class, r"Class folder\(s\) \['dog'\] hold no image files"),
        (_class_empty_in_every_split, r"\['dog'\] hold no image files .* in any split"),
    ],
    ids=["missing", "file", "no-classes", "empty-class", "empty-in-every-split"],
)
def test_from_directory_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(ValueError, match=message) as info:
        from_directory(root)
    assert f"Received: root={root!r}" in str(info.value)


def test_digest_tracks_files_labels_and_splits(tmp_path):
    root = tmp_path / "data"
    for name in ("cat/a.png", "cat/b.png", "dog/c.png"):
        _solid(root / name)
    digest = from_directory(root).digest()
    assert len(digest) == 64 and from_directory(root).digest() == digest

    moved = tmp_path / "moved"
    root.rename(moved)  # paths are relative to the root: moving keeps the digest
    assert from_directory(moved).digest() == digest

    stat = os.stat(moved / "cat/a.png")
    os.utime(moved / "cat/a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = from_directory(moved).digest()
    assert touched != digest

    _solid(moved / "cat/a.png", size=(30, 30))
    resized = from_directory(moved).digest()
    assert resized not in (digest, touched)

    dataset = from_directory(moved)
    relabelled = ImageDataset(
        dataset.sample_ids, [0, 1, 1], dataset.class_names, dataset.splits, root=dataset.root
    )
    resplit = ImageDataset(
        dataset.sample_ids, dataset.labels, dataset.class_names, ["all", "all", "x"], dataset.root
    )
    assert len({resized, relabelled.digest(), resplit.digest()}) == 3

    (moved / "dog/c.png").unlink()  # a missing file still digests (size -1)
    assert dataset.digest() != resized


# --------------------------------------------------------------------------- from_csv


def _write_csv(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_from_csv_resolves_paths_and_splits(tmp_path):
    _solid(tmp_path / "meta" / "img" / "a.png")
    absolute = _solid(tmp_path / "elsewhere" / "b.png", BLUE)
    csv = _write_csv(
        tmp_path / "meta" / "labels.csv",
        f"""
        path,label,split
        img/a.png,zebra,train
        {absolute},ant,test
        img/missing.png,zebra,train
        """,
    )
    dataset = from_csv(csv)
    assert dataset.sample_ids == (
        str(tmp_path / "meta" / "img" / "a.png"),
        str(absolute),
        str(tmp_path / "meta" / "img" / "missing.png"),
    )
    assert dataset.class_names == ("ant", "zebra")
    np.testing.assert_array_equal(dataset.labels, [1, 0, 1])
    assert dataset.splits == ("train", "test", "train")
    assert dataset.root == str(tmp_path / "meta")
    np.testing.assert_array_equal(dataset.load(1, 2), np.broadcast_to(BLUE, (2, 2, 3)))
    assert open_dataset(csv).sample_ids == dataset.sample_ids


def test_from_csv_custom_columns_without_split(tmp_path):
    csv = _write_csv(tmp_path / "x.CSV", "file,kind\na.png,cat\nb.png,dog\n")
    dataset = from_csv(csv, path_column="file", label_column="kind")
    assert dataset.splits == ("all", "all") and dataset.class_names == ("cat", "dog")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "The CSV file is empty"),
        ("path,label\n", "has a header but no rows"),
        (
            "file,label\na.png,cat\n",
            r"no column\(s\) \['path'\]; found columns \['file', 'label'\]",
        ),
        (
            "path,label\na.png,cat\nb.png,\nc.png, \n",
            r"'label' has empty cells in rows 3, 4 \(row 1",
        ),
        ("path,label\na.png,cat\n,dog\n", r"'path' has empty cells in rows 3 "),
        ("path,label,split\na.png,cat,\n", r"'split' has empty cells in rows 2 "),
        (
            "path,label\na.png,cat\nb.png,dog\n./a.png,dog\n",
            r"same image more than once: \['a.png', './a.png'\] in rows 2, 4 ",
        ),
    ],
)
def test_from_csv_errors(tmp_path, text, message):
    csv = tmp_path / "labels.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        from_csv(csv)
    assert "Received: path=" in str(info.value)


def test_open_dataset_rejects_other_sources(tmp_path):
    _solid(tmp_path / "a.png")
    for source in (tmp_path / "a.png", 3):
        with pytest.raises(ValueError, match="Expected a folder laid out as"):
            open_dataset(source)
    with pytest.raises(ValueError, match="does not exist"):  # a missing folder is said to be missing (issue 33)
        open_dataset(tmp_path / "missing")


# --------------------------------------------------------------------------- from_arrays


def test_from_arrays_loads_and_resizes_pixels():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (3, 6, 10, 3), dtype=np.uint8)
    dataset = from_arrays(X, [0, 2, 1], class_names=["a", "b", "c"], split=["train", "val", "val"])
    assert dataset.images is X and dataset.sample_ids == ("array:0", "array:1", "array:2")
    assert dataset.split_names == ("train", "val")

    resized = dataset.load(1, 5)
    assert resized.dtype == np.uint8
    np.testing.assert_array_equal(
        resized, np.asarray(Image.fromarray(X[1]).resize((5, 5), Image.BILINEAR))
    )

    square = from_arrays(X[:, :6, :6], [0, 1, 1])
    assert square.class_names == ("0", "1")
    loaded = square.load(0, 6)
    np.testing.assert_array_equal(loaded, X[0, :6, :6])
    loaded[:] = 0  # a fresh array
    assert X[0, :6, :6].any()


def test_from_arrays_grey_and_float_images():
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    for X in (grey, grey[..., np.newaxis]):
        pixels = from_arrays(X, [0, 1]).load(1, 4)
        np.testing.assert_array_equal(pixels, np.repeat(grey[1][..., np.newaxis], 3, axis=-1))

    X = np.random.default_rng(0).uniform(0, 255, (1, 4, 6, 3))
    dataset = from_arrays(X, ["cat"])
    same_size = from_arrays(X[:, :, :4], ["cat"]).load(0, 4)
    assert same_size.dtype == np.float32
    np.testing.assert_array_equal(same_size, X[0, :, :4].astype(np.float32))  # not rounded
    resized = dataset.load(0, 3)
    assert resized.dtype == np.float32
    for channel in range(3):
        plane = Image.fromarray(X[0, ..., channel].astype(np.float32))
        expected = np.asarray(plane.resize((3, 3), Image.BILINEAR))
        np.testing.assert_array_equal(resized[..., channel], expected)


def test_from_arrays_string_labels_and_column_labels():
    X = np.zeros((3, 2, 2, 3), np.uint8)
    dataset = from_arrays(X, np.array(["dog", "cat", "dog"]))
    assert dataset.class_names == ("cat", "dog")
    np.testing.assert_array_equal(dataset.labels, [1, 0, 1])
    np.testing.assert_array_equal(from_arrays(X, [[1], [0], [1]]).labels, [1, 0, 1])


@pytest.mark.parametrize(
    "X, y, kwargs, message",
    [
        (np.zeros((2, 4, 4, 3)), [0], {}, "one label per image"),
        (np.zeros((2, 4)), [0, 1], {}, "must be a non-empty numeric array"),
        (np.zeros((2, 4, 4, 2)), [0, 1], {}, "must be a non-empty numeric array"),
        (np.zeros((0, 4, 4, 3)), [], {}, "must be a non-empty numeric array"),
        (np.full((2, 4, 4, 3), np.nan), [0, 1], {}, "finite pixel values"),
        (np.full((2, 4, 4, 3), 300.0), [0, 1], {}, r"in \[0, 255\]"),
        (np.zeros((2, 4, 4, 3)), [0, 2], {"class_names": ["a", "b"]}, r"must lie in \[0, 2\)"),
        (np.zeros((2, 4, 4, 3)), [-1, 0], {}, r"must lie in \[0, 1\)"),
        (np.zeros((2, 4, 4, 3)), [0.0, 1.0], {}, "integer class indices or class names"),
        (np.zeros((2, 4, 4, 3)), ["a", "b"], {"class_names": ["a"]}, r"Labels \['b'\] are not"),
        (np.zeros((2, 4, 4, 3)), [0, 1], {"class_names": ["a", "a"]}, "must be unique"),
        (np.zeros((2, 4, 4, 3)), [0, 1], {"split": ["train"]}, "one split name per image"),
    ],
)
def test_from_arrays_errors(X, y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_arrays(X, y, **kwargs)


def _whole_text_digest(manifest) -> str:
    """The dataset digest as one JSON text of the whole manifest: what every stored key was made with."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


@pytest.mark.parametrize("mode", ["stat", "content", "arrays"])
def test_digest_serialised_a_block_at_a_time_equals_the_whole_text_digest(tmp_path, monkeypatch, mode):
    from layerprobe.features.inputs import dataset as dataset_module
    from layerprobe.features.inputs.file_digests import file_digests

    monkeypatch.setattr(dataset_module, "MANIFEST_BLOCK", 2)  # 5 samples: three blocks
    names = ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d\u00e9.png", "dog/e.png"]
    if mode == "arrays":
        images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
        dataset = from_arrays(images, np.array([0, 0, 1, 1, 1]), class_names=["cat", "dog"])
        manifest = {
            "kind": "arrays", "images_sha256": hashlib.sha256(images.data).hexdigest(),
            "shape": [5, 4, 4, 3], "dtype": "|u1", "class_names": ["cat", "dog"],
            "samples": [[name, split] for name, split in zip(["cat", "cat", "dog", "dog", "dog"], dataset.splits)],
        }
    else:
        root = tmp_path / "data"
        for name in names:
            _solid(root / name)
        dataset = from_directory(root)
        paths = [os.path.relpath(path, root) for path in dataset.sample_ids]
        labels = [dataset.class_names[label] for label in dataset.labels]
        if mode == "stat":
            stamps = [(os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in dataset.sample_ids]
            samples = [[p, *stamp, label, split] for p, stamp, label, split in zip(paths, stamps, labels, dataset.splits)]
            manifest = {"kind": "files", "samples": samples, "class_names": list(dataset.class_names)}
        else:
            contents = file_digests(dataset.sample_ids, cache=False)
            samples = [[p, c, label, split] for p, c, label, split in zip(paths, contents, labels, dataset.splits)]
            manifest = {"kind": "file-contents", "samples": samples, "class_names": list(dataset.class_names)}
    assert dataset.digest("stat" if mode == "arrays" else mode, cache=False) == _whole_text_digest(manifest)


def test_digest_memory_does_not_grow_with_the_manifest(tmp_path):
    """The digest once built the whole manifest as lists and one JSON text: 0.3 GB at a million
    files (benchmarks/RESULTS.md, scale). Now it holds a block of samples."""
    import tracemalloc

    peaks = {}
    for n in (20_000, 60_000):
        paths = [str(tmp_path / "missing" / f"{i:07d}.jpg") for i in range(n)]  # missing files: size -1, no I/O
        dataset = ImageDataset(sample_ids=paths, labels=np.arange(n) % 2, class_names=["a", "b"], splits=["train"] * n)
        tracemalloc.start()
        dataset.digest("stat")
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    per_sample = (peaks[60_000] - peaks[20_000]) / 40_000
    assert per_sample < 20, f"{per_sample:.0f} bytes a sample"


def test_array_digest_and_select():
    X = np.zeros((4, 3, 3, 3), np.uint8)
    dataset = from_arrays(X, [0, 1, 0, 1], split=["train", "train", "test", "test"])
    digest = dataset.digest()
    assert from_arrays(X.copy(), [0, 1, 0, 1], split=dataset.splits).digest() == digest
    changed = X.copy()
    changed[3, 0, 0, 0] = 1
    assert from_arrays(changed, [0, 1, 0, 1], split=dataset.splits).digest() != digest
    assert from_arrays(X, [0, 1, 1, 1], split=dataset.splits).digest() != digest
    assert from_arrays(X, [0, 1, 0, 1], split="train").digest() != digest
    assert from_arrays(X.astype(np.float32), [0, 1, 0, 1], split=dataset.splits).digest() != digest

    test = dataset.subset("test")
    assert test.sample_ids == ("array:2", "array:3") and test.images.shape == (2, 3, 3, 3)
    picked = dataset.select(np.array([False, True, False, True]))
    assert picked.sample_ids == ("array:1", "array:3") and picked.class_names == ("0", "1")
    np.testing.assert_array_equal(picked.labels, [1, 1])
    with pytest.raises(ValueError, match="one entry per sample id"):
        ImageDataset(("a", "b"), [0], ("x",), ("all", "all"))


# --------------------------------------------------------------------------- iter_decoded_chunks


class _FakeDataset:
    """Counts loads; optionally slow, or failing with a non-image error at one index."""

    def __init__(self, n_samples, delay=0.0, fail_at=None):
        self.n_samples, self.delay, self.fail_at = n_samples, delay, fail_at
        self.calls = 0
        self._lock = threading.Lock()

    def __len__(self):
        return self.n_samples

    def load(self, index, size, *, max_pixels, **kwargs):
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        if index == self.fail_at:
            raise RuntimeError(f"disk on fire at {index}")
        return np.full((size, size, 3), index % 256, dtype=np.uint8)


def test_iter_decoded_chunks_in_order_with_skips(tmp_path):
    colours = [(i * 20, 255 - i * 20, 7) for i in range(7)]
    for i, colour in enumerate(colours):
        _solid(tmp_path / "cls" / f"{i}.png", colour, size=(9, 5))
    (tmp_path / "cls" / "2.png").write_bytes(b"")
    (tmp_path / "cls" / "5.png").write_text("text")
    dataset = from_directory(tmp_path)
    chunks = [range(0, 3), range(3, 6), range(6, 7)]

    decoded = list(iter_decoded_chunks(dataset, chunks, 4, n_workers=3, prefetch=1))
    assert [chunk.index for chunk in decoded] == [0, 1, 2]
    assert all(isinstance(chunk, DecodedChunk) for chunk in decoded)
    assert [chunk.sample_indices.tolist() for chunk in decoded] == [[0, 1], [3, 4], [6]]
    assert decoded[0].skipped == [(2, "empty file")]
    assert [(i, reason.split(":")[0]) for i, reason in decoded[1].skipped] == [(5, "not an image")]
    for chunk in decoded:
        assert chunk.images.dtype == np.float32 and chunk.sample_indices.dtype == np.int64
        expected = [load_image(dataset.sample_ids[i], 4) for i in chunk.sample_indices]
        np.testing.assert_array_equal(chunk.images, np.stack(expected).astype(np.float32))
    assert not _decoder_threads()


def test_iter_decoded_chunks_from_arrays():
    X = np.random.default_rng(0).uniform(0, 255, (5, 6, 6, 3))
    dataset = from_arrays(X, [0, 1, 0, 1, 0])
    chunks = list(iter_decoded_chunks(dataset, [[4, 0], [2]], 6))
    np.testing.assert_array_equal(chunks[0].sample_indices, [4, 0])
    np.testing.assert_allclose(chunks[0].images, X[[4, 0]].astype(np.float32))
    assert chunks[1].skipped == []


def test_iter_decoded_chunks_reraises_producer_errors():
    dataset = _FakeDataset(20, fail_at=13)
    chunks = [range(i, i + 5) for i in range(0, 20, 5)]
    seen = []
    with pytest.raises(RuntimeError, match="disk on fire at 13"):
        for chunk in iter_decoded_chunks(dataset, chunks, 2, n_workers=2):
            seen.append(chunk.index)
    assert seen == [0, 1]
    _wait_for_no_decoder_threads()

    with pytest.raises(ValueError, match=r"Chunk 0 holds sample indices outside \[0, 20\)"):
        list(iter_decoded_chunks(dataset, [[0, 20]], 2))


def test_iter_decoded_chunks_bounds_run_ahead():
    dataset = _FakeDataset(10_000)
    chunks = [range(i, i + 10) for i in range(0, 10_000, 10)]
    iterator = iter_decoded_chunks(dataset, chunks, 2, n_workers=4, prefetch=2)
    assert next(iterator).index == 0
    time.sleep(0.3)  # long enough to decode far more than the queue holds
    # Beyond the first chunk: the queue (prefetch) and one chunk waiting to be queued.
    assert dataset.calls <= 10 * (1 + 2 + 1)
    iterator.close()
    assert not _decoder_threads()


def test_closing_early_stops_mid_chunk():
    dataset = _FakeDataset(10_000, delay=0.01)
    chunks = [range(i, i + 400) for i in range(0, 10_000, 400)]  # about 1 s per chunk
    iterator = iter_decoded_chunks(dataset, chunks, 2, n_workers=4)
    next(iterator)
    closer = threading.Thread(target=iterator.close)
    started = time.monotonic()
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive() and time.monotonic() - started < 0.3
    assert not _decoder_threads()


def _wait_for_no_decoder_threads(timeout=5.0):
    deadline = time.monotonic() + timeout
    while _decoder_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _decoder_threads()


def test_abandoned_iterator_does_not_block_interpreter_exit():
    script = textwrap.dedent(
        """
        import time
        import numpy as np
        from layerprobe.features.inputs import iter_decoded_chunks

        class Fast:
            def __len__(self):
                return 100_000
            def load(self, index, size, *, max_pixels, **kwargs):
                return np.zeros((size, size, 3), np.uint8)

        chunks = [range(i, i + 50) for i in range(0, 100_000, 50)]
        iterator = iter_decoded_chunks(Fast(), chunks, 2, n_workers=2)
        next(iterator)
        time.sleep(0.5)  # the producer fills the queue and waits to put more
        print("exiting")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "exiting" in result.stdout


@pytest.mark.parametrize(
    "kwargs", [{"size": 0}, {"n_workers": 0}, {"prefetch": 0}, {"max_pixels": -1}]
)
def test_iter_decoded_chunks_validates_arguments_eagerly(kwargs):
    arguments = {"size": 2, **kwargs}
    with pytest.raises(ValueError, match="must be a positive integer"):
        iter_decoded_chunks(_FakeDataset(1), [[0]], **arguments)


def test_image_folder_without_class_folders_is_read_unlabelled(tmp_path):
    for name in ("b.png", "a.jpg", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    dataset = open_images(tmp_path)
    assert [Path(path).name for path in dataset.sample_ids] == ["a.jpg", "b.png"]
    assert dataset.class_names == (UNLABELLED,) and set(dataset.splits) == {"all"}
    assert (dataset.labels == 0).all()


def test_open_images_reads_class_folders_as_labelled(tmp_path):
    for label in ("ants", "bees"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.png").write_bytes(b"")
    assert open_images(tmp_path).class_names == ("ants", "bees")


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no image files"):
        from_image_folder(tmp_path)


# --------------------------------------------------------------------------- bit depth, memory, I/O errors


@pytest.mark.parametrize(
    "maximum, depth", [(0, 8), (255, 8), (256, 10), (1023, 10), (4095, 12), (4096, 14), (16383, 14), (65535, 16)]
)
def test_grey_bit_depth_rounds_up_to_the_usual_depths(maximum, depth):
    from layerprobe.features.inputs.decoding import grey_bit_depth

    assert grey_bit_depth(maximum) == depth


def test_12_bit_data_in_a_16_bit_file_keeps_its_grey_levels(tmp_path):
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit level once
    path = tmp_path / "twelve.png"
    Image.fromarray(values).save(path)
    pixels = load_image(path, 64)[..., 0]
    # Scaled from 4095, not 65535: 256 grey levels, not the 17 a fixed 16-bit full scale leaves.
    assert len(np.unique(pixels)) == 256 and pixels.max() == 255
    np.testing.assert_array_equal(pixels.reshape(-1), np.rint(np.arange(4096) * 255 / 4095).astype(np.uint8))


def test_large_jpeg_is_decoded_at_a_reduced_scale_close_to_the_full_decode(tmp_path, monkeypatch):
    x = np.linspace(0, 255, 1600)[np.newaxis, :] * np.ones((1200, 1))
    pixels = np.stack([x, x[::-1], np.full_like(x, 90)], axis=-1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    from PIL import JpegImagePlugin

    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: drafts.append(size) or draft(self, mode, size)
    )
    reduced = load_image(path, 64)
    assert drafts == [(64, 64)]
    with Image.open(path) as image:
        full = np.asarray(image.convert("RGB").resize((64, 64), Image.BILINEAR))
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 2


def test_decode_budget_bounds_what_threads_hold_together():
    from layerprobe.features.inputs import DecodeBudget

    budget = DecodeBudget(100)
    held, peak, lock = [0], [0], threading.Lock()

    def decode(cost):
        with budget.reserve(cost):
            with lock:
                held[0] += min(cost, 100)
                peak[0] = max(peak[0], held[0])
            time.sleep(0.02)
            with lock:
                held[0] -= min(cost, 100)

    threads = [threading.Thread(target=decode, args=(cost,)) for cost in [40, 40, 40, 500, 40, 60]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads) and peak[0] <= 100  # the 500 ran alone


@pytest.mark.parametrize(
    "error", [OSError(5, "Input/output error"), OSError(116, "Stale file handle"), MemoryError()], ids=["EIO", "ESTALE", "MemoryError"]
)
def test_load_image_retries_io_errors_then_raises_image_read_error(tmp_path, monkeypatch, error):
    from layerprobe.features.inputs import ImageReadError, decoding

    path = _solid(tmp_path / "ok.png")
    calls = []
    monkeypatch.setattr(decoding, "IO_BACKOFF_SECONDS", 0.001)
    monkeypatch.setattr(decoding.Image, "open", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(error))
    with pytest.raises(ImageReadError) as info:
        load_image(path, 4)
    assert len(calls) == decoding.IO_ATTEMPTS and info.value.path == str(path)
    assert not isinstance(info.value, UnreadableImageError) and str(path) in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.path, copy.errno, copy.attempts) == (info.value.path, info.value.errno, info.value.attempts)


# --------------------------------------------------------------------------- manifests that would mislead


@pytest.mark.parametrize("url", ["http://x.org/a.png", "https://x.org/b.jpg", "s3://bucket/c.png", "gs://bucket/d.png"])
def test_from_csv_refuses_urls_naming_the_row(tmp_path, url):
    csv = _write_csv(tmp_path / "labels.csv", f"path,label\na.png,cat\n{url},dog\n")
    with pytest.raises(ValueError, match=r"holds URLs, not file paths: \[.*\] in rows 3 ") as info:
        from_csv(csv)
    assert url in str(info.value) and "download" in str(info.value)


def test_from_csv_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    image = _solid(tmp_path / "home" / "pics" / "a.png")
    csv = _write_csv(tmp_path / "meta" / "labels.csv", "path,label\n~/pics/a.png,cat\n")
    assert from_csv(csv).sample_ids == (str(image),)


def test_from_csv_refuses_one_file_listed_through_a_symlink(tmp_path):
    _solid(tmp_path / "img" / "a.png")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "same.png").symlink_to(tmp_path / "img" / "a.png")
    csv = _write_csv(tmp_path / "labels.csv", "path,label,split\nimg/a.png,cat,train\ntest/same.png,cat,test\n")
    with pytest.raises(ValueError, match=r"through a symbolic link: \['img/a.png', 'test/same.png'\] in rows 2, 3 "):
        from_csv(csv)


def test_from_directory_refuses_one_file_in_two_splits_through_a_symlink(tmp_path):
    root = tmp_path / "data"
    _solid(root / "train" / "cat" / "a.png")
    _solid(root / "test" / "cat" / "b.png")
    (root / "test" / "cat" / "a.png").symlink_to(root / "train" / "cat" / "a.png")
    with pytest.raises(ValueError, match="more than once through symbolic links") as info:
        from_directory(root)
    assert str(root / "train" / "cat" / "a.png") in str(info.value) and str(root / "test" / "cat" / "a.png") in str(info.value)
    (root / "test" / "cat" / "a.png").unlink()
    (root / "test" / "cat" / "c.png").symlink_to(tmp_path / "elsewhere.png")  # a link to a file not listed: fine
    _solid(tmp_path / "elsewhere.png")
    assert len(from_directory(root)) == 3


def test_from_csv_strips_spaces_around_labels_and_says_so(tmp_path):
    _solid(tmp_path / "a.png")
    csv = _write_csv(tmp_path / "labels.csv", "path,label,split\na.png,dog ,train\nb.png,dog,test \nc.png, cat,train\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dataset = from_csv(csv)
    messages = sorted(str(warning.message) for warning in record if warning.category is UserWarning)
    assert len(messages) == 2
    assert "'label' has values with spaces around them in rows 2, 4 " in messages[0]
    assert "'split' has values with spaces around them in rows 3 " in messages[1]
    assert dataset.class_names == ("cat", "dog") and dataset.splits == ("train", "test", "train")


def test_a_missing_dataset_is_said_not_to_exist(tmp_path):
    with pytest.raises(ValueError, match=r"The dataset .*nowhere does not exist"):  # an InputError
        open_dataset(tmp_path / "nowhere")
