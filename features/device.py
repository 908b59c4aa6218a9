"""The device side of extraction: one compiled forward pass per backend, dispatched ahead of its results.

`DeviceForward(model, preprocess)` wraps the multi-output extractor model
(`layerprobe.features.truncate.build_extractor`) in one compiled function that
takes a batch of raw pixels as the loader decodes them (uint8, or float32 for
float arrays, 0-255), casts it to float32 and applies `preprocess` on the
device, then runs the model. So batches travel as uint8 (a quarter of the
bytes of float32) and no preprocessing runs on the host.

`dispatch(batch)` starts a batch and returns at once where the backend allows
(JAX's asynchronous dispatch, CUDA's queue under PyTorch); `fetch(pending)`
waits for its pooled outputs as numpy arrays. The extractor keeps a few batches
in flight, so the device computes batch i+1 while batch i's outputs come back.

This is the one module with backend-specific code on the extraction path; one
small adapter per backend (JAX, PyTorch, TensorFlow), and Keras's own
`predict_on_batch` for any other. Everything else stays in `keras.ops`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DeviceForward", "accelerator_name", "is_out_of_memory", "pad_batch", "synchronize"]


def _backend() -> str:
    import keras

    return keras.backend.backend()


def accelerator_name() -> str | None:
    """The name of the accelerator Keras computes on ("NVIDIA H200"...), or None on a CPU."""
    backend = _backend()
    with contextlib.suppress(Exception):
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return None if device.platform == "cpu" else str(getattr(device, "device_kind", device.platform))
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return gpus[0].name if gpus else None
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the backend's "device out of memory" (so a smaller batch may fit)."""
    text = f"{type(error).__name__}: {error}"
    return any(
        marker in text
        for marker in ("RESOURCE_EXHAUSTED", "OutOfMemoryError", "out of memory", "ResourceExhaustedError", "OOM")
    )


def synchronize() -> None:
    """Wait until the device has finished all work queued so far (for timings)."""
    backend = _backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif backend == "jax":
        import jax

        jax.effects_barrier()


class DeviceForward:
    """`model` on raw pixels, compiled once: cast to float32, `preprocess`, forward, on the device.

    Args:
        model: A Keras model mapping a float32 batch to a list of outputs
            (the pooled layers), built under the extraction's dtype policy.
        preprocess: The backbone's `preprocess_input`, applied to a float32
            backend tensor in 0-255 inside the compiled function (Keras's
            `preprocess_input` functions accept tensors and do not modify them).

    Attributes:
        timings: Seconds spent in `dispatch` (host work to start a batch,
            including the copy to the device where it blocks) and in `fetch`
            (waiting for the results and copying them back), summed over calls.
    """

    def __init__(self, model, preprocess: Callable[[Any], Any]):
        self.model = model
        self.timings = {"dispatch": 0.0, "fetch": 0.0}
        self._adapter = _ADAPTERS.get(_backend(), _KerasAdapter)(model, preprocess)

    def dispatch(self, batch) -> Any:
        """Start the forward pass of one batch (a numpy array, or a backend tensor already on the device)."""
        started = time.perf_counter()
        pending = self._adapter.dispatch(batch)
        self.timings["dispatch"] += time.perf_counter() - started
        return pending

    def fetch(self, pending: Any) -> list[np.ndarray]:
        """The pooled outputs of a dispatched batch, as numpy arrays (waits for the device)."""
        started = time.perf_counter()
        outputs = self._adapter.fetch(pending)
        self.timings["fetch"] += time.perf_counter() - started
        return outputs

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """One batch, synchronously."""
        return self.fetch(self.dispatch(batch))


def _as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _preprocessed(preprocess: Callable[[Any], Any], pixels):
    """Raw pixels (a backend tensor, uint8 or float32 in 0-255) -> the model's float32 input."""
    import keras

    return preprocess(keras.ops.cast(pixels, "float32"))


class _JaxAdapter:
    """JAX: `jax.jit` of the model's stateless call; `dispatch` returns before the device is done."""

    def __init__(self, model, preprocess):
        import jax

        variables = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])

        def forward(trainable, non_trainable, pixels):
            outputs, _ = model.stateless_call(trainable, non_trainable, _preprocessed(preprocess, pixels), training=False)
            return _as_list(outputs)

        compiled = jax.jit(forward)
        self._dispatch = lambda batch: compiled(*variables, jax.device_put(batch))

    def dispatch(self, batch):
        return self._dispatch(batch)

    def fetch(self, pending):
        return [np.asarray(output) for output in pending]


class _TorchAdapter:
    """PyTorch: pixels copied from pinned memory without blocking; outputs copied back on the same stream."""

    def __init__(self, model, preprocess):
        import torch

        self._torch = torch
        self._model = model
        self._preprocess = preprocess
        self._cuda = torch.cuda.is_available()

    def dispatch(self, batch):
        torch = self._torch
        with torch.no_grad():
            pixels = batch if torch.is_tensor(batch) else torch.from_numpy(batch)
            if self._cuda and not pixels.is_cuda:
                pixels = pixels.pin_memory().to("cuda", non_blocking=True)
            outputs = _as_list(self._model(_preprocessed(self._preprocess, pixels), training=False))
            if not self._cuda:
                return outputs, None
            host = [output.detach().to("cpu", non_blocking=True) for output in outputs]
            done = torch.cuda.Event()
            done.record()
            return host, done

    def fetch(self, pending):
        outputs, done = pending
        if done is not None:
            done.synchronize()
        return [output.detach().cpu().numpy() for output in outputs]


class _TensorFlowAdapter:
    """TensorFlow: a `tf.function`, XLA-compiled where Keras would compile the model's predict step."""

    def __init__(self, model, preprocess):
        import tensorflow as tf

        def forward(pixels):
            return _as_list(model(_preprocessed(preprocess, pixels), training=False))

        self._to_tensor = tf.convert_to_tensor
        # autograph=False: the graph has no Python control flow on tensors to convert
        self._forward = tf.function(forward, jit_compile=bool(model.jit_compile), reduce_retracing=True, autograph=False)

    def dispatch(self, batch):
        return self._forward(self._to_tensor(batch))

    def fetch(self, pending):
        return [output.numpy() for output in pending]


class _KerasAdapter:
    """Any other backend: preprocessing on the host, then Keras's own `predict_on_batch` (no overlap)."""

    def __init__(self, model, preprocess):
        self._model = model
        self._preprocess = preprocess

    def dispatch(self, batch):
        return _as_list(self._model.predict_on_batch(self._preprocess(np.asarray(batch, dtype=np.float32))))

    def fetch(self, pending):
        return [np.asarray(output) for output in pending]


_ADAPTERS = {"jax": _JaxAdapter, "torch": _TorchAdapter, "tensorflow": _TensorFlowAdapter}


def pad_batch(images, batch_size: int):
    """`images` (at most `batch_size`) zero-padded to exactly `batch_size` rows: one shape, one compilation.

    A backend tensor (pixels decoded on the device) is padded there.
    """
    if len(images) == batch_size:
        return images
    if not isinstance(images, np.ndarray):
        import keras

        return keras.ops.pad(images, [[0, batch_size - len(images)]] + [[0, 0]] * (len(images.shape) - 1))
    padding = np.zeros((batch_size - len(images), *images.shape[1:]), dtype=images.dtype)
    return np.concatenate([images, padding])
