"""JPEG decoders: simplejpeg gives Pillow's pixels (so the decoder is not part of feature keys)."""

import numpy as np
import pytest
from PIL import Image

from layerprobe.core.errors import InputError, UnreadableImageError
from layerprobe.features.inputs import from_directory, iter_decoded_chunks
from layerprobe.features.inputs.decoding import load_image, resolve_decoder

simplejpeg = pytest.importorskip("simplejpeg")


@pytest.fixture
def jpegs(tmp_path, photo):
    """JPEGs of the kinds the decoders treat differently, in one class folder."""
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    made = {}
    cases = {
        "large": ((1000, 700), {}),  # draft scale 4 at 224 px
        "odd": ((333, 501), {}),  # 1x scale, sizes that do not divide
        "subsampled": ((640, 480), {"subsampling": 2}),
        "quality": ((512, 512), {"quality": 40}),
        "progressive": ((600, 400), {"progressive": True}),
        "at_size": ((32, 32), {}),  # CIFAR-like: already the input size at 32 px (no resize)
    }
    for seed, (name, ((w, h), options)) in enumerate(cases.items()):
        path = folder / f"{name}.jpg"
        Image.fromarray(photo(w, h, seed)).save(path, quality=options.pop("quality", 90), **options)
        made[name] = path
    grey = folder / "grey.jpg"
    Image.fromarray(photo(300, 300, 9)[..., 0]).save(grey)
    made["grey"] = grey
    cmyk = folder / "cmyk.jpg"
    Image.fromarray(photo(300, 200, 10)).convert("CMYK").save(cmyk)
    made["cmyk"] = cmyk
    rotated = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(photo(320, 200, 11)).save(rotated, exif=exif)
    made["rotated"] = rotated
    png = folder / "not-a-jpeg.png"
    Image.fromarray(photo(100, 80, 12)).save(png)
    made["png"] = png
    return made


@pytest.mark.parametrize("size", [224, 96, 64, 32])  # 64: "quality" drafted at 1/8 to exactly the size
def test_simplejpeg_gives_pillows_pixels(jpegs, size):
    for name, path in jpegs.items():
        pillow = load_image(path, size, decoder="pillow")
        turbo = load_image(path, size, decoder="simplejpeg")
        np.testing.assert_array_equal(turbo, pillow, err_msg=name)


def test_the_loader_yields_the_same_chunks_with_either_decoder(jpegs):
    dataset = from_directory(next(iter(jpegs.values())).parent.parent)
    chunks = [range(len(dataset))]
    by_decoder = {
        decoder: next(iter(iter_decoded_chunks(dataset, chunks, 64, dtype="uint8", decoder=decoder))).images
        for decoder in ("pillow", "simplejpeg")
    }
    assert by_decoder["pillow"].dtype == np.uint8
    np.testing.assert_array_equal(by_decoder["pillow"], by_decoder["simplejpeg"])


def test_simplejpeg_reports_unreadable_files_as_pillow_does(tmp_path, photo):
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(photo(200, 200, 0)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (truncated, empty, tmp_path / "missing.jpg"):
        with pytest.raises(UnreadableImageError) as pillow:
            load_image(path, 32, decoder="pillow")
        with pytest.raises(UnreadableImageError) as turbo:
            load_image(path, 32, decoder="simplejpeg")
        assert turbo.value.reason == pillow.value.reason


def test_the_size_guard_holds_for_simplejpeg(jpegs):
    with pytest.raises(UnreadableImageError, match="too large"):
        load_image(jpegs["large"], 32, max_pixels=1000, decoder="simplejpeg")


def test_decoder_choice():
    assert resolve_decoder("auto") == "simplejpeg"  # installed here
    assert resolve_decoder("pillow") == "pillow"
    with pytest.raises(InputError, match="decoder must be one of"):
        resolve_decoder("nvjpeg")
