"""Decoding on the GPU (nvImageCodec): the decoder choice, its keys, and the adapter on a stand-in codec.

nvImageCodec needs a GPU and is not installed here. The choice and its messages
are tested with the library's import made to fail (the real state here) or a
stand-in module injected; the adapter (DLPack into the backend, resize on the
device, the CPU path for what it does not decode) is tested under JAX with a
stand-in codec that decodes with Pillow into numpy arrays, which speak DLPack
too. The device run itself is benchmarks/device_check.sh's `decode` and `jpeg`
stages.
"""

import io
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layerprobe.features.device as device_module
from layerprobe.core.errors import InputError
from layerprobe.features.inputs import from_directory, iter_decoded_chunks
from layerprobe.features.inputs import device_decoding
from layerprobe.features.inputs.decoding import load_image, resolve_decoder
from layerprobe.features.keys import CPU_PIXELS, decoded_pixels
from layerprobe.features.plans import ExtractionPlan, PlannedLayer, plan_signature

REPO = Path(__file__).resolve().parents[2]
RERUN_ENV = "LAYERPROBE_DEVICE_DECODING_RERUN"


def _stand_in_codec() -> types.ModuleType:
    """A module with nvImageCodec's Python API (CodeStream, DecodeParams, Decoder.decode), decoding with Pillow."""
    codec = types.ModuleType("nvidia.nvimgcodec")

    class CodeStream:
        def __init__(self, data: bytes):
            with Image.open(io.BytesIO(data)) as image:  # raises for what is not an image, as nvImageCodec does
                self.width, self.height = image.size
            self.data = data

    class Decoder:
        calls = []

        def decode(self, streams, params=None):
            Decoder.calls.append(len(streams))
            out = []
            for stream in streams:
                try:
                    with Image.open(io.BytesIO(stream.data)) as image:  # sRGB, grey as one channel
                        pixels = np.array(image.convert("L" if image.mode == "L" else "RGB"))  # writable, for DLPack
                        out.append(pixels[..., np.newaxis] if pixels.ndim == 2 else pixels)
                except OSError:
                    out.append(None)  # nvImageCodec's answer for an image it cannot decode
            return out

    codec.CodeStream = CodeStream
    codec.Decoder = Decoder
    codec.DecodeParams = lambda apply_exif_orientation=True: {"apply_exif_orientation": apply_exif_orientation}
    return codec


@pytest.fixture
def codec(monkeypatch):
    stand_in = _stand_in_codec()
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", stand_in)
    return stand_in


@pytest.fixture(params=["simplejpeg", "pillow"])
def cpu_decoder(request, monkeypatch):
    """The CPU decoder "auto" falls back to: simplejpeg where it is installed (a stand-in here), else Pillow."""
    monkeypatch.setitem(sys.modules, "simplejpeg", types.ModuleType("simplejpeg") if request.param == "simplejpeg" else None)
    return request.param


@pytest.fixture
def on_gpu(monkeypatch, codec):
    """nvImageCodec installed and Keras computing on a GPU, as far as the choice can tell."""
    monkeypatch.setattr(device_module, "accelerator_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(device_decoding, "_keras_backend", lambda: "jax")


def test_auto_is_a_cpu_decoder_where_nvimgcodec_is_not_installed(monkeypatch, cpu_decoder):
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # the import fails, as where it is not installed
    assert resolve_decoder("auto") == cpu_decoder
    with pytest.raises(InputError, match=r"decoder='nvimgcodec' cannot decode here: the nvidia-nvimgcodec-cu12 "
                                         r"package is not installed .*Received: decoder='nvimgcodec'"):
        resolve_decoder("nvimgcodec")


def test_auto_is_a_cpu_decoder_where_keras_computes_on_a_cpu(monkeypatch, codec, cpu_decoder):
    monkeypatch.setattr(device_module, "accelerator_name", lambda: None)
    monkeypatch.setattr(device_decoding, "_keras_backend", lambda: "jax")
    assert resolve_decoder("auto") == cpu_decoder
    with pytest.raises(InputError, match=r"Keras \(jax\) computes on a CPU here"):
        resolve_decoder("nvimgcodec")
    monkeypatch.setattr(device_decoding, "_keras_backend", lambda: "tensorflow")
    with pytest.raises(InputError, match="DLPack for the jax and torch backends, and Keras runs on tensorflow"):
        resolve_decoder("nvimgcodec")


def test_simplejpeg_asked_for_where_it_is_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "simplejpeg", None)
    with pytest.raises(InputError, match=r"pip install simplejpeg .*Received: decoder='simplejpeg'"):
        resolve_decoder("simplejpeg")


def test_auto_decodes_on_the_gpu_where_it_can(on_gpu):
    assert resolve_decoder("auto") == "nvimgcodec"
    assert resolve_decoder("nvimgcodec") == "nvimgcodec"
    assert resolve_decoder("pillow") == "pillow"  # asked for by name: still the CPU


def _plan(pixels=CPU_PIXELS):
    return ExtractionPlan(
        architecture="VGG16", weights_digest="sha256:ab", input_size=32, preprocessing="caffe", dtype="float32",
        compute_dtype="float32", max_pixels=89_478_485, layers=(PlannedLayer("block1_pool", "block1_pool", "avg", 0.2),),
        pixels=pixels,
    )


def test_two_decoders_two_keys_one_decoder_one_key():
    digest = "d" * 64
    cpu = {decoder: _plan(decoded_pixels(decoder)).keys(digest)["block1_pool"] for decoder in ("pillow", "simplejpeg")}
    device = _plan(decoded_pixels("nvimgcodec")).keys(digest)["block1_pool"]
    assert cpu["pillow"] == cpu["simplejpeg"]  # the same pixels, the same key
    assert cpu["pillow"].dataset == digest  # the CPU decoders keep the keys stores made before device decoding
    assert device.digest != cpu["pillow"].digest
    assert device == _plan(decoded_pixels("nvimgcodec")).keys(digest)["block1_pool"]
    # a plan saved before `pixels` existed reads back as the CPU decoders' plan
    old = {name: value for name, value in _plan().to_dict().items() if name != "pixels"}
    assert ExtractionPlan.from_dict(old) == _plan()


def test_the_plan_signature_follows_what_auto_decodes_with(monkeypatch):
    settings = {"model": "VGG16", "weights": None, "layers": ["stages"], "pooling": "avg", "decoder": "auto"}
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)
    on_cpu = plan_signature(settings)
    assert plan_signature({**settings, "decoder": "pillow"}) != on_cpu  # the settings differ
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", _stand_in_codec())
    monkeypatch.setattr(device_module, "accelerator_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(device_decoding, "_keras_backend", lambda: "jax")
    assert plan_signature(settings) != on_cpu  # same settings, other pixels: a plan made on a CPU is not reused
    assert plan_signature({**settings, "decoder": "simplejpeg"}) == plan_signature({**settings, "decoder": "simplejpeg"})


@pytest.fixture
def images(tmp_path, photo):
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    for seed, (width, height) in enumerate([(500, 375), (500, 375), (375, 500), (64, 64), (100, 80)]):
        Image.fromarray(photo(width, height, seed)).save(folder / f"{seed}.jpg", quality=92)
    Image.fromarray(photo(90, 70, 9)).save(folder / "5.png")  # decoded by the stand-in too
    (folder / "6.jpg").write_bytes((folder / "0.jpg").read_bytes()[:400])  # truncated: the CPU path says why
    (folder / "7.jpg").write_bytes(b"")  # empty
    Image.fromarray(photo(120, 90, 8)[..., 0]).save(folder / "8.jpg")  # grey: one channel, repeated on the device
    return from_directory(tmp_path / "images")


def _needs_a_dlpack_backend():
    import keras

    if keras.backend.backend() not in ("jax", "torch"):
        pytest.skip("the device decoder hands pixels to JAX or PyTorch (test_adapter_under_jax reruns this with JAX)")


def test_chunks_decoded_on_the_device_are_close_to_pillows(monkeypatch, codec, images):
    _needs_a_dlpack_backend()
    monkeypatch.setattr(device_module, "accelerator_name", lambda: "a GPU")
    import keras

    monkeypatch.setattr(device_decoding, "DEVICE_BATCH", 3)
    (chunk,) = iter_decoded_chunks(images, [range(len(images))], 64, dtype="uint8", decoder="nvimgcodec")
    assert not isinstance(chunk.images, np.ndarray) and keras.backend.standardize_dtype(chunk.images.dtype) == "uint8"
    assert codec.Decoder.calls == [3, 3, 1]  # batched, DEVICE_BATCH at most; the truncated and empty files do not parse
    assert chunk.sample_indices.tolist() == [0, 1, 2, 3, 4, 5, 8]
    reasons = dict(chunk.skipped)
    assert reasons[6].startswith("truncated or corrupt image") and reasons[7] == "empty file"
    pixels = keras.ops.convert_to_numpy(chunk.images)
    for row, index in enumerate(chunk.sample_indices):
        pillow = load_image(images.sample_ids[index], 64, decoder="pillow").astype(int)
        assert np.abs(pixels[row].astype(int) - pillow).mean() < 3, images.sample_ids[index]


def test_extraction_from_device_decoded_chunks(monkeypatch, codec, images, tmp_path):
    _needs_a_dlpack_backend()
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.store import FeatureStore

    monkeypatch.setattr(device_module, "accelerator_name", lambda: None)  # the CPU choice first
    cpu = FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32, batch_size=4)
    monkeypatch.setattr(device_module, "accelerator_name", lambda: "a GPU")
    gpu = FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32, batch_size=4)
    assert (cpu.decoder, gpu.decoder) == ("simplejpeg", "nvimgcodec")
    monkeypatch.setattr(gpu, "_auto_batch", False)  # "auto" would size batches for the GPU it does not have
    store = FeatureStore(tmp_path / "store")
    on_device = gpu.extract(images, store, progress=False)
    assert on_device.keys["block1_pool"] != cpu.keys(images)["block1_pool"]
    stored = store.load(on_device.keys["block1_pool"])
    direct = gpu.features(
        np.stack([load_image(images.sample_ids[i], 32, decoder="pillow") for i in (0, 1, 2, 3, 4, 5, 8)]))[0]
    assert stored.X.shape == direct.shape  # seven decoded (one batch padded on the device), two skipped
    assert np.abs(stored.X - direct).mean() < 0.1 * np.abs(direct).mean()  # nvJPEG-like pixels, close features


@pytest.mark.slow
def test_adapter_under_jax():
    """The two tests above under KERAS_BACKEND=jax, where the suite runs on another backend."""
    import keras

    if keras.backend.backend() in ("jax", "torch") or os.environ.get(RERUN_ENV):
        pytest.skip("this process already runs them")
    pytest.importorskip("jax")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "device_decoded or device_are"],
        cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax", RERUN_ENV: "1"}, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
