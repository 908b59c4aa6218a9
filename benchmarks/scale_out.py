"""Scale-out: extraction throughput in-process against local dask clusters of worker processes.

The same generated images (JPEG and PNG files, so that workers decode them), the
same backbone (VGG16, random weights), layers, batch and chunk sizes, extracted:

  (a) in-process   `FeatureExtractor.extract` into a fresh store;
  (b) on a cluster `extract_on_cluster(extractor, ..., client)` on a `LocalCluster` of N worker
                   processes with 1 thread each, for each N in `--workers`.

For each, the first run (cold: the backbone is built and traced, on the cluster
in every worker, after it imports Keras) is reported beside the best of
`--repeats` later runs (warm), each into a fresh store. The cluster's fixed
cost per call (the store visibility probe and the workers' environment check,
timed alone) is split from the rest, and the distribution's overhead per image
is (warm wall time on 1 worker - warm wall time in-process - fixed cost) /
images: with one worker, both run the same forward passes on the same cores.
CPU seconds (client and workers together) are recorded beside wall time, since
other jobs share the machine. Every cluster run is checked bit-identical to
the in-process features.

    python benchmarks/scale_out.py --quick               # < 2 min; in-process vs 2 workers
    python benchmarks/scale_out.py                       # 1 and 2 workers, more images
    python benchmarks/scale_out.py --workers-for-cores   # 1, 2, 4, ... workers up to the cores
    python benchmarks/scale_out.py --gpus 0              # in-process vs one worker per listed GPU

With `--quick`, the last line printed is exactly
`2 workers identical: yes|no; throughput vs in-process: N.NN×`.
Results go to `--out` (default benchmarks/out/scale_out) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import base_parser, quiet_tensorflow  # noqa: E402
from layerprobe.core.cores import usable_cores  # noqa: E402

quiet_tensorflow()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _write_images(folder: Path, n_images: int, size: int) -> Path:
    """`n_images` noisy images in 4 class folders, alternately JPEG and PNG (reused when present)."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for index in range(n_images):
        label = f"class{index % 4}"
        (folder / label).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / label / f"{index:05d}.{'jpg' if index % 2 else 'png'}")
    done.write_text("")
    return folder


def _features(store, report) -> dict:
    return {name: store.load(key, verify=False).X for name, key in report.keys.items()}


def _timed(extract, store_root: Path, workers_cpu=None) -> dict:
    """One extraction into a fresh store: wall and CPU seconds (client + workers), and the features."""
    from layerprobe.features.store import FeatureStore

    shutil.rmtree(store_root, ignore_errors=True)
    store = FeatureStore(store_root)
    cpu_workers = workers_cpu() if workers_cpu else 0.0
    cpu, wall = _cpu_seconds(), time.perf_counter()
    report = extract(store)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    if workers_cpu:
        cpu += workers_cpu() - cpu_workers
    return {"wall": wall, "cpu": cpu, "n_forward": report.n_forward, "features": _features(store, report)}


def _summary(runs: list[dict], n_images: int) -> dict:
    cold, warm = runs[0], runs[1:] or runs[:1]
    best = min(warm, key=lambda run: run["wall"])
    return {
        "cold_wall_s": round(cold["wall"], 3),
        "warm_wall_s": [round(run["wall"], 3) for run in warm],
        "best_wall_s": round(best["wall"], 3),
        "median_wall_s": round(statistics.median(run["wall"] for run in warm), 3),
        "best_cpu_s": round(min(run["cpu"] for run in warm), 3),
        "images_per_s": round(n_images / best["wall"], 2),
        "cpu_ms_per_image": round(1000 * min(run["cpu"] for run in warm) / n_images, 2),
    }


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)


def _cluster(n_workers: int, gpus: list[int] | None, threads: int):
    """The cluster `layerprobe run` would start: `workers = N`, or one worker per GPU; `threads` tasks at once each."""
    from layerprobe.pipeline.cluster import ClusterConfig, open_client

    if gpus:
        settings = ClusterConfig(gpus=tuple(gpus), threads_per_worker=threads)
    else:
        settings = ClusterConfig(workers=n_workers, threads_per_worker=threads)
    return open_client(settings, log=lambda line: print(f"  {line}", flush=True))


def _workers_cpu(client):
    return lambda: sum(client.run(_cpu_seconds).values())


def run(args: argparse.Namespace) -> dict:
    from layerprobe.features.backend import import_keras_quietly
    from layerprobe.features.cluster_extraction import check_store_visible, extract_on_cluster, workers_environment
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.inputs import from_directory

    keras = import_keras_quietly()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    images = _write_images(out / f"images-{args.images}-{args.image_size}", args.images, args.image_size)
    dataset = from_directory(images)
    n_images = len(dataset)
    extractor = FeatureExtractor(
        "VGG16", weights=None, layers=args.layers, input_size=args.input_size, batch_size=args.batch_size
    )
    settings = {
        "images": n_images, "image_size": args.image_size, "input_size": args.input_size, "layers": extractor.layer_names,
        "batch_size": args.batch_size, "chunk_size": args.chunk_size, "n_chunks": -(-n_images // args.chunk_size),
        "repeats": args.repeats, "threads_per_worker": args.threads_per_worker,
    }
    scratch = out / "stores"
    print(f"{n_images} images ({args.image_size} px files), VGG16 at {args.input_size} px, layers {extractor.layer_names}, "
          f"batch {args.batch_size}, chunk {args.chunk_size} ({settings['n_chunks']} chunks); {usable_cores()} usable cores; "
          f"Keras backend {keras.backend.backend()}; load average {os.getloadavg()[0]:.1f}", flush=True)

    def in_process(store):
        return extractor.extract(dataset, store, chunk_size=args.chunk_size, progress=False)

    runs = [_timed(in_process, scratch / "in-process") for _ in range(args.repeats + 1)]
    reference = runs[-1]["features"]
    results = {"in_process": _summary(runs, n_images)}
    print(f"in-process: cold {runs[0]['wall']:.2f} s, warm best {results['in_process']['best_wall_s']:.2f} s "
          f"({results['in_process']['images_per_s']:.1f} img/s)", flush=True)

    clusters = [("gpus", len(args.gpus))] if args.gpus else [("workers", n) for n in args.workers]
    for kind, n_workers in clusters:
        name = f"{n_workers}_gpu_workers" if kind == "gpus" else f"{n_workers}_workers"
        started = time.perf_counter()
        with _cluster(n_workers, args.gpus, args.threads_per_worker) as client:
            client.wait_for_workers(n_workers)
            start_seconds = time.perf_counter() - started

            def on_cluster(store):
                return extract_on_cluster(extractor, dataset, store, client, chunk_size=args.chunk_size, progress=False)

            cluster_runs = [_timed(on_cluster, scratch / name, _workers_cpu(client)) for _ in range(args.repeats + 1)]
            fixed = time.perf_counter()
            check_store_visible(client, scratch)
            workers_environment(client)
            fixed = time.perf_counter() - fixed
        summary = _summary(cluster_runs, n_images)
        summary.update(
            n_workers=n_workers,
            start_s=round(start_seconds, 2),
            fixed_per_call_s=round(fixed, 3),
            identical=all(_identical(run["features"], reference) for run in cluster_runs),
            throughput_vs_in_process=round(results["in_process"]["best_wall_s"] / summary["best_wall_s"], 3),
        )
        results[name] = summary
        print(f"{name}: start {start_seconds:.1f} s, cold {cluster_runs[0]['wall']:.2f} s, warm best "
              f"{summary['best_wall_s']:.2f} s ({summary['images_per_s']:.1f} img/s, "
              f"{summary['throughput_vs_in_process']:.2f}x in-process), fixed per call {fixed:.2f} s, "
              f"identical: {summary['identical']}", flush=True)

    one = results.get("1_workers") or results.get("1_gpu_workers")
    if one is not None:
        per_image = (one["best_wall_s"] - results["in_process"]["best_wall_s"] - one["fixed_per_call_s"]) / n_images
        results["overhead"] = {
            "fixed_per_call_s": one["fixed_per_call_s"],
            "per_image_ms": round(1000 * per_image, 2),
            "per_image_ms_including_fixed": round(
                1000 * (one["best_wall_s"] - results["in_process"]["best_wall_s"]) / n_images, 2
            ),
            "cpu_per_image_ms": round(one["cpu_ms_per_image"] - results["in_process"]["cpu_ms_per_image"], 2),
        }
    return {
        "settings": settings,
        "machine": {
            "cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "keras_backend": keras.backend.backend(),
            "load_average_end": [round(value, 2) for value in os.getloadavg()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        },
        "results": results,
    }


def main(argv=None) -> None:
    parser = base_parser("scale_out", __doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="in-process vs 2 workers on few images (< 2 minutes)")
    parser.add_argument("--images", type=int, default=None, help="number of images (default 128 quick, 768 full)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated image files")
    parser.add_argument("--input-size", type=int, default=None, help="network input side (default 32 quick, 64 full)")
    parser.add_argument("--layers", default="stages", help="layers: 'stages' (the 5 block pools) or names, comma-separated")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 8 quick, 16 full)")
    parser.add_argument("--chunk-size", type=int, default=None, help="images per task (default 16 quick, 64 full)")
    parser.add_argument("--repeats", type=int, default=None, help="warm runs per setting (default 1 quick, 3 full)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--workers-for-cores", action="store_true",
                        help="worker counts 1, 2, 4, ... up to the usable cores (e.g. 16 on a 16-core GPU machine)")
    parser.add_argument("--gpus", default=None, help="GPU numbers: in-process vs one local worker per GPU")
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="tasks each worker runs at once (2 overlaps one chunk's decoding with another's forward pass)")
    parser.add_argument("--tag", default=None, help="name of the JSON file (default: quick, full, cores or gpu)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.images = args.images or (128 if quick else 768)
    args.input_size = args.input_size or (32 if quick else 64)
    args.batch_size = args.batch_size or (8 if quick else 16)
    args.chunk_size = args.chunk_size or (16 if quick else 64)
    args.repeats = args.repeats if args.repeats is not None else (1 if quick else 3)
    args.layers = args.layers if args.layers == "stages" else [name.strip() for name in args.layers.split(",")]
    args.gpus = [int(device) for device in args.gpus.split(",")] if args.gpus else None
    if args.workers_for_cores:
        counts, n = [], 1
        while n <= usable_cores():
            counts.append(n)
            n *= 2
        args.workers = counts
    else:
        args.workers = [2] if quick else [int(n) for n in args.workers.split(",")]
    tag = args.tag or ("gpu" if args.gpus else "quick" if quick else "cores" if args.workers_for_cores else "full")

    record = run(args)
    path = args.out / f"scale_out-{tag}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    shutil.rmtree(args.out / "stores", ignore_errors=True)
    results = record["results"]
    if "overhead" in results:
        overhead = results["overhead"]
        print(f"distribution overhead (1 worker vs in-process): {overhead['fixed_per_call_s']:.2f} s per call + "
              f"{overhead['per_image_ms']:.2f} ms per image ({overhead['cpu_per_image_ms']:+.2f} CPU ms per image)")
    print(f"results: {path}")
    if quick:
        two = results["2_workers"]
        print(f"2 workers identical: {'yes' if two['identical'] else 'no'}; "
              f"throughput vs in-process: {two['throughput_vs_in_process']:.2f}×")


if __name__ == "__main__":
    main()
