"""The embedded default reaches the same conclusion on another Keras backend (JAX) as on TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

# What the default run concludes under TensorFlow (benchmarks/RESULTS.md, "The embedded default on three backends").
TENSORFLOW_MODE, TENSORFLOW_LAYER = "frozen_intermediate", "block_13_expand_relu"

_RUN = """
import json, sys
from layerprobe.pipeline.default_experiment import run_default
result = run_default(sys.argv[1], store=sys.argv[2], log=lambda line: None, progress=False)
from layerprobe.pipeline.advice import advice_text
advice = result.advice
print(json.dumps({"mode": advice.mode, "layer": advice.row["layer"], "worth": advice.worth_transferring,
                  "text": advice_text(advice).text + advice_text(advice).details_text}))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_the_default_experiment_reaches_the_tensorflow_conclusion_under_jax(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(tmp_path / "out"), str(tmp_path / "store")],
        env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    advice = json.loads(done.stdout.strip().splitlines()[-1])
    assert (advice["mode"], advice["layer"]) == (TENSORFLOW_MODE, TENSORFLOW_LAYER)
    assert advice["worth"] is True and "the pretrained weights help" in advice["text"]
