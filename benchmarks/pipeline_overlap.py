"""Does the extraction loop keep a fast accelerator busy? A CPU proxy with a simulated device.

The real loader (decoding threads), device loop (`FeatureExtractor.iter_features`:
batches dispatched ahead of their results), writer thread and chunk protocol
(work areas, atomic chunk files, entry commit) run around a simulated
accelerator: a device thread that holds each batch for batch_size / rate
seconds without using the CPU (a sleep, which releases the GIL) and returns
pooled outputs of the real shapes. `dispatch` returns at once, as JAX's
asynchronous dispatch does; `fetch` waits for the batch.

Inputs are pre-decoded pixels (an in-memory uint8 dataset at the input size),
so what is measured is the pipeline, not JPEG decoding (see device_check.py
for decoders). For each simulated rate the script reports the achieved
throughput as a fraction of the device's, and the main thread's CPU time per
image (the simulated forward pass costs none, so all of it is work outside the
forward pass: what would limit a faster device).

    python benchmarks/pipeline_overlap.py            # 5,000 img/s at 224 px, 20,000 img/s at 32 px
    python benchmarks/pipeline_overlap.py --quick    # the same, fewer images (under 2 minutes)

Last line: `overlap: 0.NN of the simulated device at N img/s`, the lowest
fraction over the simulated rates.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import base_parser, quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from layerprobe.features.extract import FeatureExtractor  # noqa: E402
from layerprobe.features.inputs import from_arrays  # noqa: E402
from layerprobe.features.store import FeatureStore  # noqa: E402

# (name, simulated images/s, input size, images, batch size, layer widths)
CASES = (
    ("224px", 5_000, 224, 4096, 128, (64, 128, 256, 512, 512)),
    ("32px", 20_000, 32, 16384, 256, (64, 128, 256, 512, 512)),
)


class SimulatedDevice:
    """An accelerator's queue, simulated exactly: batches run one after another, batch/rate seconds each.

    `dispatch` returns at once, with the time the batch will be done: when the
    device finishes the batches before it, plus its own duration. `fetch` sleeps
    until then (no CPU, the GIL released). No thread simulates the device, so the
    host's threads (and the GIL) cannot slow the simulated device down: any time
    it waits is the pipeline's doing.
    """

    def __init__(self, rate: float, widths: tuple[int, ...]):
        self.rate = rate
        self.widths = widths
        self.timings = {"dispatch": 0.0, "fetch": 0.0}
        self.idle = 0.0  # seconds the device had nothing to do, between its first and last batch
        self._free_at = None

    def dispatch(self, batch: np.ndarray):
        now = time.perf_counter()
        if self._free_at is not None and now > self._free_at:
            self.idle += now - self._free_at
        self._free_at = max(self._free_at or now, now) + len(batch) / self.rate
        outputs = [np.zeros((len(batch), width), np.float32) for width in self.widths]
        self.timings["dispatch"] += time.perf_counter() - now
        return self._free_at, outputs

    def fetch(self, pending) -> list[np.ndarray]:
        started = time.perf_counter()
        done_at, outputs = pending
        if done_at > started:
            time.sleep(done_at - started)
        self.timings["fetch"] += time.perf_counter() - started
        return outputs


class SimulatedExtractor(FeatureExtractor):
    """A real extractor (keys, chunks, store, writer) whose forward passes run on its `simulated` device.

    Its constructor is `FeatureExtractor`'s (its arguments are its `get_config()`);
    the device is set after construction.
    """

    simulated: SimulatedDevice

    def device_forward(self, layers=None):
        return self.simulated


def run_case(name, rate, size, n_images, batch_size, widths, workers, log) -> dict:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    labels = np.arange(n_images) % 10
    device = SimulatedDevice(rate, widths)
    # A real, small backbone gives the layers, keys and feature shapes; the device is simulated.
    extractor = SimulatedExtractor("VGG16", weights=None, layers="stages", input_size=size, batch_size=batch_size)
    extractor.simulated = device
    assert [extractor.feature_shapes[n][0] for n in extractor.layer_names] == list(widths)
    dataset = from_arrays(pixels, labels)
    digest = dataset.digest("content")  # a per-dataset cost (hashing the pixels), not the pipeline's
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(folder)
        main_cpu = time.thread_time()
        report = extractor.extract(dataset, store, n_workers=workers, progress=False, dataset_digest=digest)
        main_cpu = time.thread_time() - main_cpu
        assert report.n_forward == n_images
        assert store.load(report.keys[extractor.layer_names[-1]]).X.shape == (n_images, widths[-1])
    device_seconds = n_images / rate
    row = {
        "case": name,
        "simulated_img_s": rate,
        "input_size": size,
        "images": n_images,
        "batch_size": batch_size,
        "seconds": round(report.seconds, 3),
        "device_loop_seconds": round(report.timings["forward"], 3),
        # the device loop (first dispatch to last fetch): how busy the pipeline keeps the device
        "fraction": round(device_seconds / report.timings["forward"], 3),
        # the whole extract call: locks, work areas, the first chunk's decoding, the entries' commit
        "end_to_end_fraction": round(device_seconds / report.seconds, 3),
        "device_idle_seconds": round(device.idle, 3),
        "main_cpu_us_per_image": round(1e6 * main_cpu / n_images, 1),
        **{f"t_{phase}": round(seconds, 3) for phase, seconds in sorted(report.timings.items())},
    }
    log(
        f"{name}: device loop {n_images / report.timings['forward']:,.0f} img/s of a simulated {rate:,} img/s = "
        f"{row['fraction']:.2f} (device idle {device.idle:.3f} s); end to end {n_images / report.seconds:,.0f} img/s "
        f"= {row['end_to_end_fraction']:.2f}; main thread {row['main_cpu_us_per_image']} us CPU per image (the "
        f"simulated forward pass costs none); timings {({p: round(s, 3) for p, s in report.timings.items()})}"
    )
    return row


def main(argv=None) -> int:
    parser = base_parser("pipeline_overlap", __doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the images (under 2 minutes on 2 cores)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: the loader's)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, rate, size, n_images, batch_size, widths in CASES:
        n = n_images // 4 if args.quick else n_images
        rows.append(run_case(name, rate, size, n, batch_size, widths, args.workers, print))
    (args.out / "pipeline_overlap.json").write_text(json.dumps(rows, indent=2) + "\n")
    worst = min(rows, key=lambda row: row["fraction"])
    print(f"overlap: {worst['fraction']:.2f} of the simulated device at {worst['simulated_img_s']} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
