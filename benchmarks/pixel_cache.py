"""Decode once: reading cached pixels back against decoding the JPEG files again, side by side.

Issue 35. A sweep over several backbones at one input size decodes every image
once per backbone; with `pixel_cache=True` the first extraction keeps the
pixels it decodes (`layerprobe.features.inputs.pixel_cache`) and the later
ones read them back. This measures, on the same files, in one process, with
the same loader (`iter_decoded_chunks`, its decoding threads, chunks of 256):

- **decode**: every chunk decoded from the JPEG files (the best CPU decoder here),
  what each later backbone pays without the cache;
- **fill**: the first pass with the cache: decode + write the blocks;
- **read**: a later pass with the cache: every block read back, nothing decoded.

`decode` and `read` alternate `--repeats` times (the faster of each is kept, wall
and CPU seconds of this process, all threads, both recorded). The images are
generated photos of about ImageNet's size (500x375, gradients, noise and shapes;
quality 90), or `--images FOLDER` (class subfolders), e.g. ../shared's hymenoptera.

Outputs under `--out` (default `benchmarks/out/pixel_cache/<quick|full>/`):
`results.json` and `results.md`. The last line printed is
``pixel cache: reading back is N.N× faster than decoding again (fill costs +P% over a decode)``.

    python benchmarks/pixel_cache.py --quick       # 128 images at 224 px, ~1 min on 2 cores
    python benchmarks/pixel_cache.py               # 1,024 images
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import base_parser  # noqa: E402
from _machine import machine_description, machine_info  # noqa: E402
from _measure import Stopwatch  # noqa: E402
from _output import significant, write_json  # noqa: E402


def generated_photos(folder: Path, n_images: int, *, width: int = 500, height: int = 375, seed: int = 0) -> Path:
    """`n_images` JPEGs of photo-like content in two class folders under `folder`."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for number in range(n_images):
        tilt = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx * tilt[0] * 255 / width, yy * tilt[1] * 255 / height,
                         (xx + yy) * tilt[2] * 127 / (width + height)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, width), rng.integers(0, height)
            draw.ellipse([x, y, x + rng.integers(10, 120), y + rng.integers(10, 120)],
                         fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        target = folder / f"class{number % 2}" / f"{number:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)
    return folder


def _pass(dataset, size: int, cache, decoder: str) -> tuple[Stopwatch, int]:
    from layerprobe.features.inputs import iter_decoded_chunks

    chunks = [range(start, min(start + 256, len(dataset))) for start in range(0, len(dataset), 256)]
    n_images = 0
    with Stopwatch() as watch:
        for chunk in iter_decoded_chunks(dataset, chunks, size, dtype="uint8", decoder=decoder, pixel_cache=cache):
            n_images += len(chunk.sample_indices)
    return watch, n_images


def measure(dataset, size: int, repeats: int, store: Path) -> dict:
    """Fill, then `repeats` alternating decode / read passes over `dataset` at `size` pixels."""
    from layerprobe.features.inputs.decoding import resolve_decoder
    from layerprobe.features.inputs.pixel_cache import PixelCache, PixelKey
    from layerprobe.features.keys import decoded_pixels

    decoder = resolve_decoder("auto")
    cache = PixelCache(store, PixelKey(dataset.digest(), size, decoded_pixels(decoder)))
    fill, n_images = _pass(dataset, size, cache, decoder)
    passes = {"decode": [], "read": []}
    for _ in range(repeats):
        passes["decode"].append(_pass(dataset, size, None, decoder)[0])
        passes["read"].append(_pass(dataset, size, cache, decoder)[0])
    best = {name: min(watches, key=lambda watch: watch.wall) for name, watches in passes.items()}
    row = {"n_images": n_images, "size": size, "decoder": decoder, "repeats": repeats,
           "cache_bytes": sum(path.stat().st_size for path in cache.folder.iterdir())}
    for name, watch in {"fill": fill, **best}.items():
        row[f"{name}_wall_s"], row[f"{name}_cpu_s"] = watch.wall, watch.cpu
        row[f"{name}_img_s"] = n_images / watch.wall
    row["read_speedup"] = best["decode"].wall / best["read"].wall
    row["fill_overhead"] = fill.wall / best["decode"].wall - 1
    return row


def summary(row: dict) -> str:
    return (f"pixel cache: reading back is {row['read_speedup']:.1f}× faster than decoding again "
            f"(fill costs {row['fill_overhead']:+.0%} over a decode)")


def main(argv=None) -> int:
    parser = base_parser("pixel_cache", __doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 images (default 1,024)")
    parser.add_argument("--n-images", type=int, default=None, help="generated images (overrides --quick's count)")
    parser.add_argument("--images", type=Path, default=None,
                        help="a folder of class subfolders instead of generated photos")
    parser.add_argument("--size", type=int, default=224, help="input size the pixels are decoded to")
    parser.add_argument("--repeats", type=int, default=3, help="alternating decode / read passes (the best kept)")
    args = parser.parse_args(argv)
    from layerprobe.features.inputs import from_directory

    out = args.out / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pixel-cache-") as work:
        work = Path(work)
        folder = args.images or generated_photos(work / "images", args.n_images or (128 if args.quick else 1024))
        row = measure(from_directory(folder), args.size, args.repeats, work / "store")
    row["images"] = str(args.images) if args.images else "generated 500x375 JPEGs, quality 90"
    row["machine"] = machine_info()
    write_json(row, out / "results.json")
    lines = [
        f"# Pixel cache: read back vs decode again ({row['n_images']} images, {row['images']}, {row['size']} px, "
        f"decoder {row['decoder']})", "", machine_description(row["machine"]), "",
        "| pass | wall s | CPU s | img/s |", "|---|---|---|---|",
        *[f"| {name} | {significant(row[f'{name}_wall_s'])} | {significant(row[f'{name}_cpu_s'])} | "
          f"{significant(row[f'{name}_img_s'])} |" for name in ("decode", "fill", "read")],
        "", f"Cache on disk: {row['cache_bytes'] / 2**20:.1f} MiB.", "", summary(row),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
