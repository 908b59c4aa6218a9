"""Which depth transfers best? Test accuracy of every stage output, pretrained vs random weights.

For one backbone and dataset, every block/stage output (`layers="stages"`) is
average-pooled and cached in a feature store, then logistic regression and a
linear SVM (C chosen by stratified CV on the training split,
`layerprobe.pipeline.classifiers.fit_classifier`) are fitted on each and scored once on
the test split. All of it is one `layerprobe.pipeline.run.run_experiment` call with two
backbones: the given weights, and the same architecture at random
initialisation (seeded) as the control. A rerun reuses the cached features
and the fitted rows, so it takes seconds.

Outputs under `OUT/<dataset>/`: `depth_sweep.csv`, `depth_sweep.png` (a line per
classifier; pretrained solid, random dashed), `results.json`, `log.txt`, and
the run's own `run/` folder (results table, summary, fitted models).

    python benchmarks/depth_sweep.py hymenoptera          # 224 px, all 398 images (245 train, 153 val)
    python benchmarks/depth_sweep.py cifar10              # 64 px, 500/class train, 100/class test
    python benchmarks/depth_sweep.py cifar10 --replot     # redraw the chart from OUT/cifar10/results.json
    python benchmarks/depth_sweep.py cifar10 --smoke      # generated images, random "pretrained" weights: seconds
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import (  # noqa: E402
    REPO_DIR,
    SHARED_DIR,
    SMOKE_HELP,
    VGG16_WEIGHTS,
    base_parser,
    parse_smoke,
    quiet_tensorflow,
    require_path,
)
from _data import cifar_subset, random_weights_file, smoke_cifar10  # noqa: E402
from _output import TABLE_STYLE, RunLog, read_results, write_csv, write_json  # noqa: E402
from layerprobe.pipeline.cli import comma_list  # noqa: E402
from layerprobe.pipeline.tables import format_table  # noqa: E402


SCRIPT = "depth_sweep"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under ../shared and the affordable defaults for it on 2 CPU cores."""

    folder: str
    train_split: str
    test_split: str
    input_size: int
    cv: int
    n_train_per_class: int | None  # None: every image of the split
    n_test_per_class: int | None


DATASETS = {
    "hymenoptera": DatasetSpec("hymenoptera", "train", "val", 224, 5, None, None),
    "cifar10": DatasetSpec("cifar10", "train", "test", 64, 3, 500, 100),
}


# --smoke: 4 train and 2 test images per class, generated; the pretrained line is another random init.
SMOKE = {"input_size": 32, "n_train_per_class": 4, "n_test_per_class": 2, "classifiers": ["logreg"], "c_grid": [1.0],
         "cv": 2}


def _floats(text: str) -> list[float]:
    return [float(item) for item in comma_list(text)]


def build_parser():
    parser = base_parser(SCRIPT, __doc__.strip().splitlines()[0])
    parser.add_argument("dataset", choices=sorted(DATASETS), help="dataset under ../shared/datasets")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: ../shared/datasets/DATASET)")
    parser.add_argument("--model", default="VGG16", help="backbone from the registry")
    parser.add_argument(
        "--weights", default=None,
        help=f"weights of the pretrained line: a file or 'imagenet' (default for VGG16: {VGG16_WEIGHTS.name})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init control, the CV folds and the fits")
    parser.add_argument("--input-size", type=int, default=None, help="square input side (default: 224 hymenoptera, 64 cifar10)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train-per-class", type=int, default=None, help="first N images per class (cifar10: 500)")
    parser.add_argument("--n-test-per-class", type=int, default=None, help="first N images per class (cifar10: 100)")
    parser.add_argument("--classifiers", type=comma_list, default=["logreg", "linear_svm"])
    parser.add_argument("--c-grid", type=_floats, default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0], help="C values searched by CV")
    parser.add_argument("--cv", type=int, default=None, help="CV folds (default: 5 hymenoptera, 3 cifar10)")
    parser.add_argument("--store", type=Path, default=None, help="feature store (default: OUT/store, kept as a cache)")
    parser.add_argument("--replot", action="store_true", help="only redraw the chart from OUT/DATASET/results.json")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}: {SMOKE}")
    return parser


def subset_manifest(root: Path, spec: DatasetSpec, n_train: int | None, n_test: int | None, path: Path) -> Path:
    """A CSV manifest (path,label,split) of the first N images per class of each split."""
    import pandas as pd

    parts = [
        cifar_subset(root, split=split, n_per_class=n)
        for split, n in ((spec.train_split, n_train), (spec.test_split, n_test))
    ]
    table = pd.concat(
        pd.DataFrame({
            "path": part.sample_ids,
            "label": [part.class_names[label] for label in part.labels],
            "split": part.splits,
        })
        for part in parts
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def sweep_rows(frame, pretrained_label: str) -> list[dict]:
    """The run's results table as depth-sweep rows, in stage order (the sweep's classifiers: not the ridge curve
    the run adds for its advice)."""
    rows = []
    frozen = frame[(frame["mode"] == "frozen") & (frame["row_kind"] == "final")]
    frozen = frozen.assign(pretrained=frozen["weights"] != "none")
    for record in frozen.sort_values(["pretrained", "classifier", "depth"], ascending=[False, True, True]).to_dict(
        "records"
    ):
        pretrained = bool(record["pretrained"])
        rows.append({
            "weights": pretrained_label if pretrained else "random init",
            "pretrained": pretrained,
            "layer": record["layer"],
            "stage": int(record["stage"]),
            "depth": record["depth"],
            "d": int(record["feature_dim"]),
            "classifier": record["classifier"],
            "C": json.loads(record["best_params"]).get("C"),
            "cv_accuracy": round(float(record["cv_score"]), 4),
            "test_accuracy": round(float(record["test_accuracy"]), 4),
            "n_train": int(record["n_train"]),
            "n_test": int(record["n_test"]),
            "fit_s": round(float(record["fit_seconds"]), 2),
        })
    return rows


def accuracy_table(rows: list[dict]) -> list[dict]:
    """One row per layer: its dimension and the test accuracy of each weights (pretrained, random) x classifier."""
    table = {}
    for row in rows:
        entry = table.setdefault(row["layer"], {"stage": row["stage"], "layer": row["layer"], "d": row["d"]})
        entry[f"{'pretrained' if row['pretrained'] else 'random'} {row['classifier']}"] = row["test_accuracy"]
    return sorted(table.values(), key=lambda entry: entry["stage"])


def plot(results: dict, path: Path) -> Path:
    """Test accuracy by stage: colour per classifier, solid pretrained, dashed random init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, setup, info = results["rows"], results["setup"], results["machine"]
    layers = accuracy_table(rows)
    classifiers = list(dict.fromkeys(row["classifier"] for row in rows))
    figure, axes = plt.subplots(figsize=(9, 5.5), layout="constrained")
    for weights, style in ((setup["pretrained_label"], "-"), ("random init", "--")):
        for number, classifier in enumerate(classifiers):
            line = sorted((r for r in rows if r["weights"] == weights and r["classifier"] == classifier),
                          key=lambda r: r["stage"])
            axes.plot([r["stage"] for r in line], [r["test_accuracy"] for r in line], linestyle=style,
                      marker="o", color=f"C{number}", label=f"{weights} / {classifier}")
    axes.axhline(1 / setup["n_classes"], color="grey", linestyle=":", label="chance")
    axes.set_xticks([entry["stage"] for entry in layers], [f"{entry['layer']}\nd={entry['d']}" for entry in layers],
                    fontsize=8)
    axes.set_xlabel("stage output (average-pooled), feature dimension d")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title(
        f"{setup['model']} depth sweep on {setup['dataset']}: {setup['n_train']} train / {setup['n_test']} test "
        f"images at {setup['input_size']} px\nC by {setup['cv']}-fold CV on the training split",
        fontsize=10,
    )
    figure.text(0.01, 0.005, f"{info['cpu']}, {info['cpus_usable']} cores, {info['date']}.", fontsize=7, color="grey")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _resolve(args) -> tuple[DatasetSpec, Path, str] | None:
    """The dataset spec, data path and pretrained weights; None when ../shared is absent and nothing was given."""
    spec = DATASETS[args.dataset]
    if args.data is None and args.weights is None and not SHARED_DIR.is_dir():
        return None
    data = require_path(args.data or SHARED_DIR / "datasets" / spec.folder, f"The {args.dataset} image folder",
                        "--data", kind="dir")
    weights = args.weights
    if weights is None:
        if args.model != "VGG16":
            raise SystemExit(f"error: pass --weights (a file or 'imagenet') for {args.model}; the default weights "
                             f"file is for VGG16 only. Received: --model={args.model}")
        weights = str(VGG16_WEIGHTS)
    if weights.lower() != "imagenet":
        weights = str(require_path(weights, "The weights file", "--weights", kind="file"))
    return spec, data, weights


def main(argv=None) -> int:
    args = parse_smoke(build_parser(), argv, SMOKE)
    quiet_tensorflow()
    out = args.out / args.dataset
    if args.replot:
        print(plot(read_results(out / "results.json"), out / "depth_sweep.png"))
        return 0
    if args.smoke:
        spec = DATASETS[args.dataset]
        args.data = args.data or smoke_cifar10(out / "smoke-data", n_train=args.n_train_per_class,
                                               n_test=args.n_test_per_class, test_split=spec.test_split)
        args.weights = args.weights or str(random_weights_file(
            args.model, out / "smoke-data" / f"{args.model}.weights.h5", input_size=args.input_size, seed=args.seed + 1
        ))
    resolved = _resolve(args)
    if resolved is None:
        print(f"depth_sweep: skipped: {SHARED_DIR} (../shared beside the repository) is absent, so there is no "
              f"{args.dataset} data and no weights. Pass --data and --weights to run elsewhere.")
        return 0
    spec, data, weights = resolved
    from layerprobe.features.inputs import open_dataset
    from layerprobe.pipeline.classifiers import CLASSIFIERS
    from layerprobe.pipeline.config import ConfigError, config_from_dict
    from layerprobe.pipeline.advice import advice_text
    from layerprobe.pipeline.run import run_experiment

    unknown = [name for name in args.classifiers if name not in CLASSIFIERS]
    if unknown:
        raise SystemExit(f"error: unknown classifier(s) {unknown}; choose from {sorted(CLASSIFIERS)}. "
                         f"Received: --classifiers={','.join(args.classifiers)}")
    n_train = spec.n_train_per_class if args.n_train_per_class is None else args.n_train_per_class
    n_test = spec.n_test_per_class if args.n_test_per_class is None else args.n_test_per_class
    for option, value in (("--n-train-per-class", n_train), ("--n-test-per-class", n_test)):
        if value is not None and value < 2:
            raise SystemExit(f"error: {option} must be at least 2 (CV needs 2 samples per class). Received: {value}")
    input_size = args.input_size or spec.input_size
    cv = args.cv or spec.cv
    log = RunLog(SCRIPT, argv)
    started = time.perf_counter()
    if n_train or n_test:
        data = subset_manifest(data, spec, n_train, n_test, out / "manifest.csv")
        log(f"subset: first {n_train or 'all'} train and {n_test or 'all'} test images per class -> {data}")
    raw = {
        "data": {"path": str(data), "train_split": spec.train_split, "test_split": spec.test_split},
        "features": {"store": str(args.store or args.out / "store"), "input_size": input_size, "pooling": "avg",
                     "batch_size": args.batch_size},
        "backbones": [
            {"model": args.model, "weights": weights, "layers": ["stages"]},
            {"model": args.model, "weights": "none", "layers": ["stages"], "seed": args.seed},
        ],
        "classifiers": {
            "names": args.classifiers, "cv": cv, "seed": args.seed,
            "screening": False,  # every classifier on every stage: the sweep is the point
            "grids": {name: {"C": args.c_grid} for name in args.classifiers if "C" in CLASSIFIERS[name].param_grid},
        },
        "output": {"dir": str(out / "run")},
    }
    try:
        config = config_from_dict(raw, REPO_DIR, source=f"benchmarks/{SCRIPT}.py {args.dataset}")
        run = run_experiment(config, log=lambda line: log(f"  {line}"), progress=sys.stderr.isatty())
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    pretrained_label = "imagenet" if weights == "imagenet" else Path(weights).name
    rows = sweep_rows(run.results, pretrained_label)
    setup = {
        "dataset": args.dataset, "data": str(data), "model": args.model, "weights": weights,
        "pretrained_label": pretrained_label, "random_seed": args.seed, "input_size": input_size, "pooling": "avg",
        "classifiers": args.classifiers, "c_grid": args.c_grid, "cv": cv,
        "n_train": rows[0]["n_train"], "n_test": rows[0]["n_test"],
        "n_classes": len(open_dataset(data).class_names),
        "n_forward": run.n_forward, "n_fitted": run.n_fitted, "n_reused": run.n_reused,
        "seconds": round(time.perf_counter() - started),
    }
    results = {"command": log.command, "machine": log.info, "setup": setup, "rows": rows, "advice": advice_text(run.advice).text}
    write_csv(rows, out / "depth_sweep.csv")
    write_json(results, out / "results.json")
    plot(results, out / "depth_sweep.png")
    table = accuracy_table(rows)
    log(f"\ntest accuracy by depth ({setup['n_train']} train / {setup['n_test']} test, {input_size} px, "
        f"{run.n_forward} images through a backbone, {run.n_fitted} fits, {run.n_reused} reused, "
        f"{setup['seconds']} s):")
    log(format_table(table, list(table[0]), **TABLE_STYLE))
    log("\n" + format_table(table, list(table[0]), markdown=True, **TABLE_STYLE))
    log.write(out / "log.txt")
    log(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
