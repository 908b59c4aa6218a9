"""Image inputs: labelled datasets, safe decoding, and chunked decoding in background threads.

Modules, one job each:

* `sources`: build an `ImageDataset` from a folder, a CSV manifest or arrays;
* `dataset`: `ImageDataset` and its digest (`"stat"` or `"content"`);
* `file_digests`: file contents hashed in parallel, cached per file (the `"content"` digest);
* `decoding`: decode one image to square RGB pixels (`load_image`), telling bad content
  (skipped) from I/O errors (retried, then raised), within a memory budget;
* `loader`: decode chunks of a dataset in background threads (`iter_decoded_chunks`).

Everything other code needs is importable from here.
"""

from ...core.errors import ImageReadError, InputError, UnreadableImageError
from .dataset import DIGEST_MODES, ImageDataset
from .decoding import (
    DEFAULT_DECODE_BUDGET,
    DEFAULT_MAX_PIXELS,
    DecodeBudget,
    load_image,
)
from .loader import DecodedChunk, iter_decoded_chunks
from .sources import (
    IMAGE_EXTENSIONS,
    UNLABELLED,
    from_arrays,
    from_csv,
    from_directory,
    from_image_folder,
    open_dataset,
    open_images,
)

__all__ = [
    "DEFAULT_DECODE_BUDGET",
    "DEFAULT_MAX_PIXELS",
    "DIGEST_MODES",
    "IMAGE_EXTENSIONS",
    "UNLABELLED",
    "DecodeBudget",
    "DecodedChunk",
    "ImageDataset",
    "ImageReadError",
    "InputError",
    "UnreadableImageError",
    "from_arrays",
    "from_csv",
    "from_directory",
    "from_image_folder",
    "iter_decoded_chunks",
    "load_image",
    "open_dataset",
    "open_images",
]
