"""Bad `layerprobe run` inputs: every one is a message and a non-zero exit, never a traceback.

Config problems and unusable class layouts are found before any work: no
store, no output folder. Problems that only show in the features (NaN or inf,
a class emptied by unreadable images) stop the run before any classifier is
fitted on that layer. tests/pipeline/test_config.py checks the config
messages in detail; here they go through the command line.
"""

import numpy as np
import pytest

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import open_dataset
from layerprobe.pipeline.cli import main

SPLITS = {"train": {"red": 4, "green": 4, "blue": 4}, "test": {"red": 2, "green": 2, "blue": 2}}


def _run(config, capsys):
    code = main(["run", str(config), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _nothing_written(root):
    return not (root / "store").exists() and not (root / "out").exists()


# section -> keys, then what the message must say: the offending key, and the suggestion
BAD_CONFIGS = {
    "unknown-key": (
        {"classifiers": {"name": ["logreg"]}},
        ["[classifiers] name: unknown key (did you mean 'names'?)"],
    ),
    "unknown-classifier": (
        {"classifiers": {"names": ["logreg", "linear_svn"]}},
        ["[classifiers] names: unknown name(s) ['linear_svn'] (did you mean 'linear_svm'?)"],
    ),
    "missing-path": (
        {"data": {"path": "imgs"}},
        ["[data] path: ", "imgs does not exist (relative paths are relative to"],
    ),
    "wrong-type": (
        {"features": {"batch_size": "8"}},
        ["[features] batch_size: expected \"auto\" or an integer >= 1. Received: '8'"],
    ),
    "layer-of-another-family": (
        {"backbones": {"model": "ResNet50", "layers": ["block5_pool"]}},
        ["[[backbones]] #1 (ResNet50): ResNet50 has no layer 'block5_pool'. Closest valid names: ",
         "`layerprobe layers ResNet50` lists them all. Received: layers='block5_pool'"],
    ),
    "unknown-model-kwarg": (
        {"backbones": {"model": "MobileNetV2", "model_kwargs": {"alpah": 0.35}, "layers": ["top"]}},
        ["[[backbones]] #1 (MobileNetV2): MobileNetV2 does not accept these model_kwargs: ",
         "unexpected keyword argument 'alpah'", "Received: model_kwargs={'alpah': 0.35}"],
    ),
    "input-size-below-minimum": (
        {"features": {"input_size": 31}},
        ["[features] input_size: below the smallest input some backbones accept (VGG16 32 pixels); "
         "set input_size = 32 or more", "Received: 31"],
    ),
    # Round 4: reported under [features] input_size, with the advice input_size=0.
    "batch-size-no-memory-holds": (
        {"features": {"batch_size": 10**12}},
        ["[features] batch_size: decoding 1000000000000 images of 32x32 pixels at once (batch_size) needs at least ",
         "fits at input_size=32 (the model needs more on top). Received: 1000000000000"],
    ),
    # Round 4: impossible grid values failed in scikit-learn's fit, after the extraction, with some rows saved.
    "impossible-grid-value": (
        {"classifiers": {"grids": {"logreg": {"C": [-1.0]}, "sgd": {"alpha": [1e-3]}}}},
        ["[classifiers.grids] logreg: The 'C' parameter of LogisticRegression must be a float in the range "
         "(0.0, inf]. Got -1.0 instead."],
    ),
    "zero-grid-value": (
        {"classifiers": {"grids": {"logreg": {"C": [0.1, 0]}}}},
        ["[classifiers.grids] logreg: The 'C' parameter of LogisticRegression must be a float in the range "
         "(0.0, inf]. Got 0 instead."],
    ),
    "impossible-ridge-alphas": (
        {"classifiers": {"names": ["ridge"], "grids": {"ridge": {"alphas": [1.0, -1.0]}}}},
        ["[classifiers.grids] ridge: The 'alphas' parameter of RidgeProbeCV must be a non-empty 1-D sequence of "
         "finite positive floats", "Got [1.0, -1.0] instead."],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_named_with_its_key_and_a_fix_before_any_work(helpers, tmp_path, capsys, case):
    sections, expected = BAD_CONFIGS[case]
    helpers.write_images(tmp_path / "images", SPLITS)
    code, _, err = _run(helpers.write_experiment(tmp_path / "run.toml", **sections), capsys)
    assert code == 2
    assert err.startswith(f"layerprobe run: error: The experiment config {tmp_path / 'run.toml'} has 1 problem(s); "
                          "nothing was run.")
    for text in expected:
        assert text in err
    assert "Traceback" not in err and _nothing_written(tmp_path)


def test_a_nan_grid_value_is_refused_before_any_work(helpers, tmp_path, capsys):
    helpers.write_images(tmp_path / "images", SPLITS)
    config = helpers.write_experiment(tmp_path / "run.toml", classifiers={"grids": {"logreg": {"C": [1.0]}}})
    config.write_text(config.read_text().replace("C = [1.0]", "C = [nan]"))
    code, _, err = _run(config, capsys)
    assert code == 2 and "[classifiers.grids] logreg: The 'C' parameter of LogisticRegression must be a float in " \
                          "the range (0.0, inf]. Got nan instead." in err
    assert _nothing_written(tmp_path)


def test_an_entry_removed_while_the_run_fits_is_said_to_be_removed_not_never_extracted(helpers, tmp_path, capsys,
                                                                                      monkeypatch):
    from layerprobe.pipeline.run.records import RunRows

    helpers.write_images(tmp_path / "images", SPLITS)
    config = helpers.write_experiment(tmp_path / "run.toml", classifiers={"n_jobs": -1})  # one row at a time
    add, removed = RunRows.add, []

    def add_then_remove_the_other_layer(rows, row, **kwargs):
        add(rows, row, **kwargs)
        if not removed:  # `layerprobe store rm` of block2_pool's entry while block1_pool's rows are fitted
            entry = next(path.stem for path in (tmp_path / "store").glob("VGG16.block2_pool.*.h5"))
            removed.append(main(["store", "rm", str(tmp_path / "store"), entry]))

    monkeypatch.setattr(RunRows, "add", add_then_remove_the_other_layer)
    code, _, err = _run(config, capsys)
    assert removed == [0] and code == 2
    # Before the fix: "... block2_pool (avg) in STORE: it was never extracted."
    assert err.startswith("layerprobe run: error: The features of layer block2_pool (store entry VGG16.block2_pool.")
    assert f"were removed from the store {tmp_path / 'store'} while this run used them" in err
    assert "never extracted" not in err and "Traceback" not in err


BAD_CLASSES = {
    "single-class": (
        {"train": {"only": 4}, "test": {"only": 2}},
        "[data] path: in {images}, there is a single class ['only']; a classifier needs at least 2. "
        "Add a class folder",
    ),
    "class-missing-from-the-train-split": (
        {"train": {"red": 4, "green": 4}, "test": {"red": 2, "green": 2, "blue": 2}},
        "[data] path: in {images}, class(es) ['blue'] have fewer than 2 images in the train split 'train'; "
        "fitting and cross-validating a classifier needs at least 2 per class. Add training images of them, "
        "or remove them from the data. Received: training images {{'blue': 0}}",
    ),
    "class-with-one-image-in-a-single-split": (
        {"": {"red": 4, "green": 1}},
        "[data] test_size: the data at {images} has a single split, and no stratified train/test split of it "
        "can be made. Add images, change test_size, or split the data yourself (train/ and test/ folders): "
        "class(es) ['green'] have fewer than 2 images, one for each split. Received: {{'green': 1}}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CLASSES))
def test_classes_that_cannot_be_learned_are_refused_before_any_work(helpers, tmp_path, capsys, case):
    counts, expected = BAD_CLASSES[case]
    helpers.write_images(tmp_path / "images", counts)
    code, _, err = _run(helpers.write_experiment(tmp_path / "run.toml"), capsys)
    assert code == 2
    assert expected.format(images=tmp_path / "images") in err
    assert "Traceback" not in err and _nothing_written(tmp_path)


def test_empty_class_folder_is_refused_before_any_work(helpers, tmp_path, capsys):
    helpers.write_images(tmp_path / "images", SPLITS)
    (tmp_path / "images" / "train" / "grey").mkdir()
    code, _, err = _run(helpers.write_experiment(tmp_path / "run.toml"), capsys)
    assert code == 2
    assert err.startswith("layerprobe run: error: Class folder(s) ['grey'] hold no image files")
    assert "Remove these folders or add images to them" in err and _nothing_written(tmp_path)


def test_class_missing_from_the_test_split_is_a_warning_and_the_run_finishes(helpers, tmp_path, capsys):
    helpers.write_images(tmp_path / "images", {**SPLITS, "test": {"red": 2, "green": 2}})
    config = helpers.write_experiment(tmp_path / "run.toml", backbones={"layers": ["block1_pool"]},
                                      classifiers={"names": ["logreg"]})
    code, out, _ = _run(config, capsys)
    assert code == 0
    warning = ("class(es) ['blue'] have no images in the test split 'test': the test scores measure the "
               "other classes only")
    assert f"warning: {warning}" in out
    assert warning in (tmp_path / "out" / "summary.md").read_text()


def test_class_emptied_by_unreadable_images_stops_before_fitting(helpers, tmp_path, capsys):
    helpers.write_images(tmp_path / "images", SPLITS)
    for path in sorted((tmp_path / "images" / "train" / "blue").iterdir())[1:]:
        path.write_bytes(b"not a png")  # 1 readable training image of blue is left
    code, _, err = _run(helpers.write_experiment(tmp_path / "run.toml", backbones={"layers": ["block1_pool"]}), capsys)
    assert code == 2
    assert "Unreadable images were left out of layer block1_pool (store entry VGG16.block1_pool.avg." in err
    assert "`layerprobe store info " in err
    assert "class(es) ['blue'] have fewer than 2 images in the train split 'train'" in err
    assert "Received: training images {'blue': 1}" in err
    assert not (tmp_path / "out" / "models").exists()


def test_nan_in_test_features_is_found_before_fitting_and_names_the_layer_and_sample(helpers, tmp_path, capsys,
                                                                                     monkeypatch):
    images = helpers.write_images(tmp_path / "images", SPLITS)
    dataset = open_dataset(images)
    last = len(dataset) - 1
    assert dataset.splits[last] == "test"  # the training features are clean: only the test split has NaN
    original = FeatureExtractor.iter_features

    def features_with_nan(self, *args, **kwargs):
        for chunk, features in original(self, *args, **kwargs):
            rows = np.flatnonzero(chunk.sample_indices == last)
            if rows.size:
                features[1][rows[0], 3] = np.nan  # one value of block2_pool for the last image
            yield chunk, features

    monkeypatch.setattr(FeatureExtractor, "iter_features", features_with_nan)
    code, out, err = _run(helpers.write_experiment(tmp_path / "run.toml"), capsys)
    assert code == 2
    assert "fitted block1_pool / sgd" in out and "block2_pool /" not in out  # block1_pool is fine
    assert "layer block2_pool (store entry VGG16.block2_pool.avg." in err
    assert "split 'test', contains 1 NaN or inf values in 1 row(s) and 1 column(s) (first bad samples: " \
           f"[{dataset.sample_ids[last]!r}])" in err
    assert "re-extract with float32 storage or other weights" in err
    assert not list((tmp_path / "out" / "models").glob("VGG16.block2_pool*"))


def test_run_and_extract_with_file_and_class_names_that_are_not_utf8_finish_and_rerun(helpers, tmp_path, capsys):
    import os

    images = helpers.write_images(tmp_path / "images", SPLITS)
    for split in ("train", "test"):  # a class folder and its files named in Latin-1 bytes, not UTF-8
        folder = os.fsencode(images / split / "green")
        renamed = os.path.join(os.fsencode(images / split), b"caf\xe9")
        os.rename(folder, renamed)
        for name in os.listdir(renamed):
            os.rename(os.path.join(renamed, name), os.path.join(renamed, b"\xe9t\xe9-" + name))
    open(os.path.join(os.fsencode(images / "test" / "red"), b"\xff.png"), "wb").close()  # skipped
    config = helpers.write_experiment(tmp_path / "run.toml", backbones={"layers": ["block1_pool"]},
                                      classifiers={"names": ["logreg"]})
    code, out, err = _run(config, capsys)  # before the fix: UnicodeEncodeError at the commit, on every rerun
    assert code == 0, err
    predictions = next((tmp_path / "out" / "models").rglob("logreg.predictions.csv")).read_bytes()
    assert b"/test/caf\xe9/\xe9t\xe9-0.png,caf\xe9,caf\xe9," in predictions  # the names' own bytes
    assert b"/test/red/\xff.png`: empty file" in (tmp_path / "out" / "summary.md").read_bytes()
    code, out, err = _run(config, capsys)
    assert code == 0 and "1 rows: 0 fitted, 1 reused; 0 images through a backbone" in out

    code = main(["extract", "--model", "VGG16", "--weights", "none", "--layers", "block1_pool", "--input-size", "32",
                 "--data", str(images), "--store", str(tmp_path / "store"), "--no-progress"])
    out = capsys.readouterr().out  # a strict UTF-8 stream: the name is printed escaped, not a crash
    assert code == 0 and "cached   block1_pool" in out and "/test/red/\\udcff.png: empty file" in out


def test_a_latin1_csv_is_refused_with_the_config_key_and_read_with_it(helpers, tmp_path, capsys):
    helpers.write_images(tmp_path / "images", {"": {"red": 6, "green": 6}})
    rows = [f"images/{name}/{i}.png,{'rouge' if name == 'red' else 'vert clair é'}"
            for name in ("red", "green") for i in range(6)]
    (tmp_path / "labels.csv").write_bytes(("path,label\n" + "\n".join(rows) + "\n").encode("latin-1"))
    config = helpers.write_experiment(tmp_path / "run.toml", data={"path": "labels.csv"},
                                      backbones={"layers": ["block1_pool"]}, classifiers={"names": ["logreg"]})
    code, _, err = _run(config, capsys)  # before the fix: a UnicodeDecodeError traceback
    assert code == 2 and "Traceback" not in err and _nothing_written(tmp_path)
    assert "is not utf-8 text: byte 0xe9 in line 8" in err and "[data] encoding" in err
    config = helpers.write_experiment(tmp_path / "run.toml", data={"path": "labels.csv", "encoding": "latin-1"},
                                      backbones={"layers": ["block1_pool"]}, classifiers={"names": ["logreg"]})
    code, out, err = _run(config, capsys)
    assert code == 0, err
    code = main(["extract", "--model", "VGG16", "--weights", "none", "--layers", "block1_pool", "--input-size",
                 "32", "--data", str(tmp_path / "labels.csv"), "--encoding", "latin-1", "--store",
                 str(tmp_path / "store"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "12 images, 2 classes" in out and "computed block1_pool" in out
    config = helpers.write_experiment(tmp_path / "run.toml", data={"path": "labels.csv", "encoding": "latin-9x"})
    code, _, err = _run(config, capsys)
    assert code == 2 and "[data] encoding: unknown text encoding (a Python codec name such as 'utf-8', " in err


def test_an_input_size_no_memory_holds_is_a_config_problem_before_any_work(helpers, tmp_path, capsys):
    helpers.write_images(tmp_path / "images", SPLITS)
    code, _, err = _run(helpers.write_experiment(tmp_path / "run.toml", features={"input_size": 100_000}), capsys)
    assert code == 2 and "Traceback" not in err  # before the fix: MemoryError after .plans and out/ were written
    assert "has 1 problem(s); nothing was run" in err
    assert ("[features] input_size: decoding 8 images of 100000x100000 pixels at once (batch_size) needs at "
            "least 224 GiB") in err
    assert "at most input_size=" in err and "Received: 100000" in err
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("how", ["config", "--out"])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(helpers, tmp_path, capsys, how):
    helpers.write_images(tmp_path / "images", SPLITS)
    taken = tmp_path / "results.txt"
    taken.write_text("someone's notes")
    if how == "config":
        config = helpers.write_experiment(tmp_path / "run.toml", output={"dir": "results.txt"})
        code = main(["run", str(config), "--no-progress"])
    else:
        code = main(["run", str(helpers.write_experiment(tmp_path / "run.toml")), "--out", str(taken), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err  # before the fix: FileExistsError after .plans was written
    assert err.startswith(f"layerprobe run: error: The output folder {taken} is a file, not a folder")
    assert "[output] dir" in err and "--out" in err and "Nothing was run" in err
    assert taken.read_text() == "someone's notes" and not (tmp_path / "store").exists()


def test_finetune_takes_no_progress_like_run(helpers, tmp_path, capsys):
    helpers.write_images(tmp_path / "images", SPLITS)
    config = helpers.write_experiment(tmp_path / "run.toml")  # no [finetune]: refused, but by the config check
    code = main(["finetune", str(config), "--no-progress"])  # before the fix: "unrecognized arguments"
    err = capsys.readouterr().err
    assert code == 2 and "unrecognized arguments" not in err
    assert "[finetune]: `layerprobe finetune` runs this section, which the config lacks" in err
