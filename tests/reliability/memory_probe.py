"""Peak memory of decoding one large image and of `FeatureStore.load(verify=True)`, in a fresh process.

Run as a script (`python tests/reliability/memory_probe.py decode|jpeg|load|load-unverified DIR`,
`ENTRY_MIB` sets the entry size, default 256); prints one JSON line with the peak resident
memory above the baseline measured just before the call (VmHWM after a reset, so it covers
Pillow's and HDF5's own allocations, which `tracemalloc` does not see).
`test_memory.py` runs it and RELIABILITY.md quotes its numbers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_mib() -> float:
    """The resident memory now, after resetting the peak to it (so the warm-up is not counted)."""
    with open("/proc/self/clear_refs", "w") as handle:  # "5": reset VmHWM to VmRSS (Linux >= 4.0)
        handle.write("5")
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork and exec, so a child of a large
    # process (pytest with TensorFlow loaded) would report its parent's size.
    return _status_mib("VmHWM")


def make_16bit_png(path: Path, side: int = 3000) -> Path:
    """A 16-bit grey PNG of `side` x `side` 12-bit values that compresses to a few tens of KB."""
    import numpy as np
    from PIL import Image

    values = (np.arange(side, dtype=np.uint16) % 4096)[np.newaxis, :].repeat(side, axis=0)
    Image.fromarray(values).save(path)  # uint16 arrays are written as 16-bit ("I;16") PNGs
    return path


def make_jpeg(path: Path, width: int = 6000, height: int = 4000) -> Path:
    """A 24-megapixel RGB JPEG (a smooth gradient, so it stays small on disk)."""
    import numpy as np
    from PIL import Image

    x = np.linspace(0, 255, width, dtype=np.float32)[np.newaxis, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, np.newaxis]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def make_entry(root: Path, mib: int = 256) -> str:
    import numpy as np

    from layerprobe.features.keys import FeatureKey
    from layerprobe.features.store import FeatureStore

    n = mib * 2**20 // (4 * 1024)
    store = FeatureStore(root)
    key = FeatureKey("VGG16", "sha256:w", "block1_pool", "avg", 32, "p", "float32", "float32", "d" * 64)
    partial = store.partial(key, {"chunk_size": n})
    partial.write_chunk(0, np.ones((n, 1024), "float32"), np.arange(n), [])
    store.commit(key, partial, 1, sample_ids=[f"array:{i}" for i in range(n)], labels=np.zeros(n, int),
                 splits=["all"] * n, class_names=["a"], metadata={})
    return key.entry_name


def main(what: str, folder: str) -> None:
    folder = Path(folder)
    if what in ("decode", "jpeg"):
        path = folder / ("big16.png" if what == "decode" else "big.jpg")
        if not path.exists():
            (make_16bit_png if what == "decode" else make_jpeg)(path)
        from layerprobe.features.inputs import load_image

        load_image(folder / "small.png" if (folder / "small.png").exists() else path, 8)  # imports, set-up
        base = _rss_mib()
        load_image(path, 224)
        pixels = "3000x3000 16-bit grey PNG" if what == "decode" else "6000x4000 RGB JPEG"
        result = {"file_kib": round(path.stat().st_size / 1024, 1), "pixels": pixels}
    else:
        name_file = folder / "entry.txt"
        if not name_file.exists():
            name_file.write_text(make_entry(folder / "store", int(os.environ.get("ENTRY_MIB", "256"))))
        from layerprobe.features.store import FeatureStore

        store = FeatureStore(folder / "store")
        base = _rss_mib()
        features = store.load(name_file.read_text(), verify=what == "load")
        result = {"array_mib": round(features.X.nbytes / 2**20, 1), "verify": what == "load"}
    result.update(baseline_mib=round(base, 1), peak_above_baseline_mib=round(_peak_mib() - base, 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
