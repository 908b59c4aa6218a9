"""Which transfer mode wins, by target-data size and source-target similarity? (Yosinski et al. 2014's design.)

The calibration table of `layerprobe.pipeline.advice`: 3 seeds x 2 splits x 3 target
sizes, each cell with all four modes, and the advice's mode checked against the winner.

CIFAR-10's ten classes are split two ways into a source half A and a target half B:

  * *similar*: a seeded random split of the ten classes into 5 + 5, redrawn until
    each half holds two of the four vehicles (so both halves mix both kinds);
  * *dissimilar*: A = the six animals, B = the four vehicles (airplane,
    automobile, ship, truck), so that no B class resembles an A class.

For each split a small backbone (`TinyConvNet`, registered below: four blocks of
conv3x3-BN-ReLU-maxpool, widths 32/64/128/256, at CIFAR's own 32x32) is trained from
scratch on A with `layerprobe.pipeline.default_experiment.pretrain_source`; its held-out
accuracy on A's test images in inference mode must reach `--source-min-accuracy`
(0.6) before its features count (a split whose source fails is skipped and logged).
On B, for each seed and each size N in `--sizes` (10, 100, 1,000 per class: a seeded
random draw from B's training images, nested so that 10 is inside 100 is inside 1,000),
four modes are scored on the same B test images:

  * `frozen_top`: logistic regression on the avg-pooled top block of the frozen A-network;
  * `frozen_stage`: logistic regression on each avg-pooled block output; the mode's result
    is the block with the best cross-validated accuracy (training data only);
  * `finetune`: `layerprobe.pipeline.finetune.finetune` from the A weights: a head on the
    frozen network, then the top blocks at a low learning rate;
  * `scratch`: `layerprobe.pipeline.finetune.train_from_scratch`, the same architecture;

plus `random_stage` (the same probes on a randomly initialised TinyConvNet: the
random-features baseline of the advice, not a competing mode). Every frozen row carries
its CV mean and fold SE, LogME, and test accuracy; each cell's frozen rows are given to
`layerprobe.pipeline.advice.recommend`, as a user's run would be, and what it names is
compared with the measured winner: "agrees" when the test accuracy of the advised row (the
advised layer of a frozen mode, or the finetune/scratch result) is at least the winner's or
within 2 combined binomial SE (`within_noise`: two independent measurements) of it. The
agreement rate is recomputed for several candidate finetuning thresholds (samples per
class) and tie widths (`n_se`: a row scoring at most `n_se` of the best row's CV standard
errors below it ties the best, after which the cheaper row is chosen), which is how the
advice's `FINETUNE_SAMPLES_PER_CLASS` and `NOISE_SE` are set; the real-data points are
scored per candidate too, as a check.

Real-data points (`--real`): EfficientNet-Lite0 with its ImageNet weights
(`../shared/weights/efficientnet_lite0_imagenet.keras`, `preprocessing="none"`) on
hymenoptera (train -> val, 224 px; 10 per class and all 122) and on CIFAR-10 at 32x32 with
10/100/1,000 images per class: logistic regression on each of its 5 stages, finetune (the file cut at its last
feature map, a new head, then the top 2 blocks) and scratch (its architecture from random
weights), one seed. They are not used to set the thresholds: they check them.

Reductions against the brief's full design, to fit about 2 hours on 2 shared cores:
one source network per split (seed 0) shared by the 3 seeds (the seeds redraw B's
training images, the initialisation, CV folds and shuffles); a small network at 32x32;
few epochs (`--source-epochs`, `--epochs`); 500 B test images per class; logistic
regression only (no SVM) with C in {0.01, 0.1, 1}; real-data points one seed.

Everything is resumable: source weights, features and every finished cell (saved as JSON
as soon as it is done) are reused, results.json/long.csv/matrix.csv are rewritten after
every split and seed so that a partial run is usable, and an interrupted Keras training
continues from its last epoch.

Outputs under OUT: `matrix.csv` (one row per split x size x seed: each mode's accuracy,
winner, margin, SE, advice, agreement), `calibration.csv` (agreement per candidate
threshold), `long.csv` (every score), `depth.png`, `results.json`, `log.txt`; caches in
`source/`, `store/`, `cells/`, `runs/`.

    python benchmarks/transfer_matrix.py --real     # the full run with the real-data points (about 1 h 45 on 2 shared cores)
    python benchmarks/transfer_matrix.py --quick    # smoke run on a few images, into OUT/quick (< 3 min)
    python benchmarks/transfer_matrix.py --replot   # redraw and reprint from OUT/results.json
    python benchmarks/transfer_matrix.py --smoke    # generated images, the smallest network: under a minute
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

from _args import CIFAR10_DIR, SHARED_DIR, SMOKE_HELP, base_parser, parse_smoke, quiet_tensorflow, require_path  # noqa: E402
from _data import smoke_cifar10  # noqa: E402
from _measure import Stopwatch, cpu_seconds  # noqa: E402
from _output import TABLE_STYLE, RunLog, read_results, write_csv, write_json  # noqa: E402
from layerprobe.pipeline.tables import format_table  # noqa: E402


SCRIPT = "transfer_matrix"
VEHICLES = ("airplane", "automobile", "ship", "truck")
SIMILARITIES = ("similar", "dissimilar")
MODES = ("frozen_top", "frozen_stage", "finetune", "scratch")
# The advice's modes, as this benchmark's modes.
ADVICE_MODES = {"frozen_top": "frozen_top", "frozen_intermediate": "frozen_stage", "finetune": "finetune",
                "scratch": "scratch"}
# Candidate finetuning thresholds (training samples per class) the calibration compares; inf = never finetune.
CANDIDATE_THRESHOLDS = (10, 30, 100, 300, 1000, math.inf)
# Candidate tie widths (in the best row's CV SE) of the advice's cheaper-option rule; 0 = always the best CV score.
CANDIDATE_NOISE_SE = (0.0, 1.0, 2.0, 3.0)
C_GRID = {"C": [0.01, 0.1, 1.0]}
# Datasets are identified by their bytes, so the caches survive a copy of ../shared that does not keep mtimes.
DIGEST = "content"
HYMENOPTERA_DIR = SHARED_DIR / "datasets" / "hymenoptera"
LITE0 = SHARED_DIR / "weights" / "efficientnet_lite0_imagenet.keras"
# Smoke-run settings: every code path on a few images (the source check is off).
QUICK = {
    "source_per_class": 40, "source_test_per_class": 10, "source_epochs": 1, "sizes": [4, 8],
    "seeds": [0], "test_per_class": 10, "epochs": [2, 2], "source_min_accuracy": 0.0,
    "real_sizes": [4], "real_test_per_class": 10, "real_hymenoptera_per_class": 8,
}
# --smoke: fewer images, epochs and weights than --quick, on generated images (every path of the default run).
SMOKE = {
    "source_per_class": 8, "source_test_per_class": 4, "source_epochs": 1, "sizes": [4], "seeds": [0],
    "test_per_class": 4, "epochs": [1, 1], "source_min_accuracy": 0.0, "cv": 2, "model_kwargs": {"width": 4},
    "splits": ["dissimilar"],
}


def build_parser():
    parser = base_parser(SCRIPT, __doc__.strip().splitlines()[0])
    parser.add_argument("--cifar10", type=Path, default=CIFAR10_DIR, help="CIFAR-10 folder ({train,test}/<class>/*.jpg)")
    parser.add_argument("--model", default="TinyConvNet", help="backbone from the registry, trained from scratch")
    parser.add_argument("--model-kwargs", type=json.loads, default={"width": 32}, help="constructor arguments, JSON")
    parser.add_argument("--input-size", type=int, default=32, help="square input side")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the similar split's random 5 + 5 classes")
    parser.add_argument("--splits", nargs="+", choices=SIMILARITIES, default=list(SIMILARITIES),
                        help="the splits of CIFAR-10 into source and target halves that are run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of B's training draw, initialisation, shuffling, CV folds and fits")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="B training images per class")
    parser.add_argument("--source-per-class", type=int, default=5000, help="A training images per class")
    parser.add_argument("--source-test-per-class", type=int, default=1000, help="A test images per class (the check)")
    parser.add_argument("--source-epochs", type=int, default=10, help="epochs of the source training")
    parser.add_argument("--source-min-accuracy", type=float, default=0.6,
                        help="a source network below this held-out accuracy (inference mode) is not used (0: no check)")
    parser.add_argument("--test-per-class", type=int, default=500, help="B test images per class")
    parser.add_argument("--epochs", type=int, nargs=2, default=[30, 6], metavar=("FEW", "MANY"),
                        help="epochs of finetune and scratch at the smallest and the largest size (log-interpolated)")
    parser.add_argument("--finetune-blocks", type=int, default=2, help="top blocks unfrozen in finetune's phase 2")
    parser.add_argument("--finetune-lr", type=float, default=3e-4, help="Adam learning rate of finetune's phase 2")
    parser.add_argument("--head-init", choices=["glorot", "logreg"], default="logreg",
                        help="how finetune starts its softmax: from a logistic regression on the frozen features "
                             "(logreg, the library's default: linear probing then finetuning, LP-FT) or random "
                             "(glorot, the ablation)")
    parser.add_argument("--cv", type=int, default=3, help="CV folds choosing C of logreg")
    parser.add_argument("--real", action="store_true",
                        help="also the real-data points (EfficientNet-Lite0 ImageNet on hymenoptera and CIFAR-10)")
    parser.add_argument("--only-real", action="store_true", help="only the real-data points")
    parser.add_argument("--real-sizes", type=int, nargs="+", default=[10, 100, 1000],
                        help="CIFAR-10 training images per class of the real-data points")
    parser.add_argument("--real-modes", nargs="+", default=["finetune", "scratch"], choices=["finetune", "scratch"],
                        help="trained modes of the real-data points, beside the frozen stages")
    parser.add_argument("--real-hymenoptera-per-class", type=int, default=None,
                        help="hymenoptera train and val images per class of the real-data points (default: all)")
    parser.add_argument("--real-test-per-class", type=int, default=200, help="CIFAR-10 test images per class, real points")
    parser.add_argument("--store", type=Path, default=None, help="feature store (default: OUT/store, kept as a cache)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run into OUT/quick: {QUICK}")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}: {SMOKE}")
    parser.add_argument("--replot", action="store_true", help="only redraw and reprint from OUT/results.json")
    return parser


def tiny_convnet(include_top: bool = False, weights=None, input_shape=(32, 32, 3), width: int = 32):
    """Four blocks of conv3x3-BN-ReLU-maxpool (widths w, 2w, 4w, 8w): a CIFAR-sized backbone, ~0.4 M weights."""
    from layerprobe.features.backend import import_keras_quietly

    keras = import_keras_quietly()
    if include_top or weights is not None:
        raise ValueError(f"TinyConvNet has no top and no pretrained weights. Received: include_top={include_top}, "
                         f"weights={weights!r}")
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for block, multiple in enumerate((1, 2, 4, 8), start=1):
        x = keras.layers.Conv2D(width * multiple, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="tiny_convnet")


def register_tiny_convnet() -> None:
    from layerprobe.features.registry import BackboneSpec, register_backbone

    register_backbone(BackboneSpec(name="TinyConvNet", constructor=tiny_convnet, preprocess_module=None,
                                   preprocess_mode="tf", default_input_size=32, min_input_size=32,
                                   stage_pattern=r"block\d+_pool$"), overwrite=True)


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


def relabel(dataset, class_names):
    """`dataset` restricted to `class_names`, labelled 0..k-1 in that order."""
    old_labels = [dataset.class_names.index(name) for name in class_names]
    picked = dataset.select(np.flatnonzero(np.isin(dataset.labels, old_labels)))
    mapping = np.full(len(dataset.class_names), -1)
    mapping[old_labels] = np.arange(len(class_names))
    return dataclasses.replace(picked, labels=mapping[picked.labels], class_names=list(class_names))


def pick(dataset, class_names, per_split: Mapping[str, int | None], *, seed: int | None = None):
    """n images of each of `class_names` per split: the first n (file-name order), or a seeded random n.

    Raises:
        SystemExit: If a class holds fewer than n images in a split.
    """
    dataset = relabel(dataset, class_names)
    splits = np.asarray(dataset.splits)
    chosen = []
    for split, n in per_split.items():
        for label, name in enumerate(class_names):
            members = np.flatnonzero((splits == split) & (dataset.labels == label))
            if n is not None and len(members) < n:
                raise SystemExit(f"error: class {name!r} holds {len(members)} {split} images, fewer than the "
                                 f"{n} asked for. Ask for fewer. Received: {n} per class")
            if seed is not None:
                members = np.random.default_rng([seed, label]).permutation(members)
            chosen.append(members[:n])
    return dataset.select(np.sort(np.concatenate(chosen)))


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


def probe(features, train_ids, seed: int, cv: int) -> dict:
    """Logistic regression on one layer's train rows (C by CV), scored on the test rows; CV SE and LogME too."""
    from layerprobe.pipeline.classifiers import fit_classifier
    from layerprobe.pipeline.evaluate import evaluate
    from layerprobe.pipeline.probes.logme import logme_score
    from layerprobe.pipeline.uncertainty import fold_se, wilson_interval

    train, test = np.isin(features.sample_ids, list(train_ids)), features.splits == "test"
    with Stopwatch() as watch:
        fit = fit_classifier(features.X[train], features.y[train], "logreg", param_grid=C_GRID, cv=cv,
                             random_state=seed)
        scores = evaluate(features.y[test], fit.estimator.predict(features.X[test]), features.class_names).as_dict()
        try:
            logme = float(logme_score(features.X[train], features.y[train]))
        except Exception as error:  # noqa: BLE001 - LogME is evidence, not a result: record why it is missing
            logme, scores["logme_error"] = math.nan, str(error)[:80]
    best = fit.cv_results.loc[fit.cv_results["rank_test_score"].idxmin()]
    folds = [best[column] for column in fit.cv_results.columns
             if column.startswith("split") and column.endswith("_test_score")]
    n_test = int(test.sum())
    low, high = wilson_interval(scores["accuracy"], n_test)
    return timed({"cv_score": round(fit.cv_score, 4), "cv_se": round(fold_se(folds), 4), "n_folds": len(folds),
                  "accuracy": scores["accuracy"], "test_ci_low": round(low, 4), "test_ci_high": round(high, 4),
                  "n_test": n_test, "feature_dim": int(features.X.shape[1]),
                  "logme": None if not math.isfinite(logme) else round(logme, 4),
                  "params": json.dumps(fit.best_params)}, watch)


def epochs_for(n: int, args) -> int:
    """Keras epochs at n images per class: `--epochs` FEW at the smallest size, MANY at the largest, log-interpolated."""
    few, many = args.epochs
    low, high = min(args.sizes), max(args.sizes)
    if high == low:
        return few
    t = (math.log(n) - math.log(low)) / (math.log(high) - math.log(low))
    return max(1, round(few * (many / few) ** t))


def keras_config(mode: str, epochs: int, seed: int, args):
    """The `FinetuneConfig` of a finetune or scratch cell: `epochs` in all, on all training images.

    No validation split and no early stopping: on 10 images per class a validation split
    is two images, and the validation loss of a network trained from scratch rises for the
    first epochs (BatchNorm statistics still settling).
    """
    from layerprobe.pipeline.finetune import FinetuneConfig

    head = max(1, epochs // 3)
    phases = {"head_epochs": head, "finetune_epochs": max(1, epochs - head)} if mode == "finetune" else {
        "head_epochs": epochs, "finetune_epochs": 0}
    # Explicit, so that cache keys do not follow the library's default (scratch has no head to start from).
    head_init = args.head_init if mode == "finetune" else "glorot"
    return FinetuneConfig(**phases, unfreeze_blocks=args.finetune_blocks, learning_rate=args.finetune_lr,
                          augmentation={"flip": "horizontal"}, val_fraction=0.0, batch_size=32,
                          early_stopping_patience=None, seed=seed, head_init=head_init)


def train_and_score(mode: str, train, test, *, model: str, weights, input_size: int, model_kwargs, config,
                    output_dir: Path) -> dict:
    """Run `finetune` (from `weights`) or `train_from_scratch` of `model` on `train`, score on `test`."""
    from layerprobe.pipeline.finetune import evaluate_model, finetune, train_from_scratch
    from layerprobe.pipeline.uncertainty import wilson_interval

    common = dict(output_dir=output_dir, input_size=input_size, model_kwargs=model_kwargs, config=config, resume=True)
    with Stopwatch() as watch:
        if mode == "finetune":
            result = finetune(model, train, weights=str(weights), **common)
        else:
            result = train_from_scratch(model, train, **common)
        scores = evaluate_model(result, test, batch_size=256)
    params = {"epochs_run": result.epochs_run, "learning_rate": result.learning_rate,
              "unfreeze_blocks": result.as_row()["unfreeze_blocks"]}
    low, high = wilson_interval(scores.accuracy, scores.n_test)
    return timed({"cv_score": None, "cv_se": None, "accuracy": scores.accuracy, "test_ci_low": round(low, 4),
                  "test_ci_high": round(high, 4), "n_test": scores.n_test, "params": json.dumps(params)}, watch)


# --------------------------------------------------------------------------- one split


def pretrain(similarity: str, a_classes, full, args, log) -> tuple[Path, dict]:
    """Train (or reuse) the source network on A and check it in inference mode: (weights, source row)."""
    from layerprobe.pipeline.default_experiment import pretrain_source
    from layerprobe.pipeline.finetune import FinetuneConfig

    source = pick(full, a_classes, {"train": args.source_per_class, "test": args.source_test_per_class})
    options = FinetuneConfig(
        head_epochs=args.source_epochs, finetune_epochs=0, batch_size=64, augmentation={"flip": "horizontal"},
        dropout=0.0, val_fraction=0.0, early_stopping_patience=None, seed=0, head_init="glorot",  # key as before
    )
    with Stopwatch() as watch:
        weights, facts = pretrain_source(
            args.model, source, args.out / "source", name=f"cifar10-{similarity}-A", options=options,
            input_size=args.input_size, model_kwargs=args.model_kwargs, min_accuracy=0.0, dataset_digest=DIGEST,
            log=log,
        )
    row = {
        "similarity": similarity, "A": " ".join(a_classes), "n_train": len(source.subset("train")),
        "epochs": args.source_epochs, "accuracy": round(facts["accuracy"], 4), "n_test": facts["n_test"],
        "chance": round(1 / len(a_classes), 3), "passed": facts["accuracy"] >= args.source_min_accuracy,
        "train_s": round(facts["fit_seconds"], 1), "wall_s_this_run": round(watch.wall, 1),
        "cpu_s_this_run": round(watch.cpu, 1), "weights": weights.name,
    }
    return weights, row


def prepare_split(similarity: str, a_classes, b_classes, full, store, args, log) -> dict:
    """Pretrain on A (checked), draw B's training sets, extract A and random features of B: the split's context."""
    from layerprobe.features.extract import FeatureExtractor

    log(f"\n== {similarity}: A = {', '.join(a_classes)}; B = {', '.join(b_classes)}")
    weights, source_row = pretrain(similarity, a_classes, full, args, log)
    context = {"similarity": similarity, "b_classes": b_classes, "weights": weights, "source": source_row}
    if not source_row["passed"]:
        log(f"  source network scores {source_row['accuracy']:.3f} < {args.source_min_accuracy} on held-out A "
            f"(inference mode): its features do not count; split {similarity} skipped")
        return context
    test = pick(full, b_classes, {"test": args.test_per_class})
    draws = {seed: {n: pick(full, b_classes, {"train": n}, seed=seed) for n in args.sizes} for seed in args.seeds}
    union = sorted({i for seed in draws for i in draws[seed][max(args.sizes)].sample_ids} | set(test.sample_ids))
    target = relabel(full, b_classes)
    target = target.select(np.flatnonzero(np.isin(target.sample_ids, union)))
    extractors = {
        "A": FeatureExtractor(args.model, weights=weights, layers="stages", pooling="avg", input_size=args.input_size,
                              model_kwargs=args.model_kwargs, batch_size=256, dataset_digest=DIGEST),
        "none": FeatureExtractor(args.model, weights=None, layers="stages", pooling="avg", input_size=args.input_size,
                                 model_kwargs=args.model_kwargs, batch_size=256, seed=0,
                                 dataset_digest=DIGEST),
    }
    features, depth = {}, {}
    for name, extractor in extractors.items():
        with Stopwatch() as watch:
            report = extractor.extract(target, store, progress=False)
        log(f"  features of B, weights {name} ({len(target)} images, {len(report.keys)} stages): "
            f"{report.summary()}, {watch.wall:.0f} s wall, {watch.cpu:.0f} s CPU")
        features[name] = {layer: store.load(key) for layer, key in report.keys.items()}
        n_layers = len(extractor.backbone.model.layers) - 1
        depth = {info.name: round(info.index / n_layers, 3) for info in extractor.layers}
    return {**context, "test": test, "draws": draws, "features": features, "depth": depth,
            "layer_names": extractors["A"].layer_names}


def run_cells(context: dict, seed: int, args, log) -> list[dict]:
    """The four modes (and random features) on B for one seed and every size: long-table rows."""
    similarity, weights, test = context["similarity"], context["weights"], context["test"]
    features, depth, layer_names = context["features"], context["depth"], context["layer_names"]
    top = layer_names[-1]
    rows = []
    for n in args.sizes:
        train = context["draws"][seed][n]
        cell = {"similarity": similarity, "seed": seed, "n_per_class": n, "n_train": len(train),
                "n_classes": len(context["b_classes"])}
        base = {"model": args.model, "model_kwargs": args.model_kwargs, "input_size": args.input_size,
                "train": train.digest(DIGEST), "test": test.digest(DIGEST), "seed": seed, "cv": args.cv, "grid": C_GRID}

        def stages(weights_name: str, mode: str):
            def compute():
                return [{**cell, "mode": mode, "weights": weights_name, "layer": layer, "depth": depth[layer],
                         **probe(features[weights_name][layer], train.sample_ids, seed, args.cv)}
                        for layer in layer_names]
            return {**base, "features": weights.name if weights_name == "A" else "random", "logme": 1}, compute

        def keras_cell(mode: str):
            config = keras_config(mode, epochs_for(n, args), seed, args)
            settings = {**base, "mode": mode, "config": config.to_dict(),
                        "weights": weights.name if mode == "finetune" else None}
            run_dir = args.out / "runs" / f"{similarity}-{n}-s{seed}-{mode}-{settings_digest(settings)}"

            def compute():
                return [{**cell, "mode": mode, "weights": "A" if mode == "finetune" else "none", "layer": "all",
                         "depth": 1.0, **train_and_score(mode, train, test, model=args.model, weights=weights,
                                                          input_size=args.input_size, model_kwargs=args.model_kwargs,
                                                          config=config, output_dir=run_dir)}]

            return settings, compute

        jobs = {"frozen_stage": stages("A", "frozen_stage"), "random_stage": stages("none", "random_stage"),
                "finetune": keras_cell("finetune"), "scratch": keras_cell("scratch")}
        for mode, (settings, compute) in jobs.items():
            cell_rows = cached_rows(args.out / "cells", f"{similarity}-{n}-s{seed}-{mode}", settings, compute, log)
            for row in cell_rows:
                log(f"  {similarity:10s} n={n:<5d} seed {seed} {mode:12s} {row['layer']:12s} accuracy "
                    f"{row['accuracy']:.3f} (cv {row['cv_score'] if row['cv_score'] is not None else '-'}) "
                    f"{row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} s CPU")
            rows += [{**row, "top": row["layer"] == top} for row in cell_rows]
    return rows


# --------------------------------------------------------------------------- real-data points


def run_real(store, args, log) -> list[dict]:
    """EfficientNet-Lite0 (ImageNet) on hymenoptera and on CIFAR-10 at 32x32: frozen stages, finetune, scratch."""
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.inputs import from_directory

    if not LITE0.is_file():
        log(f"  real-data points skipped: {LITE0} is missing")
        return []
    rows = []
    hymenoptera = from_directory(HYMENOPTERA_DIR)
    hymenoptera = dataclasses.replace(hymenoptera, splits=["test" if s == "val" else s for s in hymenoptera.splits])
    if args.real_hymenoptera_per_class:
        k = args.real_hymenoptera_per_class
        hymenoptera = pick(hymenoptera, list(hymenoptera.class_names), {"train": k, "test": k})
    cifar = from_directory(args.cifar10)
    datasets = [("hymenoptera", hymenoptera, 224, [min(args.real_sizes), None])]  # 10 per class, and all
    datasets.append(("cifar10-32px", pick(cifar, list(cifar.class_names),
                                          {"train": max(args.real_sizes), "test": args.real_test_per_class}, seed=0),
                     32, sorted(args.real_sizes)))
    for name, dataset, size, sizes in datasets:
        extractor = FeatureExtractor(str(LITE0), layers="stages", pooling="avg", input_size=size,
                                     preprocessing="none", batch_size=64, dataset_digest=DIGEST)
        with Stopwatch() as watch:
            report = extractor.extract(dataset, store, progress=False)
        log(f"  {name}: EfficientNet-Lite0 features ({len(dataset)} images at {size}px, {len(report.keys)} stages): "
            f"{report.summary()}, {watch.wall:.0f} s wall")
        features = {layer: store.load(key) for layer, key in report.keys.items()}
        n_layers = len(extractor.backbone.model.layers) - 1
        depth = {info.name: round(info.index / n_layers, 3) for info in extractor.layers}
        top = extractor.layer_names[-1]
        train_all, test = dataset.subset("train"), dataset.subset("test")
        for n in sizes:
            train = train_all if n is None else pick(train_all, list(train_all.class_names), {"train": n}, seed=0)
            ids = train.sample_ids
            per_class = round(len(ids) / len(dataset.class_names))
            cell = {"similarity": name, "seed": 0, "n_per_class": per_class, "n_train": len(ids),
                    "n_classes": len(dataset.class_names)}

            def compute():
                return [{**cell, "mode": "frozen_stage", "weights": "imagenet", "layer": layer, "depth": depth[layer],
                         **probe(features[layer], ids, 0, args.cv)} for layer in extractor.layer_names]

            settings = {"real": name, "n": n, "features": {k: v.digest for k, v in report.keys.items()},
                        "cv": args.cv, "grid": C_GRID}
            cell_rows = cached_rows(args.out / "cells", f"real-{name}-{n}", settings, compute, log)
            for mode in [mode for mode in ("finetune", "scratch") if mode in args.real_modes]:
                config = keras_config(mode, epochs_for(per_class, args), 0, args)
                keras_settings = {"real": name, "n": n, "mode": mode, "weights": extractor.backbone.weights_digest,
                                  "input_size": size, "train": train.digest(DIGEST), "test": test.digest(DIGEST),
                                  "config": config.to_dict()}
                run_dir = args.out / "runs" / f"real-{name}-{n}-{mode}-{settings_digest(keras_settings)}"

                def train_cell(mode=mode, config=config, run_dir=run_dir):
                    return [{**cell, "mode": mode, "weights": "imagenet" if mode == "finetune" else "none",
                             "layer": "all", "depth": 1.0,
                             **train_and_score(mode, train, test, model=str(LITE0), weights="saved", input_size=size,
                                               model_kwargs={}, config=config, output_dir=run_dir)}]

                cell_rows = cell_rows + cached_rows(args.out / "cells", f"real-{name}-{n}-{mode}", keras_settings,
                                                    train_cell, log)
            for row in cell_rows:
                log(f"  {name:12s} n={cell['n_per_class']:<5d} {row['mode']:12s} {row['layer']:26s} accuracy "
                    f"{row['accuracy']:.3f} (cv {row['cv_score']}, LogME {row.get('logme')})")
            rows += [{**row, "top": row["layer"] == top} for row in cell_rows]
    return rows


# --------------------------------------------------------------------------- advice and tables


def advice_table(cell: list[dict]):
    """The cell's frozen rows as a results table (the column contract of `layerprobe.pipeline.results`)."""
    import pandas as pd

    frozen = [row for row in cell if row["mode"] in ("frozen_stage", "random_stage")]
    return pd.DataFrame([{
        "mode": "frozen", "backbone": "TinyConvNet" if row["weights"] != "imagenet" else "EfficientNetLite0",
        "weights": row["weights"], "pooling": "avg", "layer": row["layer"], "depth": row["depth"],
        "feature_dim": row.get("feature_dim"), "classifier": "logreg", "cv_score": row["cv_score"],
        "cv_se": row.get("cv_se"), "n_folds": row.get("n_folds"), "test_accuracy": row["accuracy"],
        "test_ci_low": row.get("test_ci_low"), "test_ci_high": row.get("test_ci_high"),
        "n_train": row["n_train"], "n_test": row["n_test"], "logme": row.get("logme"), "row_kind": "final",
    } for row in frozen])


def mode_scores(cell: list[dict]) -> dict[str, dict]:
    """Mode -> its row: frozen_stage is the transferred block with the best CV score, frozen_top the top block."""
    stages = [row for row in cell if row["mode"] == "frozen_stage"]
    chosen = {row["mode"]: row for row in cell if row["mode"] in ("finetune", "scratch")}
    if stages:
        chosen["frozen_stage"] = max(stages, key=lambda row: (row["cv_score"], -row["depth"]))
        chosen["frozen_top"] = next(row for row in stages if row["top"])
    return chosen


def advised(cell: list[dict], threshold: float, n_se: float) -> tuple[str, dict]:
    """The advice's mode for one cell (from its frozen rows only, as a user would run it) and the row it names."""
    from layerprobe.pipeline.advice import recommend

    first = cell[0]
    table = advice_table(cell)
    advice = recommend(table, n_train=first["n_train"], n_classes=first["n_classes"],
                       smallest_class=first["n_per_class"], finetune_samples_per_class=threshold, n_se=n_se)
    mode = ADVICE_MODES.get(advice.mode, advice.mode)
    if mode in ("frozen_top", "frozen_stage") and advice.row is not None:
        row = next(r for r in cell if r["mode"] == "frozen_stage" and r["layer"] == advice.row["layer"])
        return mode, row
    return mode, mode_scores(cell).get(mode)


def cells_of(rows: list[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((row["similarity"], row["n_per_class"], row["seed"]), []).append(row)
    return cells


def matrix_rows(rows: list[dict], threshold: float, n_se: float) -> list[dict]:
    """One row per (split, size, seed) with all four modes: accuracies, winner, margin, SE, advice, agreement.

    `se` is the binomial standard error of the winner's test accuracy; the advice agrees when the
    row it names (the advised layer, or the trained mode) scores at least the winner's accuracy
    ("yes") or within 2 combined SE of it (`within_noise`).
    """
    from layerprobe.pipeline.uncertainty import binomial_se, within_noise

    table = []
    for (similarity, n, seed), cell in cells_of(rows).items():
        chosen = mode_scores(cell)
        if any(mode not in chosen for mode in MODES):
            continue
        ranked = sorted(MODES, key=lambda mode: chosen[mode]["accuracy"], reverse=True)
        best, runner_up = chosen[ranked[0]], chosen[ranked[1]]
        se = binomial_se(best["accuracy"], best["n_test"])
        mode, row = advised(cell, threshold, n_se)
        accuracy = row["accuracy"] if row else math.nan
        # Judged by the advised row's accuracy, not the mode's name: a frozen layer other than the best one
        # is not a win because the winning mode is also frozen.
        agrees = ("yes" if accuracy >= best["accuracy"] else
                  "within 2 SE" if within_noise(best["accuracy"], se, accuracy, binomial_se(accuracy, best["n_test"]))
                  else "no")
        random_best = max((r for r in cell if r["mode"] == "random_stage"), key=lambda r: r["cv_score"], default=None)
        table.append({
            "similarity": similarity, "n_per_class": n, "seed": seed,
            **{mode_: round(chosen[mode_]["accuracy"], 3) for mode_ in MODES},
            "stage": chosen["frozen_stage"]["layer"],
            "random": None if random_best is None else round(random_best["accuracy"], 3),
            "winner": ranked[0], "margin": round(best["accuracy"] - runner_up["accuracy"], 3),
            "runner_up": ranked[1], "se": round(se, 3), "advice": mode,
            "advice_accuracy": round(accuracy, 3), "agrees": agrees,
        })
    return sorted(table, key=lambda r: (r["similarity"] not in SIMILARITIES, SIMILARITIES.index(r["similarity"])
                                        if r["similarity"] in SIMILARITIES else r["similarity"], r["n_per_class"],
                                        r["seed"]))


def calibration_rows(rows: list[dict]) -> list[dict]:
    """Agreement of the advice with the measured winners, per candidate finetuning threshold and tie width.

    Only the CIFAR-10 halves calibrate (`agree` of `cells`); the real-data points are the check on data the
    thresholds were not set on (`real_agree` of `real_points`).
    """
    halves = [row for row in rows if row["similarity"] in SIMILARITIES]
    real = [row for row in rows if row["similarity"] not in SIMILARITIES]
    out = []
    for n_se in CANDIDATE_NOISE_SE:
        for threshold in CANDIDATE_THRESHOLDS:
            matrix, checks = matrix_rows(halves, threshold, n_se), matrix_rows(real, threshold, n_se)
            agree = sum(row["agrees"] != "no" for row in matrix)
            out.append({"n_se": n_se, "finetune_samples_per_class": threshold, "cells": len(matrix), "agree": agree,
                        "agreement": round(agree / len(matrix), 3) if matrix else None,
                        "exact_winner": sum(row["agrees"] == "yes" for row in matrix), "real_points": len(checks),
                        "real_agree": sum(row["agrees"] != "no" for row in checks)})
    return out


def summary_rows(matrix: list[dict]) -> list[dict]:
    """Per (split, size): each mode's mean test accuracy over seeds ± its SE over seeds, and the winners."""
    from layerprobe.pipeline.uncertainty import fold_se

    out = []
    for key in dict.fromkeys((row["similarity"], row["n_per_class"]) for row in matrix):
        group = [row for row in matrix if (row["similarity"], row["n_per_class"]) == key]
        entry = {"similarity": key[0], "n_per_class": key[1], "seeds": len(group)}
        for mode in MODES:
            values = [row[mode] for row in group]
            se = fold_se(values)
            entry[mode] = f"{np.mean(values):.3f}" + (f" ± {se:.3f}" if math.isfinite(se) else "")
        entry["winners"] = " ".join(row["winner"] for row in group)
        entry["advice"] = " ".join(dict.fromkeys(row["advice"] for row in group))
        entry["agrees"] = f"{sum(row['agrees'] != 'no' for row in group)}/{len(group)}"
        out.append(entry)
    return out


def plot(rows: list[dict], info: Mapping[str, Any], path: Path) -> Path | None:
    """Frozen logreg test accuracy against block depth (mean over seeds), one panel per size; other modes as marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({row["n_per_class"] for row in rows if row["similarity"] in SIMILARITIES})
    if not sizes:
        return None
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.6), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for color, similarity in zip(("C0", "C3"), SIMILARITIES):
            cell = [row for row in rows if row["n_per_class"] == n and row["similarity"] == similarity]
            if not cell:
                continue
            for mode, style in (("frozen_stage", "o-"), ("random_stage", "x:")):
                by_depth: dict[float, list[float]] = {}
                for row in cell:
                    if row["mode"] == mode:
                        by_depth.setdefault(row["depth"], []).append(row["accuracy"])
                depths = sorted(by_depth)
                ax.plot(depths, [np.mean(by_depth[d]) for d in depths], style, color=color,
                        label=f"{similarity}: {'A features' if mode == 'frozen_stage' else 'random features'}")
            for mode, marker, x in (("finetune", "^", 1.06), ("scratch", "v", 1.12)):
                values = [row["accuracy"] for row in cell if row["mode"] == mode]
                if values:
                    ax.plot([x], [np.mean(values)], marker, color=color, markersize=8, label=f"{similarity}: {mode}")
            ax.axhline(1 / cell[0]["n_classes"], color=color, linestyle=":", linewidth=1)
        ax.set_title(f"{n} B training images per class (mean over seeds)", fontsize=10)
        ax.set_xlabel("relative depth of the block")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy on B")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle("CIFAR-10 halves, source A -> target B: logistic regression per block (A and random features), "
                 f"finetune and scratch at the right; dotted: chance\n{info['cpu']}, {info['cpus_usable']} cores, "
                 f"{info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


LONG_COLUMNS = ["similarity", "n_per_class", "seed", "mode", "weights", "layer", "depth", "cv_score", "cv_se",
                "logme", "accuracy", "test_ci_low", "test_ci_high", "params", "wall_s", "cpu_s"]
MATRIX_COLUMNS = ["similarity", "n_per_class", "seed", *MODES, "stage", "random", "winner", "margin", "runner_up", "se",
                  "advice", "advice_accuracy", "agrees"]


def report(data: Mapping[str, Any], out: Path, log: Callable[[str], None], *, verbose: bool = True) -> None:
    """Write the CSVs and the plot, and print the tables."""
    from layerprobe.pipeline.advice import FINETUNE_SAMPLES_PER_CLASS, NOISE_SE

    rows = data["rows"]
    matrix = matrix_rows(rows, FINETUNE_SAMPLES_PER_CLASS, NOISE_SE)
    calibration = calibration_rows(rows)
    write_csv(rows, out / "long.csv")
    if matrix:
        write_csv(matrix, out / "matrix.csv")
        write_csv(calibration, out / "calibration.csv")
    if not verbose:
        return
    log("\nsource networks (held-out A test images, inference mode):")
    log(format_table(data["sources"], ["similarity", "A", "n_train", "epochs", "accuracy", "chance", "passed",
                                       "train_s"], **TABLE_STYLE))
    log("\nlong table (test accuracy on B):")
    log(format_table(rows, LONG_COLUMNS, **TABLE_STYLE))
    log(f"\nmatrix (the advice as shipped: finetuning from {FINETUNE_SAMPLES_PER_CLASS} per class, ties within "
        f"{NOISE_SE:g} of the best row's SE):")
    log(format_table(matrix, MATRIX_COLUMNS, **TABLE_STYLE))
    log("\nper split and size, mean over seeds ± SE over seeds:")
    log(format_table(summary_rows(matrix), ["similarity", "n_per_class", "seeds", *MODES, "winners", "advice",
                                            "agrees"], **TABLE_STYLE))
    log("\nagreement on the CIFAR-10 halves (and on the real-data points) per candidate tie width (n_se) and "
        "finetuning threshold (samples per class):")
    log(format_table(calibration, ["n_se", "finetune_samples_per_class", "cells", "agree", "agreement", "exact_winner",
                                   "real_points", "real_agree"],
                     **TABLE_STYLE))
    real = [row for row in matrix if row["similarity"] not in SIMILARITIES]
    if real:
        agree = sum(row["agrees"] != "no" for row in real)
        log(f"\nreal-data points (EfficientNet-Lite0, ImageNet weights; not used to set the thresholds): the advice "
            f"as shipped agrees in {agree}/{len(real)}")
    log(f"\n{plot(rows, data['machine'], out / 'depth.png')}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_smoke(parser, argv, SMOKE)
    quiet_tensorflow()
    if args.quick:
        parser.set_defaults(**QUICK, out=args.out / "quick")
        args = parser.parse_args(argv)
    if args.smoke and args.cifar10 == CIFAR10_DIR:
        args.cifar10 = smoke_cifar10(args.out / "smoke-data", n_train=max(args.source_per_class, *args.sizes),
                                     n_test=max(args.source_test_per_class, args.test_per_class))
    if args.replot:
        report(read_results(args.out / "results.json"), args.out, print)
        return 0
    require_path(args.cifar10, "The CIFAR-10 image folder", "--cifar10", kind="dir")
    args.out.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    log = RunLog(SCRIPT, argv)
    register_tiny_convnet()

    from layerprobe.features.inputs import from_directory
    from layerprobe.features.store import FeatureStore

    full = from_directory(args.cifar10)
    store = FeatureStore(args.store or args.out / "store")
    splits = class_splits(full.class_names, args.split_seed)
    settings = {key: value for key, value in vars(args).items() if key not in ("replot", "out", "store", "cifar10")}
    log(f"settings: {json.dumps(settings, default=str)}")
    sources, rows, real_rows = [], [], []

    def save() -> None:
        data = {"command": log.command, "machine": log.info, "settings": settings, "splits": splits,
                "sources": sources, "rows": rows + real_rows, "partial": True}
        write_json(data, args.out / "results.json")
        report(data, args.out, log, verbose=False)
        log.write(args.out / "log.txt")

    if not args.only_real:
        contexts = [prepare_split(similarity, *splits[similarity], full, store, args, log)
                    for similarity in args.splits]
        sources += [context["source"] for context in contexts]
        for seed in args.seeds:  # seed by seed, so that a partial run has every split and size of the first seeds
            for context in contexts:
                if context["source"]["passed"]:
                    rows += run_cells(context, seed, args, log)
                    save()
    if args.real or args.only_real:
        log(f"\n== real-data points: EfficientNet-Lite0 (ImageNet): frozen stages, {', '.join(args.real_modes)}")
        real_rows = run_real(store, args, log)
    totals = {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(cpu_seconds() - cpu_started, 1),
              "load_average_end": " ".join(f"{value:.2f}" for value in os.getloadavg())}
    data = {"command": log.command, "machine": log.info, "settings": settings, "splits": splits,
            "sources": sources, "rows": rows + real_rows, "totals": totals}
    write_json(data, args.out / "results.json")
    report(data, args.out, log)
    log(f"\ntotal: {totals['wall_s']:.0f} s wall, {totals['cpu_s']:.0f} s CPU (this process, all threads); "
        f"load average at the end {totals['load_average_end']}")
    log.write(args.out / "log.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
