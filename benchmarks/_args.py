"""Benchmark arguments: the data paths beside the repository, the common parser, path checks.

Every benchmark script takes its data paths as arguments, defaulting to
../shared beside the repo (`SHARED_DIR`), and stops with a clear message when
they are absent; it writes its CSV, PNG and log under `--out` (default
`benchmarks/out/<script>`). Comma-separated list options use
`layerprobe.pipeline.cli.comma_list`, the command line's own parser.

Every benchmark has a smallest mode (`--smoke`, or `--quick` where that is
already small), which tests/test_benchmarks.py runs, so that a change that
breaks a benchmark fails the test suite.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "BENCHMARKS_DIR",
    "CIFAR10_DIR",
    "REPO_DIR",
    "SHARED_DIR",
    "VGG16_WEIGHTS",
    "SMOKE_HELP",
    "base_parser",
    "parse_smoke",
    "quiet_tensorflow",
    "require_path",
]

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCHMARKS_DIR.parent
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
CIFAR10_DIR = SHARED_DIR / "datasets" / "cifar10"
VGG16_WEIGHTS = SHARED_DIR / "weights" / "vgg16_hed_bsds500_notop.weights.h5"


SMOKE_HELP = (
    "a check that the script runs, in seconds: generated images in CIFAR-10's layout, random weights, "
    "the fewest images (its figures mean nothing); options given beside it still apply"
)


def parse_smoke(parser: argparse.ArgumentParser, argv: Sequence[str] | None, smoke: Mapping) -> argparse.Namespace:
    """Parse `argv`; with `--smoke`, again with `smoke` as the defaults (options given still win)."""
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter (set before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def base_parser(script: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has.

    Args:
        script: The script's name without `.py`; the default output folder is
            `benchmarks/out/<script>`.
        description: First line of `--help`.
    """
    parser = argparse.ArgumentParser(
        prog=f"python benchmarks/{script}.py",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCHMARKS_DIR / "out" / script,
        help="folder for the CSV, PNG and JSON results (created if missing)",
    )
    return parser


def require_path(path: str | os.PathLike, what: str, option: str, *, kind: str = "any") -> Path:
    """Return `path` if it exists, else stop the script with a message saying how to fix it.

    Args:
        path: The path given (or defaulted).
        what: What the path should hold, e.g. "the CIFAR-10 image folder".
        option: The command-line option that sets it, e.g. "--cifar10".
        kind: "dir", "file" or "any".
    """
    path = Path(path)
    ok = {"dir": path.is_dir, "file": path.is_file, "any": path.exists}[kind]()
    if not ok:
        raise SystemExit(
            f"error: {what} was not found at {path}. The benchmarks read it from ../shared beside "
            f"the repository ({SHARED_DIR}); pass its location with {option} PATH. "
            f"Received: {option}={os.fspath(path)!r}"
        )
    return path
