"""How fast is layerprobe's extraction, against the naive way and against the bare forward pass?

Same images, same backbone, same layers (the 5 stage outputs, average-pooled), same
batch size, measured side by side in one process:

  (a) layerprobe   `FeatureExtractor.extract` end to end into a fresh store:
                   threaded decode -> one multi-output forward pass (uint8 in, preprocessing
                   inside) -> chunk files written by a writer thread; its stages are the
                   report's `timings`.
                   The extractor keeps its built model, so its first call also builds
                   and traces it and later calls do not: the best run is a later one,
                   and the first is reported beside it.
  (b) naive        what a user writes by hand: decode every image with PIL, then one
                   truncated `keras.Model` (+ GlobalAveragePooling2D) per layer,
                   `model.predict(images)` each, `np.save` each.
  (c) limit        the multi-output model of (a) on images already decoded and
                   preprocessed in memory, fixed-size batches through `predict_on_batch`
                   (warmed up: no tracing in the timing). Nothing can be faster than
                   this with the same model and batch size.
  (d) cache hit    (a) again on the same store: no forward pass.

The three runs of a repeat are interleaved (order a, b, c then c, b, a) and each
figure is the best of `--repeats`, because other jobs share the machine. Both wall
and CPU seconds are recorded; CPU seconds are much less disturbed by other jobs.

Then peak resident memory of a layerprobe extraction of 1,000 and 10,000 CIFAR-10
images at input size 96 (VGG16, 5 block pools), each in a fresh child process.

    python benchmarks/extraction_speed.py                 # speed (about 10 min on 2 busy cores)
    python benchmarks/extraction_speed.py --parts memory  # peak RSS, 1,000 and 10,000 images at 96px
    python benchmarks/extraction_speed.py --replot        # redraw the charts from OUT/results-*.json
    python benchmarks/extraction_speed.py --smoke         # the speed part on generated images: seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import (  # noqa: E402
    CIFAR10_DIR,
    SMOKE_HELP,
    VGG16_WEIGHTS,
    base_parser,
    parse_smoke,
    quiet_tensorflow,
    require_path,
)
from _data import cifar_subset, smoke_cifar10  # noqa: E402
from _measure import GIB, Stopwatch, read_vmhwm, run_child_measuring_rss  # noqa: E402
from _output import TABLE_STYLE, RunLog, bar_chart, read_results, write_csv, write_json  # noqa: E402
from layerprobe.pipeline.cli import comma_list  # noqa: E402
from layerprobe.pipeline.tables import format_table  # noqa: E402

SCRIPT = "extraction_speed"
MEMORY_LIMIT_BYTES = 3 * GIB
MEMORY_GROWTH_LIMIT = 1.20
# --smoke: the speed part, VGG16 at random init on 20 generated images.
SMOKE = {"models": ["VGG16"], "vgg16_weights": None, "n_images": 20, "input_size": 32, "batch_size": 8, "repeats": 1,
         "parts": ["speed"]}


def _int_list(text: str) -> list[int]:
    return [int(item) for item in comma_list(text)]


def _weights_arg(text: str) -> str | None:
    return None if text.lower() in ("none", "random") else text


def build_parser():
    parser = base_parser(SCRIPT, __doc__.strip().splitlines()[0])
    parser.add_argument("--cifar10", type=Path, default=CIFAR10_DIR, help="CIFAR-10 folder (train/<class>/*.jpg)")
    parser.add_argument(
        "--vgg16-weights",
        type=_weights_arg,
        default=str(VGG16_WEIGHTS),
        help="VGG16 include_top=False weights file for the speed runs ('none': random init)",
    )
    parser.add_argument(
        "--resnet50-weights",
        type=_weights_arg,
        default=None,
        help="ResNet50 weights file ('none': random init; speed does not depend on the values)",
    )
    parser.add_argument("--models", type=comma_list, default="VGG16,ResNet50", help="comma-separated backbones for the speed runs")
    parser.add_argument(
        "--parts", type=comma_list, default="speed",
        help="speed, memory or speed,memory (memory: about 20 min on a busy 2-core machine, so not by default)",
    )
    parser.add_argument("--n-images", type=int, default=1000, help="CIFAR-10 train images (a multiple of 10)")
    parser.add_argument("--input-size", type=int, default=64, help="square input side for the speed runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best is reported")
    parser.add_argument("--memory-sizes", type=_int_list, default=[1000, 10000], help="images per memory run")
    parser.add_argument("--memory-input-size", type=int, default=96)
    parser.add_argument("--memory-weights", type=_weights_arg, default=None, help="weights of the memory runs")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch stores (default: a fresh OUT/work-*, removed)")
    parser.add_argument("--replot", action="store_true", help="only redraw the charts from OUT/results-*.json")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}: {SMOKE}")
    # Internal: the memory child process.
    parser.add_argument("--child-extract", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-store", type=Path, help=argparse.SUPPRESS)
    return parser


def _check_n_images(n_images: int) -> int:
    if n_images < 10 or n_images % 10:
        raise SystemExit(f"error: the image count must be a positive multiple of 10 (CIFAR-10 classes). Received: {n_images}")
    return n_images // 10


# --------------------------------------------------------------------------- (a) instrumented layerprobe


def run_layerprobe(extractor, dataset, store_dir: Path):
    """`extract` into a fresh store; the stages' times are the report's own `timings`."""
    from layerprobe.features.store import FeatureStore

    with Stopwatch() as watch:
        report = extractor.extract(dataset, FeatureStore(store_dir), progress=False)
    if report.n_forward != len(dataset) or report.skipped:
        raise RuntimeError(f"layerprobe extraction did not process every image: {report.summary()}")
    times = dict(report.timings)
    # dispatch and fetch happen inside the device loop (`forward`); the writer thread overlaps it
    times["other"] = watch.wall - sum(times.get(phase, 0.0) for phase in ("decode_wait", "forward", "write_wait", "commit"))
    return watch, times, report


def run_cache_hit(extractor, dataset, store_dir: Path):
    from layerprobe.features.store import FeatureStore

    with Stopwatch() as watch:
        report = extractor.extract(dataset, FeatureStore(store_dir), progress=False)
    if report.computed or report.n_forward:
        raise RuntimeError(f"the second extraction was not a cache hit: {report.summary()}")
    return watch


# --------------------------------------------------------------------------- (b) naive


def run_naive(backbone, layer_names, dataset, size: int, batch_size: int, out_dir: Path):
    """Decode with PIL, one truncated model per layer, model.predict each, np.save each."""
    import keras
    from PIL import Image

    times: dict[str, float] = defaultdict(float)
    features = {}
    with Stopwatch() as watch:
        started = time.perf_counter()
        images = []
        for path in dataset.sample_ids:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)))
        x = backbone.spec.preprocess_input(np.stack(images).astype("float32"))
        times["decode"] = time.perf_counter() - started
        for name in layer_names:
            started = time.perf_counter()
            pooled = keras.layers.GlobalAveragePooling2D()(backbone.model.get_layer(name).output)
            truncated = keras.Model(backbone.model.input, pooled)
            times["build_models"] += time.perf_counter() - started
            started = time.perf_counter()
            features[name] = truncated.predict(x, batch_size=batch_size, verbose=0)
            times["predict"] += time.perf_counter() - started
            started = time.perf_counter()
            np.save(out_dir / f"{name}.npy", features[name])
            times["save"] += time.perf_counter() - started
    times["other"] = watch.wall - sum(times.values())
    return watch, dict(times), features


# --------------------------------------------------------------------------- (c) limit


def decode_in_memory(dataset, size: int) -> np.ndarray:
    """The pixels layerprobe feeds the model, decoded up front (not timed)."""
    return np.stack([dataset.load(i, size) for i in range(len(dataset))]).astype("float32")


def run_limit(model, x: np.ndarray, batch_size: int):
    """Fixed-size batches (the last one zero-padded, as layerprobe does) through the model."""
    outputs = [[] for _ in model.outputs]
    with Stopwatch() as watch:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            n_real = len(batch)
            if n_real < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - n_real, *batch.shape[1:]), batch.dtype)])
            for collected, result in zip(outputs, model.predict_on_batch(batch)):
                collected.append(np.asarray(result)[:n_real])
    return watch, [np.concatenate(parts) for parts in outputs]


def _max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1e-12, float(np.max(np.abs(b)))))


# --------------------------------------------------------------------------- speed part


def speed_part(args, workdir: Path, log) -> tuple[list[dict], list[dict]]:
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.store import FeatureStore
    from layerprobe.features.truncate import build_extractor

    n_per_class = _check_n_images(args.n_images)
    dataset = cifar_subset(args.cifar10, split="train", n_per_class=n_per_class)
    weights = {"VGG16": args.vgg16_weights, "ResNet50": args.resnet50_weights}
    raw_rows, summary_rows = [], []
    for model_name in args.models:
        model_weights = weights.get(model_name)
        extractor = FeatureExtractor(
            model_name, weights=model_weights, layers="stages", input_size=args.input_size, batch_size=args.batch_size
        )
        layer_names = extractor.layer_names
        weights_label = Path(model_weights).name if model_weights else "random init"
        log(f"\n== {model_name} ({weights_label}) at {args.input_size}px, layers {', '.join(layer_names)}, "
            f"{len(dataset)} images, batch {args.batch_size}")
        limit_model = build_extractor(extractor.backbone.model, extractor.layers, extractor.pooling)
        x = extractor.backbone.spec.preprocess_input(decode_in_memory(dataset, args.input_size))
        with Stopwatch() as first_call:  # traces the predict function: outside the limit's timing
            limit_model.predict_on_batch(x[: args.batch_size])
        with Stopwatch() as second_call:
            limit_model.predict_on_batch(x[: args.batch_size])
        trace = {"wall": first_call.wall - second_call.wall, "cpu": first_call.cpu - second_call.cpu}
        log(f"  one-off model trace (first predict_on_batch minus the second): {trace['wall']:.2f} s wall, "
            f"{trace['cpu']:.2f} s CPU")
        results = defaultdict(list)
        checks = {}
        for repeat in range(args.repeats):
            order = ("layerprobe", "naive", "limit") if repeat % 2 == 0 else ("limit", "naive", "layerprobe")
            for method in order:
                run_dir = Path(tempfile.mkdtemp(prefix=f"{model_name}-{method}-", dir=workdir))
                try:
                    if method == "layerprobe":
                        watch, stages, report = run_layerprobe(extractor, dataset, run_dir)
                        cache_watch = run_cache_hit(extractor, dataset, run_dir)
                        store = FeatureStore(run_dir)
                        stored = {name: store.load(report.keys[name]).X for name in layer_names}
                        results["cache hit"].append((cache_watch, {}))
                    elif method == "naive":
                        watch, stages, naive_features = run_naive(
                            extractor.backbone, layer_names, dataset, args.input_size, args.batch_size, run_dir
                        )
                    else:
                        watch, limit_features = run_limit(limit_model, x, args.batch_size)
                        stages = {"forward": watch.wall}
                finally:
                    shutil.rmtree(run_dir, ignore_errors=True)
                results[method].append((watch, stages))
                log(f"  repeat {repeat + 1} {method:10s} {watch.wall:7.2f} s wall {watch.cpu:7.2f} s CPU  "
                    + " ".join(f"{k}={v:.2f}" for k, v in stages.items()))
                raw_rows.append(
                    {"model": model_name, "repeat": repeat + 1, "method": method, "wall_s": round(watch.wall, 3),
                     "cpu_s": round(watch.cpu, 3), **{f"{k}_s": round(v, 3) for k, v in stages.items()}}
                )
            # Same work: the three ways must give the same features.
            checks = {
                "naive_vs_layerprobe": max(_max_relative_difference(naive_features[n], stored[n]) for n in layer_names),
                "limit_vs_layerprobe": max(
                    _max_relative_difference(f, stored[n]) for f, n in zip(limit_features, layer_names)
                ),
            }
        best = {method: min(runs, key=lambda run: run[0].wall) for method, runs in results.items()}
        best_cpu = {method: min(run[0].cpu for run in runs) for method, runs in results.items()}
        n = len(dataset)
        row = {
            "model": model_name,
            "weights": weights_label,
            "input_size": args.input_size,
            "n_images": n,
            "batch_size": args.batch_size,
            "layers": " ".join(layer_names),
            "repeats": args.repeats,
        }
        for method in ("layerprobe", "naive", "limit"):
            row[f"{method}_img_s"] = round(n / best[method][0].wall, 2)
            row[f"{method}_cpu_s"] = round(best_cpu[method], 2)
        # The first extract() builds and traces the model; later ones reuse it (best = a later one).
        row["layerprobe_first_img_s"] = round(n / results["layerprobe"][0][0].wall, 2)
        row["cache_hit_s"] = round(best["cache hit"][0].wall, 4)
        row["trace_s"] = round(trace["wall"], 2)
        row["trace_cpu_s"] = round(trace["cpu"], 2)
        row["layerprobe_over_naive"] = round(row["layerprobe_img_s"] / row["naive_img_s"], 3)
        row["layerprobe_over_limit"] = round(row["layerprobe_img_s"] / row["limit_img_s"], 3)
        row["cpu_layerprobe_over_naive"] = round(best_cpu["naive"] / best_cpu["layerprobe"], 3)
        row["cpu_layerprobe_over_limit"] = round(best_cpu["limit"] / best_cpu["layerprobe"], 3)
        for stage, seconds in best["layerprobe"][1].items():
            row[f"layerprobe_{stage}_s"] = round(seconds, 3)
        for stage, seconds in best["naive"][1].items():
            row[f"naive_{stage}_s"] = round(seconds, 3)
        row.update({f"max_rel_diff_{k}": float(f"{v:.2e}") for k, v in checks.items()})
        summary_rows.append(row)
    return raw_rows, summary_rows


# --------------------------------------------------------------------------- memory part


def child_extract(args) -> int:
    """In the child process: one layerprobe extraction, then print peak memory as JSON."""
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.store import FeatureStore

    dataset = cifar_subset(args.cifar10, split="train", n_per_class=_check_n_images(args.n_images))
    extractor = FeatureExtractor(
        "VGG16", weights=args.memory_weights, layers="stages", input_size=args.memory_input_size,
        batch_size=args.batch_size,
    )
    after_build = read_vmhwm()
    with Stopwatch() as watch:
        report = extractor.extract(dataset, FeatureStore(args.child_store), progress=False)
    print("CHILD_RESULT " + json.dumps({
        "n_forward": report.n_forward,
        "seconds": watch.wall,
        "cpu_seconds": watch.cpu,
        "vmhwm_after_build": after_build,
        "vmhwm_end": read_vmhwm(),
    }), flush=True)
    return 0


def memory_part(args, workdir: Path, log) -> list[dict]:
    rows = []
    for n_images in args.memory_sizes:
        _check_n_images(n_images)
        store_dir = Path(tempfile.mkdtemp(prefix=f"memory-{n_images}-", dir=workdir))
        command = [
            sys.executable, str(Path(__file__).resolve()), "--child-extract", "--child-store", str(store_dir),
            "--cifar10", str(args.cifar10), "--n-images", str(n_images),
            "--memory-input-size", str(args.memory_input_size), "--batch-size", str(args.batch_size),
            "--memory-weights", args.memory_weights or "none",
        ]
        log(f"\n== peak memory: layerprobe extraction of {n_images} images at {args.memory_input_size}px "
            f"(VGG16, 5 block pools, {args.memory_weights or 'random init'}) in a fresh process ...")
        try:
            child = run_child_measuring_rss(command)
        finally:
            shutil.rmtree(store_dir, ignore_errors=True)
        lines = [line for line in child.output.splitlines() if line.startswith("CHILD_RESULT ")]
        if child.returncode != 0 or not lines:
            raise RuntimeError(f"the memory child failed (exit {child.returncode}):\n{child.output[-3000:]}")
        result = json.loads(lines[-1].split(" ", 1)[1])
        peak = max(value for value in (child.peak_rss, result["vmhwm_end"]) if value)
        row = {
            "n_images": n_images,
            "input_size": args.memory_input_size,
            "batch_size": args.batch_size,
            "peak_rss_gib": round(peak / GIB, 3),
            "rss_after_model_build_gib": round(result["vmhwm_after_build"] / GIB, 3),
            "extraction_adds_gib": round((peak - result["vmhwm_after_build"]) / GIB, 3),
            "wait4_ru_maxrss_gib": round(child.ru_maxrss / GIB, 3),
            "extract_seconds": round(result["seconds"], 1),
            "img_s": round(result["n_forward"] / result["seconds"], 2),
            "child_wall_s": round(child.wall, 1),
        }
        log("   " + ", ".join(f"{k}={v}" for k, v in row.items()))
        rows.append(row)
    if rows:
        smallest = min(rows, key=lambda r: r["n_images"])
        for row in rows:
            row["vs_smallest"] = round(row["peak_rss_gib"] / smallest["peak_rss_gib"], 3)
            row["under_3gib"] = row["peak_rss_gib"] * GIB < MEMORY_LIMIT_BYTES
            row["within_20pct"] = row["vs_smallest"] <= MEMORY_GROWTH_LIMIT
    return rows


# --------------------------------------------------------------------------- charts


def plot_speed(rows: list[dict], info: dict, path: Path) -> Path:
    first = rows[0]
    return bar_chart(
        [f"{r['model']} ({r['weights']})" for r in rows],
        {
            "layerprobe (decode + forward + store)": [r["layerprobe_img_s"] for r in rows],
            "naive (PIL, one model per layer)": [r["naive_img_s"] for r in rows],
            "limit (forward only, decoded in memory)": [r["limit_img_s"] for r in rows],
        },
        path,
        ylabel="images / s (higher is better)",
        title=(
            f"Extraction of the 5 stage outputs (avg), {first['n_images']} CIFAR-10 images at "
            f"{first['input_size']}px, batch {first['batch_size']}, best of {first['repeats']}\n"
            + "\n".join(
                f"{r['model']}: layerprobe/naive {r['layerprobe_over_naive']:.2f}x, "
                f"layerprobe/limit {r['layerprobe_over_limit']:.2f}"
                for r in rows
            )
        ),
        footnote=(
            "Cache hit (same extraction again): "
            + ", ".join(f"{r['model']} {r['cache_hit_s']:.3f} s" for r in rows)
            + f". {info['cpu']}, {info['cpus_usable']} cores, load average at start {info['load_average']}, "
            f"{info['date']}."
        ),
    )


def plot_memory(rows: list[dict], info: dict, path: Path) -> Path:
    return bar_chart(
        [f"{r['n_images']:,} images" for r in rows],
        {
            "peak RSS (VmHWM)": [r["peak_rss_gib"] for r in rows],
            "RSS after model build, before extract": [r["rss_after_model_build_gib"] for r in rows],
        },
        path,
        ylabel="GiB",
        title=(
            f"Peak resident memory of a layerprobe extraction, VGG16 5 block pools at "
            f"{rows[0]['input_size']}px, batch {rows[0]['batch_size']}, each in a fresh process"
        ),
        reference_lines={"required: < 3 GiB": MEMORY_LIMIT_BYTES / GIB},
        footnote=f"VmHWM read from /proc/<pid>/status. {info['cpu']}, {info['cpus_usable']} cores, {info['date']}.",
    )


def replot(out: Path) -> int:
    """Redraw the charts from the results-*.json files in `out`."""
    drawn = []
    for results in sorted(out.glob("results-*.json")):
        data = read_results(results)
        if data.get("speed"):
            drawn.append(plot_speed(data["speed"], data["machine"], out / "speed.png"))
        if data.get("memory"):
            drawn.append(plot_memory(data["memory"], data["machine"], out / "memory.png"))
    if not drawn:
        raise SystemExit(f"error: no results-*.json with figures in {out}. Run the benchmark first.")
    print("\n".join(map(str, drawn)))
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_smoke(build_parser(), argv, SMOKE)
    quiet_tensorflow()
    if args.replot:
        return replot(args.out)
    if args.smoke and args.cifar10 == CIFAR10_DIR:
        args.cifar10 = smoke_cifar10(args.out / "smoke-data", n_train=args.n_images // 10, n_test=0)
    require_path(args.cifar10, "The CIFAR-10 image folder", "--cifar10", kind="dir")
    if args.child_extract:
        return child_extract(args)
    parts = set(args.parts)
    if not parts or parts - {"speed", "memory"}:
        raise SystemExit(f"error: --parts takes speed, memory or speed,memory. Received: --parts={','.join(args.parts)}")
    for option, path in (("--vgg16-weights", args.vgg16_weights), ("--resnet50-weights", args.resnet50_weights)):
        if path is not None:
            require_path(path, "The weights file", option, kind="file")
    _check_n_images(args.n_images)
    for n_images in args.memory_sizes:
        _check_n_images(n_images)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="work-", dir=args.out))
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    log = RunLog(SCRIPT, argv)
    summary_rows, memory_rows = [], []
    try:
        if "speed" in parts:
            raw_rows, summary_rows = speed_part(args, workdir, log)
            write_csv(raw_rows, args.out / "speed_runs.csv")
            write_csv(summary_rows, args.out / "speed.csv")
            log("\nimages/s (best of %d; wall clock):" % args.repeats)
            log(format_table(summary_rows, [
                "model", "layerprobe_img_s", "layerprobe_first_img_s", "naive_img_s", "limit_img_s", "cache_hit_s",
                "layerprobe_over_naive", "layerprobe_over_limit",
                "cpu_layerprobe_over_naive", "cpu_layerprobe_over_limit",
            ], **TABLE_STYLE))
            log("\nlayerprobe time by stage (s, best run):")
            stage_columns = [
                key for key in summary_rows[0]
                if key.startswith("layerprobe_") and key.endswith("_s")
                and key not in ("layerprobe_img_s", "layerprobe_first_img_s", "layerprobe_cpu_s")
            ]
            log(format_table(summary_rows, ["model", *stage_columns, "trace_s", "trace_cpu_s"], **TABLE_STYLE))
            plot_speed(summary_rows, log.info, args.out / "speed.png")
        if "memory" in parts:
            memory_rows = memory_part(args, workdir, log)
            write_csv(memory_rows, args.out / "memory.csv")
            log("\npeak resident memory of a layerprobe extraction (fresh process each):")
            log(format_table(memory_rows, [
                "n_images", "input_size", "peak_rss_gib", "rss_after_model_build_gib", "extraction_adds_gib",
                "vs_smallest", "under_3gib", "within_20pct", "extract_seconds", "img_s",
            ], **TABLE_STYLE))
            plot_memory(memory_rows, log.info, args.out / "memory.png")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    tag = "-".join(sorted(parts))
    write_json({"command": log.command, "machine": log.info, "speed": summary_rows, "memory": memory_rows},
               args.out / f"results-{tag}.json")
    log.write(args.out / f"log-{tag}.txt")
    log(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
