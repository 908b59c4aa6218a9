"""Decode one image (a file or an in-memory array) to square RGB pixels, safely.

Files: the EXIF orientation is applied, every mode becomes RGB (alpha dropped,
first frame of an animation, 16-bit, 32-bit and float grey levels scaled to
0-255), and images above `max_pixels` are refused from their header, before
decoding. Any failure is an `UnreadableImageError` whose `reason` says why.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from layerprobe.features.checks import check_positive_int
from layerprobe.features.errors import InputError, UnreadableImageError

__all__ = ["DEFAULT_MAX_PIXELS", "array_to_rgb", "load_image"]

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default for Image.MAX_IMAGE_PIXELS

# Full-scale values tried, smallest first, for high-depth grey modes ("I;16*" share one entry).
# Data outside every full scale (or negative) is stretched from its minimum to its maximum.
_FULL_SCALES = {"I;16": (65535.0,), "I": (65535.0,), "F": (1.0, 255.0)}


def load_image(
    path: str | os.PathLike, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode an image file to a square RGB array.

    The EXIF orientation is applied, every mode is converted to RGB (alpha is dropped,
    the first frame of an animation is used, 16-bit, 32-bit and float grey levels are
    scaled to 0-255) and the image is resized to `size` x `size` with bilinear
    interpolation, without keeping the aspect ratio (as
    `keras.utils.image_dataset_from_directory` does).

    Args:
        path: The image file.
        size: Output height and width in pixels.
        max_pixels: Largest width x height accepted, checked from the header before
            decoding (decompression-bomb guard). Pillow's own refusal above
            2 x `Image.MAX_IMAGE_PIXELS` still applies.

    Returns:
        A uint8 array of shape (size, size, 3).

    Raises:
        UnreadableImageError: If the file cannot be decoded; `reason` says why.
        InputError: If `size` or `max_pixels` is not a positive integer.
    """
    check_positive_int("size", size, error=InputError)
    check_positive_int("max_pixels", max_pixels, error=InputError)
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError("empty file", path)
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImageError(
                    f"too large: {width}x{height} pixels > max_pixels={max_pixels} "
                    "(decompression-bomb guard)",
                    path,
                )
            image = _to_rgb(ImageOps.exif_transpose(image))
        return np.array(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError("file not found", path) from None
    except (PermissionError, IsADirectoryError) as exc:
        raise UnreadableImageError(f"cannot open file: {exc.strerror}", path) from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImageError(f"too large: {exc}", path) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(
            "not an image: no known image format matches the content", path
        ) from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, EOFError, ...
        raise UnreadableImageError(f"truncated or corrupt image: {exc}", path) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode_key = "I;16" if image.mode.startswith("I;16") else image.mode
    if mode_key in _FULL_SCALES:
        image = Image.fromarray(_grey_to_uint8(np.asarray(image), _FULL_SCALES[mode_key]))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when such palettes go straight to RGB
    return image.convert("RGB")


def _grey_to_uint8(values: np.ndarray, full_scales: tuple[float, ...]) -> np.ndarray:
    """Scale high-depth grey levels to 0-255 (not clipped)."""
    values = values.astype(np.float64)
    values[~np.isfinite(values)] = 0.0
    low, high = values.min(), values.max()
    full_scale = next((scale for scale in full_scales if low >= 0 and high <= scale), None)
    if full_scale is None:
        full_scale = (high - low) or 1.0
    else:
        low = 0.0
    return np.rint((values - low) * (255.0 / full_scale)).astype(np.uint8)


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
