"""Probe speed: screen every layer with closed-form probes instead of grid-searching each one.

Issue 16, "Probe every layer at every regularisation in seconds". On cached
CIFAR-10 features of VGG16 (HED weights from ../shared, input 32×32, the five
block pools average-pooled), in one run and on the same arrays:

- **grid path** (today's default): ``fit_classifier(X, y, "logreg", cv=CV)`` with the
  registry's grid (C in 0.01, 0.1, 1, 10; ``cv`` 5 as in the run config, 3 with ``--quick``)
  on every layer;
  the best layer is the one with the highest CV accuracy;
- **screening sweep**: ``screen`` (``RidgeProbeCV``, exact LOO accuracy for 15
  penalties, plus LogME) on every layer, keeping the top-k (2) layers;
- **screening path, end to end**: the screening sweep, then the same logreg grid on
  the top-k layers only (their grid times are those measured in the grid path: the
  same call on the same arrays), the final layer being the best of them by CV.

Reported: (a) the screening speed-up = grid sweep seconds / screening sweep seconds;
(b) the end-to-end speed-up = grid sweep seconds / (screening sweep + grid on the
top-k); whether the ridge probe's rank-1 layer is the grid's best layer; and the
test accuracy (``evaluate``, once) of each path's final model. A multi-layer
ridge probe (greedy layer selection) is fitted too, for reference.

``--alternatives LAYER`` measures cheaper grid settings on one layer instead
(logreg float32/float64, warm-started C path, tol; LinearSVC primal/dual; SGD).

``--threads`` (issue 22) fits the classifier stage's rows (``--classifiers``,
default logreg, linear_svm, ridge; ``cv`` 3) on every layer of hymenoptera
(``--hymenoptera``, input 128) and of the CIFAR-10 subset of ``--quick``, each
row twice in alternating order: with the native thread pools at their default
size (what a user got before) and under `layerprobe.pipeline.threads.native_threads`
(what the classifier stage now does); its last line is
``classifier stage: N.N× faster than default threads (same choices: yes|no)``.
Outputs ``threads.json``/``.md`` under ``benchmarks/out/probe_speed/threads``.

Outputs under ``benchmarks/out/probe_speed/<quick|full>/``: ``results.json`` and
``results.md`` (``alternatives.json``/``.md`` for ``--alternatives``). The feature
store ``benchmarks/out/probe_speed/store`` is a cache shared by the runs.

    python benchmarks/probe_speed.py --quick    # 300/class train, 100/class test, grid cv=3; < 2 min once cached
    python benchmarks/probe_speed.py            # 50,000 train, 10,000 test
    python benchmarks/probe_speed.py --alternatives block4_pool [--quick]
    python benchmarks/probe_speed.py --threads  # hymenoptera + 3,000 CIFAR-10 rows, default threads vs the rule
    python benchmarks/probe_speed.py --smoke    # generated images, random weights: seconds

The last line printed is ``screening speed-up: N.N× (same best layer: yes|no)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import REPO_DIR, SHARED_DIR, SMOKE_HELP, parse_smoke  # noqa: E402
from _data import smoke_cifar10  # noqa: E402

OUT_DIR = REPO_DIR / "benchmarks" / "out" / "probe_speed"
LAYERS = ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"]
BACKBONE = "VGG16"
SVM_SETTINGS = ("primal", "dual", "dual_tol1e-3", "newton", "newton_warm", "sgd", "rows")
# --smoke: 10 train and 4 test images per class, generated; VGG16 at random init.
SMOKE = {"weights": None, "train_per_class": 10, "test_per_class": 4, "cv": 2}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300/class train and 100/class test images")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}: {SMOKE}")
    parser.add_argument("--data", type=Path, default=SHARED_DIR / "datasets" / "cifar10", help="CIFAR-10 folder (train/, test/)")
    parser.add_argument("--weights", type=Path, default=SHARED_DIR / "weights" / "vgg16_hed_bsds500_notop.weights.h5")
    parser.add_argument("--store", type=Path, default=OUT_DIR / "store", help="feature store (a cache)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: OUT/quick or OUT/full)")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated layer names")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--cv", type=int, default=None,
                        help="grid folds (default: 5, the run config's default; 3 with --quick)")
    parser.add_argument("--top-k", type=int, default=2, help="layers kept by the screening")
    parser.add_argument("--train-per-class", type=int, default=None, help="override the subset size")
    parser.add_argument("--test-per-class", type=int, default=None, help="override the subset size")
    parser.add_argument("--no-multi", action="store_true", help="skip the multi-layer probe")
    parser.add_argument("--alternatives", metavar="LAYER", default=None, help="measure grid alternatives on LAYER")
    parser.add_argument("--linear-svm", metavar="LAYER", default=None,
                        help="measure linear SVM solvers at each C, and the row before/now, on LAYER")
    parser.add_argument("--svm-settings", default=",".join(SVM_SETTINGS),
                        help=f"--linear-svm: comma-separated subset of {','.join(SVM_SETTINGS)}")
    parser.add_argument("--threads", action="store_true",
                        help="the classifier rows with default threads and with the rule, side by side (implies --quick)")
    parser.add_argument("--hymenoptera", type=Path, default=SHARED_DIR / "datasets" / "hymenoptera",
                        help="--threads: hymenoptera folder (train/, val/)")
    parser.add_argument("--hymenoptera-size", type=int, default=128, help="--threads: input size for hymenoptera")
    parser.add_argument("--classifiers", default="logreg,linear_svm,ridge", help="--threads: comma-separated names")
    parser.add_argument(
        "--blas-threads", type=int, default=1,
        help="BLAS threads for both paths (threadpoolctl; 0: the libraries' default). On a loaded 2-core "
        "machine two OpenBLAS threads made small lbfgs fits up to 50x slower, so the default is 1.",
    )
    return parser


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine(args) -> dict:
    from layerprobe.core.cores import usable_cores
    from layerprobe.core.versions import installed_version

    try:
        commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average_start": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": installed_version("numpy"),
        "sklearn": installed_version("scikit-learn"),
        "commit": commit,
        "utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "weights": "random init" if args.weights is None else args.weights.name,
    }


def first_per_class(dataset, split: str, per_class: int | None) -> np.ndarray:
    """Indices of the first `per_class` samples of each class in `split` (all of them for None)."""
    in_split = np.flatnonzero(np.asarray(dataset.splits) == split)
    if per_class is None:
        return in_split
    labels = dataset.labels[in_split]
    return np.concatenate([in_split[labels == k][:per_class] for k in range(len(dataset.class_names))])


def load_features(args, layers: list[str], *, data: Path | None = None, input_size: int | None = None,
                  test_split: str = "test"):
    """Extracts (or reads from the cache) every layer; returns {layer: (train FeatureSet, test FeatureSet)}.

    `data` and `input_size` default to ``--data`` and ``--input-size``; the training
    split is "train", the test split `test_split`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.inputs import from_directory
    from layerprobe.features.store import FeatureStore

    data = args.data if data is None else data
    for path, what in ((data, "--data or --hymenoptera"), (args.weights, "--weights")):
        if path is not None and not path.exists():
            raise SystemExit(f"{what} {path} does not exist; pass {what} or put ../shared beside the repository.")
    dataset = from_directory(data)
    train_per_class = args.train_per_class or (300 if args.quick else None)
    test_per_class = args.test_per_class or (100 if args.quick else None)
    if train_per_class or test_per_class:
        dataset = dataset.select(np.concatenate([
            first_per_class(dataset, "train", train_per_class), first_per_class(dataset, test_split, test_per_class)
        ]))
    store = FeatureStore(args.store)
    started = time.perf_counter()
    weights = None if args.weights is None else str(args.weights)
    extractor = FeatureExtractor(BACKBONE, weights=weights, layers=layers, pooling="avg",
                                 input_size=input_size or args.input_size)
    report = extractor.extract(dataset, store, progress=False)
    log(f"features: {report.summary()} ({time.perf_counter() - started:.1f} s with the model build)")
    features = {
        layer: (store.load(report.keys[layer], split="train"), store.load(report.keys[layer], split=test_split))
        for layer in layers
    }
    return features, list(dataset.class_names), time.perf_counter() - started


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(out: Path, name: str, payload: dict, markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{name}.json", json.dumps(payload, indent=2, default=float)),
                       (out / f"{name}.md", markdown)):
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(path)


# --------------------------------------------------------------------------- screening vs grid


def screen(train, layers, top_k):
    """The ridge probe (every penalty's exact LOO accuracy) and LogME on every layer, ranked by the run's rule.

    Returns one row per layer (layer, n_samples, feature_dim, cv_score, cv_se, alpha, logme,
    fit_seconds, logme_seconds, rank, selected) and the fitted probes.
    """
    from layerprobe.pipeline.probes import RidgeProbeCV, logme_score
    from layerprobe.pipeline.run.screening import screening_order

    rows, probes = {}, {}
    for layer in layers:
        X, y = train[layer].X, train[layer].y
        started = time.perf_counter()
        probes[layer] = probe = RidgeProbeCV().fit(X, y)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        logme = logme_score(X, y)
        rows[layer] = {"layer": layer, "n_samples": len(y), "feature_dim": int(probe.n_features_in_),
                       "cv_score": float(probe.best_score_), "cv_se": float(probe.cv_se_), "alpha": probe.alpha_,
                       "logme": logme, "fit_seconds": fit_seconds, "logme_seconds": time.perf_counter() - started}
    order = screening_order([rows[layer]["cv_score"] for layer in layers], [rows[layer]["logme"] for layer in layers])
    for rank, position in enumerate(order, start=1):
        rows[layers[position]].update(rank=rank, selected=rank <= top_k)
    return rows, probes


def compare(args, features, class_names, meta) -> dict:
    import pandas as pd

    from layerprobe.pipeline.classifiers import fit_classifier
    from layerprobe.pipeline.evaluate import evaluate
    from layerprobe.pipeline.probes import MultiLayerProbe

    out = args.out
    layers = list(features)
    train = {layer: features[layer][0] for layer in layers}
    test = {layer: features[layer][1] for layer in layers}
    n_train, n_test = len(train[layers[0]].y), len(test[layers[0]].y)
    log(f"{n_train} train / {n_test} test samples, layers {layers}, grid cv={args.cv}, top_k={args.top_k}")

    started = time.perf_counter()
    rows, probes = screen(train, layers, args.top_k)
    screening_seconds = time.perf_counter() - started
    log(f"screening sweep (ridge LOO + LogME, {len(layers)} layers): {screening_seconds:.2f} s")
    table = pd.DataFrame(rows.values())
    for layer in layers:
        rows[layer]["ridge_test_accuracy"] = evaluate(test[layer].y, probes[layer].predict(test[layer].X), class_names).accuracy

    grid = {}
    grid_started = time.perf_counter()
    for layer in layers:
        result = fit_classifier(train[layer].X, train[layer].y, "logreg", cv=args.cv, random_state=0)
        scores = evaluate(test[layer].y, result.estimator.predict(test[layer].X), class_names)
        grid[layer] = {"grid_seconds": result.fit_seconds, "grid_cv_score": result.cv_score,
                       "grid_C": result.best_params["C"], "grid_test_accuracy": scores.accuracy}
        rows[layer].update(grid[layer])
        log(f"grid {layer}: {result.fit_seconds:.1f} s, C={result.best_params['C']}, "
            f"CV {result.cv_score:.4f}, test {scores.accuracy:.4f}")
        write_outputs(out, "results.partial", {"meta": meta, "rows": rows}, "")
    grid_sweep_seconds = sum(entry["grid_seconds"] for entry in grid.values())
    grid_wall_seconds = time.perf_counter() - grid_started

    grid_best = max(layers, key=lambda layer: grid[layer]["grid_cv_score"])
    ridge_best = table.loc[table["rank"] == 1, "layer"].item()
    top_k = table.loc[table.selected].sort_values("rank")["layer"].tolist()
    screening_final = max(top_k, key=lambda layer: grid[layer]["grid_cv_score"])
    end_to_end_seconds = screening_seconds + sum(grid[layer]["grid_seconds"] for layer in top_k)
    summary = {
        "n_train": n_train,
        "n_test": n_test,
        "cv": args.cv,
        "top_k": args.top_k,
        "screening_seconds": screening_seconds,
        "ridge_seconds": float(table.fit_seconds.sum()),
        "logme_seconds": float(table.logme_seconds.sum()),
        "grid_sweep_seconds": grid_sweep_seconds,
        "grid_sweep_wall_seconds": grid_wall_seconds,
        "screening_speedup": grid_sweep_seconds / screening_seconds,
        "end_to_end_seconds": end_to_end_seconds,
        "end_to_end_speedup": grid_sweep_seconds / end_to_end_seconds,
        "grid_best_layer": grid_best,
        "ridge_best_layer": ridge_best,
        "logme_best_layer": table.loc[table.logme.idxmax(), "layer"],
        "screening_top_k": top_k,
        "screening_final_layer": screening_final,
        "same_best_layer": ridge_best == grid_best,
        "same_final_layer": screening_final == grid_best,
        "grid_path_test_accuracy": grid[grid_best]["grid_test_accuracy"],
        "screening_path_test_accuracy": grid[screening_final]["grid_test_accuracy"],
        "ridge_best_test_accuracy": rows[ridge_best]["ridge_test_accuracy"],
    }
    if not args.no_multi:
        started = time.perf_counter()
        # the layers side by side, as the run's multi-layer row gives them
        widths = [train[layer].X.shape[1] for layer in layers]
        multi = MultiLayerProbe(widths, layers).fit(np.hstack([train[layer].X for layer in layers]), train[layers[0]].y)
        multi_seconds = time.perf_counter() - started
        multi_test = evaluate(test[layers[0]].y, multi.predict(np.hstack([test[layer].X for layer in layers])),
                              class_names)
        summary["multi_layer"] = {"name": multi.name_, "cv_score": multi.cv_score_, "alpha": multi.alpha_,
                                  "test_accuracy": multi_test.accuracy, "fit_seconds": multi_seconds,
                                  "path": multi.selection_path_}
        log(f"multi-layer probe {multi.name_}: LOO {multi.cv_score_:.4f}, test {multi_test.accuracy:.4f}, {multi_seconds:.1f} s")
    meta["load_average_end"] = os.getloadavg()[0]
    payload = {"meta": meta, "summary": summary, "rows": rows}
    columns = ["layer", "feature_dim", "cv_score", "cv_se", "alpha", "logme", "fit_seconds", "logme_seconds", "rank",
               "selected", "ridge_test_accuracy", "grid_seconds", "grid_C", "grid_cv_score", "grid_test_accuracy"]
    lines = [
        f"# probe_speed ({'quick' if args.quick else 'full'})",
        "",
        f"{n_train} train / {n_test} test CIFAR-10 images, VGG16 weights {meta['weights']}, "
        f"input {args.input_size}, avg pooling; "
        f"grid = fit_classifier(logreg, cv={args.cv}, C in 0.01..10); screening = RidgeProbeCV + LogME ranked by the run's screening_order, "
        f"top_k={args.top_k}. BLAS threads: {meta['blas_threads']}. {meta['cpus']} CPUs, load average {meta['load_average_start']:.1f} at start, "
        f"{meta['load_average_end']:.1f} at end (shared machine: rely on the ratios), {meta['utc']}, commit {meta['commit']}.",
        "",
        markdown_table(list(rows.values()), columns),
        "",
        markdown_table([{
            "screening sweep (s)": screening_seconds, "grid sweep (s)": grid_sweep_seconds,
            "(a) screening speed-up": f"{summary['screening_speedup']:.1f}×",
            "end to end (s)": end_to_end_seconds, "(b) end-to-end speed-up": f"{summary['end_to_end_speedup']:.1f}×",
        }], ["screening sweep (s)", "grid sweep (s)", "(a) screening speed-up", "end to end (s)", "(b) end-to-end speed-up"]),
        "",
        f"- grid path best layer: **{grid_best}** (test accuracy {summary['grid_path_test_accuracy']:.4f})",
        f"- ridge rank-1 layer: **{ridge_best}** (same: {'yes' if summary['same_best_layer'] else 'no'}); "
        f"ridge probe test accuracy {summary['ridge_best_test_accuracy']:.4f}; LogME best: {summary['logme_best_layer']}",
        f"- screening path: top-{args.top_k} {top_k} → final **{screening_final}** "
        f"(test accuracy {summary['screening_path_test_accuracy']:.4f})",
    ]
    if "multi_layer" in summary:
        multi = summary["multi_layer"]
        lines.append(f"- multi-layer ridge probe: {multi['name']} LOO {multi['cv_score']:.4f}, "
                     f"test {multi['test_accuracy']:.4f}, {multi['fit_seconds']:.1f} s")
    write_outputs(out, "results", payload, "\n".join(lines) + "\n")
    (out / "results.partial.json").unlink(missing_ok=True)
    (out / "results.partial.md").unlink(missing_ok=True)
    print("\n".join(lines))
    return summary


# --------------------------------------------------------------------------- default threads vs the rule


@contextmanager
def default_threads():
    """What a user got before the rule: the native pools at their default size (every core they see).

    A set thread variable makes `layerprobe.pipeline.threads` step aside; the pools
    themselves read the variables only when they load, so they keep their size.
    """
    from layerprobe.pipeline.threads import user_thread_variables

    saved = os.environ.get("OMP_NUM_THREADS")
    if not user_thread_variables():
        os.environ["OMP_NUM_THREADS"] = str(os.cpu_count())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def threads_comparison(args, datasets: dict, meta: dict) -> dict:
    """Every (dataset, layer, classifier) row fitted twice, default threads and the rule, in alternating order.

    A row is what the classifier stage of a run does for it:
    ``fit_classifier`` (``cv`` folds, the registry's grid, standardized) on the
    training split and one prediction of the test split, under
    ``native_threads(X_train)`` for the rule.
    """
    from threadpoolctl import threadpool_info

    from layerprobe.pipeline.classifiers import fit_classifier
    from layerprobe.pipeline.threads import native_threads

    def fit_row(train, test, classifier):
        started = time.perf_counter()
        result = fit_classifier(train.X, train.y, classifier, cv=args.cv, random_state=0)
        accuracy = float(np.mean(result.estimator.predict(test.X) == test.y))
        return time.perf_counter() - started, result, accuracy

    pools = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] in ("blas", "openmp")})
    meta.update({"default_pool_threads": pools, "classifiers": args.classifiers})
    log(f"default native pools: {pools} threads; usable cores: {meta['usable_cores']}; cv={args.cv}")
    rows, order = [], 0
    for dataset_name, features in datasets.items():
        for layer, (train, test) in features.items():
            for classifier in args.classifiers:
                arms = {}
                for arm in (("default", "rule") if order % 2 == 0 else ("rule", "default")):
                    context = default_threads() if arm == "default" else native_threads(train.X)
                    with context as limit:
                        arms[arm] = fit_row(train, test, classifier)
                    if arm == "rule":
                        rule_threads = limit
                order += 1
                (default_s, default_fit, default_acc), (rule_s, rule_fit, rule_acc) = arms["default"], arms["rule"]
                row = {
                    "dataset": dataset_name, "layer": layer, "shape": f"{train.X.shape[0]} x {train.X.shape[1]}",
                    "classifier": classifier, "default_s": default_s, "rule_s": rule_s,
                    "rule_threads": rule_threads, "speedup": default_s / rule_s,
                    "default_params": json.dumps(default_fit.best_params, sort_keys=True, default=str),
                    "rule_params": json.dumps(rule_fit.best_params, sort_keys=True, default=str),
                    "same_choice": default_fit.best_params == rule_fit.best_params,
                    "default_cv": default_fit.cv_score, "rule_cv": rule_fit.cv_score,
                    "default_test": default_acc, "rule_test": rule_acc,
                }
                rows.append(row)
                log(f"{dataset_name} {layer} {classifier}: default {default_s:.2f} s, rule ({rule_threads} thread(s)) "
                    f"{rule_s:.2f} s ({row['speedup']:.1f}x); {row['default_params']} vs {row['rule_params']}")
                write_outputs(args.out, "threads.partial", {"meta": meta, "rows": rows}, "")
    meta["load_average_end"] = os.getloadavg()[0]
    summary = {"by_dataset": {}}
    for dataset_name in datasets:
        picked = [row for row in rows if row["dataset"] == dataset_name]
        default_s, rule_s = sum(row["default_s"] for row in picked), sum(row["rule_s"] for row in picked)
        summary["by_dataset"][dataset_name] = {"default_s": default_s, "rule_s": rule_s, "speedup": default_s / rule_s,
                                               "same_choices": all(row["same_choice"] for row in picked)}
    summary["default_s"] = sum(row["default_s"] for row in rows)
    summary["rule_s"] = sum(row["rule_s"] for row in rows)
    summary["speedup"] = summary["default_s"] / summary["rule_s"]
    summary["same_choices"] = all(row["same_choice"] for row in rows)
    lines = [
        "# probe_speed --threads: the classifier stage with default threads and with the rule",
        "",
        f"VGG16 HED weights, avg pooling; fit_classifier(cv={args.cv}, registry grids) + one test prediction per row; "
        f"default = native pools at their default ({pools} threads), rule = `native_threads(X_train)`. "
        f"{meta['cpus']} CPUs ({meta['usable_cores']} usable), load average {meta['load_average_start']:.1f} at start, "
        f"{meta['load_average_end']:.1f} at end (shared machine: rely on the ratios), {meta['utc']}, commit {meta['commit']}.",
        "",
        markdown_table(rows, ["dataset", "layer", "shape", "classifier", "default_s", "rule_s", "rule_threads", "speedup",
                              "default_params", "rule_params", "default_test", "rule_test"]),
        "",
        markdown_table([{"dataset": name, **values} for name, values in summary["by_dataset"].items()],
                       ["dataset", "default_s", "rule_s", "speedup", "same_choices"]),
    ]
    write_outputs(args.out, "threads", {"meta": meta, "summary": summary, "rows": rows}, "\n".join(lines) + "\n")
    for suffix in ("json", "md"):
        (args.out / f"threads.partial.{suffix}").unlink(missing_ok=True)
    print("\n".join(lines))
    return summary


# --------------------------------------------------------------------------- grid alternatives


def alternatives(args, features, class_names, meta) -> None:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from layerprobe.pipeline.classifiers import build_probe_pipeline, fit_classifier
    from layerprobe.pipeline.probes import RidgeProbeCV

    layer = args.alternatives
    if layer not in features:
        raise SystemExit(f"--alternatives {layer!r} is not among the extracted layers {list(features)}")
    train, test = features[layer]
    scaler = StandardScaler().fit(train.X)
    Xtr64, Xte64 = scaler.transform(train.X.astype(np.float64)), scaler.transform(test.X.astype(np.float64))
    Xtr32, Xte32 = Xtr64.astype(np.float32), Xte64.astype(np.float32)
    ytr, yte = train.y, test.y
    log(f"alternatives on {layer}: {Xtr32.shape} train, {Xte32.shape[0]} test")
    rows = []

    def record(setting, seconds, model=None, accuracy=None, **extra):
        if accuracy is None:  # pipelines standardize themselves: give them raw features
            X_eval = test.X if hasattr(model, "named_steps") else Xte32
            accuracy = float(np.mean(model.predict(X_eval) == yte))
        rows.append({"setting": setting, "seconds": seconds, "test_accuracy": accuracy, **extra})
        log(f"{setting}: {seconds:.2f} s, test {accuracy:.4f} {extra}")
        write_outputs(args.out, "alternatives", {"meta": meta, "layer": layer, "rows": rows}, "")

    Cs = [0.01, 0.1, 1.0, 10.0]
    n = len(ytr)

    def c_path(dtype, tol, warm):
        Xtr, Xte = (Xtr32, Xte32) if dtype == "float32" else (Xtr64, Xte64)
        model = LogisticRegression(max_iter=2000, tol=tol, warm_start=warm, random_state=0)
        seconds, accuracies, iterations = [], [], []
        for C in Cs:
            started = time.perf_counter()
            model.set_params(C=C).fit(Xtr, ytr)
            seconds.append(time.perf_counter() - started)
            accuracies.append(round(float(np.mean(model.predict(Xte) == yte)), 4))
            iterations.append(int(np.max(model.n_iter_)))
        record(f"logreg lbfgs {dtype} tol={tol:g}, {'warm-started C path' if warm else 'independent fits'}",
               sum(seconds), accuracy=accuracies[Cs.index(1.0)], per_C_seconds=[round(t, 2) for t in seconds],
               per_C_test_accuracy=accuracies, n_iter=iterations)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # 4 C values fitted on all training rows: today's settings first (float64, tol 1e-4, cold).
        for dtype, tol, warm in (("float64", 1e-4, False), ("float32", 1e-4, False), ("float64", 1e-4, True),
                                 ("float32", 1e-4, True), ("float32", 1e-3, True)):
            c_path(dtype, tol, warm)
        # The whole search, side by side: GridSearchCV vs fit_classifier's warm-started path, same folds.
        started = time.perf_counter()
        folds = StratifiedKFold(n_splits=args.cv, shuffle=True, random_state=0)
        search = GridSearchCV(build_probe_pipeline("logreg"), {"clf__C": Cs}, scoring="accuracy", cv=folds)
        search.fit(train.X, ytr)
        record(f"GridSearchCV logreg cv={args.cv} (4 C, search + refit)", time.perf_counter() - started,
               search.best_estimator_, best_C=search.best_params_["clf__C"], cv_score=search.best_score_)
        started = time.perf_counter()
        path = fit_classifier(train.X, ytr, "logreg", param_grid={"C": Cs}, cv=args.cv, random_state=0)
        record(f"fit_classifier logreg cv={args.cv} (warm-started C path, search + refit)",
               time.perf_counter() - started, path.estimator, best_C=path.best_params["C"], cv_score=path.cv_score)
        for dual in (False, True):
            started = time.perf_counter()
            model = LinearSVC(C=1.0, dual=dual, max_iter=1000, random_state=0).fit(Xtr32, ytr)
            record(f"LinearSVC C=1 dual={dual} (max_iter 1000)", time.perf_counter() - started, model,
                   n_iter=int(model.n_iter_))
        for loss in ("hinge", "squared_hinge"):
            for alpha in (1e-4, 1.0 / n):
                started = time.perf_counter()
                model = SGDClassifier(loss=loss, alpha=alpha, average=True, max_iter=20, tol=1e-3, random_state=0)
                model.fit(Xtr32, ytr)
                record(f"SGDClassifier {loss} average=True alpha={alpha:.2g} (max 20 epochs)",
                       time.perf_counter() - started, model, n_iter=int(model.n_iter_))
        started = time.perf_counter()
        model = RidgeProbeCV().fit(train.X, ytr)
        record("RidgeProbeCV (15 alphas, exact LOO)", time.perf_counter() - started, accuracy=model.score(test.X, yte),
               best_C=f"alpha={model.alpha_:.2g}", cv_score=model.best_score_)
    meta["load_average_end"] = os.getloadavg()[0]
    text = "\n".join([
        f"# probe_speed alternatives on {layer} ({'quick' if args.quick else 'full'})",
        "",
        f"{Xtr32.shape[0]} × {Xtr32.shape[1]} standardized train features, {Xte32.shape[0]} test; {meta['cpus']} CPUs, "
        f"load average {meta['load_average_start']:.1f} → {meta['load_average_end']:.1f} (shared machine).",
        "",
        markdown_table(rows, ["setting", "seconds", "test_accuracy", "per_C_seconds", "per_C_test_accuracy", "n_iter",
                              "best_C", "cv_score"]),
        "",
        "test_accuracy: at C=1 for the C paths, of the chosen model for the searches.",
        "",
    ])
    write_outputs(args.out, "alternatives", {"meta": meta, "layer": layer, "rows": rows}, text)
    print(text)


def linear_svm_alternatives(args, features, meta) -> None:
    """Linear SVM solvers at each C of the registry's grid on one layer, then the whole row before and after.

    Per C, fitted on all standardized training rows and scored once on the test
    split: liblinear primal and dual (``LinearSVC``), the dual with ``tol=1e-3``,
    `LinearSVM`'s Newton solver cold and along the C path (warm starts), and
    averaged SGD on the hinge loss with ``alpha = 1 / (n C)`` (20 epochs). Then
    the row as the classifier stage fits it (``cv`` folds, grid, refit): before
    (``GridSearchCV`` over ``LinearSVC``, dual below 10 samples per feature) and
    now (``fit_classifier(..., "linear_svm")``).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from layerprobe.pipeline.classifiers import fit_classifier
    from layerprobe.pipeline.probes.svm import LinearSVM

    layer = args.linear_svm
    if layer not in features:
        raise SystemExit(f"--linear-svm {layer!r} is not among the extracted layers {list(features)}")
    train, test = features[layer]
    scaler = StandardScaler().fit(train.X)
    Xtr, Xte = scaler.transform(train.X), scaler.transform(test.X)
    ytr, yte = train.y, test.y
    n = len(ytr)
    Cs = (0.01, 0.1, 1.0, 10.0)
    settings = [name for name in args.svm_settings if name in SVM_SETTINGS]
    log(f"linear SVM on {layer}: {Xtr.shape} train, {Xte.shape[0]} test; settings {settings}")
    rows = []

    def record(setting, C, seconds, model, **extra):
        accuracy = float(np.mean(model.predict(test.X if hasattr(model, "named_steps") else Xte) == yte))
        rows.append({"setting": setting, "C": C, "seconds": seconds, "test_accuracy": accuracy, **extra})
        log(f"{setting} C={C}: {seconds:.2f} s, test {accuracy:.4f} {extra}")
        write_outputs(args.out, "linear_svm", {"meta": meta, "layer": layer, "rows": rows}, "")

    def timed(build, C):
        started = time.perf_counter()
        model = build(C).fit(Xtr, ytr)
        return time.perf_counter() - started, model

    builders = {
        "primal": lambda C: LinearSVC(C=C, dual=False, max_iter=1000, random_state=0),
        "dual": lambda C: LinearSVC(C=C, dual=True, max_iter=10_000, random_state=0),
        "dual_tol1e-3": lambda C: LinearSVC(C=C, dual=True, tol=1e-3, max_iter=10_000, random_state=0),
        "newton": lambda C: LinearSVM(C=C, solver="newton"),
        "sgd": lambda C: SGDClassifier(loss="hinge", alpha=1.0 / (n * C), average=True, max_iter=20, tol=None,
                                       random_state=0),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name in settings:
            if name in builders:
                for C in Cs:
                    seconds, model = timed(builders[name], C)
                    record(name, C, seconds, model, n_iter=int(np.max(model.n_iter_)))
            elif name == "newton_warm":
                model = LinearSVM(solver="newton", warm_start=True)
                for C in Cs:
                    started = time.perf_counter()
                    model.set_params(C=C).fit(Xtr, ytr)
                    record(name, C, time.perf_counter() - started, model, n_iter=model.n_iter_)
            elif name == "rows":
                dual = bool(train.X.shape[0] < 10 * train.X.shape[1])  # the row's liblinear choice before
                before = LinearSVC(dual=dual, tol=1e-4, max_iter=10_000 if dual else 1_000, random_state=0)
                folds = StratifiedKFold(n_splits=args.cv, shuffle=True, random_state=0)
                search = GridSearchCV(
                    Pipeline([("standardize", StandardScaler()), ("clf", before)]), {"clf__C": list(Cs)},
                    scoring="accuracy", cv=folds,
                )
                started = time.perf_counter()
                search.fit(train.X, ytr)
                record(f"row before: GridSearchCV LinearSVC dual={before.dual} cv={args.cv}", "grid",
                       time.perf_counter() - started, search.best_estimator_, best_C=search.best_params_["clf__C"],
                       cv_score=search.best_score_)
                started = time.perf_counter()
                result = fit_classifier(train.X, ytr, "linear_svm", cv=args.cv, random_state=0)
                record(f"row now: fit_classifier linear_svm cv={args.cv} "
                       f"({result.estimator.named_steps['clf'].solver_})", "grid",
                       time.perf_counter() - started, result.estimator, best_C=result.best_params["C"],
                       cv_score=result.cv_score)
    meta["load_average_end"] = os.getloadavg()[0]
    text = "\n".join([
        f"# probe_speed linear SVM on {layer} ({'quick' if args.quick else 'full'})",
        "",
        f"{Xtr.shape[0]} × {Xtr.shape[1]} standardized train features, {Xte.shape[0]} test; BLAS threads "
        f"{meta['blas_threads']}; {meta['cpus']} CPUs, load average {meta['load_average_start']:.1f} → "
        f"{meta['load_average_end']:.1f} (shared machine: rely on the ratios), {meta['utc']}, commit {meta['commit']}.",
        "",
        markdown_table(rows, ["setting", "C", "seconds", "test_accuracy", "n_iter", "best_C", "cv_score"]),
        "",
    ])
    write_outputs(args.out, "linear_svm", {"meta": meta, "layer": layer, "rows": rows}, text)
    print(text)


def main(argv=None) -> int:
    args = parse_smoke(build_parser(), argv, SMOKE)
    args.out = args.out or OUT_DIR / ("smoke" if args.smoke else "quick" if args.quick else "full")
    if args.smoke:
        if args.data == SHARED_DIR / "datasets" / "cifar10":
            args.data = smoke_cifar10(args.out / "smoke-data", n_train=args.train_per_class, n_test=args.test_per_class)
        if args.store == OUT_DIR / "store":
            args.store = args.out / "store"
    args.quick = args.quick or args.threads
    args.cv = args.cv or (3 if args.quick else 5)
    args.classifiers = [name.strip() for name in args.classifiers.split(",") if name.strip()]
    args.svm_settings = [name.strip() for name in args.svm_settings.split(",") if name.strip()]
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if args.top_k < 1 or args.top_k > len(layers):
        raise SystemExit(f"--top-k must be between 1 and the number of layers ({len(layers)}). Received: {args.top_k}")
    started = time.perf_counter()
    meta = machine(args)
    if args.threads:
        args.out = args.out if args.out != OUT_DIR / "quick" else OUT_DIR / "threads"
        datasets = {
            "hymenoptera": load_features(args, layers, data=args.hymenoptera, input_size=args.hymenoptera_size,
                                         test_split="val")[0],
            "cifar10": load_features(args, layers)[0],
        }
        summary = threads_comparison(args, datasets, meta)
        log(f"total {time.perf_counter() - started:.1f} s")
        print(f"classifier stage: {summary['speedup']:.1f}× faster than default threads "
              f"(same choices: {'yes' if summary['same_choices'] else 'no'})")
        return 0
    features, class_names, extraction_seconds = load_features(args, layers)
    meta["extraction_seconds"] = extraction_seconds
    meta["blas_threads"] = args.blas_threads or "default"
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.blas_threads or None, user_api="blas"):
        if args.linear_svm:
            linear_svm_alternatives(args, features, meta)
            log(f"total {time.perf_counter() - started:.1f} s")
            return 0
        if args.alternatives:
            alternatives(args, features, class_names, meta)
            log(f"total {time.perf_counter() - started:.1f} s")
            return 0
        summary = compare(args, features, class_names, meta)
    log(f"total {time.perf_counter() - started:.1f} s")
    print(f"screening speed-up: {summary['screening_speedup']:.1f}× "
          f"(same best layer: {'yes' if summary['same_best_layer'] else 'no'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
