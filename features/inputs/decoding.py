"""Decode one image (a file or an in-memory array) to square RGB pixels, safely.

Files: the EXIF orientation is applied, every mode becomes RGB (alpha dropped,
first frame of an animation, 16-bit, 32-bit and float grey levels scaled to
0-255), and images above `max_pixels` are refused from their header, before
decoding.

Errors are of two kinds. A problem with the file's *content* (empty,
truncated, not an image, too large, deleted, not readable by this user) is an
`UnreadableImageError` whose `reason` says why: the image is skipped and
recorded. An *I/O error* of the disk or file system (EIO, ESTALE, EMFILE,
ENFILE, EAGAIN, ENOMEM, any other OSError with an errno that is not about the
path, or a `MemoryError`) says nothing about the image: it is retried
(`IO_ATTEMPTS` tries, backing off from `IO_BACKOFF_SECONDS`), then raised as
`ImageReadError`, which stops the run instead of recording a good image as bad.

Decoders: `"pillow"`, or `"simplejpeg"` (libjpeg-turbo through the optional
`simplejpeg` package, faster on JPEG files: no Pillow image objects). Both
decode JPEGs with libjpeg-turbo's exact integer IDCT at the same reduced
scale, so they give the same pixels (tested; they share feature keys:
`keys.decoded_pixels`); anything that is not a plain JPEG, or that simplejpeg
refuses (CMYK...), goes through Pillow. `"nvimgcodec"` decodes whole chunks
on the GPU and resizes them there (`device_decoding`); its pixels differ
slightly, so its features have their own keys. `"auto"` (the default) takes
nvImageCodec where it can decode on Keras's GPU, else simplejpeg where it is
installed.

Memory: a JPEG larger than needed is decoded at 1/2, 1/4 or 1/8 scale
(`Image.draft`, still at least `size` pixels a side); high-depth grey levels are
converted to 8 bits with integer arithmetic, in blocks of rows, and resized
before they become RGB. One image then needs at most about 8 bytes per pixel
of its (drafted) size, 12 for 32-bit modes (`decode_cost`), e.g. 45 MB for a
3000x3000 16-bit PNG. A `DecodeBudget` shared by decoding threads bounds what
they hold together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ...core.checks import check_positive_int
from ...core.errors import ImageReadError, InputError, UnreadableImageError
from ...core.files import file_kind
from ..keys import DECODERS

__all__ = [
    "DECODERS",
    "DEFAULT_DECODE_BUDGET",
    "DEFAULT_MAX_PIXELS",
    "IO_ATTEMPTS",
    "DecodeBudget",
    "array_to_rgb",
    "decode_cost",
    "grey_bit_depth",
    "load_image",
    "open_image_file",
    "resolve_decoder",
    "with_io_retries",
]

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default for Image.MAX_IMAGE_PIXELS
_JPEG_MAGIC = b"\xff\xd8\xff"
_DRAFT_SCALES = (8, 4, 2, 1)  # the reductions Pillow's JPEG draft mode uses
DEFAULT_DECODE_BUDGET = 512 * 2**20  # bytes of decoded pixels all decoding threads may hold at once

# I/O errors: retried, then raised as ImageReadError (the run stops; nothing is recorded as unreadable).
IO_ATTEMPTS = 3
IO_BACKOFF_SECONDS = 0.1  # then 0.2, 0.4...
# OSErrors about the path itself: the file is skipped as unreadable (not retried).
_PATH_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}
)
# What Pillow's decoders and plugins raise for bad content (besides OSErrors without an errno).
_CONTENT_ERRORS = (SyntaxError, ValueError, EOFError, IndexError, KeyError, ZeroDivisionError)

# Float grey levels: full scales tried, smallest first; data outside both is stretched min-max.
_FLOAT_FULL_SCALES = (1.0, 255.0)
# Bit depths integer grey levels are scaled from (the smallest that holds the image's maximum).
_BIT_DEPTHS = (8, 10, 12, 14, 16)
_ROWS_BLOCK_PIXELS = 1 << 20  # pixels converted to 8 bits at a time

_T = TypeVar("_T")


def _is_io_error(error: BaseException) -> bool:
    """An error of the disk or file system rather than of the file's content or path."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, OSError) and error.errno is not None and error.errno not in _PATH_ERRNOS


def with_io_retries(read: Callable[[], _T], path: str, *, attempts: int = IO_ATTEMPTS) -> _T:
    """`read()`, tried again after an I/O error (see the module docstring), backing off.

    Raises:
        ImageReadError: If every attempt fails with an I/O error; it names the file,
            the errno and the number of tries.
    """
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except (OSError, MemoryError) as error:
            if not _is_io_error(error):
                raise
            if attempt == attempts:
                code = getattr(error, "errno", None)
                name = errno.errorcode.get(code, str(code)) if code is not None else "MemoryError"
                raise ImageReadError(
                    f"Could not read {path}: {error!r} (errno {name}), {attempts} tries. This is an I/O "
                    f"error of the disk or file system, not a bad image, so it is not recorded as "
                    f"unreadable. Check the file system (the kernel log, the network file server, "
                    f"`ulimit -n` for EMFILE, free memory for ENOMEM) and run again.",
                    path,
                    code,
                    attempts,
                ) from error
            time.sleep(IO_BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


class DecodeBudget:
    """Bounds the bytes of decoded pixels that threads decoding images hold at once.

    Each decode reserves its estimated cost (`decode_cost`) before it decodes and
    releases it after; an image costing more than the whole budget waits until it
    can run alone. So the threads together hold at most max(`max_bytes`, the cost
    of the largest single image), whatever their number.
    """

    def __init__(self, max_bytes: int = DEFAULT_DECODE_BUDGET):
        self.max_bytes = check_positive_int("max_bytes", max_bytes, error=InputError)
        self._used = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, n_bytes: int) -> Iterator[None]:
        n_bytes = min(int(n_bytes), self.max_bytes)
        with self._condition:
            while self._used + n_bytes > self.max_bytes:
                self._condition.wait()
            self._used += n_bytes
        try:
            yield
        finally:
            with self._condition:
                self._used -= n_bytes
                self._condition.notify_all()


def decode_cost(image: Image.Image) -> int:
    """Estimated peak bytes of decoding `image` (after `draft`) with `load_image`."""
    width, height = image.size
    per_pixel = 12 if image.mode in ("I", "F") else 8
    return width * height * per_pixel


def resolve_decoder(decoder: str = "auto") -> str:
    """`"pillow"`, `"simplejpeg"` or `"nvimgcodec"`: what `decoder` decodes with here.

    `"auto"` is nvImageCodec where it can decode on the device Keras computes on
    (`device_decoding.device_decoding_problem`), else simplejpeg where it is installed,
    else Pillow.

    Raises:
        InputError: For an unknown decoder, `"simplejpeg"` when it is not installed, or
            `"nvimgcodec"` where it cannot decode on the device (the message says why).
    """
    if decoder not in DECODERS:
        raise InputError(f"decoder must be one of {DECODERS}. Received: decoder={decoder!r}")
    if decoder == "pillow":
        return decoder
    if decoder in ("auto", "nvimgcodec"):
        from .device_decoding import device_decoding_problem

        problem = device_decoding_problem()
        if problem is None:
            return "nvimgcodec"
        if decoder == "nvimgcodec":
            raise InputError(
                f"decoder='nvimgcodec' cannot decode here: {problem}. Use decoder='auto' (the best "
                f"decoder available) or 'pillow'. Received: decoder='nvimgcodec'"
            )
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        if decoder == "simplejpeg":
            raise InputError(
                "decoder='simplejpeg' needs the simplejpeg package: pip install simplejpeg "
                "(or use decoder='pillow'). Received: decoder='simplejpeg'"
            ) from None
        return "pillow"
    return "simplejpeg"


def load_image(
    path: str | os.PathLike,
    size: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    budget: DecodeBudget | None = None,
    decoder: str = "pillow",
) -> np.ndarray:
    """Decode an image file to a square RGB array.

    The EXIF orientation is applied, every mode is converted to RGB (alpha is dropped,
    the first frame of an animation is used, 16-bit, 32-bit and float grey levels are
    scaled to 0-255, see `grey_bit_depth`) and the image is resized to `size` x `size`
    with bilinear interpolation, without keeping the aspect ratio (as
    `keras.utils.image_dataset_from_directory` does). A JPEG at least twice as large as
    needed is decoded at a reduced scale (`Image.draft`, at least `size` a side).

    Memory: at most about `decode_cost` bytes (8 per pixel of the drafted image, 12 for
    32-bit modes) while it decodes; with a `budget`, that much is reserved from it first.

    Args:
        path: The image file.
        size: Output height and width in pixels.
        max_pixels: Largest width x height accepted, checked from the header before
            decoding (decompression-bomb guard). Pillow's own refusal above
            2 x `Image.MAX_IMAGE_PIXELS` still applies.
        budget: Shared by the threads of one decoder, to bound what they hold together.
        decoder: `"pillow"` or `"simplejpeg"` (same pixels; see the module docstring).

    Returns:
        A uint8 array of shape (size, size, 3).

    Raises:
        UnreadableImageError: If the file's content cannot be decoded (or the file is
            missing or not readable by this user); `reason` says why.
        ImageReadError: If an I/O error persists after `IO_ATTEMPTS` tries.
        InputError: If `size` or `max_pixels` is not a positive integer.
    """
    check_positive_int("size", size, error=InputError)
    check_positive_int("max_pixels", max_pixels, error=InputError)
    path = os.fspath(path)
    load = _load_jpeg_turbo if decoder == "simplejpeg" else _load
    return with_io_retries(lambda: load(path, size, max_pixels, budget), path)


def _load_jpeg_turbo(path: str, size: int, max_pixels: int, budget: DecodeBudget | None) -> np.ndarray:
    """A plain JPEG through simplejpeg, at Pillow's draft scale (the same pixels); anything else through Pillow."""
    import simplejpeg

    try:
        with open_image_file(path) as handle:
            data = handle.read()
        if not data.startswith(_JPEG_MAGIC) or _has_orientation(data):
            return _load(path, size, max_pixels, budget)
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("Gray", "YCbCr") or width * height > max_pixels:
            return _load(path, size, max_pixels, budget)  # Pillow converts, or refuses with its reason
        scale = next(a for a in _DRAFT_SCALES if min(width // size, height // size) >= a)
        out_height, out_width = -(-height // scale), -(-width // scale)
        with budget.reserve(out_height * out_width * 8) if budget is not None else contextlib.nullcontext():
            pixels = simplejpeg.decode_jpeg(
                data, colorspace="GRAY" if colorspace == "Gray" else "RGB",
                min_height=out_height, min_width=out_width, min_factor=scale,
            )
            if pixels.shape == (size, size, 3):
                return pixels  # already what `_square_rgb` would return, without two copies through Pillow
            image = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
            return _square_rgb(image, size)
    except (ValueError, IndexError, StopIteration):  # simplejpeg refuses it: Pillow says why, or decodes it
        return _load(path, size, max_pixels, budget)
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError("file not found", path) from None
    except OSError as exc:
        if _is_io_error(exc):
            raise
        raise UnreadableImageError(f"cannot open file: {exc.strerror}", path) from None


def _has_orientation(data: bytes) -> bool:
    """Whether a JPEG may carry an EXIF orientation (an APP1 Exif segment): Pillow applies it."""
    return b"Exif\x00\x00" in data[:65536]


def open_image_file(path: str):
    """`path` opened for reading, or an `UnreadableImageError` before a byte is read if it is not a
    regular file ("not a regular file: a FIFO (named pipe)", a device such as /dev/zero...) or is empty.

    Opened without blocking, so a FIFO is refused at once rather than waited on.
    """
    handle = open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK | os.O_CLOEXEC))
    try:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableImageError(f"not a regular file: {file_kind(info.st_mode)}", path)
        if info.st_size == 0:
            raise UnreadableImageError("empty file", path)
    except BaseException:
        handle.close()
        raise
    return handle


def _load(path: str, size: int, max_pixels: int, budget: DecodeBudget | None) -> np.ndarray:
    try:
        with open_image_file(path) as handle, Image.open(handle) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise _too_large(image.size, max_pixels, path)
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # DCT scaling: never below `size` a side
            with budget.reserve(decode_cost(image)) if budget is not None else contextlib.nullcontext():
                ImageOps.exif_transpose(image, in_place=True)
                return _square_rgb(image, size)
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError("file not found", path) from None
    except Image.DecompressionBombError as exc:
        size = _claimed_size(path)  # Pillow refused to open it: above twice its MAX_IMAGE_PIXELS
        raise (_too_large(size, max_pixels, path) if size else UnreadableImageError(f"too large: {exc}", path)) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(
            "not an image: no known image format matches the content", path
        ) from None
    except (OSError, MemoryError) as exc:
        if _is_io_error(exc):
            raise  # retried by with_io_retries, then an ImageReadError
        if getattr(exc, "errno", None) in _PATH_ERRNOS:
            raise UnreadableImageError(f"cannot open file: {exc.strerror}", path) from None
        # Pillow's decoders: "image file is truncated", "broken data stream", ... (no errno)
        raise UnreadableImageError(f"truncated or corrupt image: {exc}", path) from None
    except _CONTENT_ERRORS as exc:  # Pillow's plugins on malformed headers and data
        raise UnreadableImageError(f"truncated or corrupt image: {exc!r}", path) from None


def _too_large(size: tuple[int, int], max_pixels: int, path: str) -> UnreadableImageError:
    """The skip of an image above `max_pixels`, or above Pillow's own limit, which `max_pixels` cannot raise."""
    width, height = size
    if width * height > max_pixels:
        return UnreadableImageError(
            f"too large: {width}x{height} pixels > max_pixels={max_pixels} (decompression-bomb guard)", path
        )
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return UnreadableImageError(
        f"too large: {width}x{height} pixels > {limit}, Pillow's own limit (2 x PIL.Image.MAX_IMAGE_PIXELS), "
        f"which max_pixels={max_pixels} does not raise",
        path,
    )


def _claimed_size(path: str) -> tuple[int, int] | None:
    """The width and height a file's header claims, read by Pillow's format plugins as `Image.open`
    reads them, but without its own decompression-bomb refusal, whose error does not say them."""
    with open(path, "rb") as handle:
        prefix = handle.read(16)
        for format_id in Image.ID:
            factory, accept = Image.OPEN[format_id]
            accepted = accept is None or accept(prefix)
            if not accepted or isinstance(accepted, str):
                continue
            handle.seek(0)
            try:
                return factory(handle, path).size
            except (SyntaxError, IndexError, TypeError, ValueError, EOFError, OSError, struct.error):
                continue
    return None


def _square_rgb(image: Image.Image, size: int) -> np.ndarray:
    """`image` (any mode) -> (size, size, 3) uint8, resized bilinear.

    Grey images are resized before they become RGB (the same numbers, a quarter of
    the memory); other modes are converted first (palettes and bilevel images would
    otherwise be resized with nearest-neighbour).
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_grey_to_uint8(image))
    if image.mode == "L":
        image = image.resize((size, size), Image.BILINEAR)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when such palettes go straight to RGB
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.array(image, dtype=np.uint8)


def grey_bit_depth(maximum: int) -> int:
    """The bit depth integer grey levels are scaled from: the smallest of 8, 10, 12, 14, 16 bits
    that holds `maximum` (an image's largest value).

    Per image and from its own pixels only, so an image's pixels never depend on the
    other images of its dataset and a resumed run decodes them identically. 12-bit data
    in a 16-bit file (maximum <= 4095) keeps its 4096 levels instead of the 17 that a
    fixed 65535 full scale leaves; a dim image whose maximum fits fewer bits is
    brightened accordingly (by at most 2 bits per step below its true depth).
    """
    bits = max(8, int(maximum).bit_length())
    return next(depth for depth in _BIT_DEPTHS if depth >= bits)


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    """High-depth grey levels (modes I;16*, I, F) -> uint8, in blocks of rows.

    Integers in [0, 65535] are scaled from their bit depth (`grey_bit_depth`) with
    integer arithmetic: round(v * 255 / (2**depth - 1)). Floats in [0, 1] or [0, 255]
    are scaled from that full scale (NaN/inf count as 0). Anything else (negative
    values, more than 16 bits) is stretched from its minimum to its maximum.
    """
    values = np.asarray(image)
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, _ROWS_BLOCK_PIXELS // max(1, values.shape[1] if values.ndim > 1 else 1))
    if values.dtype.kind in "iu":
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low >= 0 and high <= 65535:
            full = 2 ** grey_bit_depth(high) - 1
            for start in range(0, len(values), rows):
                block = values[start : start + rows].astype(np.int64)
                out[start : start + rows] = (block * 510 + full) // (2 * full)
            return out
        scale = 255.0 / ((high - low) or 1)
    else:
        low, high = np.inf, -np.inf
        for start in range(0, len(values), rows):
            block = np.where(np.isfinite(values[start : start + rows]), values[start : start + rows], 0.0)
            if block.size:
                low, high = min(low, float(block.min())), max(high, float(block.max()))
        low, high = (0.0, 0.0) if low > high else (low, high)
        full_scale = next((scale for scale in _FLOAT_FULL_SCALES if low >= 0 and high <= scale), None)
        if full_scale is None:
            scale = 255.0 / ((high - low) or 1.0)
        else:
            low, scale = 0.0, 255.0 / full_scale
    for start in range(0, len(values), rows):
        block = values[start : start + rows].astype(np.float64)
        block[~np.isfinite(block)] = 0.0
        out[start : start + rows] = np.rint((block - low) * scale)
    return out


def array_to_rgb(pixels: np.ndarray, size: int) -> np.ndarray:
    """One in-memory image (h, w), (h, w, 1) or (h, w, 3) -> (size, size, 3), a fresh array.

    Integer pixels become uint8, float pixels float32 (not rounded); grey is repeated to three channels.

    Raises:
        InputError: If `size` is not a positive integer.
    """
    check_positive_int("size", size, error=InputError)
    pixels = pixels.astype(np.uint8 if pixels.dtype.kind in "iu" else np.float32, copy=False)
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    if pixels.shape[:2] != (size, size):
        channels = [
            Image.fromarray(pixels[..., c]).resize((size, size), Image.BILINEAR)
            for c in range(pixels.shape[-1])
        ]
        pixels = np.stack([np.asarray(channel) for channel in channels], axis=-1)
    return np.repeat(pixels, 3 // pixels.shape[-1], axis=-1)
