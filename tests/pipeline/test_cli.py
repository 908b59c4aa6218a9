"""The command line: which errors become one-line messages, --verbose, init, finetune --help, a quiet start."""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np
import pandas as pd
import pytest

import layerprobe.pipeline.config as config_module
from layerprobe.core.errors import ConfigError, InputError
from layerprobe.features.keys import STORAGE_DTYPES
from layerprobe.features.truncate import POOLINGS
from layerprobe.pipeline.cli import build_parser, comma_list, main, positive_int
from layerprobe.pipeline.config import config_from_dict, load_config
from layerprobe.pipeline.config.sections import SECTIONS
from layerprobe.pipeline.finetune import FinetuneConfig

NOISE = ("onednn", "cuda", "cpu_feature_guard", "cuinit")


IMAGES = {"train": {"red": 4, "green": 4}, "test": {"red": 2, "green": 2}}


def _tiny_config(tmp_path: Path, write_images) -> Path:
    images = write_images(tmp_path / "images", IMAGES)
    path = tmp_path / "run.toml"
    path.write_text(textwrap.dedent(f"""
        [data]
        path = "{images}"
        [features]
        store = "{tmp_path / 'store'}"
        input_size = 32
        [[backbones]]
        model = "VGG16"
        weights = "none"
        layers = ["block1_pool"]
        [classifiers]
        names = ["logreg"]
        cv = 2
        [output]
        dir = "{tmp_path / 'out'}"
    """), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bug", [ZeroDivisionError, ValueError, KeyError, FileExistsError])
def test_a_bug_inside_a_command_propagates_with_its_traceback(tmp_path, monkeypatch, capsys, bug):
    def broken(path):
        raise bug("a bug, not the user's input")

    monkeypatch.setattr(config_module, "load_config", broken)
    with pytest.raises(bug, match="a bug"):
        main(["run", str(tmp_path / "run.toml"), "--no-progress"])
    assert "error:" not in capsys.readouterr().err


def test_a_bug_shows_a_traceback_in_a_real_process(tmp_path):
    script = (
        "import sys, layerprobe.pipeline.config as config\n"
        "def broken(path):\n    return 1 / 0\n"
        "config.load_config = broken\n"
        "from layerprobe.pipeline.cli import main\n"
        f"sys.exit(main(['run', {str(tmp_path / 'run.toml')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ZeroDivisionError" in done.stderr
    assert "layerprobe run: error:" not in done.stderr


def test_a_config_error_is_a_message_and_exit_status_2(tmp_path, capsys, write_colour_images):
    path = _tiny_config(tmp_path, write_colour_images)
    path.write_text(path.read_text().replace("cv = 2", "cv = 2\nnmes = ['logreg']"), encoding="utf-8")
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"layerprobe run: error: The experiment config {path} has 1 problem(s); nothing was run.")
    assert "[classifiers] nmes: unknown key (did you mean 'names'?)" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("error", [ConfigError(["[data] path: a problem"], "run.toml"), InputError("bad images")])
def test_every_layerprobe_error_is_caught_by_main(tmp_path, monkeypatch, capsys, error):
    def refuse(path):
        raise error

    monkeypatch.setattr(config_module, "load_config", refuse)
    assert main(["run", str(tmp_path / "run.toml")]) == 2
    err = capsys.readouterr().err
    assert err == f"layerprobe run: error: {error}\n"


def test_a_missing_store_entry_argument_is_a_message(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    assert main(["store", "info", str(tmp_path / "store")]) == 2
    assert capsys.readouterr().err.startswith("layerprobe store: error: `layerprobe store info` needs an entry name")


# --------------------------------------------------------------------------- arguments


def test_comma_list_and_positive_int():
    assert comma_list(" a, b,,c ,") == ["a", "b", "c"]
    assert positive_int("3") == 3
    for text in ("0", "-2", "1.5", "x"):
        with pytest.raises(Exception, match="expected a positive integer"):
            positive_int(text)


def test_extract_choices_come_from_the_registries(capsys):
    parser = build_parser()
    base = ["extract", "--model", "VGG16", "--data", "images", "--store", "store"]
    for pooling in POOLINGS:
        assert parser.parse_args(base + ["--pooling", pooling]).pooling == pooling
    for dtype in STORAGE_DTYPES:
        assert parser.parse_args(base + ["--dtype", dtype]).dtype == dtype
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--pooling", "median"])
    assert "invalid choice: 'median'" in capsys.readouterr().err
    assert parser.parse_args(base + ["--layers", "block1_pool, block3_pool"]).layers == ["block1_pool", "block3_pool"]


@pytest.mark.parametrize("argv", [["--verbose", "init"], ["init", "--verbose"]])
def test_verbose_before_or_after_the_command_sets_layerprobe_verbose(tmp_path, monkeypatch, argv):
    monkeypatch.delenv("LAYERPROBE_VERBOSE", raising=False)
    assert main(argv + ["--full", "--config", str(tmp_path / "layerprobe.toml")]) == 0
    assert os.environ["LAYERPROBE_VERBOSE"] == "1"


def test_without_verbose_tensorflow_logging_is_muted(tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERPROBE_VERBOSE", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert main(["init", "--full", "--config", str(tmp_path / "layerprobe.toml")]) == 0
    assert "LAYERPROBE_VERBOSE" not in os.environ and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


# --------------------------------------------------------------------------- init and help


def _finetune_keys():
    return ["modes", *(field.name for field in dataclasses.fields(FinetuneConfig))]


def test_init_full_writes_a_config_with_every_key_that_loads(tmp_path, capsys, write_colour_images):
    assert main(["init", "--full", "--config", str(tmp_path / "project" / "layerprobe.toml")]) == 0
    path = tmp_path / "project" / "layerprobe.toml"
    assert str(path) in capsys.readouterr().out
    text = path.read_text(encoding="utf-8")
    for section, keys in SECTIONS.items():
        header = {"backbones": "[[backbones]]", "finetune": "# [finetune]", "cluster": "# [cluster]"}.get(
            section, f"[{section}]"
        )
        assert f"\n{header}\n" in text, section
        for key in _finetune_keys() if section == "finetune" else keys:
            assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), (section, key)

    images = write_colour_images(tmp_path / "images", IMAGES)
    path.write_text(re.sub(r'^path = ".*"$', f'path = "{images}"', text, count=1, flags=re.MULTILINE))
    config = load_config(path)
    assert config.data.path == images.resolve()
    assert config.features.store == (path.parent / "layerprobe-store").resolve()
    assert config.finetune is None and config.backbones[0].model == "VGG16"

    # Uncommented, the [finetune] section holds FinetuneConfig's defaults.
    finetune_lines = rf"^# (\[finetune\]$|(?:{'|'.join(_finetune_keys())}) = )"
    enabled = path.with_name("enabled.toml")
    before, marker, cluster_block = path.read_text().partition("\n# Optional: run extraction")  # [cluster] stays commented
    enabled.write_text(re.sub(finetune_lines, r"\1", before, flags=re.MULTILINE) + marker + cluster_block)
    config = load_config(enabled)
    assert config.finetune.modes == ("finetune",)
    assert config.finetune.training == FinetuneConfig()


def test_example_config_matches_the_parsers_defaults(tmp_path, write_colour_images):
    text = config_module.example_config()
    images = write_colour_images(tmp_path / "images", IMAGES)
    text = re.sub(r'^path = ".*"$', f'path = "{images}"', text, count=1, flags=re.MULTILINE)
    written = config_from_dict(tomllib.loads(text), tmp_path)
    defaults = config_from_dict({"data": {"path": str(images)}, "backbones": [{"model": "VGG16"}]}, tmp_path)
    assert written == dataclasses.replace(defaults, source=written.source)


def test_finetune_help_lists_every_finetune_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: layerprobe finetune" in out
    assert '  modes = ["finetune"]' in out
    for field in dataclasses.fields(FinetuneConfig):
        assert re.search(rf"^  {field.name} = ", out, re.MULTILINE), field.name
    assert f"  head_epochs = {FinetuneConfig().head_epochs}\n" in out


# --------------------------------------------------------------------------- quiet start


def test_run_without_a_gpu_prints_no_tensorflow_notices(tmp_path, write_colour_images):
    config = _tiny_config(tmp_path, write_colour_images)
    env = {name: value for name, value in os.environ.items()
           if name not in ("TF_CPP_MIN_LOG_LEVEL", "LAYERPROBE_VERBOSE")}
    done = subprocess.run(
        [sys.executable, "-m", "layerprobe.pipeline.cli", "run", str(config), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 rows: 1 fitted, 0 reused; 12 images through a backbone" in done.stdout  # Keras was used
    noise = [word for word in NOISE if word in done.stderr.lower()]
    assert not noise, done.stderr[-3000:]


# --------------------------------------------------------------------------- habits (issue 26 item 6)


def test_version(capsys):
    from layerprobe.core.versions import layerprobe_version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"layerprobe {layerprobe_version()}\n"


def test_extract_requires_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # before: VGG16, silently
        main(["extract", "--data", str(tmp_path), "--store", str(tmp_path / "store")])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def _subcommand(name):
    subparsers = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices[name]


@pytest.mark.parametrize("command, option", [
    ("extract", "--input-size"), ("extract", "--batch-size"), ("extract", "--pooling"), ("layers", "--input-size"),
])
def test_options_have_help(command, option):
    action = next(action for action in _subcommand(command)._actions if option in action.option_strings)
    assert action.help and len(action.help) > 20


@pytest.mark.parametrize("typo, suggestion", [("rnu", "run"), ("exprot", "export"), ("--verbose stroe", "store")])
def test_a_misspelled_command_gets_a_suggestion(capsys, typo, suggestion):
    with pytest.raises(SystemExit) as exit_info:
        main(typo.split())
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"layerprobe: error: unknown command {typo.split()[-1]!r}. Did you mean {suggestion!r}?" in err


def test_the_flatten_limit_is_an_option_and_its_error_says_so(tmp_path, capsys, write_colour_images):
    images = write_colour_images(tmp_path / "images", {"": {"a": 1, "b": 1}})
    argv = ["extract", "--model", "VGG16", "--weights", "none", "--input-size", "32", "--layers", "block1_pool",
            "--pooling", "flatten", "--data", str(images), "--store", str(tmp_path / "store"), "--no-progress"]
    assert main(argv + ["--max-flatten-dim", "1000"]) == 2  # block1_pool at 32 px: 16x16x64 = 16,384 values
    err = capsys.readouterr().err
    assert "more than max_flatten_dim=1,000" in err and "--max-flatten-dim N for `layerprobe extract`" in err
    assert main(argv + ["--max-flatten-dim", "16384"]) == 0


def test_store_ls_tells_entries_apart_and_info_shows_the_environment_once(tmp_path, capsys, write_colour_images):
    import keras

    images = write_colour_images(tmp_path / "images", {"": {"a": 2, "b": 2}})
    weights = tmp_path / "my_vgg16_notop.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    base = ["extract", "--model", "VGG16", "--input-size", "32", "--layers", "block1_pool", "--data", str(images),
            "--store", str(tmp_path / "store"), "--no-progress"]
    assert main(base + ["--weights", "none"]) == 0 and main(base + ["--weights", str(weights)]) == 0
    capsys.readouterr()
    assert main(["store", "ls", str(tmp_path / "store")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "backbone", "layer", "pooling", "px", "dataset", "images", "MB"]
    rows = lines[1:]
    assert len(rows) == 2 and all(len(line) <= 120 for line in lines)
    assert any("VGG16, random" in row for row in rows) and any("VGG16, my_vgg16_notop.weights.h5" in row for row in rows)
    assert main(["store", "ls", str(tmp_path / "store"), "--wide"]) == 0  # every column
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0].split(), lines[1:]
    assert header[:8] == ["entry", "backbone", "weights", "layer", "pooling", "input_size", "dataset", "n_samples"]
    assert "size_mb" in header and len(rows) == 2
    assert any("random init" in row for row in rows) and any("my_vgg16_notop.weights.h5" in row for row in rows)
    assert all(" images " in row and " 32 " in row for row in rows)
    entry = rows[0].split()[0]
    assert main(["store", "info", str(tmp_path / "store"), entry]) == 0
    info = capsys.readouterr().out
    assert info.count('"environment"') == 1 and '"environment_differences_from_now"' in info


def test_store_ls_without_a_store_lists_the_default_one_and_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["store", "ls"]) == 2
    assert "No feature store at layerprobe-store: the folder does not exist" in capsys.readouterr().err
    (tmp_path / "layerprobe-store").mkdir()
    assert main(["store", "ls"]) == 0 and capsys.readouterr().out == "(none)\n"
    assert main(["store", "info"]) == 2
    assert "needs the store and an entry" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["ls", "info", "rm"])
def test_store_commands_refuse_a_missing_folder(tmp_path, capsys, action):
    assert main(["store", action, str(tmp_path / "nowhere"), "entry"][: 3 if action == "ls" else 4]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"layerprobe store: error: No feature store at {tmp_path / 'nowhere'}: the folder does not "
                          f"exist.") and err.count("\n") == 1
    assert not (tmp_path / "nowhere").exists()


def test_run_json_and_convergence_warnings_said_once(tmp_path, capsys, write_colour_images):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    path = _tiny_config(tmp_path, write_colour_images)
    text = path.read_text().replace('names = ["logreg"]', 'names = ["linear_svm"]')
    path.write_text(text + '\n[classifiers.grids]\nlinear_svm = { C = [100.0], max_iter = [1] }\n', encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["run", str(path), "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout is the JSON alone; the log went to stderr
    assert document["encoding-type"] == "layerprobe-results" and len(document["rows"]) == 1
    row = document["rows"][0]
    assert row["classifier"] == "linear_svm" and row["convergence_warnings"] == 3  # 2 folds and the refit
    assert document["recommendation"]["mode"] and document["recommendation"]["evidence"]
    assert document["recommendation"]["row"]["layer"] == "block1_pool"
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == document
    assert "1 rows: 1 fitted, 0 reused" in captured.err
    notes = [line for line in captured.err.splitlines() if "ConvergenceWarning" in line]
    assert len(notes) == 1 and notes[0].startswith("note: 3 fit(s) stopped at their iteration limit")
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_run_experiment_is_quiet_by_default_and_logs_through_logging(tmp_path, capsys, caplog, write_colour_images):
    import logging

    from layerprobe.pipeline.run import run_experiment

    config = load_config(_tiny_config(tmp_path, write_colour_images))
    with caplog.at_level(logging.INFO, logger="layerprobe"):
        run_experiment(config, progress=False)
    assert capsys.readouterr().out == ""  # before: the whole report on stdout
    messages = [record.getMessage() for record in caplog.records if record.name == "layerprobe.run"]
    assert any("1 rows: 1 fitted" in message for message in messages)


def test_the_first_extraction_from_python_prints_no_tensorflow_notices(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, layerprobe
        data = layerprobe.from_arrays(np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 1]))
        extractor = layerprobe.FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32)
        extractor.extract(data, layerprobe.FeatureStore({str(tmp_path / "store")!r}), progress=False)
    """)
    env = {name: value for name, value in os.environ.items()
           if name not in ("TF_CPP_MIN_LOG_LEVEL", "LAYERPROBE_VERBOSE")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    noise = [word for word in NOISE if word in done.stderr.lower()]
    assert not noise, done.stderr[-3000:]  # before: cudart_stub, cpu_feature_guard and cuInit lines


def test_results_json_writes_the_advice_flags_keyed_by_row_label(tmp_path):
    from layerprobe.pipeline.advice import recommend
    from layerprobe.pipeline.run.results_json import results_document, write_results_json

    frame = pd.DataFrame({"layer": ["a", "b"], "depth": [0.5, 1.0], "classifier": "ridge", "cv_score": [0.9, 0.8],
                          "cv_se": 0.01, "test_accuracy": [0.9, 0.4], "n_test": 10})
    advice = recommend(frame, n_train=10, n_classes=2, smallest_class=5, test_majority_rate=0.5)
    document = results_document(frame, advice, source="x", data={}, files={})
    written = json.loads(write_results_json(tmp_path / "results.json", document).read_text())  # before: TypeError
    recommendation = written["recommendation"]
    assert recommendation["flags"] == {"1": "at or below the majority class (test 40.0% ≤ 50.0%)"}
    assert written["rows"][1] == {**written["rows"][1], "test_accuracy": 0.4}
    # The decision field by field, its words beside it; the rows it names by their labels.
    assert recommendation["mode"] == "frozen_intermediate" and recommendation["row"]["layer"] == "a"
    assert recommendation["curve"] == [0, 1] and recommendation["curve_classifier"] == "ridge"
    assert recommendation["summary"].count("\n") <= 2 and recommendation["summary"].startswith("**Recommendation")
    assert recommendation["evidence"] and recommendation["details"] and "table" not in recommendation
