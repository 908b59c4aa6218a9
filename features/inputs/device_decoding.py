"""Decode image files on the GPU: nvImageCodec (batched nvJPEG) into device memory, resized there.

`DeviceDecoder.decode` hands a chunk's encoded files to `nvidia.nvimgcodec`
(`Decoder.decode` on a list of code streams: one batched nvJPEG call, the
hardware decoder where the GPU has one), takes each decoded image into the
Keras backend by DLPack without a copy (JAX or PyTorch), and resizes it on the
device (`keras.ops.image.resize`, bilinear with antialiasing, images of one
shape in one call), so a chunk of pixels never passes through host memory on
its way to the forward pass.

The pixels differ slightly from libjpeg-turbo's (nvJPEG's IDCT and chroma
upsampling, a full-size decode where Pillow decodes at a reduced DCT scale,
another resize), so features decoded here have keys of their own
(`layerprobe.features.keys.decoded_pixels`). A file nvImageCodec cannot parse
or decode (not an image, truncated, a format without a codec here) or one
above `max_pixels` goes to the caller's CPU path, which decodes it with Pillow
or says why it is unreadable: the same file always takes the same path, so
one key still names one set of pixels.

Memory: nvImageCodec allocates outside the backend's memory pool; under JAX,
leave it room (`XLA_PYTHON_CLIENT_MEM_FRACTION=0.6`, or
`XLA_PYTHON_CLIENT_PREALLOCATE=false`). A chunk is decoded `DEVICE_BATCH`
images at a time, so at most that many full-size images are held at once.

The library is imported only when this decoder is chosen; nothing here runs
where it is not installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["DEVICE_BATCH", "NVIMGCODEC_PACKAGE", "DeviceDecoder", "device_decoding_problem", "import_nvimgcodec"]

NVIMGCODEC_PACKAGE = "nvidia-nvimgcodec-cu12"
DEVICE_BATCH = 256
"""Images given to one `Decoder.decode` call (full-size decoded pixels held at once)."""

_DLPACK_BACKENDS = ("jax", "torch")  # Keras backends whose tensors are made from device memory here


def import_nvimgcodec() -> Any:
    """The `nvidia.nvimgcodec` module (raises ImportError where it is not installed)."""
    return importlib.import_module("nvidia.nvimgcodec")


def _keras_backend() -> str:
    from ..backend import import_keras_quietly

    return import_keras_quietly().backend.backend()


def device_decoding_problem() -> str | None:
    """Why images cannot be decoded on the device Keras computes on here, or None if they can.

    Checks, cheapest first: nvImageCodec is installed (no Keras import where it is not);
    the Keras backend takes device memory by DLPack here (JAX or PyTorch); that backend
    computes on a GPU.
    """
    try:
        import_nvimgcodec()
    except ImportError:
        return f"the {NVIMGCODEC_PACKAGE} package is not installed (pip install '{NVIMGCODEC_PACKAGE}[all]')"
    backend = _keras_backend()
    if backend not in _DLPACK_BACKENDS:
        return (f"decoded pixels are handed to Keras by DLPack for the {' and '.join(_DLPACK_BACKENDS)} backends, "
                f"and Keras runs on {backend} (set KERAS_BACKEND=jax or torch)")
    from ..device import accelerator_name

    if accelerator_name() is None:
        return f"Keras ({backend}) computes on a CPU here: no GPU is visible to it"
    return None


def _from_dlpack(backend: str) -> Callable[[Any], Any]:
    """The backend's constructor of a tensor from an object with `__dlpack__` (zero copy)."""
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.from_dlpack
    import torch

    return torch.from_dlpack


class DeviceDecoder:
    """Decodes encoded images on the GPU with nvImageCodec and resizes them there.

    Args:
        size: Output height and width in pixels.
        max_pixels: Images larger than this (from their header) are left to the CPU
            path, which refuses them with its reason.

    Raises:
        ImportError: Where nvImageCodec is not installed (check `device_decoding_problem` first).
    """

    def __init__(self, size: int, max_pixels: int):
        codec = import_nvimgcodec()
        self.size = size
        self.max_pixels = max_pixels
        self._codec = codec
        self._decoder = codec.Decoder()
        # sRGB output is DecodeParams' default (nvImageCodec 0.6 to 0.9); grey images come back with one channel
        self._params = codec.DecodeParams(apply_exif_orientation=True)
        from ..backend import import_keras_quietly

        keras = import_keras_quietly()
        self._ops = keras.ops
        self._from_dlpack = _from_dlpack(keras.backend.backend())

    def decode(
        self, encoded: Sequence[bytes | None], fallback: Callable[[int], np.ndarray | None]
    ) -> tuple[np.ndarray, Any]:
        """Decode and resize `encoded` images, in order.

        Args:
            encoded: Each file's bytes, or None where it could not be read.
            fallback: Called with the position of each image this decoder does not
                decode; returns its (size, size, 3) uint8 pixels decoded on the CPU, or
                None where it is unreadable (the caller records why).

        Returns:
            (decoded, pixels): a boolean mask of the positions that have pixels, and
            their pixels, a (decoded.sum(), size, size, 3) uint8 backend tensor on the device.
        """
        on_device: dict[int, Any] = {}
        for start in range(0, len(encoded), DEVICE_BATCH):
            on_device.update(self._decode_batch(encoded, range(start, min(start + DEVICE_BATCH, len(encoded)))))
        parts, order = [], []
        for position in range(len(encoded)):
            if position in on_device:
                continue
            pixels = fallback(position)
            if pixels is not None:
                parts.append(self._ops.convert_to_tensor(pixels[np.newaxis], dtype="uint8"))
                order.append([position])
        by_shape: dict[tuple, list[int]] = {}
        for position, image in on_device.items():
            by_shape.setdefault(tuple(image.shape), []).append(position)
        for positions in by_shape.values():
            parts.append(self._resize([on_device[position] for position in positions]))
            order.append(positions)
        decoded = np.zeros(len(encoded), dtype=bool)
        if not parts:
            return decoded, self._ops.zeros((0, self.size, self.size, 3), dtype="uint8")
        positions = np.concatenate([np.asarray(group, dtype=np.int64) for group in order])
        decoded[positions] = True
        pixels = self._ops.concatenate(parts, axis=0)
        return decoded, self._ops.take(pixels, np.argsort(positions), axis=0)

    def _decode_batch(self, encoded: Sequence[bytes | None], positions: range) -> dict[int, Any]:
        """Position -> the decoded full-size image (a backend tensor) for those nvImageCodec decodes."""
        streams, kept = [], []
        for position in positions:
            data = encoded[position]
            if not data:
                continue
            try:
                stream = self._codec.CodeStream(data)
            except Exception:  # nvImageCodec parses no such format: the CPU path decodes it or says why
                continue
            if stream.width * stream.height > self.max_pixels:
                continue  # the CPU path refuses it, with its reason
            streams.append(stream)
            kept.append(position)
        images = self._decoder.decode(streams, params=self._params) if streams else []
        return {position: self._from_dlpack(image) for position, image in zip(kept, images) if image is not None}

    def _resize(self, images: list[Any]) -> Any:
        """Images of one shape (h, w, c) -> (n, size, size, 3) uint8, bilinear with antialiasing, on the device."""
        ops = self._ops
        batch = ops.stack(images)
        if batch.shape[-1] == 1:
            batch = ops.repeat(batch, 3, axis=-1)
        if tuple(batch.shape[1:3]) != (self.size, self.size):
            resized = ops.image.resize(
                ops.cast(batch, "float32"), (self.size, self.size), interpolation="bilinear", antialias=True
            )
            batch = ops.clip(ops.round(resized), 0, 255)
        return ops.cast(batch, "uint8")
