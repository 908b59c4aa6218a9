"""Device check: layerprobe on a GPU machine with JAX or PyTorch and no TensorFlow.

One command (`bash benchmarks/device_check.sh`, which makes Keras and layerprobe
importable first) runs these stages and records each one's status, time and
result, so that one failing stage does not stop the others:

  environment   Python, CPUs, package versions, `nvidia-smi -L`.
  images        N synthetic JPEG files in class folders (gradients, noise and
                shapes, so that decoding costs what real photos cost), written by
                one process per core.
  jpeg[B]       (benchmarks/_device_jpeg.py) `--jpeg-images` files of ImageNet's size
                (500x375) decoded (on the GPU with nvImageCodec where it can, the
                choice of decoder="auto") -> extracted -> stored end to end, against
                the device-resident limit; then logreg rows on one layer's features,
                scikit-learn on every core vs the JAX solver on the device.
  decode        decode-only images/s: decode + resize to the input size, no model,
                per decoder (Pillow; simplejpeg where installed; torchvision's
                nvJPEG on the GPU, `decode_jpeg(device="cuda")` + resize, where
                torch sees a GPU), in layerprobe's decoding threads and in one
                thread (what the naive way does); with each CPU decoder's largest
                pixel difference from Pillow.
  tests[B]      the `backend`-marked tests (tests/features/test_backend_neutral.py:
                values against a direct Keras call, one forward pass for all layers,
                resume bit-identical, mixed precision) with KERAS_BACKEND=B.
  bench[B]      per model and precision (float32, bfloat16, mixed_float16), images/s of
                  device      the honest limit: layerprobe's compiled multi-output
                              forward pass (uint8 in, preprocessing inside) on
                              batches already on the device, dispatched back to
                              back, synchronised once at the end; at the bench
                              batch size and at each of --limit-batches;
                  host        the old limit: the multi-output model on pixels
                              decoded and preprocessed in host memory (float32),
                              fixed batches through predict_on_batch;
                  layerprobe  `FeatureExtractor(model, weights=None, layers="stages",
                              pooling="avg", ...).extract(dataset, fresh store,
                              n_workers=cores)`, end to end from the JPEG files
                              (decoding threads -> device loop -> writer thread ->
                              HDF5), after a warm-up extraction of one batch (no
                              compilation timed), with the report's per-phase timings;
                  arrays      the same extraction of the pixels already decoded in
                              memory (what the pipeline reaches without decoding);
                  naive       decode every image in one thread, preprocess, then one
                              truncated model (+ GlobalAveragePooling2D) per layer,
                              `model.predict` over all images each (each model
                              traced before timing).
  finetune[B]   one finetune epoch (`layerprobe.pipeline.finetune.finetune`, whole
                backbone unfrozen, random init), images/s for the epoch and for its
                steps after the first (the first one traces/compiles).
  probes        the closed-form probes of `layerprobe.pipeline.probes` (ridge LOO
                sweep, LogME) on the bench's features, where that package exists.

Each backend runs in its own child process (Keras picks its backend at import).
A global time budget (`--budget-seconds`, counted from the start of the shell
script) skips the stages that no longer fit. Results go to OUT/device_check.json
and OUT/device_check.md (OUT: `$OUT`, else benchmarks/out/device_check/); the
markdown tables are printed last.

    bash benchmarks/device_check.sh                    # GPU machine: jax then torch, about 7 min
    bash benchmarks/device_check.sh --smoke            # CPU, tiny, KERAS_BACKEND (default tensorflow)
    python benchmarks/device_check.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layerprobe.core.cores import usable_cores  # noqa: E402  (device_check.sh makes layerprobe importable)
from layerprobe.core.versions import installed_version  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BACKEND_TESTS = "tests/features/test_backend_neutral.py"
RERUN_ENV = "LAYERPROBE_BACKEND_RERUN"  # tells test_backend_neutral.py not to start children
PACKAGES = (
    "keras", "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "torch", "tensorflow",
    "numpy", "h5py", "pillow", "scikit-learn", "scipy", "optree", "namex", "ml-dtypes", "simplejpeg",
    "nvidia-nvimgcodec-cu12", "nvidia-nvjpeg-cu12", "layerprobe",
)
PRECISIONS = {"float32": False, "bfloat16": "bfloat16", "mixed_float16": "float16"}


# --------------------------------------------------------------------------- arguments


def _model_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


TINY_NET = "TinyNet"  # a 5-stage backbone for --smoke, registered by the worker when asked for


def _tiny_net(include_top=False, weights=None, input_shape=(32, 32, 3), **kwargs):
    import keras

    inputs = keras.Input(input_shape, name="pixels")
    x = inputs
    for stage, filters in enumerate((8, 8, 16, 16, 32), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"stage{stage}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"stage{stage}_bn")(x)
        x = keras.layers.Activation("relu", name=f"stage{stage}_relu")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
    return keras.Model(inputs, x, name="tiny_net")


def register_tiny_net() -> None:
    from layerprobe.features.registry import BackboneSpec, register_backbone

    register_backbone(BackboneSpec(name=TINY_NET, constructor=_tiny_net, preprocess_module="keras.applications.vgg16",
                                   default_input_size=32, min_input_size=32, stage_pattern=r"stage\d+_pool$"),
                      overwrite=True)


def parse_model(text: str) -> tuple[str, dict[str, Any]]:
    """`"MobileNetV2:alpha=0.35"` -> `("MobileNetV2", {"alpha": 0.35})`."""
    name, _, options = text.partition(":")
    kwargs = {}
    for option in filter(None, options.split(";")):
        key, _, value = option.partition("=")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value.strip()
    return name.strip(), kwargs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults marked (smoke: ...) change with --smoke.",
    )
    add = parser.add_argument
    add("--smoke", action="store_true",
        help="tiny run on the CPU with the current KERAS_BACKEND (well under a minute)")
    add("--budget-seconds", type=float, default=None,
        help="stop starting stages after this many seconds, counted from the start of device_check.sh "
             "(default 390: the run ends within about 7 minutes; smoke: 300)")
    add("--backends", type=_model_list, default=None,
        help="comma-separated Keras backends, one child process each (default jax,torch; "
             "smoke: $KERAS_BACKEND or tensorflow)")
    add("--out", type=Path, default=None, help="result folder (default $OUT, else benchmarks/out/device_check)")
    add("--workdir", type=Path, default=None, help="scratch folder for images and stores (default: a temporary one)")
    add("--n-images", type=int, default=None, help="synthetic JPEG files (default 2048; smoke: 48)")
    add("--n-classes", type=int, default=None, help="class folders (default 8; smoke: 3)")
    add("--image-size", type=int, default=None, help="side of the JPEG files (default 256; smoke: 48)")
    add("--input-size", type=int, default=None, help="model input side (default 224; smoke: 32)")
    add("--models", type=_model_list, default=None,
        help=f"bench backbones, NAME or NAME:key=value;... (default ResNet50,VGG16; smoke: {TINY_NET}, "
             f"a 5-stage conv net registered here)")
    add("--precisions", type=_model_list, default=None,
        help="float32, bfloat16 and/or mixed_float16 (default float32,bfloat16)")
    add("--limit-batches", type=lambda text: [int(v) for v in _model_list(text)], default=None,
        help="batch sizes of the device-resident limit besides --batch-size (default 64,256,512; smoke: 4)")
    add("--batch-size", type=int, default=None, help="bench batch size (default 128; smoke: 8)")
    add("--workers", type=int, default=None, help="decoding threads (default: the number of cores)")
    add("--finetune-model", default=None,
        help=f"finetune backbone (default MobileNetV2:alpha=0.35; smoke: {TINY_NET})")
    add("--finetune-size", type=int, default=None, help="finetune input side (default 96; smoke: 32)")
    add("--finetune-images", type=int, default=None, help="finetune training images (default 512; smoke: 32)")
    add("--finetune-batch-size", type=int, default=None, help="finetune batch size (default 64; smoke: 16)")
    add("--jpeg-images", type=int, default=None,
        help="JPEG files of the jpeg stage, decoded -> extracted -> stored end to end (default 50000; smoke: 48)")
    add("--jpeg-image-size", default=None, help="their WIDTHxHEIGHT (default 500x375; smoke: 50x38)")
    add("--jpeg-model", default=None, help=f"its backbone (default ResNet50; smoke: {TINY_NET})")
    add("--jpeg-precision", default=None, help="its precision (default bfloat16)")
    add("--jpeg-batch-size", type=int, default=None, help="its batch size (default 256; smoke: 8)")
    add("--jpeg-backend", default=None, help="its Keras backend (default jax; smoke: $KERAS_BACKEND or tensorflow)")
    add("--jpeg-probe-samples", type=int, default=None,
        help="images whose features the logreg rows are fitted on, CPU vs JAX (default 10000; smoke: 48)")
    add("--tests-filter", default=None,
        help="pytest -k expression for the backend tests (default: all; smoke: two quick ones)")
    add("--skip", type=_model_list, default=[],
        help="stages to skip: images, decode, jpeg, tests, bench, finetune, probes")
    # Internal: one backend's child process.
    add("--worker", action="store_true", help=argparse.SUPPRESS)
    add("--worker-results", type=Path, help=argparse.SUPPRESS)
    add("--worker-deadline", type=float, help=argparse.SUPPRESS)
    add("--images-dir", type=Path, help=argparse.SUPPRESS)
    add("--serial-decode-rate", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    smoke = args.smoke
    defaults = {
        "budget_seconds": (390.0, 300.0),
        "backends": (["jax", "torch"], [os.environ.get("KERAS_BACKEND", "tensorflow")]),
        "n_images": (2048, 48),
        "n_classes": (8, 3),
        "image_size": (256, 48),
        "input_size": (224, 32),
        "models": (["ResNet50", "VGG16"], [TINY_NET]),
        "precisions": (["float32", "bfloat16"], ["float32", "bfloat16"]),
        "limit_batches": ([64, 256, 512], [4]),
        "batch_size": (128, 8),
        "workers": (usable_cores(), min(2, usable_cores())),
        "finetune_model": ("MobileNetV2:alpha=0.35", TINY_NET),
        "finetune_size": (96, 32),
        "finetune_images": (512, 32),
        "finetune_batch_size": (64, 16),
        "tests_filter": ("", "requested_backend or one_forward_pass"),
        "jpeg_images": (50_000, 48),
        "jpeg_image_size": ("500x375", "50x38"),
        "jpeg_model": ("ResNet50", TINY_NET),
        "jpeg_precision": ("bfloat16", "bfloat16"),
        "jpeg_batch_size": (256, 8),
        "jpeg_backend": ("jax", os.environ.get("KERAS_BACKEND", "tensorflow")),
        "jpeg_probe_samples": (10_000, 48),
    }
    for name, (full, tiny) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if smoke else full)
    unknown = sorted(set(args.precisions) - set(PRECISIONS))
    if unknown:
        raise SystemExit(f"error: --precisions must be among {list(PRECISIONS)}. Received: {unknown}")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "out" / "device_check"
    return args


# --------------------------------------------------------------------------- small helpers


def _now() -> float:
    return time.time()


def _round(value, digits=1):
    return None if value is None else round(float(value), digits)


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def _log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- synthetic images


def _write_images(job: tuple[str, list[tuple[int, int]], int, int]) -> int:
    """Write the JPEG files of `job` (folder, [(index, class)], side or (width, height), classes); returns the count."""
    from PIL import Image, ImageDraw, ImageFilter

    root, items, side, n_classes = job
    width, height = side if isinstance(side, (tuple, list)) else (side, side)
    side = np.array([width, height], dtype=np.float64)  # shapes are placed and sized per axis
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    for index, label in items:
        rng = np.random.default_rng(index)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        ramp = (ramp - ramp.min()) / max(1e-6, float(np.ptp(ramp)))
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = start + ramp[..., None] * (end - start)
        pixels += rng.normal(0, 10, pixels.shape)  # sensor noise: JPEG has to code it
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        hue = 360 * label / n_classes
        for _ in range(int(rng.integers(4, 10))):
            x0, y0 = rng.uniform(-0.1, 0.9, 2) * side
            w, h = rng.uniform(0.08, 0.45, 2) * side
            colour = f"hsl({int(hue + rng.uniform(-20, 20)) % 360}, {int(rng.uniform(50, 100))}%, " \
                     f"{int(rng.uniform(25, 75))}%)"
            kind = (label + int(rng.integers(0, 2))) % 3  # each class prefers one shape
            if kind == 0:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
            elif kind == 1:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
            else:
                draw.polygon([(x0, y0 + h), (x0 + w / 2, y0), (x0 + w, y0 + h)], fill=colour)
            draw.line([tuple(rng.uniform(0, side, 2)), tuple(rng.uniform(0, side, 2))],
                      fill=colour, width=int(rng.integers(1, 6)))
        if rng.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
        image.save(Path(root) / f"class_{label:02d}" / f"img_{index:05d}.jpg", quality=90)
    return len(items)


def make_images(folder: Path, n_images: int, n_classes: int, side: int | tuple[int, int], processes: int
                ) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    for label in range(n_classes):
        (folder / f"class_{label:02d}").mkdir(exist_ok=True)
    items = [(index, index % n_classes) for index in range(n_images)]
    processes = max(1, min(processes, n_images))
    jobs = [(str(folder), items[start::processes], side, n_classes) for start in range(processes)]
    started = time.perf_counter()
    # fork: the driver has imported no Keras and started no thread yet
    context = get_context("fork") if "fork" in get_all_start_methods() else get_context()
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        written = sum(pool.map(_write_images, jobs))
    seconds = time.perf_counter() - started
    sizes = [path.stat().st_size for path in folder.glob("*/*.jpg")]
    return {"n_images": written, "n_classes": n_classes, "side": side, "processes": processes,
            "seconds": _round(seconds, 2), "mean_kib": _round(np.mean(sizes) / 1024, 1),
            "folder": str(folder)}


# --------------------------------------------------------------------------- decoding


def decode_rates(images_dir: Path, size: int, workers: int) -> dict[str, Any]:
    """Decode + resize to `size`, no model, per decoder: threaded as layerprobe does, and serial."""
    from layerprobe.features.inputs import from_directory, iter_decoded_chunks
    from layerprobe.features.inputs.decoding import load_image, resolve_decoder

    dataset = from_directory(images_dir)
    n = len(dataset)
    chunks = [range(start, min(start + 256, n)) for start in range(0, n, 256)]
    result: dict[str, Any] = {"n_images": n, "size": size, "workers": workers, "decoders": {}}
    decoders = ["pillow"] + (["simplejpeg"] if resolve_decoder("auto") == "simplejpeg" else [])
    n_serial = min(n, 256)
    reference = [load_image(dataset.sample_ids[i], size, decoder="pillow") for i in range(n_serial)]
    for decoder in decoders:
        entry: dict[str, Any] = {}
        for threads in dict.fromkeys([workers, min(8, usable_cores())]):
            started = time.perf_counter()
            decoded = sum(
                len(chunk.sample_indices)
                for chunk in iter_decoded_chunks(dataset, chunks, size, n_workers=threads, dtype="uint8", decoder=decoder)
            )
            entry[f"threads_{threads}_img_s"] = _round(decoded / (time.perf_counter() - started))
        started = time.perf_counter()
        pixels = [load_image(dataset.sample_ids[i], size, decoder=decoder) for i in range(n_serial)]
        entry["serial_img_s"] = _round(n_serial / (time.perf_counter() - started))
        entry["max_abs_diff_vs_pillow"] = int(max(np.abs(a.astype(int) - b).max() for a, b in zip(pixels, reference)))
        entry["img_s"] = entry[f"threads_{workers}_img_s"]
        result["decoders"][decoder] = entry
    with contextlib.suppress(ImportError):
        result["decoders"]["nvjpeg (torchvision, GPU)"] = gpu_decode_rate(dataset, size, reference)
    best = max(result["decoders"].values(), key=lambda entry: entry.get("img_s") or 0)
    result["img_s"] = best.get("img_s")
    result["serial_img_s"] = result["decoders"]["pillow"]["serial_img_s"]
    return result


def gpu_decode_rate(dataset, size: int, reference: list[np.ndarray], batch: int = 128) -> dict[str, Any]:
    """torchvision's nvJPEG decoding on the GPU + bilinear resize there: images/s from the files, pixel difference."""
    import torch
    import torch.nn.functional as functional
    from torchvision.io import decode_jpeg, read_file

    if not torch.cuda.is_available():
        return {"status": "skipped", "error": "torch sees no GPU"}
    paths = list(dataset.sample_ids)

    def decode(group: list[str]) -> torch.Tensor:
        images = decode_jpeg([read_file(path) for path in group], device="cuda")
        resized = [
            functional.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]
            for image in images
        ]
        return torch.stack(resized).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    decode(paths[:8])  # initialises nvJPEG
    torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(paths), batch):
        decode(paths[start : start + batch])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    pixels = decode(paths[: len(reference)]).cpu().numpy()
    differences = [np.abs(a.astype(int) - b) for a, b in zip(pixels, reference)]
    return {
        "img_s": _round(len(paths) / seconds), "batch": batch,
        "max_abs_diff_vs_pillow": int(max(d.max() for d in differences)),
        "mean_abs_diff_vs_pillow": _round(float(np.mean([d.mean() for d in differences])), 3),
    }


# --------------------------------------------------------------------------- worker (one backend)


class WorkerLog:
    """JSON lines appended and flushed one by one: a killed worker leaves what it measured."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, kind: str, **fields) -> None:
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")
            stream.flush()


def read_worker_log(path: Path) -> list[dict[str, Any]]:
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def device_info() -> dict[str, Any]:
    from layerprobe.features.backend import import_keras_quietly

    keras = import_keras_quietly()
    backend = keras.backend.backend()
    x = keras.ops.zeros((2,))
    info: dict[str, Any] = {"keras": keras.__version__, "backend": backend,
                            "tensor_device": str(getattr(x, "device", "?"))}
    with contextlib.suppress(Exception):
        if backend == "jax":
            import jax

            info.update(jax=jax.__version__, jax_backend=jax.default_backend(),
                        devices=[str(device) for device in jax.devices()])
        elif backend == "torch":
            import torch

            info.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                        devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
        elif backend == "tensorflow":
            import tensorflow as tf

            info.update(tensorflow=tf.__version__,
                        devices=[device.name for device in tf.config.list_logical_devices()])
    info["on_accelerator"] = "cpu" not in info["tensor_device"].lower()
    return info


def _predict_batches(model, x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed-size batches (the last one zero-padded) through `predict_on_batch`."""
    outputs: list[list[np.ndarray]] = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        n_real = len(batch)
        if n_real < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n_real, *batch.shape[1:]), batch.dtype)])
        results = model.predict_on_batch(batch)
        if not isinstance(results, (list, tuple)):
            results = [results]
        if not outputs:
            outputs = [[] for _ in results]
        for collected, result in zip(outputs, results):
            collected.append(np.asarray(result)[:n_real])
    return [np.concatenate(parts) for parts in outputs]


def _max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-12, float(np.max(np.abs(b)))))


def _clear_keras() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def bench(args, log: WorkerLog, deadline: float) -> None:
    import keras

    from layerprobe.features.inputs import from_directory, iter_decoded_chunks

    backend = keras.backend.backend()
    if any(parse_model(text)[0] == TINY_NET for text in args.models):
        register_tiny_net()
    dataset = from_directory(args.images_dir)
    n, size = len(dataset), args.input_size
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{backend}-", dir=args.workdir))
    started = time.perf_counter()
    decoded = np.empty((n, size, size, 3), np.uint8)
    chunks = [range(start, min(start + 256, n)) for start in range(0, n, 256)]
    for chunk in iter_decoded_chunks(dataset, chunks, size, n_workers=args.workers, dtype="uint8"):
        decoded[chunk.sample_indices] = chunk.images
    log.write("note", text=f"pre-decoded {n} images in {time.perf_counter() - started:.1f} s (not timed)")
    for model_text in args.models:
        pixels: dict[str, Any] = {}  # preprocessed once per model, for both precisions
        for precision in args.precisions:
            row = {"backend": backend, "model": model_text, "precision": precision, "batch_size": args.batch_size,
                   "input_size": size, "n_images": n, "workers": args.workers}
            if _now() > deadline - 20:
                log.write("row", **row, status="skipped", error="time budget exhausted")
                continue
            row["first_of_backend"] = model_text == args.models[0] and precision == args.precisions[0]
            try:
                bench_configuration(args, row, dataset, decoded, pixels, scratch, log, deadline)
            except Exception as error:  # the model could not be built: the next configuration still runs
                row.update(error=_error_text(error), traceback=_tail(traceback.format_exc()))
            errors = {key: value for key, value in row.items() if key.endswith("_error")}
            if "error" not in row and errors:
                row["error"] = "; ".join(f"{key[:-6]}: {value}" for key, value in errors.items())
            row["status"] = "error" if "error" in row else "ok"
            log.write("row", **row)
            _clear_keras()
        pixels.clear()
        gc.collect()
    shutil.rmtree(scratch, ignore_errors=True)


def device_limit(forward, decoded: np.ndarray, batch_size: int) -> dict[str, Any]:
    """The compiled forward pass on uint8 batches already on the device, back to back, synchronised once.

    Only whole batches; the first one compiles (untimed). Returns images/s and the seconds.
    """
    import keras

    from layerprobe.features.device import synchronize

    n_batches = max(1, len(decoded) // batch_size)
    batches = [keras.ops.convert_to_tensor(decoded[i * batch_size : (i + 1) * batch_size]) for i in range(n_batches)]
    if len(batches[0]) < batch_size:
        batches = [keras.ops.convert_to_tensor(np.resize(decoded, (batch_size, *decoded.shape[1:])))]
    started = time.perf_counter()
    forward.fetch(forward.dispatch(batches[0]))
    compile_s = time.perf_counter() - started
    synchronize()
    started = time.perf_counter()
    pending = [forward.dispatch(batch) for batch in batches]
    for handle in pending:
        forward.fetch(handle)
    synchronize()
    seconds = time.perf_counter() - started
    return {"img_s": _round(n_batches * batch_size / seconds), "seconds": _round(seconds, 3),
            "images": n_batches * batch_size, "compile_s": _round(compile_s, 2)}


def bench_configuration(args, row, dataset, decoded, pixels, scratch: Path, log: WorkerLog, deadline: float) -> None:
    """Device limit, host limit, layerprobe (files and arrays) and naive images/s of one model and precision.

    Each part is measured even when another fails; a failure is recorded as `<part>_error`.
    """
    import keras

    from layerprobe.features.extract import FeatureExtractor, dtype_policy
    from layerprobe.features.inputs import from_arrays
    from layerprobe.features.store import FeatureStore
    from layerprobe.features.truncate import build_extractor

    name, kwargs = parse_model(row["model"])
    n, batch_size, workers = len(dataset), args.batch_size, args.workers
    tag = f"{name}-{row['precision']}"
    build_started = time.perf_counter()
    extractor = FeatureExtractor(
        name, weights=None, layers="stages", pooling="avg", input_size=row["input_size"], batch_size=batch_size,
        mixed_precision=PRECISIONS[row["precision"]], model_kwargs=kwargs or None,
    )
    row["layers"] = extractor.layer_names
    row["decoder"] = extractor.decoder
    row["build_s"] = _round(time.perf_counter() - build_started, 2)
    stored: dict[str, np.ndarray] = {}

    @contextlib.contextmanager
    def part(label: str):
        try:
            yield
        except Exception as error:
            row[f"{label}_error"] = _error_text(error)
            row[f"{label}_traceback"] = _tail(traceback.format_exc(), 1500)
        log.write("partial", **row)

    if row.get("first_of_backend"):
        with part("auto_batch"):  # what batch_size="auto" picks here (compiles the largest size that fits)
            started = time.perf_counter()
            auto = FeatureExtractor(
                name, weights=None, layers="stages", pooling="avg", input_size=row["input_size"], batch_size="auto",
                mixed_precision=PRECISIONS[row["precision"]], model_kwargs=kwargs or None,
            )
            row["auto_batch_size"] = auto.resolve_batch_size()
            row["auto_batch_s"] = _round(time.perf_counter() - started, 1)
            if auto.batch_size not in args.limit_batches + [batch_size]:  # compiled already: measure it too
                row["device_auto_img_s"] = device_limit(auto.device_forward(), decoded, auto.batch_size)["img_s"]
            del auto

    with part("device"):  # the honest limit: layerprobe's compiled function, inputs resident on the device
        forward = extractor.device_forward()
        limits = {batch_size: device_limit(forward, decoded, batch_size)}
        row["device_img_s"] = limits[batch_size]["img_s"]
        row["device_compile_s"] = limits[batch_size]["compile_s"]
        for size in args.limit_batches:
            if size != batch_size and _now() < deadline - 60:
                with part(f"device_{size}"):
                    limits[size] = device_limit(extractor.device_forward(), decoded, size)
        row["device_by_batch"] = {str(size): limit["img_s"] for size, limit in sorted(limits.items())}
        if row.get("device_auto_img_s"):
            row["device_by_batch"][str(row["auto_batch_size"])] = row["device_auto_img_s"]

    with part("layerprobe"):  # end to end from the JPEG files
        warm_started = time.perf_counter()
        extractor.extract(dataset.select(np.arange(min(n, batch_size))), FeatureStore(scratch / f"warm-{tag}"),
                          n_workers=workers, progress=False)
        row["layerprobe_warmup_s"] = _round(time.perf_counter() - warm_started, 2)
        store = FeatureStore(scratch / f"run-{tag}")
        report = extractor.extract(dataset, store, n_workers=workers, progress=False)
        row["layerprobe_s"] = _round(report.seconds, 3)
        row["layerprobe_img_s"] = _round(report.n_forward / report.seconds)
        row["layerprobe_parts_s"] = {key: _round(value, 3) for key, value in report.timings.items()}
        if report.n_forward != n:
            raise RuntimeError(f"layerprobe extracted {report.n_forward} of {n} images: {report.summary()}")
        stored.update({layer: store.load(report.keys[layer]).X for layer in extractor.layer_names})
        if not (args.workdir / "features.npz").exists():
            np.savez(args.workdir / "features.npz", labels=dataset.labels, **stored)

    with part("arrays"):  # the same pipeline on pixels already decoded: no decoder in the way
        arrays = from_arrays(decoded, dataset.labels)
        digest = arrays.digest()
        report = extractor.extract(arrays, FeatureStore(scratch / f"arrays-{tag}"), n_workers=workers,
                                   progress=False, dataset_digest=digest)
        row["arrays_img_s"] = _round(report.n_forward / report.seconds)
        row["arrays_loop_img_s"] = _round(report.n_forward / report.timings["forward"])
        row["arrays_parts_s"] = {key: _round(value, 3) for key, value in report.timings.items()}

    with part("preprocess"):
        if "x" not in pixels:
            started = time.perf_counter()
            pixels["x"] = extractor.backbone.spec.preprocess_input(decoded.astype(np.float32))
            pixels["seconds"] = time.perf_counter() - started
        row["preprocess_s"] = _round(pixels["seconds"], 3)
    x = pixels.get("x")
    if x is None:
        return

    with part("host"):  # the old limit: float32 pixels preprocessed in host memory, predict_on_batch
        with dtype_policy(extractor.compute_dtype):
            limit_model = build_extractor(extractor.backbone.model, extractor.layers, extractor.pooling)
        warm_started = time.perf_counter()
        _predict_batches(limit_model, x[:batch_size], batch_size)
        row["host_warmup_s"] = _round(time.perf_counter() - warm_started, 2)
        started = time.perf_counter()
        outputs = _predict_batches(limit_model, x, batch_size)
        row["host_s"] = _round(time.perf_counter() - started, 3)
        row["host_img_s"] = _round(n / row["host_s"])
        if stored:
            row["max_rel_diff_layerprobe_vs_host"] = max(
                _max_relative_difference(stored[layer], output)
                for layer, output in zip(extractor.layer_names, outputs)
            )

    if _now() > deadline - 10 or row["precision"] != "float32":
        row["naive_skipped"] = "time budget exhausted" if _now() > deadline - 10 else "measured in float32 only"
        return
    with part("naive"):  # one truncated model per layer, model.predict over all images each
        predict_s = warm_s = 0.0
        for info in extractor.layers:
            with dtype_policy(extractor.compute_dtype):
                pooled = keras.layers.GlobalAveragePooling2D()(extractor.backbone.model.get_layer(info.name).output)
                truncated = keras.Model(extractor.backbone.model.input, pooled)
            started = time.perf_counter()
            truncated.predict(x[:batch_size], batch_size=batch_size, verbose=0)
            warm_s += time.perf_counter() - started
            started = time.perf_counter()
            truncated.predict(x, batch_size=batch_size, verbose=0)
            predict_s += time.perf_counter() - started
        decode_s = n / args.serial_decode_rate if args.serial_decode_rate else 0.0
        row.update(naive_predict_s=_round(predict_s, 3), naive_warmup_s=_round(warm_s, 2),
                   naive_decode_s=_round(decode_s, 3))
        row["naive_s"] = _round(decode_s + pixels["seconds"] + predict_s, 3)
        row["naive_img_s"] = _round(n / row["naive_s"])


def run_finetune(args, log: WorkerLog, deadline: float) -> None:
    import keras

    from layerprobe.features.inputs import from_directory
    from layerprobe.pipeline.finetune import FinetuneConfig, finetune

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends: list[float] = []
            self.epoch_seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self.epoch_started)

    name, kwargs = parse_model(args.finetune_model)
    if name == TINY_NET:
        register_tiny_net()
    dataset = from_directory(args.images_dir)
    dataset = dataset.select(np.arange(min(len(dataset), args.finetune_images)))
    n, batch_size = len(dataset), args.finetune_batch_size
    row: dict[str, Any] = {"backend": keras.backend.backend(), "model": args.finetune_model,
                           "input_size": args.finetune_size, "n_images": n, "batch_size": batch_size}
    output_dir = Path(tempfile.mkdtemp(prefix="finetune-", dir=args.workdir))
    timer = StepTimer()
    config = FinetuneConfig(
        head_epochs=0, finetune_epochs=1, unfreeze_blocks="all", batch_size=batch_size, augmentation=None,
        early_stopping_patience=None, val_fraction=0.0, workers=args.workers,
    )
    started = time.perf_counter()
    result = finetune(name, dataset, output_dir=output_dir, weights=None, input_size=args.finetune_size,
                      model_kwargs=kwargs or None, config=config, callbacks=[timer])
    row["call_s"] = _round(time.perf_counter() - started, 2)
    row["fit_s"] = _round(result.fit_seconds, 2)
    row["epochs"] = result.epochs_run
    row["steps"] = len(timer.ends)
    if timer.epoch_seconds:
        row["epoch_s"] = _round(timer.epoch_seconds[0], 2)
        row["epoch_img_s"] = _round(n / timer.epoch_seconds[0])
    if len(timer.ends) >= 2:
        steady_images = min(n, (len(timer.ends) - 1) * batch_size)
        row["steady_img_s"] = _round(steady_images / (timer.ends[-1] - timer.ends[0]))
    history = output_dir / "history.csv"
    if history.exists():
        row["history"] = history.read_text(encoding="utf-8").strip().splitlines()[-1]
    shutil.rmtree(output_dir, ignore_errors=True)
    log.write("finetune", **row)


def worker_main(args) -> int:
    log = WorkerLog(args.worker_results)
    deadline = args.worker_deadline
    # The bench stops starting configurations in time to leave the finetune epoch its share.
    finetune_share = 0.0 if "finetune" in args.skip else 0.25
    bench_deadline = deadline - finetune_share * max(0.0, deadline - _now())
    stages = [("bench", bench, bench_deadline), ("finetune", run_finetune, deadline)]
    try:
        info = device_info()
        _log(f"[{info['backend']}] keras {info['keras']}, backend {info['backend']}, "
             f"tensor device {info['tensor_device']}, devices {info.get('devices')}")
        log.write("device", **info)
    except Exception as error:
        log.write("stage", stage="device", status="error", error=_error_text(error), traceback=_tail(traceback.format_exc()))
        return 1
    for name, function, stage_deadline in stages:
        if name in args.skip:
            log.write("stage", stage=name, status="skipped", error="--skip")
            continue
        if _now() > stage_deadline - 15:
            log.write("stage", stage=name, status="skipped", error="time budget exhausted")
            continue
        started = time.perf_counter()
        log.write("stage-start", stage=name)
        try:
            function(args, log, stage_deadline)
            status, error, trace = "ok", None, None
        except Exception as exc:
            status, error, trace = "error", _error_text(exc), _tail(traceback.format_exc())
        log.write("stage", stage=name, status=status, error=error, traceback=trace,
                  seconds=_round(time.perf_counter() - started, 1))
        _clear_keras()
    return 0


# --------------------------------------------------------------------------- driver


class Run:
    """Stages, their statuses and results, and the time budget."""

    def __init__(self, args):
        self.args = args
        self.started = float(os.environ.get("DEVICE_CHECK_STARTED") or _now())
        self.deadline = self.started + args.budget_seconds
        self.stages: list[dict[str, Any]] = []
        self.bench_rows: list[dict[str, Any]] = []
        self.finetune_rows: list[dict[str, Any]] = []
        self.devices: dict[str, dict[str, Any]] = {}
        self.results: dict[str, Any] = {}

    def remaining(self) -> float:
        return self.deadline - _now()

    def stage(self, name: str, function: Callable[[], Any], *, min_seconds: float = 5.0, skip_key: str | None = None):
        record: dict[str, Any] = {"stage": name}
        if (skip_key or name) in self.args.skip:
            record.update(status="skipped", error="--skip")
        elif self.remaining() < min_seconds:
            record.update(status="skipped", error=f"time budget exhausted ({self.remaining():.0f} s left, "
                                                  f"needs {min_seconds:.0f} s)")
        else:
            _log(f"== {name} ({self.remaining():.0f} s of budget left)")
            started = time.perf_counter()
            try:
                result = function()
                record.update(status="ok", result=result)
                if isinstance(result, dict) and result.get("status") in ("error", "skipped"):
                    record["status"] = result.pop("status")
                    record["error"] = result.pop("error", None)
            except Exception as error:
                record.update(status="error", error=_error_text(error), traceback=_tail(traceback.format_exc()))
            record["seconds"] = _round(time.perf_counter() - started, 1)
            _log(f"   {name}: {record['status']} in {record['seconds']} s"
                 + (f" ({record['error']})" if record.get("error") else ""))
        self.stages.append(record)
        self.results[name] = record.get("result")
        return record


def _child_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "cores": usable_cores(), "versions": {name: installed_version(name) for name in PACKAGES},
        "keras_backend_env": os.environ.get("KERAS_BACKEND"),
    }
    with contextlib.suppress(Exception):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = _round(pages / 2**30, 1)
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = (done.stdout or done.stderr).strip()
    else:
        info["nvidia_smi"] = "nvidia-smi: not found"
    with contextlib.suppress(Exception):
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
        if done.returncode == 0:
            info["git_head"] = done.stdout.strip()
    return info


def run_tests(run: Run, backend: str) -> dict[str, Any]:
    args = run.args
    command = [sys.executable, "-m", "pytest", "-m", "backend", "-p", "no:cacheprovider", "-q",
               "--durations=5", BACKEND_TESTS]
    if args.tests_filter:
        command += ["-k", args.tests_filter]
    env = _child_env(backend)
    env[RERUN_ENV] = "1"
    timeout = max(10.0, min(150.0, run.remaining()))
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        return {"status": "error", "error": f"pytest did not finish in {timeout:.0f} s", "output": _tail(output)}
    summary = {kind: int(count) for count, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)",
                                                                  done.stdout)}
    result = {"returncode": done.returncode, "counts": summary, "command": " ".join(command[1:]),
              "output": _tail(done.stdout + done.stderr, 4000)}
    if done.returncode != 0 or not summary.get("passed"):
        result.update(status="error", error=f"pytest exited {done.returncode}: {summary}")
    _log(_tail(done.stdout, 1500))
    return result


def run_worker_process(run: Run, backend: str, share: float) -> dict[str, Any]:
    """One backend's bench and finetune in a child process; `share` of the remaining budget."""
    args = run.args
    results_file = args.workdir / f"worker-{backend}.jsonl"
    results_file.unlink(missing_ok=True)
    deadline = _now() + max(20.0, run.remaining() * share)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--worker-results", str(results_file),
               "--worker-deadline", str(deadline), "--images-dir", str(args.workdir / "images"),
               "--workdir", str(args.workdir), "--input-size", str(args.input_size),
               "--models", ",".join(args.models), "--precisions", ",".join(args.precisions),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers),
               "--limit-batches", ",".join(map(str, args.limit_batches)),
               "--finetune-model", args.finetune_model, "--finetune-size", str(args.finetune_size),
               "--finetune-images", str(args.finetune_images),
               "--finetune-batch-size", str(args.finetune_batch_size), "--skip", ",".join(args.skip) or ","]
    serial = (run.results.get("decode") or {}).get("serial_img_s")
    if serial:
        command += ["--serial-decode-rate", str(serial)]
    grace = 30.0
    process = subprocess.Popen(command, cwd=REPO, env=_child_env(backend))
    try:
        returncode = process.wait(timeout=max(1.0, deadline - _now()) + grace)
        killed = False
    except subprocess.TimeoutExpired:
        process.kill()
        returncode = process.wait()
        killed = True
    events = read_worker_log(results_file)
    return {"events": events, "returncode": returncode, "killed": killed}


def run_jpeg(run: Run, share: float = 0.6) -> dict[str, Any]:
    """The jpeg stage (benchmarks/_device_jpeg.py) in a child process with `--jpeg-backend`, with `share` of
    the budget left."""
    args = run.args
    results = args.workdir / "jpeg.json"
    results.unlink(missing_ok=True)
    deadline = _now() + run.remaining() * share
    width, height = (int(v) for v in args.jpeg_image_size.lower().split("x"))
    command = [sys.executable, str(Path(__file__).resolve().parent / "_device_jpeg.py"), "--results", str(results),
               "--workdir", str(args.workdir), "--n-images", str(args.jpeg_images), "--width", str(width),
               "--height", str(height), "--input-size", str(args.input_size), "--model", args.jpeg_model,
               "--precision", args.jpeg_precision, "--batch-size", str(args.jpeg_batch_size),
               "--workers", str(args.workers), "--probe-samples", str(args.jpeg_probe_samples),
               "--deadline", str(deadline)]
    env = _child_env(args.jpeg_backend)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")  # GPU memory for nvImageCodec beside JAX's pool
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=max(30.0, deadline - _now()) + 60)
        output, killed = done.stdout + done.stderr, False
    except subprocess.TimeoutExpired as error:
        output, killed = str(error.stdout or "") + str(error.stderr or ""), True
    result = json.loads(results.read_text()) if results.exists() else {}
    failed = {name: part.get("error") for name, part in result.get("parts", {}).items() if part["status"] == "error"}
    if killed or failed or not result.get("extract"):
        why = "killed at its time limit" if killed else (f"failed: {failed}" if failed else "no extraction")
        result.update(status="error", error=f"the jpeg stage {why}", output=_tail(output, 3000))
    return result


def collect_worker(run: Run, backend: str, outcome: dict[str, Any]) -> None:
    """Turn a worker's events into bench[backend] and finetune[backend] stage records."""
    events = outcome["events"]
    for event in events:
        if event["kind"] == "device":
            run.devices[backend] = {k: v for k, v in event.items() if k != "kind"}
        elif event["kind"] == "row":
            run.bench_rows.append({k: v for k, v in event.items() if k != "kind"})
        elif event["kind"] == "finetune":
            run.finetune_rows.append({k: v for k, v in event.items() if k != "kind"})
    reported = {event["stage"]: event for event in events if event["kind"] == "stage"}
    started = {event["stage"] for event in events if event["kind"] == "stage-start"}
    finished = {(row.get("model"), row.get("precision")) for row in run.bench_rows if row.get("backend") == backend}
    unfinished = {}  # the configuration a killed worker was measuring: keep what it measured
    for event in events:
        if event["kind"] == "partial" and (event.get("model"), event.get("precision")) not in finished:
            unfinished[(event.get("model"), event.get("precision"))] = {k: v for k, v in event.items() if k != "kind"}
    for name in ("device", "bench", "finetune"):
        record: dict[str, Any] = {"stage": f"{name}[{backend}]"}
        if name in reported:
            event = reported[name]
            record.update(status=event["status"], error=event.get("error"), seconds=event.get("seconds"),
                          traceback=event.get("traceback"))
        elif name == "device":
            if backend in run.devices:
                continue  # reported through its own event
            record.update(status="error", error=f"the worker exited ({outcome['returncode']}) before reporting "
                                                f"its device")
        elif reported.get("device", {}).get("status") == "error":
            record.update(status="skipped", error="Keras could not start on this backend (see device)")
        elif name in started or outcome["killed"] or outcome["returncode"]:
            why = "was killed at its time limit" if outcome["killed"] else f"exited with {outcome['returncode']}"
            record.update(status="error", error=f"the {backend} worker {why} during this stage")
        else:
            record.update(status="skipped", error="not reached")
        if name == "bench":
            rows = [row for row in run.bench_rows if row.get("backend") == backend]
            failed = [row for row in rows if row.get("status") == "error"]
            if record.get("status") == "ok" and failed:
                record.update(status="error", error=f"{len(failed)} configuration(s) failed: {failed[0].get('error')}")
            for row in unfinished.values():
                run.bench_rows.append({**row, "status": "error", "error": record.get("error") or "unfinished"})
        run.stages.append(record)


def run_probes(run: Run) -> dict[str, Any]:
    if importlib.util.find_spec("layerprobe.pipeline.probes") is None:
        return {"status": "skipped", "error": "layerprobe.pipeline.probes does not exist in this tree"}
    probes = importlib.import_module("layerprobe.pipeline.probes")

    def find(name: str, modules: tuple[str, ...]):
        for module in (probes, *(f"layerprobe.pipeline.probes.{m}" for m in modules)):
            with contextlib.suppress(ImportError, AttributeError):
                module = importlib.import_module(module) if isinstance(module, str) else module
                return getattr(module, name)
        return None

    ridge, logme = find("RidgeProbeCV", ("ridge",)), find("logme_score", ("logme",))
    if ridge is None and logme is None:
        return {"status": "skipped", "error": "layerprobe.pipeline.probes has neither RidgeProbeCV nor logme_score"}
    path = run.args.workdir / "features.npz"
    if not path.exists():
        return {"status": "skipped", "error": "no bench features to probe (bench did not run)"}
    data = np.load(path)
    y = data["labels"]
    layers = [name for name in data.files if name != "labels"]
    result: dict[str, Any] = {"n_samples": int(len(y)), "layers": {}}
    for layer in layers:
        X = data[layer]
        entry: dict[str, Any] = {"n_features": int(X.shape[1])}
        if ridge is not None:
            started = time.perf_counter()
            probe = ridge().fit(X, y)
            entry["ridge_s"] = _round(time.perf_counter() - started, 3)
            entry["ridge_loo_accuracy"] = _round(getattr(probe, "best_score_", float("nan")), 4)
        if logme is not None:
            started = time.perf_counter()
            entry["logme"] = _round(logme(X, y), 4)
            entry["logme_s"] = _round(time.perf_counter() - started, 3)
        result["layers"][layer] = entry
    return result


# --------------------------------------------------------------------------- report


def _fmt(value, digits=0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def bottleneck(row: dict[str, Any], decode_img_s: float | None) -> str:
    """Which of decoding and the device limits layerprobe's rate from files."""
    limit, ours = row.get("device_img_s"), row.get("layerprobe_img_s")
    if not ours:
        return "–"
    if decode_img_s and limit:
        slower = "decode" if decode_img_s < limit else "device"
        text = f"{slower} ({_fmt(min(decode_img_s, limit))} < {_fmt(max(decode_img_s, limit))} img/s)"
    else:
        text = "device" if limit else "?"
    parts = row.get("layerprobe_parts_s") or {}
    if parts.get("decode_wait") is not None and row.get("layerprobe_s"):
        text += f"; the loop waited {parts['decode_wait'] / row['layerprobe_s']:.0%} of the time for decoded chunks"
    return text


def markdown(run: Run, report: dict[str, Any]) -> str:
    lines = ["# Device check", ""]
    env = report["environment"] or {}
    lines.append(f"{env.get('nvidia_smi', '')}  ")
    lines.append(f"Python {env.get('python')}, {env.get('cores')} cores, "
                 + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v) + "  ")
    gpus_listed = "GPU" in str(env.get("nvidia_smi", ""))
    for backend, info in run.devices.items():
        warning = " **(NOT on the GPU that nvidia-smi lists)**" if gpus_listed and not info.get("on_accelerator") else ""
        lines.append(f"Keras {info.get('keras')} on **{backend}**: tensor device `{info.get('tensor_device')}`, "
                     f"devices {info.get('devices')}{warning}  ")
    decode = run.results.get("decode") or {}
    decode_rate = decode.get("img_s")
    for decoder, entry in (decode.get("decoders") or {}).items():
        rates = ", ".join(f"{k.split('_')[1]} threads {_fmt(v)}" for k, v in entry.items() if k.startswith("threads_"))
        rates = rates or f"batch {entry.get('batch')}: {_fmt(entry.get('img_s'))}"
        lines.append(f"Decode-only {decoder} (JPEG {run.args.image_size}px -> {decode.get('size')}px, no model): "
                     f"{rates}; 1 thread {_fmt(entry.get('serial_img_s'))} img/s; max pixel difference from Pillow "
                     f"{entry.get('max_abs_diff_vs_pillow', entry.get('error', '–'))}  ")
    lines += ["", f"Total {report['seconds']:.0f} s of a {run.args.budget_seconds:.0f} s budget.", ""]
    lines += ["## Stages", "", "| stage | status | seconds | note |", "| --- | --- | ---: | --- |"]
    for stage in run.stages:
        note = (stage.get("error") or "").replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| {stage['stage']} | {stage['status']} | {_fmt(stage.get('seconds'), 1)} | {note} |")
    if run.bench_rows:
        lines += ["", "## Extraction images/s (5 stage layers, avg-pooled, random weights)", "",
                  "| backend | model | precision | batch | device limit | host limit | layerprobe (files) "
                  "| layerprobe (arrays) | naive | files/device | arrays/device | layerprobe/naive | bottleneck |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for row in run.bench_rows:
            if row.get("status") == "skipped":
                lines.append(f"| {row['backend']} | {row['model']} | {row['precision']} | {row['batch_size']} "
                             f"| skipped: {row.get('error')} | | | | | | | | |")
                continue
            device, host = row.get("device_img_s"), row.get("host_img_s")
            ours, arrays, naive = row.get("layerprobe_img_s"), row.get("arrays_img_s"), row.get("naive_img_s")
            note = bottleneck(row, decode_rate)
            errors = [f"{key[:-6]}: {value}" for key, value in row.items() if key.endswith("_error")]
            if errors:
                note += "; errors: " + "; ".join(errors)[:200].replace("|", "/").replace("\n", " ")
            lines.append(
                f"| {row['backend']} | {row['model']} | {row['precision']} | {row['batch_size']} | {_fmt(device)} "
                f"| {_fmt(host)} | {_fmt(ours)} | {_fmt(arrays)} | {_fmt(naive)} | {_ratio(ours, device)} "
                f"| {_ratio(arrays, device)} | {_ratio(ours, naive)} | {note} |"
            )
        lines += ["", "Device limit: layerprobe's compiled multi-output forward pass (uint8 in, preprocessing inside) "
                  "on batches already on the device, back to back. Host limit (the old one): the same model on "
                  "float32 pixels preprocessed in host memory, `predict_on_batch` per batch. layerprobe (files): "
                  "`extract` end to end from the JPEG files; (arrays): the same on the pixels already decoded. "
                  "Naive: one-thread decode + preprocess + one truncated model per layer (`model.predict`), "
                  "float32 only. Compilation is outside every timing.", "",
                  "batch_size='auto' picked: " + ("; ".join(
                      f"{r['backend']} {r['model']} {r['precision']}: {r['auto_batch_size']} ({r.get('auto_batch_s')} s)"
                      for r in run.bench_rows if r.get("auto_batch_size")) or "–"), "",
                  "Device limit by batch size: " + "; ".join(
                      f"{r['backend']} {r['model']} {r['precision']}: "
                      + ", ".join(f"{b}: {_fmt(v)}" for b, v in (r.get("device_by_batch") or {}).items())
                      for r in run.bench_rows if r.get("device_by_batch")), "",
                  "layerprobe phases (s, files | arrays): " + "; ".join(
                      f"{r['backend']} {r['model']} {r['precision']}: {r.get('layerprobe_parts_s')} | "
                      f"{r.get('arrays_parts_s')}" for r in run.bench_rows if r.get("layerprobe_parts_s"))]
    if run.finetune_rows:
        lines += ["", "## Finetune (one epoch, whole backbone trainable, random init)", "",
                  "| backend | model | input | images | batch | epoch img/s | after-first-step img/s | epoch s "
                  "| finetune() s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in run.finetune_rows:
            lines.append(f"| {row['backend']} | {row['model']} | {row['input_size']} | {row['n_images']} "
                         f"| {row['batch_size']} | {_fmt(row.get('epoch_img_s'))} | {_fmt(row.get('steady_img_s'))} "
                         f"| {_fmt(row.get('epoch_s'), 1)} | {_fmt(row.get('call_s'), 1)} |")
    tests = [(stage["stage"], stage) for stage in run.stages if stage["stage"].startswith("tests[")]
    if tests:
        lines += ["", "## Backend tests (`pytest -m backend " + BACKEND_TESTS + "`)", "",
                  "| run | status | counts | seconds |", "| --- | --- | --- | ---: |"]
        for name, stage in tests:
            counts = (stage.get("result") or {}).get("counts", {})
            lines.append(f"| {name} | {stage['status']} | {counts} | {_fmt(stage.get('seconds'), 1)} |")
    jpeg = run.results.get(f"jpeg[{run.args.jpeg_backend}]") or {}
    if jpeg.get("extract") or jpeg.get("decoder"):
        decoder, limit, extract = jpeg.get("decoder") or {}, jpeg.get("limit") or {}, jpeg.get("extract") or {}
        lines += ["", f"## From JPEG files ({jpeg['n_images']:,} files of {jpeg['image']} px -> {jpeg['input_size']} "
                  f"px, {jpeg['model']} {jpeg['precision']}, batch {jpeg['batch_size']}, {run.args.jpeg_backend})", "",
                  f"Decoder: {jpeg.get('decoder_used')} (auto; device decoding: "
                  f"{decoder.get('device_decoding_problem') or 'available'}); decode-only "
                  f"{_fmt(decoder.get('decode_img_s'))} img/s; pixels vs Pillow: mean "
                  f"{decoder.get('mean_abs_diff_vs_pillow')}, max {decoder.get('max_abs_diff_vs_pillow')} "
                  f"grey levels  ",
                  f"Device limit {_fmt(limit.get('img_s'))} img/s; end to end (decode -> extract -> store) "
                  f"{_fmt(extract.get('img_s'))} img/s = **{extract.get('of_limit')} of the limit**; phases (s) "
                  f"{extract.get('parts_s')}"]
        probe = jpeg.get("probes")
        if probe:
            lines += ["", f"Logreg rows on {probe['layer']} ({probe['n_train']} x {probe['n_features']}, C "
                      f"{probe['grid']['C']}, cv 3): CPU (scikit-learn, {probe['cores']} cores) {probe['cpu_s']} s, "
                      f"JAX ({probe['jax_device']}) {probe['jax_s']} s (+ {probe.get('jax_warmup_s')} s "
                      f"compiling, once per shape): **{probe['speedup']}x**; best C "
                      f"{probe['cpu_best_C']} vs {probe['jax_best_C']} (same: {probe['same_choice']}); test accuracy "
                      f"{probe['cpu_test_accuracy']} vs {probe['jax_test_accuracy']}; predictions agree on "
                      f"{probe['prediction_agreement']:.1%}"]
    probes = run.results.get("probes")
    if probes and probes.get("layers"):
        lines += ["", f"## Probes on the bench features ({probes['n_samples']} samples, CPU)", "",
                  "| layer | features | ridge LOO acc | ridge s | LogME | LogME s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for layer, entry in probes["layers"].items():
            lines.append(f"| {layer} | {entry['n_features']} | {_fmt(entry.get('ridge_loo_accuracy'), 3)} "
                         f"| {_fmt(entry.get('ridge_s'), 2)} | {_fmt(entry.get('logme'), 3)} "
                         f"| {_fmt(entry.get('logme_s'), 2)} |")
    return "\n".join(lines) + "\n"


def driver_main(args) -> int:
    run = Run(args)
    own_workdir = args.workdir is None
    args.workdir = Path(tempfile.mkdtemp(prefix="device-check-")) if own_workdir else args.workdir
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    _log(f"device check: backends {args.backends}, budget {args.budget_seconds:.0f} s, workdir {args.workdir}, "
         f"out {args.out}")
    try:
        run.stage("environment", environment, min_seconds=0)
        images = run.stage("images", lambda: make_images(args.workdir / "images", args.n_images, args.n_classes,
                                                         args.image_size, usable_cores()))
        if images["status"] != "ok":
            _log("no images: the decode, bench, finetune and probes stages cannot run")
        run.stage("decode", lambda: decode_rates(args.workdir / "images", args.input_size, args.workers))
        run.stage(f"jpeg[{args.jpeg_backend}]", lambda: run_jpeg(run), min_seconds=60, skip_key="jpeg")
        pending = list(args.backends)
        for backend in args.backends:
            pending.remove(backend)
            # the first backends leave time for the ones after them and for the tests
            share = (1.0 if "tests" in args.skip else 0.7) if not pending else 0.6
            if run.remaining() < 30:
                for name in ("bench", "finetune"):
                    run.stages.append({"stage": f"{name}[{backend}]", "status": "skipped",
                                       "error": f"time budget exhausted ({run.remaining():.0f} s left)"})
                continue
            _log(f"== bench + finetune [{backend}] ({run.remaining():.0f} s of budget left, "
                 f"{share:.0%} of it for this backend)")
            started = time.perf_counter()
            outcome = run_worker_process(run, backend, share)
            collect_worker(run, backend, outcome)
            _log(f"   [{backend}] worker done in {time.perf_counter() - started:.0f} s "
                 f"(exit {outcome['returncode']}{', killed' if outcome['killed'] else ''})")
            if backend == args.backends[0]:
                run.stage("probes", lambda: run_probes(run), min_seconds=5)
        # The backend tests last: the measurements come first in the time budget.
        for backend in args.backends:
            run.stage(f"tests[{backend}]", lambda b=backend: run_tests(run, b), min_seconds=20, skip_key="tests")
    finally:
        report = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seconds": _round(_now() - run.started, 1),
            "environment": run.results.get("environment"),
            "devices": run.devices,
            "stages": run.stages,
            "bench": run.bench_rows,
            "finetune": run.finetune_rows,
            "decode": run.results.get("decode"),
            "probes": run.results.get("probes"),
        }
        (args.out / "device_check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        for log_file in args.workdir.glob("worker-*.jsonl"):  # every event of each backend's worker
            with contextlib.suppress(OSError):
                shutil.copyfile(log_file, args.out / f"device_check-{log_file.name}")
        text = markdown(run, report)
        (args.out / "device_check.md").write_text(text, encoding="utf-8")
        if own_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print("\n" + text, flush=True)
    return 1 if any(stage["status"] == "error" for stage in run.stages) else 0


def main(argv=None) -> int:
    args = resolve_defaults(build_parser().parse_args(argv))
    if args.worker:
        return worker_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
