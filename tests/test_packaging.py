"""The distribution provides one import name, `layerprobe`, whose import is light."""

import importlib.metadata
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import layerprobe

REPO = Path(__file__).resolve().parents[1]


def test_installed_distribution_has_exactly_one_top_level_name():
    distribution = importlib.metadata.distribution("layerprobe")
    top_level = set((distribution.read_text("top_level.txt") or "").split())
    assert top_level == {"layerprobe"}
    providers = importlib.metadata.packages_distributions()
    assert {name for name, dists in providers.items() if "layerprobe" in dists} == {"layerprobe"}


def test_setup_cfg_lists_every_package_of_the_tree():
    """A subpackage missing from setup.cfg's `packages` is left out of a regular install (the wheel)."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg", encoding="utf-8")
    listed = set(parser["options"]["packages"].split())
    in_tree = {"layerprobe"} | {
        ".".join(("layerprobe", *init.parent.relative_to(REPO).parts))
        for top in ("core", "features", "pipeline") for init in (REPO / top).rglob("__init__.py")
    }
    assert listed == in_tree


@pytest.mark.slow
def test_a_regular_wheel_holds_only_the_layerprobe_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("layerprobe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"layerprobe"}
    assert {"layerprobe/__init__.py", "layerprobe/features/store/__init__.py",
            "layerprobe/pipeline/cli.py", "layerprobe/pipeline/finetune/__init__.py"} <= set(names)
    assert not any(name.startswith(("layerprobe/tests", "layerprobe/benchmarks", "layerprobe/.venv")) for name in names)


def test_import_from_another_directory_gives_the_version_without_keras(tmp_path):
    script = (
        "import json, sys, layerprobe; "
        "store = layerprobe.FeatureStore; error = layerprobe.StoreError; fit = layerprobe.fit_classifier; "
        "print(json.dumps({'version': layerprobe.__version__, "
        "'heavy': sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules)}))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == importlib.metadata.version("layerprobe")
    assert result["heavy"] == []


def test_every_public_name_resolves():
    for name in layerprobe.__all__:
        assert getattr(layerprobe, name) is not None, name
    assert issubclass(layerprobe.CorruptEntryError, layerprobe.StoreError)
    assert issubclass(layerprobe.StoreError, layerprobe.LayerprobeError)
    assert issubclass(layerprobe.ConfigError, ValueError)
    with pytest.raises(AttributeError, match="no attribute"):
        layerprobe.not_a_name


def test_a_missing_backend_is_a_one_line_error_naming_the_extra(tmp_path):
    script = (
        "import sys; sys.modules['torch'] = None\n"  # an import of torch now fails as if it were not installed
        "from layerprobe.pipeline.cli import main\n"
        "sys.exit(main(['layers', 'VGG16', '--input-size', '32']))\n"
    )
    env = {**__import__("os").environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pip install 'layerprobe[torch]'" in done.stderr and "Traceback" not in done.stderr
