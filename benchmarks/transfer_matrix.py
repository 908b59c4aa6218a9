"""Which transfer mode wins, by target-data size and source-target similarity? (Yosinski et al. 2014's design.)

CIFAR-10's ten classes are split two ways into a source half A and a target half B:

  * *similar*: a seeded random split of the ten classes into 5 + 5, redrawn until
    each half holds two of the four vehicles (so both halves mix both kinds);
  * *dissimilar*: A = the six animals, B = the four vehicles (airplane,
    automobile, ship, truck), so that no B class resembles an A class.

For each split, a backbone (default `MobileNetV2(alpha=0.5)` at 48x48, the 32x32
images upsampled, so that the top stage is 2x2 rather than 1x1) is trained from scratch on A with
`layerprobe.pipeline.default_experiment.pretrain_source` (`train_from_scratch`, BatchNorm
momentum 0.9); its held-out accuracy on A's test images in inference mode is
checked and logged, and its headless weights are cached, keyed by the settings.
On B, with a *small* and a *large* training set (the first N images per class),
four modes are scored on B's test images:

  * `top_logreg`: logistic regression on the avg-pooled top layer of the frozen
    A-network;
  * `stage_svm`: a linear SVM on each avg-pooled stage output; the mode's result
    is the stage with the best cross-validated accuracy (training data only);
  * `finetune`: `layerprobe.pipeline.finetune.finetune` from the A weights: a head on the
    frozen network, then the top blocks at a low learning rate;
  * `scratch`: `layerprobe.pipeline.finetune.train_from_scratch`, the same architecture.

Features come from `FeatureExtractor` into a feature store and classifiers from
`fit_classifier` (C by stratified CV). Everything is resumable: source weights,
features and every finished cell (saved as JSON as soon as it is done) are
reused, and an interrupted Keras training continues from its last epoch.

Outputs under OUT: `matrix.csv` (the 2x2 table: winner and margin per size and
similarity), `long.csv` (every score), `depth.png` (SVM test accuracy against
stage depth, similar vs dissimilar), `results.json`, `log.txt`; caches in
`source/`, `store/`, `cells/`, `runs/`.

    python benchmarks/transfer_matrix.py            # the full run: 42 min wall, 36 min CPU on 2 shared cores
    python benchmarks/transfer_matrix.py --quick    # smoke run on a few images, into OUT/quick
    python benchmarks/transfer_matrix.py --replot   # redraw and reprint from OUT/results.json

One file of about 480 lines, on purpose: a benchmark is read top to bottom as the
record of what was measured; what the scripts share is in the `_args`, `_data`,
`_measure`, `_machine` and `_output` modules beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import CIFAR10_DIR, base_parser, quiet_tensorflow, require_path  # noqa: E402
from _measure import Stopwatch, cpu_seconds  # noqa: E402
from _output import RunLog, read_results, write_csv, write_json  # noqa: E402
from layerprobe.pipeline.tables import format_table, significant  # noqa: E402

TABLE_STYLE = {"float_format": significant, "missing": "-"}  # 3 significant digits, "-" for no value

SCRIPT = "transfer_matrix"
VEHICLES = ("airplane", "automobile", "ship", "truck")
SIZES = ("small", "large")
SIMILARITIES = ("similar", "dissimilar")
MODES = ("top_logreg", "stage_svm", "finetune", "scratch")
# The README's decision table: what the method advises per (size, similarity).
ADVICE = {
    ("small", "similar"): ("top_logreg",),
    ("small", "dissimilar"): ("stage_svm",),
    ("large", "similar"): ("finetune",),
    ("large", "dissimilar"): ("finetune", "scratch"),
}
# C searched by CV for logreg and the SVM. C = 1 took over a minute on the 1280-d top features of 250 images
# (separable, so lbfgs and liblinear run to their iteration limits) and was not chosen in a trial run.
C_GRID = {"C": [0.001, 0.01, 0.1]}
# Smoke-run settings: every code path on a few images (the source check is off).
QUICK = {
    "source_per_class": 30, "source_test_per_class": 10, "source_epochs": 1, "small": 10,
    "large": 20, "test_per_class": 10, "epochs_small": 2, "epochs_large": 2, "source_check": 0.0,
}


def build_parser():
    parser = base_parser(SCRIPT, __doc__.strip().splitlines()[0])
    parser.add_argument("--cifar10", type=Path, default=CIFAR10_DIR, help="CIFAR-10 folder ({train,test}/<class>/*.jpg)")
    parser.add_argument("--model", default="MobileNetV2", help="backbone from the registry, trained from scratch")
    parser.add_argument("--model-kwargs", type=json.loads, default={"alpha": 0.5}, help="constructor arguments, JSON")
    parser.add_argument("--input-size", type=int, default=48, help="square input side (images are upsampled)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the similar split's random 5 + 5 classes")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling, CV folds and fits")
    parser.add_argument("--source-per-class", type=int, default=5000, help="A training images per class")
    parser.add_argument("--source-test-per-class", type=int, default=1000, help="A test images per class (the check)")
    parser.add_argument("--source-epochs", type=int, default=4, help="epochs of the source training")
    parser.add_argument(
        "--source-check", type=float, default=1.5,
        help="stop unless the source network's held-out accuracy reaches this multiple of chance (0: no check)",
    )
    parser.add_argument("--small", type=int, default=50, help="B training images per class, small set")
    parser.add_argument("--large", type=int, default=1000, help="B training images per class, large set")
    parser.add_argument("--test-per-class", type=int, default=1000, help="B test images per class")
    parser.add_argument("--epochs-small", type=int, default=30, help="epochs of finetune and scratch, small set")
    parser.add_argument("--epochs-large", type=int, default=8, help="epochs of finetune and scratch, large set")
    parser.add_argument("--finetune-blocks", type=int, default=2, help="top blocks unfrozen in finetune's phase 2")
    parser.add_argument("--finetune-lr", type=float, default=1e-4, help="Adam learning rate of finetune's phase 2")
    parser.add_argument("--cv", type=int, default=3, help="CV folds choosing C of logreg and the SVM")
    parser.add_argument("--store", type=Path, default=None, help="feature store (default: OUT/store, kept as a cache)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run into OUT/quick: {QUICK}")
    parser.add_argument("--replot", action="store_true", help="only redraw and reprint from OUT/results.json")
    return parser


# --------------------------------------------------------------------------- data


def class_splits(class_names, seed: int) -> dict[str, tuple[list[str], list[str]]]:
    """Similarity -> (A classes, B classes): a seeded random 5 + 5 with two vehicles each, and animals -> vehicles."""
    missing = sorted(set(VEHICLES) - set(class_names))
    if len(class_names) != 10 or missing:
        raise SystemExit(f"error: expected CIFAR-10's ten classes, vehicles {list(VEHICLES)} among them. "
                         f"Received: class folders {list(class_names)}")
    rng = np.random.default_rng(seed)
    shuffled = [str(name) for name in rng.permutation(list(class_names))]
    while len(set(shuffled[:5]) & set(VEHICLES)) != 2:
        shuffled = [str(name) for name in rng.permutation(list(class_names))]
    animals = [name for name in class_names if name not in VEHICLES]
    return {"similar": (sorted(shuffled[:5]), sorted(shuffled[5:])), "dissimilar": (animals, list(VEHICLES))}


def pick(dataset, class_names, per_split: Mapping[str, int | None]):
    """The first n images of each of `class_names` in each split (file-name order), labelled 0..k-1 in that order.

    Raises:
        SystemExit: If a class holds fewer than n images in a split.
    """
    old_labels = [dataset.class_names.index(name) for name in class_names]
    splits = np.asarray(dataset.splits)
    chosen = []
    for split, n in per_split.items():
        for name, label in zip(class_names, old_labels):
            members = np.flatnonzero((splits == split) & (dataset.labels == label))
            if n is not None and len(members) < n:
                raise SystemExit(f"error: class {name!r} holds {len(members)} {split} images, fewer than the "
                                 f"{n} asked for. Ask for fewer. Received: {n} per class")
            chosen.append(members[:n])
    picked = dataset.select(np.sort(np.concatenate(chosen)))
    relabel = np.full(len(dataset.class_names), -1)
    relabel[old_labels] = np.arange(len(class_names))
    return dataclasses.replace(picked, labels=relabel[picked.labels], class_names=list(class_names))


# --------------------------------------------------------------------------- cells


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short sha256 of the canonical JSON of `settings`: the name of a cell's cache file."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cached_rows(directory: Path, name: str, settings: Mapping[str, Any],
                compute: Callable[[], list[dict]], log: Callable[[str], None]) -> list[dict]:
    """The rows of one cell: read back if a run with the same settings finished it, else computed and saved."""
    path = directory / f"{name}-{settings_digest(settings)}.json"
    if path.is_file():
        log(f"  {name}: reused {path.name}")
        return json.loads(path.read_text())["rows"]
    rows = compute()
    write_json({"settings": settings, "rows": rows}, path)
    return rows


def timed(row: dict, watch: Stopwatch) -> dict:
    """`row` with the wall and CPU seconds of `watch` and the 1-minute load average."""
    return {**row, "wall_s": round(watch.wall, 1), "cpu_s": round(watch.cpu, 1),
            "load_1min": round(os.getloadavg()[0], 2)}


def probe(features, train_ids, classifier: str, grid, args) -> dict:
    """Fit `classifier` on one layer's train rows (C by CV) and score it on the test rows."""
    from layerprobe.pipeline.classifiers import fit_classifier
    from layerprobe.pipeline.evaluate import evaluate

    train, test = np.isin(features.sample_ids, train_ids), features.splits == "test"
    with Stopwatch() as watch:
        fit = fit_classifier(features.X[train], features.y[train], classifier, param_grid=grid, cv=args.cv,
                             random_state=args.seed)
        scores = evaluate(fit.estimator, features.X[test], features.y[test], features.class_names).as_dict()
    return timed({"cv_accuracy": round(fit.cv_score, 4), "accuracy": scores["accuracy"], "n_test": int(test.sum()),
                  "params": json.dumps(fit.best_params)}, watch)


def keras_config(mode: str, epochs: int, args):
    """The `FinetuneConfig` of a finetune or scratch cell: `epochs` in all, on all training images.

    No validation split and no early stopping: on 50 images per class the validation loss of a
    network trained from scratch rises for the first epochs (BatchNorm statistics still settling)
    and early stopping would keep its random-init weights.
    """
    from layerprobe.pipeline.finetune import FinetuneConfig

    head = max(1, epochs // 3)
    phases = {"head_epochs": head, "finetune_epochs": max(1, epochs - head)} if mode == "finetune" else {
        "head_epochs": epochs, "finetune_epochs": 0}
    return FinetuneConfig(**phases, unfreeze_blocks=args.finetune_blocks, learning_rate=args.finetune_lr,
                          augmentation={"flip": "horizontal"}, val_fraction=0.0,
                          early_stopping_patience=None, seed=args.seed)


def train_and_score(mode: str, train, test, weights: Path, config, output_dir: Path, args) -> dict:
    """Run `finetune` (from `weights`) or `train_from_scratch` on `train`, score on `test`."""
    from layerprobe.pipeline.finetune import evaluate_model, finetune, train_from_scratch

    common = dict(output_dir=output_dir, input_size=args.input_size, model_kwargs=args.model_kwargs,
                  config=config, resume=True)
    with Stopwatch() as watch:
        if mode == "finetune":
            result = finetune(args.model, train, weights=str(weights), **common)
        else:
            result = train_from_scratch(args.model, train, **common)
        scores = evaluate_model(result, test, batch_size=128)
    params = {"epochs_run": result.epochs_run, "learning_rate": result.learning_rate,
              "unfreeze_blocks": result.as_row()["unfreeze_blocks"]}
    return timed({"cv_accuracy": None, "accuracy": scores["accuracy"], "n_test": scores["n_test"],
                  "params": json.dumps(params)}, watch)


# --------------------------------------------------------------------------- one split


def run_split(similarity: str, a_classes, b_classes, full, store, args, log) -> tuple[dict, list[dict]]:
    """Pretrain on A, then score the four modes on B at both sizes: (source facts, long-table rows)."""
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.pipeline.default_experiment import pretrain_source
    from layerprobe.pipeline.finetune import FinetuneConfig

    log(f"\n== {similarity}: A = {', '.join(a_classes)}; B = {', '.join(b_classes)}")
    source = pick(full, a_classes, {"train": args.source_per_class, "test": args.source_test_per_class})
    options = FinetuneConfig(
        head_epochs=args.source_epochs, finetune_epochs=0, batch_size=64, augmentation={"flip": "horizontal"},
        dropout=0.0, val_fraction=0.0, early_stopping_patience=None, seed=args.seed,
    )
    with Stopwatch() as watch:
        weights, facts = pretrain_source(
            args.model, source, args.out / "source", name=f"cifar10-{similarity}-A", options=options,
            input_size=args.input_size, model_kwargs=args.model_kwargs,
            min_accuracy=args.source_check / len(a_classes), log=log,
        )
    source_row = {
        "similarity": similarity, "A": " ".join(a_classes), "n_train": len(source.subset("train")),
        "epochs": args.source_epochs, "accuracy": round(facts["accuracy"], 4), "n_test": facts["n_test"],
        "chance": round(1 / len(a_classes), 3), "train_s": round(facts["fit_seconds"], 1),
        "wall_s_this_run": round(watch.wall, 1), "cpu_s_this_run": round(watch.cpu, 1), "weights": weights.name,
    }
    target = pick(full, b_classes, {"train": args.large, "test": args.test_per_class})
    extractor = FeatureExtractor(args.model, weights=weights, layers="stages", pooling="avg",
                                 input_size=args.input_size, model_kwargs=args.model_kwargs, batch_size=64)
    with Stopwatch() as watch:
        report = extractor.extract(target, store, progress=sys.stderr.isatty())
    log(f"  features of B ({len(target)} images, {len(report.keys)} stages): {report.summary()}, "
        f"{watch.wall:.0f} s wall, {watch.cpu:.0f} s CPU")
    features = {name: store.load(key) for name, key in report.keys.items()}
    n_layers = len(extractor.backbone.model.layers) - 1
    depth = {info.name: round(info.index / n_layers, 3) for info in extractor.layers}
    top = extractor.layer_names[-1]
    test = target.subset("test")
    rows = []
    for size in SIZES:
        n = {"small": args.small, "large": args.large}[size]
        train = pick(target, b_classes, {"train": n})
        cell = {"similarity": similarity, "size": size, "n_per_class": n, "n_train": len(train)}
        base = {"model": args.model, "model_kwargs": args.model_kwargs, "input_size": args.input_size,
                "train": train.digest(), "test": test.digest(), "seed": args.seed}
        probe_base = {**base, "features": {name: key.digest for name, key in report.keys.items()}, "cv": args.cv}

        def top_logreg():
            return [{**cell, "mode": "top_logreg", "layer": top, "depth": depth[top],
                     **probe(features[top], train.sample_ids, "logreg", C_GRID, args)}]

        def stage_svm():
            return [{**cell, "mode": "stage_svm", "layer": name, "depth": depth[name],
                     **probe(features[name], train.sample_ids, "linear_svm", C_GRID, args)}
                    for name in extractor.layer_names]

        def keras_cell(mode: str) -> tuple[dict, Callable[[], list[dict]]]:
            config = keras_config(mode, args.epochs_small if size == "small" else args.epochs_large, args)
            settings = {**base, "mode": mode, "config": config.to_dict(),
                        "weights": weights.name if mode == "finetune" else None}
            run_dir = args.out / "runs" / f"{similarity}-{size}-{mode}-{settings_digest(settings)}"

            def compute():
                return [{**cell, "mode": mode, "layer": "all", "depth": 1.0,
                         **train_and_score(mode, train, test, weights, config, run_dir, args)}]

            return settings, compute

        jobs = {
            "top_logreg": ({**probe_base, "grid": C_GRID}, top_logreg),
            "stage_svm": ({**probe_base, "grid": C_GRID}, stage_svm),
            "finetune": keras_cell("finetune"),
            "scratch": keras_cell("scratch"),
        }
        for mode, (settings, compute) in jobs.items():
            cell_rows = cached_rows(args.out / "cells", f"{similarity}-{size}-{mode}", settings, compute, log)
            for row in cell_rows:
                log(f"  {similarity:10s} {size:5s} {mode:10s} {row['layer']:22s} accuracy {row['accuracy']:.3f} "
                    f"(cv {row['cv_accuracy'] if row['cv_accuracy'] is not None else '-'}) "
                    f"{row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} s CPU")
            rows += cell_rows
    return source_row, rows


# --------------------------------------------------------------------------- tables and plot


def mode_scores(rows: list[dict], size: str, similarity: str) -> dict[str, dict]:
    """Mode -> its row for one cell of the matrix; stage_svm's is the stage with the best CV accuracy."""
    cell = [row for row in rows if row["size"] == size and row["similarity"] == similarity]
    chosen = {row["mode"]: row for row in cell if row["mode"] != "stage_svm"}
    chosen["stage_svm"] = max((row for row in cell if row["mode"] == "stage_svm"), key=lambda row: row["cv_accuracy"])
    return chosen


def matrix_rows(rows: list[dict]) -> list[dict]:
    """One row per (size, similarity): each mode's test accuracy, the winner and its margin, the advice.

    `se` is the binomial standard error of the winner's accuracy; `agrees` is "yes" when
    the advised mode wins, "within 2 SE" when it trails the winner by at most 2 `se`.
    """
    table = []
    for size in SIZES:
        for similarity in SIMILARITIES:
            chosen = mode_scores(rows, size, similarity)
            ranked = sorted(MODES, key=lambda mode: chosen[mode]["accuracy"], reverse=True)
            best, runner_up = chosen[ranked[0]], chosen[ranked[1]]
            se = math.sqrt(best["accuracy"] * (1 - best["accuracy"]) / best["n_test"])
            advice = ADVICE[size, similarity]
            gap = best["accuracy"] - max(chosen[mode]["accuracy"] for mode in advice)
            table.append({
                "size": f"{size} ({best['n_per_class']}/class)",
                "similarity": similarity,
                **{mode: round(chosen[mode]["accuracy"], 3) for mode in MODES},
                "svm_stage": chosen["stage_svm"]["layer"],
                "winner": ranked[0],
                "margin": round(best["accuracy"] - runner_up["accuracy"], 3),
                "runner_up": ranked[1],
                "se": round(se, 3),
                "advice": " or ".join(advice),
                "advice_gap": round(gap, 3),
                "agrees": "yes" if gap == 0 else "within 2 SE" if gap <= 2 * se else "no",
            })
    return table


def two_by_two(matrix: list[dict]) -> str:
    """The 2x2 Markdown table: size down, similarity across, winner and margin in each cell."""
    lines = ["| B training set | similar | dissimilar |", "|---|---|---|"]
    for size in dict.fromkeys(row["size"] for row in matrix):
        cells = [
            f"**{row['winner']}** {row[row['winner']]:.3f}, +{row['margin']:.3f} over {row['runner_up']} "
            f"(advice: {row['advice']}, {row['agrees']})"
            for similarity in SIMILARITIES for row in matrix if row["size"] == size and row["similarity"] == similarity
        ]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], info: Mapping[str, Any], path: Path) -> Path:
    """SVM test accuracy against stage depth, one panel per size, similar vs dissimilar; other modes as marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SIZES), figsize=(12, 4.8), sharey=True)
    for ax, size in zip(axes, SIZES):
        for color, similarity in zip(("C0", "C3"), SIMILARITIES):
            cell = [row for row in rows if row["size"] == size and row["similarity"] == similarity]
            svm = sorted((row for row in cell if row["mode"] == "stage_svm"), key=lambda row: row["depth"])
            n_classes = round(cell[0]["n_train"] / cell[0]["n_per_class"])
            ax.plot([row["depth"] for row in svm], [row["accuracy"] for row in svm], "o-", color=color,
                    label=f"{similarity}: linear SVM per stage (B: {n_classes} classes)")
            marks = {"top_logreg": "s", "finetune": "^", "scratch": "v"}
            offsets = {"top_logreg": 1.03, "finetune": 1.07, "scratch": 1.11}
            for mode, marker in marks.items():
                row = next(row for row in cell if row["mode"] == mode)
                ax.plot([offsets[mode]], [row["accuracy"]], marker, color=color,
                        markersize=8, label=f"{similarity}: {mode}")
            ax.axhline(1 / n_classes, color=color, linestyle=":", linewidth=1)
        ax.set_title(f"{size} B training set ({cell[0]['n_per_class']} images per class)", fontsize=10)
        ax.set_xlabel("relative depth of the stage (layer index / number of layers)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy on B")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "CIFAR-10 halves, source A -> target B: similar vs dissimilar; lines: linear SVM per stage, marks at the "
        f"right: the other modes, dotted: chance\n{info['cpu']}, {info['cpus_usable']} cores, {info['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


LONG_COLUMNS = ["similarity", "size", "n_train", "mode", "layer", "depth", "cv_accuracy", "accuracy", "params",
                "wall_s", "cpu_s", "load_1min"]
MATRIX_COLUMNS = ["size", "similarity", *MODES, "svm_stage", "winner", "margin", "runner_up", "se", "advice",
                  "advice_gap", "agrees"]


def report(data: Mapping[str, Any], out: Path, log: Callable[[str], None]) -> None:
    """Write the CSVs and the plot, and print the tables."""
    rows, matrix = data["rows"], matrix_rows(data["rows"])
    write_csv(rows, out / "long.csv")
    write_csv(matrix, out / "matrix.csv")
    log("\nsource networks (held-out A test images, inference mode):")
    log(format_table(data["sources"], ["similarity", "A", "n_train", "epochs", "accuracy", "chance", "train_s"],
                     **TABLE_STYLE))
    log("\nlong table (test accuracy on B):")
    log(format_table(rows, LONG_COLUMNS, **TABLE_STYLE))
    log("\nmatrix:")
    log(format_table(matrix, MATRIX_COLUMNS, **TABLE_STYLE))
    log("\n" + two_by_two(matrix))
    log(f"\n{plot(rows, data['machine'], out / 'depth.png')}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_tensorflow()
    if args.quick:
        parser.set_defaults(**QUICK, out=args.out / "quick")
        args = parser.parse_args(argv)
    if args.replot:
        report(read_results(args.out / "results.json"), args.out, print)
        return 0
    require_path(args.cifar10, "The CIFAR-10 image folder", "--cifar10", kind="dir")
    args.out.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    log = RunLog(SCRIPT, argv)

    from layerprobe.features.inputs import from_directory
    from layerprobe.features.store import FeatureStore

    full = from_directory(args.cifar10)
    store = FeatureStore(args.store or args.out / "store")
    splits = class_splits(full.class_names, args.split_seed)
    settings = {key: value for key, value in vars(args).items() if key not in ("replot", "out", "store", "cifar10")}
    log(f"settings: {json.dumps(settings, default=str)}")
    sources, rows = [], []
    for similarity in SIMILARITIES:
        source_row, split_rows = run_split(similarity, *splits[similarity], full, store, args, log)
        sources.append(source_row)
        rows += split_rows
    totals = {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(cpu_seconds() - cpu_started, 1),
              "load_average_end": " ".join(f"{value:.2f}" for value in os.getloadavg())}
    data = {"command": log.command, "machine": log.info, "settings": settings, "splits": splits,
            "sources": sources, "rows": rows, "totals": totals}
    write_json(data, args.out / "results.json")
    report(data, args.out, log)
    log(f"\ntotal: {totals['wall_s']:.0f} s wall, {totals['cpu_s']:.0f} s CPU (this process, all threads); "
        f"load average at the end {totals['load_average_end']}")
    log.write(args.out / "log.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
