"""Every benchmark runs in its smallest mode and prints its summary: a change that breaks one fails here.

Each script runs in a fresh process, as a user runs it, in its smallest mode: `--smoke`
(generated images in CIFAR-10's layout, random weights, the fewest images: no ../shared
needed), or `--quick` where that is already small. Its outputs go under `tmp_path`. The
BLAS and OpenMP pools are held to one thread: on a loaded 2-core machine two OpenBLAS
threads made classifier_speed's linear SVM fit on 100 x 512 features far slower
(benchmarks/RESULTS.md, "BLAS threads that fit the cores"), and a smoke run measures nothing.

What each run must print is its summary line or table header, in the form RESULTS.md
quotes. The full `device_check.sh --smoke` (backend tests and finetuning included) is
tests/test_device_check.py, marked slow; scale_out's cluster workers each import Keras,
so it is slow too.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

# script -> (arguments, patterns its output must match, one line each; the last pattern is the last line)
CASES = {
    "classifier_speed": (
        ["--smoke"],
        [r"fit_classifier seconds, one-candidate grid, cv=2 \(2 fold fits \+ 1 refit\):",
         r"\s*layer\s+d\s+classifier\s+n_samples\s+candidate\s+fit_classifier_s\s+cv_fold_fit_s\s+refit_all_s\s+"
         r"vs_logreg\s+cv_accuracy",
         r"wrote .+"],
    ),
    "depth_sweep": (
        ["cifar10", "--smoke"],
        [r"test accuracy by depth \(40 train / 20 test, 32 px, \d+ images through a backbone, \d+ fits, \d+ reused, "
         r"\d+ s\):",
         r"\| stage \| layer \| d \| pretrained logreg \| random logreg \|",
         r"wrote .+"],
    ),
    "device_check": (
        ["--smoke", "--skip", "tests,finetune"],
        [r"## Extraction images/s \(5 stage layers, avg-pooled, random weights\)",
         r"\| backend \| model \| precision \| batch \| device limit \| host limit \| layerprobe \(files\) \| "
         r"layerprobe \(arrays\) \| naive \|.*",
         r"\| stage5_pool \| 32 \| .+ \|"],
    ),
    "extraction_speed": (
        ["--smoke"],
        [r"images/s \(best of 1; wall clock\):",
         r"model\s+layerprobe_img_s\s+layerprobe_first_img_s\s+naive_img_s\s+limit_img_s\s+cache_hit_s\s+.*",
         r"VGG16(\s+[\d.]+){9}",
         r"wrote .+"],
    ),
    "pixel_cache": (
        ["--quick", "--n-images", "12", "--size", "64", "--repeats", "1"],
        [r"\| pass \| wall s \| CPU s \| img/s \|",
         r"pixel cache: reading back is \d+\.\d× faster than decoding again \(fill costs [+-]\d+% over a decode\)"],
    ),
    "pipeline_overlap": (
        ["--quick"],
        [r"overlap: \d\.\d\d of the simulated device at \d+ img/s"],
    ),
    "probe_speed": (
        ["--smoke"],
        [r"\| screening sweep \(s\) \| grid sweep \(s\) \| \(a\) screening speed-up \| end to end \(s\) \| "
         r"\(b\) end-to-end speed-up \|",
         r"- multi-layer ridge probe: multi:\S+ LOO \d\.\d{4}, test \d\.\d{4}, \d+\.\d s",
         r"screening speed-up: \d+\.\d× \(same best layer: (yes|no)\)"],
    ),
    "scale": (
        ["--smoke"],
        [r"scale: 600 images in \d+ min; time per image \d+\.\d\d× and peak RSS \d+\.\d\d× the 200 run"],
    ),
    "scale_out": (
        ["--quick", "--images", "32"],
        [r"2 workers identical: yes; throughput vs in-process: \d+\.\d\d×"],
    ),
    "transfer_matrix": (
        ["--smoke"],
        [r"matrix \(the advice as shipped: finetuning from \d+ per class, ties within \d+ of the best row's SE\):",
         r"agreement on the CIFAR-10 halves .*per candidate tie width \(n_se\) and finetuning threshold .*",
         r"total: \d+ s wall, \d+ s CPU \(this process, all threads\); load average at the end .+"],
    ),
    "vit_depth_sweep": (
        ["--smoke"],
        [r"\| layer \| depth \| trained cls \| trained mean \| trained cls\+mean \| random cls \| random mean \| "
         r"random cls\+mean \|",
         r"\| multi:\S+ \| - \|.+",
         r"wrote .+ \(\d+ s\)"],
    ),
}
SLOW = {"scale_out"}
NEEDS_SHARED = {"scale"}  # CIFAR-10's JPEGs and the Lite0 file from ../shared: skipped where it is absent


def _run(script: str, arguments: list[str], out: Path) -> subprocess.CompletedProcess:
    one_thread = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**os.environ, **one_thread, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
           "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg", "TMPDIR": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), *arguments, "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def test_every_benchmark_script_has_a_smallest_mode_here():
    scripts = sorted(path.stem for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_"))
    assert scripts == sorted(CASES)


@pytest.mark.parametrize(
    "script", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in CASES]
)
def test_smallest_mode_runs_and_prints_its_summary(script, tmp_path, request):
    if script in NEEDS_SHARED:
        request.getfixturevalue("shared_dir")  # skips where ../shared is absent
    arguments, patterns = CASES[script]
    done = _run(script, arguments, tmp_path / "out")
    output = f"{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    for pattern in patterns:
        assert any(re.fullmatch(pattern, line) for line in lines), f"no line matches {pattern!r}:\n{output}"
    assert re.fullmatch(patterns[-1], lines[-1]), f"the last line does not match {patterns[-1]!r}:\n{output}"
