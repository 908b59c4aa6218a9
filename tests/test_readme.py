"""The README's Python code runs as written, on the files a reader has after the demo and `layerprobe init`.

The ```python blocks of the sections "Python API" and "One Keras model from a
probe" run in order in one process, in a folder holding what `layerprobe run`
(the demo) leaves: its target digits `layerprobe-out/data/digits-B` and its
source network's weights `layerprobe-out/source/digits-A.weights.h5` (here the
architecture at random initialisation: the blocks' code is what is tested), and
`layerprobe.toml` over them as `layerprobe init` writes one. A block that never
names `layerprobe` (loading the exported model) runs in a fresh process that
cannot import layerprobe, as the README promises.
"""

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## Python API", "## One Keras model from a probe")


def _python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = []
    for heading in SECTIONS:
        start = text.index(f"\n{heading}\n")
        end = text.find("\n## ", start + 1)
        section = text[start:end if end != -1 else len(text)]
        blocks += re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    return blocks


def _uses_layerprobe(block: str) -> bool:
    tree = ast.parse(block)
    return any(
        (isinstance(node, ast.Name) and node.id == "layerprobe")
        or (isinstance(node, (ast.Import, ast.ImportFrom)) and "layerprobe" in ast.dump(node))
        for node in ast.walk(tree)
    )


def test_the_readme_sections_have_the_blocks_this_test_runs():
    blocks = _python_blocks()
    assert len(blocks) == 4
    assert [_uses_layerprobe(block) for block in blocks] == [True, True, True, False]
    assert "search.fit(train.sample_ids, train.y)" in blocks[1]  # not every id: the test split stays out


def _demo_files(folder: Path) -> None:
    """What the demo leaves in `folder` (its digits, source weights of the same architecture) and an init config."""
    import keras

    from layerprobe.pipeline.default_experiment import INPUT_SIZE, MODEL_KWARGS, write_target_images

    write_target_images(folder / "layerprobe-out" / "data" / "digits-B")
    network = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(INPUT_SIZE, INPUT_SIZE, 3),
                                             **MODEL_KWARGS)
    (folder / "layerprobe-out" / "source").mkdir()
    network.save_weights(folder / "layerprobe-out" / "source" / "digits-A.weights.h5")
    (folder / "layerprobe.toml").write_text(textwrap.dedent("""
        [data]
        path = "layerprobe-out/data/digits-B"
        train_split = "train"
        test_split = "test"
        [features]
        store = "layerprobe-store"
        input_size = 32
        [[backbones]]
        model = "MobileNetV2"
        weights = "layerprobe-out/source/digits-A.weights.h5"
        model_kwargs = { alpha = 0.35 }
        layers = ["block_13_expand_relu", "out_relu"]
        [classifiers]
        names = ["logreg"]
        cv = 3
        [output]
        dir = "layerprobe-out"
    """), encoding="utf-8")


@pytest.mark.slow
def test_the_readme_python_blocks_run_as_written(tmp_path):
    _demo_files(tmp_path)
    blocks = _python_blocks()
    session = "\n".join(block for block in blocks if _uses_layerprobe(block))
    alone = [block for block in blocks if not _uses_layerprobe(block)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", session], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=3000)
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"\{'features__layer': '\w+'\} 0\.\d+", done.stdout), done.stdout[-2000:]
    assert re.search(r"\['\d' '\d' '\d'\] \['0' '1' '2' '3' '4' '5' '6' '7' '8' '9'\]", done.stdout), done.stdout[-2000:]
    assert (tmp_path / "digits.keras").is_file() and (tmp_path / "layerprobe-out" / "results.json").is_file()
    without_layerprobe = {name: value for name, value in env.items() if name != "PYTHONPATH"}
    for block in alone:
        check = block + "\nimport sys\nassert 'layerprobe' not in sys.modules\n"
        done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=without_layerprobe,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        assert re.fullmatch(r"\d \[\[[0-9. e\n-]+\]\]\n", done.stdout), done.stdout  # ten scores wrap
