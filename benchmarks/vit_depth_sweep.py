"""Which block of a vision transformer transfers best? A block-by-block depth sweep, and the extraction's speed.

Design (the "dissimilar" split of benchmarks/transfer_matrix.py, for a ViT): CIFAR-10's
six animals are the source A, its four vehicles the target B. A small keras-hub
`ViTBackbone` (default: patch 4, 6 blocks, width 64, 2 heads, MLP 128, about 0.2 M
weights, at CIFAR's 32 px: 64 patch tokens and a class token) is trained from scratch
on A (`layerprobe.pipeline.default_experiment.pretrain_source`; its held-out accuracy on
A's test images is reported). On B, one `layerprobe run` probes every block
(`layers = ["stages"]`) and the final norm (`"top"`) under three token poolings: the
class token (`cls`), the mean of the patch tokens (`mean`) and both (`cls+mean`), with
logistic regression (C by CV on the training split) and the multi-layer probe across
blocks (`multi_layer = true`), for the A-trained weights and for the same architecture
at random initialisation (seeded): the random-features control.

Speed: `FeatureExtractor.extract` of every block (`cls+mean`) of `--speed-images`
CIFAR-10 training images into a fresh store, against the bare forward pass (the
rebuilt ViT alone, on the same images decoded and preprocessed in memory,
`predict_on_batch` in fixed batches, warmed up). Runs interleaved, best of `--repeats`.

Outputs under OUT: `results.json`, `depth.csv`, `speed.csv`, `log.txt`, the run's own
folder `run/` (results table, `depth.png`, summary); caches in `source/` and `store/`.

    python benchmarks/vit_depth_sweep.py            # about 30 min on 2 busy cores (load 10)
    python benchmarks/vit_depth_sweep.py --quick    # smoke run into OUT/quick (a few minutes)
    python benchmarks/vit_depth_sweep.py --smoke    # generated images, a 2-block ViT: under a minute
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import (  # noqa: E402
    CIFAR10_DIR,
    REPO_DIR,
    SHARED_DIR,
    SMOKE_HELP,
    base_parser,
    parse_smoke,
    quiet_tensorflow,
    require_path,
)
from _data import cifar_subset, smoke_cifar10  # noqa: E402
from _measure import Stopwatch  # noqa: E402
from _output import RunLog, significant, write_csv, write_json  # noqa: E402
from extraction_speed import decode_in_memory  # noqa: E402
from transfer_matrix import VEHICLES, pick  # noqa: E402

from layerprobe.pipeline.tables import format_table  # noqa: E402

TABLE_STYLE = {"float_format": significant, "missing": "-"}  # 3 significant digits, "-" for no value
SCRIPT = "vit_depth_sweep"
MODEL = "keras_hub:ViTBackbone"
VIT_KWARGS = {"patch_size": 4, "num_layers": 6, "hidden_dim": 64, "num_heads": 2, "mlp_dim": 128}
POOLINGS = ["cls", "mean", "cls+mean"]
DIGEST = "content"  # datasets identified by their bytes: the caches survive a copy of ../shared
QUICK = {"source_per_class": 40, "source_test_per_class": 10, "source_epochs": 1, "n_train_per_class": 10,
         "n_test_per_class": 10, "speed_images": 100, "repeats": 1}
SMOKE = {"model_kwargs": {"patch_size": 8, "num_layers": 2, "hidden_dim": 16, "num_heads": 1, "mlp_dim": 16},
         "source_per_class": 8, "source_test_per_class": 4, "source_epochs": 1, "n_train_per_class": 4,
         "n_test_per_class": 2, "cv": 2, "batch_size": 8, "speed_images": 20, "repeats": 1}


def build_parser():
    parser = base_parser(SCRIPT, __doc__.strip().splitlines()[0])
    parser.add_argument("--cifar10", type=Path, default=CIFAR10_DIR, help="CIFAR-10 folder ({train,test}/<class>/*.jpg)")
    parser.add_argument("--model-kwargs", type=json.loads, default=VIT_KWARGS, help="ViTBackbone arguments, JSON")
    parser.add_argument("--input-size", type=int, default=32, help="square input side")
    parser.add_argument("--source-per-class", type=int, default=300, help="A training images per class")
    parser.add_argument("--source-test-per-class", type=int, default=100, help="A test images per class (the check)")
    parser.add_argument("--source-epochs", type=int, default=8, help="epochs of the source training")
    parser.add_argument("--n-train-per-class", type=int, default=100, help="B training images per class")
    parser.add_argument("--n-test-per-class", type=int, default=100, help="B test images per class")
    parser.add_argument("--cv", type=int, default=3, help="CV folds choosing C")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init control, folds and fits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--speed-images", type=int, default=1000, help="CIFAR-10 images of the speed part (x10)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved speed repeats; the best is reported")
    parser.add_argument("--parts", nargs="+", default=["sweep", "speed"], choices=["sweep", "speed"])
    parser.add_argument("--quick", action="store_true", help=f"smoke run into OUT/quick: {QUICK}")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}: {SMOKE}")
    return parser


def manifest(dataset, path: Path) -> Path:
    """A CSV manifest (path,label,split) of `dataset`, for the run's config."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "path": dataset.sample_ids,
        "label": [dataset.class_names[label] for label in dataset.labels],
        "split": dataset.splits,
    }).to_csv(path, index=False)
    return path


def pretrain(full, animals, args, log) -> tuple[Path, dict]:
    """The ViT trained from scratch on A (or reused): its weights file and its held-out accuracy."""
    from layerprobe.pipeline.default_experiment import pretrain_source
    from layerprobe.pipeline.finetune import FinetuneConfig

    source = pick(full, animals, {"train": args.source_per_class, "test": args.source_test_per_class})
    options = FinetuneConfig(
        head_epochs=args.source_epochs, finetune_epochs=0, batch_size=args.batch_size,
        augmentation={"flip": "horizontal"}, dropout=0.0, val_fraction=0.0, early_stopping_patience=None,
        seed=0, head_init="glorot",
    )
    with Stopwatch() as watch:
        weights, facts = pretrain_source(
            MODEL, source, args.out / "source", name="cifar10-animals", options=options, input_size=args.input_size,
            model_kwargs=args.model_kwargs, dataset_digest=DIGEST, log=log,
        )
    return weights, {"A": " ".join(animals), "n_train": len(source.subset("train")), "epochs": args.source_epochs,
                     "accuracy": round(facts["accuracy"], 4), "n_test": facts["n_test"],
                     "chance": round(1 / len(animals), 3), "train_s": round(facts["fit_seconds"], 1),
                     "wall_s_this_run": round(watch.wall, 1), "weights": weights.name}


def sweep(full, weights: Path, args, log) -> list[dict]:
    """One layerprobe run on B: every block x pooling x (trained, random), logistic regression, multi-layer."""
    from layerprobe.pipeline.config import config_from_dict
    from layerprobe.pipeline.advice import advice_text
    from layerprobe.pipeline.run import run_experiment

    target = pick(full, list(VEHICLES), {"train": args.n_train_per_class, "test": args.n_test_per_class})
    raw = {
        "data": {"path": str(manifest(target, args.out / "target.csv")), "digest": DIGEST},
        "features": {"store": str(args.out / "store"), "input_size": args.input_size, "pooling": POOLINGS,
                     "batch_size": args.batch_size},
        "backbones": [
            {"model": MODEL, "model_kwargs": args.model_kwargs, "weights": str(weights), "layers": ["stages", "top"]},
            {"model": MODEL, "model_kwargs": args.model_kwargs, "weights": "none", "layers": ["stages", "top"],
             "seed": args.seed},
        ],
        "classifiers": {"names": ["logreg"], "cv": args.cv, "seed": args.seed, "screening": False,
                        "multi_layer": True, "grids": {"logreg": {"C": [1e-3, 1e-2, 1e-1, 1.0]}}},
        "output": {"dir": str(args.out / "run")},
    }
    config = config_from_dict(raw, REPO_DIR, source=f"benchmarks/{SCRIPT}.py")
    run = run_experiment(config, log=lambda line: log(f"  {line}"), progress=sys.stderr.isatty())
    rows = []
    for record in run.results.to_dict("records"):
        rows.append({
            "weights": "random init" if record["weights"] == "none" else "trained on A",
            "pooling": record["pooling"], "layer": record["layer"], "depth": record.get("depth"),
            "d": int(record["feature_dim"]), "classifier": record["classifier"],
            "cv_accuracy": round(float(record["cv_score"]), 4),
            "test_accuracy": round(float(record["test_accuracy"]), 4),
            "n_train": int(record["n_train"]), "n_test": int(record["n_test"]),
        })
    log(f"\nadvice: {advice_text(run.advice).text}")
    return rows


def depth_table(rows: list[dict]) -> list[dict]:
    """One row per layer: test accuracy of each (weights, pooling)."""
    table: dict[str, dict] = {}
    for row in rows:
        entry = table.setdefault(row["layer"], {"layer": row["layer"], "depth": row["depth"]})
        entry[f"{'trained' if row['weights'] == 'trained on A' else 'random'} {row['pooling']}"] = row["test_accuracy"]
    return sorted(table.values(), key=lambda entry: (str(entry["layer"]).startswith("multi"), entry["depth"] or 0))


def speed(args, log) -> list[dict]:
    """Extraction of every block into a fresh store against the bare forward pass, interleaved, best of each."""
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.store import FeatureStore

    if args.speed_images < 10 or args.speed_images % 10:
        raise SystemExit(f"error: --speed-images must be a positive multiple of 10. Received: {args.speed_images}")
    dataset = cifar_subset(args.cifar10, split="train", n_per_class=args.speed_images // 10)
    extractor = FeatureExtractor(MODEL, weights=None, model_kwargs=args.model_kwargs, input_size=args.input_size,
                                 layers="stages", pooling="cls+mean", batch_size=args.batch_size, seed=args.seed)
    model, batch = extractor.backbone.model, args.batch_size
    x = extractor.backbone.spec.preprocess_input(decode_in_memory(dataset, args.input_size))
    x = np.concatenate([x, np.zeros(((-len(x)) % batch, *x.shape[1:]), x.dtype)])  # fixed-size batches

    def bare():
        for start in range(0, len(x), batch):
            model.predict_on_batch(x[start:start + batch])

    def extract():
        store_dir = Path(tempfile.mkdtemp(prefix="speed-", dir=args.out))
        try:
            extractor.extract(dataset, FeatureStore(store_dir), progress=False)
        finally:
            shutil.rmtree(store_dir, ignore_errors=True)

    model.predict_on_batch(x[:batch])  # both traced outside the timing
    extract()
    runs: dict[str, list[Stopwatch]] = {"extract": [], "bare": []}
    for repeat in range(args.repeats):
        for name in (("extract", "bare") if repeat % 2 == 0 else ("bare", "extract")):
            with Stopwatch() as watch:
                (extract if name == "extract" else bare)()
            runs[name].append(watch)
            log(f"  repeat {repeat + 1} {name:8s} {watch.wall:7.2f} s wall {watch.cpu:7.2f} s CPU")
    best = {name: min(watches, key=lambda watch: watch.wall) for name, watches in runs.items()}
    n = len(dataset)
    return [{
        "model": extractor.backbone.architecture, "input_size": args.input_size, "n_images": n, "batch_size": batch,
        "layers": " ".join(extractor.layer_names), "pooling": "cls+mean", "repeats": args.repeats,
        "extract_img_s": round(n / best["extract"].wall, 1), "bare_img_s": round(n / best["bare"].wall, 1),
        "extract_over_bare": round(best["bare"].wall / best["extract"].wall, 3),
        "cpu_extract_over_bare": round(best["bare"].cpu / best["extract"].cpu, 3),
    }]


def main(argv=None) -> int:
    args = parse_smoke(build_parser(), argv, SMOKE)
    quiet_tensorflow()
    if args.quick:
        args.out = args.out / "quick"
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.smoke and args.cifar10 == CIFAR10_DIR:
        args.cifar10 = smoke_cifar10(args.out / "smoke-data", n_train=max(args.source_per_class, args.n_train_per_class,
                                                                         args.speed_images // 10),
                                     n_test=max(args.source_test_per_class, args.n_test_per_class))
    if not SHARED_DIR.is_dir() and args.cifar10 == CIFAR10_DIR:
        print(f"{SCRIPT}: skipped: {SHARED_DIR} (../shared beside the repository) is absent; pass --cifar10.")
        return 0
    require_path(args.cifar10, "The CIFAR-10 folder", "--cifar10", kind="dir")
    args.out.mkdir(parents=True, exist_ok=True)
    log = RunLog(SCRIPT, argv)
    started = time.perf_counter()
    results: dict = {"command": log.command, "machine": log.info, "model_kwargs": args.model_kwargs,
                     "input_size": args.input_size}
    if "speed" in args.parts:
        log(f"\n== speed: every block (cls+mean) of {args.speed_images} images, extraction vs bare forward pass")
        results["speed"] = speed(args, log)
        write_csv(results["speed"], args.out / "speed.csv")
        log(format_table(results["speed"], list(results["speed"][0]), **TABLE_STYLE))
    if "sweep" in args.parts:
        from layerprobe.features.inputs import from_directory

        full = from_directory(args.cifar10)
        animals = [name for name in full.class_names if name not in VEHICLES]
        log(f"\n== source: ViT {args.model_kwargs} trained from scratch on A = {animals}")
        weights, results["source"] = pretrain(full, animals, args, log)
        log(f"  held-out accuracy on A: {results['source']['accuracy']} (chance {results['source']['chance']})")
        log(f"\n== depth sweep on B = {list(VEHICLES)}: {args.n_train_per_class} train / "
            f"{args.n_test_per_class} test per class")
        results["rows"] = sweep(full, weights, args, log)
        write_csv(results["rows"], args.out / "depth.csv")
        table = depth_table(results["rows"])
        log("\n" + format_table(table, list(table[0]), markdown=True, **TABLE_STYLE))
    results["seconds"] = round(time.perf_counter() - started)
    write_json(results, args.out / "results.json")
    log.write(args.out / "log.txt")
    log(f"\nwrote {args.out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
