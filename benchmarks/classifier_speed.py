"""How long does each classifier take to fit on cached CIFAR-10 features?

The 50,000 CIFAR-10 training images go once through VGG16 (the HED BSDS500 weights
from ../shared, `include_top=False`) at a small input size, and the average-pooled
block outputs are cached in a feature store (a second run reuses them). Then
`layerprobe.pipeline.classifiers.fit_classifier` fits each classifier on 50,000 x d features
for a few layer widths d, with a one-candidate grid (scikit-learn's default
hyperparameters, listed in `ONE_CANDIDATE`) so that the time is that of the
`cv` cross-validation fits plus the refit on all samples. The RBF SVM, whose fit
time grows about quadratically with the sample count, is fitted on a stated
class-balanced subset.

    python benchmarks/classifier_speed.py                         # real features, input 32
    python benchmarks/classifier_speed.py --synthetic             # random features of the same shapes
    python benchmarks/classifier_speed.py --layers block4_pool --classifiers logreg,sgd
    python benchmarks/classifier_speed.py --threads                # 1 vs all usable BLAS threads per size
    python benchmarks/classifier_speed.py --smoke                  # generated images, random weights: seconds

`--threads` measures the rule of `layerprobe.pipeline.threads` instead: for
each layer width and each training size (first n/10 per class), the time of
one lbfgs iteration of logistic regression, a `RidgeProbeCV` fit, LogME and a
`predict_proba`, with the BLAS and OpenMP pools limited to one thread and to
every usable core, alternately, the median of `--repeats`.
"""

from __future__ import annotations

import sys
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
from _measure import Stopwatch  # noqa: E402
from _output import TABLE_STYLE, RunLog, bar_chart, read_results, write_csv, write_json  # noqa: E402
from layerprobe.pipeline.cli import comma_list  # noqa: E402
from layerprobe.pipeline.tables import format_table  # noqa: E402


SCRIPT = "classifier_speed"

# One candidate per classifier: scikit-learn's defaults for these estimators.
ONE_CANDIDATE = {
    "logreg": {"C": [1.0]},
    "linear_svm": {"C": [1.0]},
    "sgd": {"loss": ["hinge"], "alpha": [1e-4]},
    "rbf_svm": {"C": [1.0], "gamma": ["scale"]},
}
# --smoke: 10 generated images per class, VGG16 at random init.
SMOKE = {"weights": None, "n_train": 100, "rbf_n": 100}


def build_parser():
    parser = base_parser(SCRIPT, __doc__.strip().splitlines()[0])
    parser.add_argument("--cifar10", type=Path, default=CIFAR10_DIR, help="CIFAR-10 folder (train/<class>/*.jpg)")
    parser.add_argument("--weights", type=Path, default=VGG16_WEIGHTS, help="VGG16 include_top=False weights file")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}: {SMOKE}")
    parser.add_argument("--store", type=Path, default=None, help="feature store (default: OUT/store, kept as a cache)")
    parser.add_argument("--input-size", type=int, default=32, help="VGG16 input side for the extraction")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--layers", type=comma_list, default=["block3_pool", "block4_pool"],
        help="VGG16 layers whose avg-pooled features are fitted (widths 64/128/256/512/512 for block1..5)",
    )
    parser.add_argument("--classifiers", type=comma_list, default=list(ONE_CANDIDATE), help="names in ONE_CANDIDATE")
    parser.add_argument("--n-train", type=int, default=50000, help="training samples (first n/10 per class)")
    parser.add_argument("--rbf-n", type=int, default=10000, help="training samples for rbf_svm (first n/10 per class)")
    parser.add_argument(
        "--cv", type=int, default=2,
        help="cross-validation folds of the one-candidate search (2, the least fit_classifier takes, keeps the run short)",
    )
    parser.add_argument(
        "--synthetic", action="store_true",
        help="fit on random class-clustered features of the same shapes instead of extracted ones",
    )
    parser.add_argument("--replot", action="store_true", help="only redraw the chart from OUT/results.json")
    parser.add_argument("--extract-only", action="store_true", help="only fill the feature cache, fit nothing")
    parser.add_argument("--threads", action="store_true",
                        help="measure 1 vs all usable BLAS/OpenMP threads per problem size instead")
    parser.add_argument("--thread-sizes", type=comma_list, default=["300", "1000", "3000", "10000", "50000"],
                        help="--threads: training sizes (first n/10 per class)")
    parser.add_argument("--repeats", type=int, default=3, help="--threads: timings per setting (median)")
    parser.add_argument("--lbfgs-steps", type=int, default=30, help="--threads: lbfgs iterations per timed fit")
    return parser


def first_per_class(y: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first n/10 samples of each class (deterministic, class-balanced)."""
    classes = np.unique(y)
    per_class = n // len(classes)
    if per_class < 2 or n % len(classes):
        raise SystemExit(
            f"error: sample counts must be multiples of {len(classes)} with at least 2 per class. Received: {n}"
        )
    picked = [np.flatnonzero(y == label)[:per_class] for label in classes]
    if any(len(p) < per_class for p in picked):
        raise SystemExit(f"error: some class has fewer than {per_class} samples. Received: {n}")
    return np.sort(np.concatenate(picked))


def extracted_features(args, log) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Layer -> (50,000 x d) train features from the store, extracting what is missing."""
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.store import FeatureStore

    dataset = cifar_subset(args.cifar10, split="train", n_per_class=None)
    # All five block pools go into the cache (one forward pass costs the same), so any
    # --layers choice is a cache hit afterwards; only --layers are loaded and fitted.
    extractor = FeatureExtractor(
        "VGG16", weights=args.weights, layers="stages", input_size=args.input_size, batch_size=args.batch_size
    )
    unknown = [name for name in args.layers if name not in extractor.layer_names]
    if unknown:
        raise SystemExit(f"error: --layers must be VGG16 block pools {extractor.layer_names}. Received: {unknown}")
    store = FeatureStore(args.store)
    log(f"extracting (or reusing) VGG16 {', '.join(extractor.layer_names)} (avg) at {args.input_size}px for "
        f"{len(dataset)} CIFAR-10 train images into {store.root} ...")
    with Stopwatch() as watch:
        report = extractor.extract(dataset, store, progress=sys.stderr.isatty())
    log(f"  {report.summary()} ({watch.wall:.0f} s wall)")
    features, labels = {}, None
    for name in args.layers:
        loaded = store.load(report.keys[name])
        features[name] = loaded.X.reshape(len(loaded.X), -1)
        if labels is not None and not np.array_equal(labels, loaded.y):
            raise RuntimeError("stored entries disagree on the labels")
        labels = loaded.y
    extraction = {
        "computed": report.computed,
        "cached": report.cached,
        "extract_seconds": round(watch.wall, 1) if report.n_forward else None,
        "extract_img_s": round(report.images_per_second, 1) if report.n_forward else None,
    }
    return features, labels, extraction


VGG16_WIDTHS = {"block1_pool": 64, "block2_pool": 128, "block3_pool": 256, "block4_pool": 512, "block5_pool": 512}


def synthetic_features(args, log) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Class-clustered Gaussian float32 features of the shapes the layers would give."""
    rng = np.random.default_rng(0)
    n = 50000
    y = np.repeat(np.arange(10), n // 10)
    features = {}
    for name in args.layers:
        if name not in VGG16_WIDTHS:
            raise SystemExit(f"error: --synthetic knows the widths of {sorted(VGG16_WIDTHS)}. Received: {name!r}")
        d = VGG16_WIDTHS[name]
        centres = rng.normal(size=(10, d)).astype(np.float32)
        features[name] = (centres[y] + 3.0 * rng.normal(size=(n, d))).astype(np.float32)
    log(f"synthetic features (NOT extracted): 50000 x {[VGG16_WIDTHS[n] for n in args.layers]}, 10 Gaussian classes")
    return features, y, {"computed": [], "cached": [], "extract_seconds": None, "extract_img_s": None}


def plot(rows: list[dict], info: dict, path: Path) -> Path:
    """Grouped bars: one group per classifier, one bar per layer width."""
    classifiers = list(dict.fromkeys(r["classifier"] for r in rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    n_samples = {r["classifier"]: r["n_samples"] for r in rows}
    first = rows[0]
    return bar_chart(
        [f"{name} (n={n_samples[name]:,})" for name in classifiers],
        {
            f"{layer} (d={next(r['d'] for r in rows if r['layer'] == layer)})": [
                next((r["fit_classifier_s"] for r in rows if r["layer"] == layer and r["classifier"] == name), np.nan)
                for name in classifiers
            ]
            for layer in layers
        },
        path,
        ylabel="fit_classifier seconds (log scale)",
        log_y=True,
        title=(
            f"fit_classifier time on {'SYNTHETIC ' if first['features'] == 'synthetic' else ''}CIFAR-10 train "
            f"features ({first['features']})\none-candidate grid (scikit-learn defaults), "
            f"{first['cv']} CV fits + 1 refit, GridSearchCV n_jobs=None"
        ),
        footnote=f"{info['cpu']}, {info['cpus_usable']} cores, load average at start {info['load_average']}, {info['date']}.",
    )


def thread_rule(args, features: dict[str, np.ndarray], labels: np.ndarray, log: RunLog) -> int:
    """1 vs every usable thread for each workload, layer width and training size: the figures behind the rule."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from layerprobe.pipeline.probes import RidgeProbeCV, logme_score
    from layerprobe.core.cores import usable_cores
    from layerprobe.pipeline.threads import ONE_THREAD_BELOW, threads_for

    many = usable_cores()
    if many < 2:
        raise SystemExit("error: --threads compares 1 thread with several; this process may use only 1 core.")
    log(f"--threads: 1 vs {many} BLAS/OpenMP threads, median of {args.repeats}, alternating order; "
        f"logreg timed per lbfgs iteration ({args.lbfgs_steps} at most per fit)")
    rows = []
    for layer, X_all in features.items():
        for n in map(int, args.thread_sizes):
            picked = first_per_class(labels, n)
            X = StandardScaler().fit_transform(X_all[picked]).astype(np.float32)
            y = labels[picked]
            with threadpool_limits(1, "blas"), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = LogisticRegression(max_iter=args.lbfgs_steps).fit(X, y)

            def lbfgs_iteration():
                model = LogisticRegression(max_iter=args.lbfgs_steps, tol=1e-12).fit(X, y)
                return int(np.max(model.n_iter_))

            workloads = {
                "logreg (per lbfgs iteration)": lbfgs_iteration,
                "RidgeProbeCV fit": lambda: RidgeProbeCV().fit(X, y),
                "LogME": lambda: logme_score(X, y),
                "predict_proba": lambda: fitted.predict_proba(X),
            }
            for name, work in workloads.items():
                with threadpool_limits(1, "blas"), warnings.catch_warnings():  # warm-up: first-call costs
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    work()
                seconds: dict[int, list[float]] = {1: [], many: []}
                for repeat in range(args.repeats):
                    for threads in (1, many) if repeat % 2 == 0 else (many, 1):
                        with threadpool_limits(threads, "blas"), threadpool_limits(threads, "openmp"), \
                                warnings.catch_warnings(), Stopwatch() as watch:
                            warnings.simplefilter("ignore", ConvergenceWarning)
                            iterations = work()
                        per = iterations if name.startswith("logreg") else 1
                        seconds[threads].append(watch.wall / max(1, per))
                one, several = float(np.median(seconds[1])), float(np.median(seconds[many]))
                row = {
                    "workload": name, "layer": layer, "n_samples": n, "d": X.shape[1], "elements": n * X.shape[1],
                    "one_thread_s": round(one, 5), f"{many}_threads_s": round(several, 5),
                    "ratio": round(several / one, 2), "faster": "1" if one <= several else str(many),
                    "rule": threads_for(n, X.shape[1], cores=many),
                }
                rows.append(row)
                log(f"  {name:28s} {layer:12s} {n:6d} x {X.shape[1]:3d}: 1 thread {one:.4f} s, "
                    f"{many} threads {several:.4f} s ({row['ratio']:.2f}x), rule {row['rule']}")
    write_csv(rows, args.out / "threads.csv")
    log(f"\nmedian seconds with 1 and {many} threads (ratio = {many} threads / 1 thread; rule: "
        f"threads_for with ONE_THREAD_BELOW = {ONE_THREAD_BELOW:,} elements):")
    log(format_table(rows, ["workload", "n_samples", "d", "elements", "one_thread_s", f"{many}_threads_s", "ratio",
                            "faster", "rule"], **TABLE_STYLE))
    write_json({"command": log.command, "machine": log.info, "rows": rows}, args.out / "threads.json")
    log.write(args.out / "threads_log.txt")
    return 0


def main(argv=None) -> int:
    args = parse_smoke(build_parser(), argv, SMOKE)
    quiet_tensorflow()
    if args.smoke and args.cifar10 == CIFAR10_DIR:
        args.cifar10 = smoke_cifar10(args.out / "smoke-data", n_train=args.n_train // 10)
    if args.replot:
        data = read_results(args.out / "results.json")
        print(plot(data["rows"], data["machine"], args.out / "classifier_speed.png"))
        return 0
    unknown = [name for name in args.classifiers if name not in ONE_CANDIDATE]
    if unknown:
        raise SystemExit(f"error: unknown classifier(s) {unknown}; choose from {list(ONE_CANDIDATE)}. "
                         f"Received: --classifiers={','.join(args.classifiers)}")
    if not args.synthetic:
        require_path(args.cifar10, "The CIFAR-10 image folder", "--cifar10", kind="dir")
        if args.weights is not None:
            require_path(args.weights, "The VGG16 weights file", "--weights", kind="file")
    args.out.mkdir(parents=True, exist_ok=True)
    args.store = args.store or args.out / "store"
    from layerprobe.pipeline.classifiers import fit_classifier

    log = RunLog(SCRIPT, argv)
    features, labels, extraction = (synthetic_features if args.synthetic else extracted_features)(args, log)
    if args.threads:
        return thread_rule(args, features, labels, log)
    if args.extract_only:
        log("--extract-only: features are cached; no classifier fitted")
        return 0
    train = first_per_class(labels, args.n_train)
    rbf_rows = first_per_class(labels, args.rbf_n)
    weights = "HED" if args.weights == VGG16_WEIGHTS else "random init" if args.weights is None else args.weights.name
    source = "synthetic" if args.synthetic else f"VGG16 {weights} avg-pooled, input {args.input_size}px"
    rows = []
    for layer, X_all in features.items():
        for name in args.classifiers:
            rows_used = rbf_rows if name == "rbf_svm" else train
            X, y = X_all[rows_used], labels[rows_used]
            with Stopwatch() as watch:
                result = fit_classifier(
                    X, y, name, param_grid=ONE_CANDIDATE[name], cv=args.cv, n_jobs=None, random_state=0
                )
            cv_results = result.cv_results.iloc[0]
            cv_fit = float(cv_results["mean_fit_time"])
            cv_score_time = float(cv_results["mean_score_time"])
            refit = max(0.0, result.fit_seconds - args.cv * (cv_fit + cv_score_time))
            row = {
                "features": source,
                "layer": layer,
                "d": X.shape[1],
                "classifier": name,
                "n_samples": len(X),
                "candidate": " ".join(f"{k}={v[0]}" for k, v in ONE_CANDIDATE[name].items()),
                "cv": args.cv,
                "fit_classifier_s": round(result.fit_seconds, 2),
                "cv_fold_fit_s": round(cv_fit, 2),
                "refit_all_s": round(refit, 2),
                "cpu_s": round(watch.cpu, 1),
                "cv_accuracy": round(result.cv_score, 4),
            }
            rows.append(row)
            log(f"  {layer:12s} d={row['d']:4d} {name:10s} n={len(X):6d}: fit_classifier {row['fit_classifier_s']:8.2f} s "
                f"(cv fold fit {cv_fit:.2f} s, refit on all {refit:.2f} s), CPU {row['cpu_s']} s, "
                f"cv accuracy {row['cv_accuracy']:.3f}")
    for row in rows:
        reference = next(
            (r for r in rows if r["layer"] == row["layer"] and r["classifier"] == "logreg"), None
        )
        row["vs_logreg"] = round(row["fit_classifier_s"] / reference["fit_classifier_s"], 3) if reference else None
    write_csv(rows, args.out / "classifier_speed.csv")
    log(f"\nfit_classifier seconds, one-candidate grid, cv={args.cv} ({args.cv} fold fits + 1 refit):")
    log(format_table(rows, ["layer", "d", "classifier", "n_samples", "candidate", "fit_classifier_s",
                            "cv_fold_fit_s", "refit_all_s", "vs_logreg", "cv_accuracy"], **TABLE_STYLE))
    plot(rows, log.info, args.out / "classifier_speed.png")
    write_json({"command": log.command, "machine": log.info, "extraction": extraction, "rows": rows},
               args.out / "results.json")
    log.write(args.out / "log.txt")
    log(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
