"""A million images on one machine: is the cost per image flat, and the memory, as the data grows?

Data: N distinct, learnable training images made from CIFAR-10's 50,000 training
JPEGs (../shared/datasets/cifar10/train): image i is training image i mod 50,000
under a crop (reflect-pad 4, crop 32), a horizontal flip and a colour change
(per-channel gain 0.8-1.2, brightness ±20), drawn from a generator seeded by
(seed, i // 1,000); written once as JPEG files (quality 90) under
`<out>/images/<class>/<round>/<i>.jpg`, and reused by later runs. The test split
is CIFAR-10's 10,000 test JPEGs, as they are. The images are files, so the
extraction decodes JPEGs, as an ImageNet run would.

Each size runs in a fresh process (its peak RSS is its own VmHWM):

1. extraction: EfficientNet-Lite0 (the ImageNet file in ../shared/weights) at 32 px,
   `layers="stages"` (8 layers, 16 to 1,280 features), average pooling, into a
   new store;
2. probe stage: ridge screening of every stage (`RidgeProbeCV` on the layer's
   training split streamed from the store, `fit_streamed(..., "ridge")`), then a
   logistic-regression row on the best stage by LOO accuracy
   (`fit_streamed(..., "logreg", max_rows=--max-rows)`: the C grid on a stratified
   subsample of `--max-rows` rows, the final fit streamed), scored on the test split.

It prints per size the time per image of each stage (wall and CPU), the peak RSS
and the store size; then, in one more process on the smallest size's store, the
accuracy cost of the subsampled grid against the full in-memory fit
(`fit_classifier` on every row). Last line:
`scale: 1,000,000 images in N min; time per image X.XX× and peak RSS Y.YY× the 100,000 run`
(the largest size against the smallest; N: the largest run's wall minutes).

    python benchmarks/scale.py                 # 100,000, 300,000 and 1,000,000 images
    python benchmarks/scale.py --quick         # 1,000 and 3,000 images, a minute
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _args import CIFAR10_DIR, SHARED_DIR, base_parser, quiet_tensorflow, require_path
from _measure import GIB, Stopwatch, read_vmhwm, run_child_measuring_rss
from _output import RunLog, read_results, write_csv, write_json

LITE0 = SHARED_DIR / "weights" / "efficientnet_lite0_imagenet.keras"
BLOCK = 1_000  # images per seeded generator
N_BASE = 50_000
RESULT = "scale-result: "


def _parser():
    parser = base_parser("scale", __doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000", help="training images per run, comma-separated")
    parser.add_argument("--quick", action="store_true", help="1,000 and 3,000 images, 500 test images (about a minute)")
    parser.add_argument("--smoke", action="store_true",
                        help="200 and 600 images, 100 test images, no grid comparison: that it runs (the test suite's)")
    parser.add_argument("--n-test", type=int, default=10_000, help="CIFAR-10 test images in the test split")
    parser.add_argument("--max-rows", type=int, default=5_000, help="rows the logreg grid search holds in memory")
    parser.add_argument("--compare", type=int, default=20_000,
                        help="training images of the subsampled-grid vs full in-memory fit comparison (0: none)")
    parser.add_argument("--resume", action="store_true", help="keep the sizes already in <out>/scale.json, run the others")
    parser.add_argument("--images-only", action="store_true", help="only write the augmented JPEGs of the largest size")
    parser.add_argument("--cifar10", default=CIFAR10_DIR, help="CIFAR-10 folder (train/ and test/ of class folders)")
    parser.add_argument("--weights", default=LITE0, help="the EfficientNet-Lite0 .keras file")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-stores", action="store_true", help="keep each size's feature store")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "run:N" or "compare:N", in a child
    return parser


def _cifar(root: Path, split: str, n_per_class: int | None = None):
    from layerprobe.features.inputs import from_directory

    dataset = from_directory(root).subset(split)
    if n_per_class is not None:
        picked = np.concatenate([np.flatnonzero(dataset.labels == c)[:n_per_class] for c in range(10)])
        dataset = dataset.select(np.sort(picked))
    return dataset


def _path(images: Path, class_names, labels, i: int) -> Path:
    """Where image i is; `labels`: the label of each image's base, in image order (one round)."""
    return images / class_names[labels[i % N_BASE]] / f"{i // N_BASE:02d}" / f"{i:07d}.jpg"


def make_images(out: Path, n: int, cifar: Path, seed: int, log) -> tuple[list[str], np.ndarray, tuple]:
    """The first `n` augmented training images as files (written if missing); their paths, labels, class names."""
    from PIL import Image

    images = out / "images"
    train = _cifar(cifar, "train")
    # Image i's base: a seeded order of the (class-sorted) training images, so that every prefix mixes the classes.
    order = np.random.default_rng(seed).permutation(len(train))
    labels, class_names = train.labels[order], train.class_names
    base = None
    written = 0
    with Stopwatch() as watch:
        for block in range(0, (n + BLOCK - 1) // BLOCK):
            indices = np.arange(block * BLOCK, min(n, (block + 1) * BLOCK))
            if _path(images, class_names, labels, indices[-1]).is_file():
                continue  # blocks are written in order, the last file of a block last
            if base is None and n > N_BASE:  # every base is used: decode them once
                base = np.stack([train.load(i, 32) for i in order])
            pixels = base[indices % N_BASE] if base is not None else np.stack([train.load(order[i], 32) for i in indices])
            rng = np.random.default_rng([seed, block])
            padded = np.pad(pixels, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
            dx, dy = rng.integers(0, 9, size=(2, len(indices)))
            flips = rng.random(len(indices)) < 0.5
            gains = rng.uniform(0.8, 1.2, size=(len(indices), 1, 1, 3))
            shifts = rng.uniform(-20, 20, size=(len(indices), 1, 1, 1))
            crops = np.stack([padded[k, dy[k] : dy[k] + 32, dx[k] : dx[k] + 32] for k in range(len(indices))])
            crops[flips] = crops[flips, :, ::-1]
            pixels = np.clip(crops * gains + shifts, 0, 255).astype(np.uint8)
            for k, i in enumerate(indices):
                path = _path(images, class_names, labels, i)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")  # another process may write the same image
                Image.fromarray(pixels[k]).save(tmp, format="JPEG", quality=90)
                os.replace(tmp, path)
            written += len(indices)
    if written:
        log(f"  wrote {written:,} augmented JPEGs in {watch.wall:.0f} s ({watch.cpu:.0f} s CPU)")
    paths = [str(_path(images, class_names, labels, i)) for i in range(n)]
    return paths, labels[np.arange(n) % N_BASE], class_names


def run_one(args) -> dict:
    """One size, in this process: extraction, then the probe stage; returns the measurements."""
    quiet_tensorflow()
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.inputs import ImageDataset
    from layerprobe.features.store import FeatureStore
    from layerprobe.pipeline.classifiers import fit_classifier, flat_features
    from layerprobe.pipeline.streamed_fit import fit_streamed

    n, mode = int(args.child.split(":")[1]), args.child.split(":")[0]
    paths, labels, class_names = make_images(args.out, n, Path(args.cifar10), args.seed, print)
    test = _cifar(Path(args.cifar10), "test", args.n_test // 10)
    dataset = ImageDataset(
        sample_ids=paths + list(test.sample_ids), labels=np.concatenate([labels, test.labels]),
        class_names=class_names, splits=["train"] * n + ["test"] * len(test),
    )
    del paths
    store = FeatureStore(args.out / f"store-{n}")
    extractor = FeatureExtractor(
        str(args.weights), layers="stages", pooling="avg", input_size=32, preprocessing="none",
        batch_size=args.batch_size, dataset_digest="stat",
    )
    result = {"n_train": n, "n_images": len(dataset)}
    with Stopwatch() as extraction:
        report = extractor.extract(dataset, store, progress=False)
    del dataset
    result.update(
        extraction_wall=extraction.wall, extraction_cpu=extraction.cpu,
        timings={phase: round(seconds, 2) for phase, seconds in report.timings.items()},
        computed=len(report.computed),
        store_bytes=sum(f.stat().st_size for f in store.root.glob("*.h5")),
        peak_rss_after={"extraction": read_vmhwm()},
    )
    if mode == "compare":
        return result | compare(store, report.keys, args, fit_classifier, fit_streamed, flat_features)
    ridge = {}
    with Stopwatch() as probes:
        for layer, key in report.keys.items():
            with Stopwatch() as watch:
                fit = fit_streamed(store.stream(key, split="train"), "ridge")
            probe = fit.estimator.named_steps["clf"]
            ridge[layer] = {"loo": fit.cv_score, "alpha": probe.alpha_, "seconds": round(watch.wall, 2),
                            "n_features": probe.n_features_in_}
        result["peak_rss_after"]["ridge"] = read_vmhwm()
        best = max(ridge, key=lambda layer: ridge[layer]["loo"])
        train = store.stream(report.keys[best], split="train")
        with Stopwatch() as watch:
            row = fit_streamed(train, "logreg", max_rows=args.max_rows, random_state=args.seed)
        logreg_seconds = watch.wall
        result["peak_rss_after"]["logreg"] = read_vmhwm()
    test_features = store.load(report.keys[best], split="test")
    accuracy = float((row.estimator.predict(flat_features(test_features)) == test_features.y).mean())
    result.update(
        probe_wall=probes.wall, probe_cpu=probes.cpu, ridge=ridge, best_layer=best,
        logreg={"seconds": round(logreg_seconds, 2), "C": row.best_params.get("C"), "cv_score": row.cv_score,
                "test_accuracy": accuracy,
                # scikit-learn's in-memory fit (a training split that fits) gives n_iter_ as an array
                "n_iter": int(np.max(getattr(row.estimator.named_steps["clf"], "n_iter_", 0)))},
    )
    if not args.keep_stores:
        shutil.rmtree(store.root)
    return result


def compare(store, keys, args, fit_classifier, fit_streamed, flat_features) -> dict:
    """The logreg row with the grid on a subsample and the final fit streamed, against the full in-memory fit."""
    ridge = {layer: fit_streamed(store.stream(key, split="train"), "ridge").cv_score for layer, key in keys.items()}
    best = max(ridge, key=ridge.get)
    test = store.load(keys[best], split="test")
    rows = {}
    for name, fit in (
        ("subsampled grid, streamed fit", lambda: fit_streamed(store.stream(keys[best], split="train"), "logreg",
                                                               max_rows=args.max_rows, random_state=args.seed)),
        ("full grid in memory", lambda: fit_classifier(flat_features(train := store.load(keys[best], split="train")),
                                                      train.y, "logreg", random_state=args.seed)),
    ):
        with Stopwatch() as watch:
            row = fit()
        rows[name] = {"C": row.best_params.get("C"), "cv_score": row.cv_score, "seconds": round(watch.wall, 1),
                      "test_accuracy": float((row.estimator.predict(flat_features(test)) == test.y).mean())}
    # The cost of one L-BFGS evaluation (a pass: logits and gradient), for the ImageNet extrapolation.
    from layerprobe.pipeline.probes import StreamedLinearClassifier

    train = store.stream(keys[best], split="train")
    with Stopwatch() as watch:
        probe = StreamedLinearClassifier(C=1.0, max_iter=3).fit(train, train.y)
    passes = {"passes": probe.n_passes_, "seconds": watch.wall, "cpu": watch.cpu, "n_rows": len(train),
              "n_features": train.n_features, "n_classes": len(probe.classes_)}
    if not args.keep_stores:
        shutil.rmtree(store.root)
    return {"best_layer": best, "comparison": rows, "lbfgs_passes": passes}


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    args.out = Path(args.out)
    if args.child:
        print(RESULT + json.dumps(run_one(args)), flush=True)
        return
    require_path(args.cifar10, "the CIFAR-10 image folder", "--cifar10", kind="dir")
    require_path(args.weights, "the EfficientNet-Lite0 .keras file", "--weights", kind="file")
    if args.quick:
        args.sizes, args.n_test, args.max_rows, args.compare = "1000,3000", 500, 500, 1000
    if args.smoke:
        args.sizes, args.n_test, args.max_rows, args.compare = "200,600", 100, 200, 0
    sizes = [int(size) for size in str(args.sizes).split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    log = RunLog("scale", argv)
    log(f"scale: sizes {sizes}, {args.n_test} test images, logreg grid on {args.max_rows:,} rows; machine shared: "
        f"load average {os.getloadavg()[0]:.1f} at the start")
    make_images(args.out, max(sizes + [args.compare]), Path(args.cifar10), args.seed, log)
    if args.images_only:
        return
    common = ["--out", str(args.out), "--cifar10", str(args.cifar10), "--weights", str(args.weights),
              "--n-test", str(args.n_test), "--max-rows", str(args.max_rows), "--seed", str(args.seed),
              "--batch-size", str(args.batch_size), "--compare", str(args.compare)]
    if args.keep_stores:
        common.append("--keep-stores")
    results = read_results(args.out / "scale.json") if args.resume and (args.out / "scale.json").is_file() else []
    done = {(row["mode"], row["n_train"]) for row in results}
    jobs = [("run", size) for size in sizes] + ([("compare", args.compare)] if args.compare else [])
    for mode, size in jobs:
        if (mode, size) in done:
            continue
        child = run_child_measuring_rss([sys.executable, __file__, *common, "--child", f"{mode}:{size}"])
        lines = [line for line in child.output.splitlines() if line.startswith(RESULT)]
        if child.returncode != 0 or not lines:
            log(child.output[-4000:])
            raise SystemExit(f"error: the {mode} run of {size:,} images failed (exit {child.returncode}).")
        result = json.loads(lines[-1][len(RESULT):]) | {"mode": mode, "wall": child.wall, "peak_rss": child.peak_rss}
        results.append(result)
        write_json(results, args.out / "scale.json")
    for result in sorted((r for r in results if r["mode"] == "run"), key=lambda r: r["n_train"]):
        size, n_images = result["n_train"], result["n_images"]
        log(
            f"  {size:>9,} train images ({n_images:,} extracted): extraction {1e3 * result['extraction_wall'] / n_images:.2f} ms"
            f"/image ({1e3 * result['extraction_cpu'] / n_images:.2f} ms CPU), probe stage "
            f"{1e3 * result['probe_wall'] / size:.2f} ms/image ({1e3 * result['probe_cpu'] / size:.2f} ms CPU), peak RSS "
            f"{result['peak_rss'] / GIB:.2f} GiB, store {result['store_bytes'] / GIB:.2f} GiB; best {result['best_layer']}, "
            f"logreg test {result['logreg']['test_accuracy']:.4f}; phases {result['timings']}"
        )
    for result in (r for r in results if r["mode"] == "compare"):
        for name, row in result["comparison"].items():
            log(f"  logreg on {result['n_train']:,} ({result['best_layer']}), {name}: C={row['C']}, CV "
                f"{row['cv_score']:.4f}, test {row['test_accuracy']:.4f}, {row['seconds']:.0f} s")
    runs = sorted((r for r in results if r["mode"] == "run" and r["n_train"] in sizes), key=lambda r: r["n_train"])
    write_csv([{k: v for k, v in r.items() if not isinstance(v, dict)} for r in runs], args.out / "scale.csv")
    log.write(args.out / "scale.log")
    first, last = runs[0], runs[-1]
    per_image = lambda r: r["extraction_wall"] / r["n_images"] + r["probe_wall"] / r["n_train"]  # noqa: E731
    log(f"  extraction per image {(last['extraction_wall'] / last['n_images']) / (first['extraction_wall'] / first['n_images']):.2f}×, "
        f"probe stage per image {(last['probe_wall'] / last['n_train']) / (first['probe_wall'] / first['n_train']):.2f}×")
    log.write(args.out / "scale.log")
    print(f"scale: {last['n_train']:,} images in {last['wall'] / 60:.0f} min; time per image "
          f"{per_image(last) / per_image(first):.2f}× and peak RSS {last['peak_rss'] / first['peak_rss']:.2f}× "
          f"the {first['n_train']:,} run")


if __name__ == "__main__":
    main()
