"""The numerics environment: recorded everywhere, never mixed within an entry, checked on request.

A key names what is computed, not where: a complete entry is reused in another
environment (backend version, device, oneDNN...). But a resumed extraction in
another environment recomputes its partial chunks rather than mixing them in,
and `load(strict_environment=True)` refuses an entry from another environment.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from layerprobe.features.store import FeatureStore, StoreError

FIRST = "block1_pool"
ONEDNN = "TF_ENABLE_ONEDNN_OPTS"


def test_resume_in_another_environment_recomputes_instead_of_mixing(harness, tmp_path, monkeypatch):
    monkeypatch.setenv(ONEDNN, "1")
    store = FeatureStore(tmp_path)
    harness.interrupt(store, monkeypatch)  # chunks 0 and 1 of both layers committed under oneDNN on
    monkeypatch.setenv(ONEDNN, "0")
    log = []
    resumed = harness.extract(store, log=log.append)
    assert resumed.n_forward == 24  # before the fix: 8, and the entry mixed both settings
    for name in harness.layers:
        discarded = [line for line in log if line.startswith(f"discarded {name} all 2 chunk(s)")]
        assert discarded and f"another numerics environment (env.{ONEDNN} '1' -> '0')" in discarded[0], log
        assert store.load(harness.keys[name]).metadata["environment"]["env"][ONEDNN] == "0"
    harness.assert_matches_reference(store)


@pytest.mark.slow
def test_killed_run_resumed_in_another_environment_recomputes(harness, helpers, tmp_path, monkeypatch):
    kill = "on_batch(lambda: (wait_for_chunk_files(2), die()), 5)"
    process = harness.run_script(tmp_path, kill, env={ONEDNN: "1"})
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    fingerprint = json.loads((tmp_path / ".partial" / harness.keys[FIRST].digest / "fingerprint.json").read_text())
    assert fingerprint["environment"]["env"][ONEDNN] == "1"
    monkeypatch.setenv(ONEDNN, "0")
    resumed = harness.extract(FeatureStore(tmp_path))
    assert resumed.n_forward == 24
    harness.assert_matches_reference(FeatureStore(tmp_path))


def test_every_entry_records_its_environment(harness, tmp_path):
    from layerprobe.features.environment import ENVIRONMENT_FLAGS

    store = FeatureStore(tmp_path)
    harness.extract(store)
    for key in harness.keys.values():
        environment = store.load(key).metadata["environment"]
        assert environment["backend"] == "tensorflow" and environment["backend_version"]
        assert environment["keras_version"] and environment["pillow_version"] and environment["numpy_version"]
        assert environment["device"] == "cpu" or environment["device"].startswith("gpu:")
        assert set(environment["env"]) == set(ENVIRONMENT_FLAGS)
        assert environment["keras_dtype_policy"] == "float32" and "tf_tensor_float_32" in environment
        assert store.load(key).metadata["compute_dtype"] == "float32"


def test_complete_entry_is_reused_in_another_environment_unless_strict(harness, tmp_path, monkeypatch):
    monkeypatch.delenv(ONEDNN, raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    store = FeatureStore(tmp_path)
    harness.extract(store)
    store.load(harness.keys[FIRST], strict_environment=True)  # same environment: fine
    monkeypatch.setenv(ONEDNN, "0")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    report = harness.extract(store)
    assert report.cached == harness.layers and report.n_forward == 0  # not a cache miss
    harness.assert_matches_reference(store)
    with pytest.raises(StoreError, match="another numerics environment") as info:
        store.load(harness.keys[FIRST], strict_environment=True)
    message = str(info.value)
    # unset, the flag is recorded as the imported TensorFlow runs (conftest: oneDNN on)
    assert f"env.{ONEDNN}: '1' then, '0' now" in message and "env.XLA_FLAGS" in message
    assert "strict_environment=False" in message and "store rm" in message


def test_entry_without_a_recorded_environment_is_refused_only_when_strict(tmp_path):
    import numpy as np

    from layerprobe.features.keys import FeatureKey

    store = FeatureStore(tmp_path)
    key = FeatureKey("VGG16", "sha256:w", "block1_pool", "avg", 32, "p", "float32", "float32", "d" * 64)
    partial = store.partial(key, {"chunk_size": 4})  # an older writer: no environment in the fingerprint
    partial.write_chunk(0, np.zeros((4, 2), "float32"), np.arange(4), [])
    store.commit(key, partial, 1, sample_ids=list("abcd"), labels=[0] * 4, splits=["all"] * 4, class_names=["a"], metadata={})
    assert "environment" not in store.load(key).metadata
    with pytest.raises(StoreError, match="records no numerics environment"):
        store.load(key, strict_environment=True)


def test_environment_differences_lists_fields_and_ignores_what_cannot_be_told():
    from layerprobe.features.environment import environment_differences

    recorded = {"backend": "tensorflow", "device": "gpu:A100", "env": {ONEDNN: "1", "XLA_FLAGS": None}}
    current = {"backend": "jax", "device": None, "env": {ONEDNN: "1", "XLA_FLAGS": "--x"}}
    assert environment_differences(recorded, current) == {
        "backend": ("tensorflow", "jax"),
        "env.XLA_FLAGS": (None, "--x"),
    }


def test_capturing_the_environment_imports_no_backend(helpers):
    from layerprobe.features.environment import environment_differences, numerics_environment

    process = helpers.run_python(
        "import json, sys\n"
        "from layerprobe.features.environment import numerics_environment\n"
        "environment = numerics_environment()\n"
        "print(json.dumps([environment, sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules)]))\n"
    )
    assert process.returncode == 0, process.stderr[-3000:]
    environment, imported = json.loads(process.stdout.strip().splitlines()[-1])
    assert imported == []
    assert environment["device"] is None and environment["backend_version"] and environment["keras_version"]
    assert environment_differences(numerics_environment(), environment) == {}  # what it cannot tell is no difference


def test_store_info_shows_the_environment(harness, tmp_path, capsys, monkeypatch):
    from layerprobe.pipeline.cli import main

    monkeypatch.delenv(ONEDNN, raising=False)
    store = FeatureStore(tmp_path)
    harness.extract(store)
    monkeypatch.setenv(ONEDNN, "0")
    assert main(["store", "info", str(tmp_path), harness.keys[FIRST].entry_name]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["environment"]["backend"] == "tensorflow"
    assert shown["environment_differences_from_now"] == {f"env.{ONEDNN}": {"then": "1", "now": "0"}}


def _onednn_in_fresh_process(code: str, user_setting: str | None) -> tuple[str, str]:
    """(TF_ENABLE_ONEDNN_OPTS, whether TensorFlow runs oneDNN) after `code` in a new interpreter."""
    env = {name: value for name, value in os.environ.items() if name != ONEDNN}
    if user_setting is not None:
        env[ONEDNN] = user_setting
    report = (
        "\nimport os\nfrom tensorflow.python.util import _pywrap_util_port"
        f"\nprint(os.environ.get({ONEDNN!r}), _pywrap_util_port.IsMklEnabled())"
    )
    done = subprocess.run([sys.executable, "-c", code + report], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    flag, enabled = done.stdout.split()[-2:]
    return flag, enabled


@pytest.mark.parametrize(("user_setting", "expected"), [(None, ("1", "True")), ("0", ("0", "False"))])
def test_tensorflow_runs_onednn_unless_the_user_says_otherwise(user_setting, expected):
    start = "from layerprobe.features.backend import import_keras_quietly\nimport_keras_quietly()"
    assert _onednn_in_fresh_process(start, user_setting) == expected


def test_tensorflow_imported_before_layerprobe_is_recorded_as_it_runs():
    # TensorFlow read the (unset) flag at import; the recorded flag must say what it chose,
    # so that the environment is truthful and dask workers started later compute like it.
    start = "import tensorflow\nfrom layerprobe.features.environment import numerics_environment\nnumerics_environment()"
    flag, enabled = _onednn_in_fresh_process(start, None)
    assert flag == ("1" if enabled == "True" else "0")
