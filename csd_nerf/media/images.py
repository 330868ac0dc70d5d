"""Image files: reading any common picture as 8-bit RGB plus its alpha, writing PNG/JPEG, with a size limit.

16-bit images are scaled to 8 bits and float images are read as ``[0, 1]``. Transparency is returned apart
(``alpha``, or ``None`` when the picture is opaque) so that an edit can put it back. An image over the size
limit is refused in one line before it is decoded (PIL's own guard stops at 89 / 179 megapixels with a
traceback; ours is the one limit, and it says how to raise it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from csd_nerf.errors import first_line
from csd_nerf.media.errors import MediaError, writing

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_MEGAPIXELS",
    "check_pixels",
    "to_rgb8",
    "to_rgba8",
    "read_image",
    "read_image_alpha",
    "write_image",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MAX_MEGAPIXELS = 100.0
"""The largest picture read by default, in megapixels (10000 x 10000): an editing run holds several float32
copies of it (source, canvas, decoded result) besides the VAE's work, i.e. several GB at this size, and a
panorama of this size already takes thousands of 512 px windows. ``--max-megapixels`` raises it."""


def check_pixels(width: int, height: int, max_megapixels: float, origin: str) -> None:
    """Refuse a ``width x height`` picture over ``max_megapixels``, in one line that says how to go beyond."""
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise MediaError(
            f"{origin} is {width}x{height} ({megapixels:.0f} megapixels), over the {max_megapixels:g} megapixels "
            f"accepted: downscale it first, or pass --max-megapixels {int(megapixels) + 1} if the machine has the "
            "memory for it"
        )


def to_rgba8(array: np.ndarray, origin: str | Path = "image") -> tuple[np.ndarray, np.ndarray | None]:
    """Any decoded picture (grey, grey+alpha, RGB, RGBA; 8/16-bit integers or floats in [0, 1]) as
    ``uint8 [H, W, 3]`` and its ``uint8 [H, W]`` alpha (``None`` when it has none or is fully opaque)."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16 or (np.issubdtype(a.dtype, np.integer) and a.size and a.max() > 255):
        a = np.round(a.astype(np.float64) / 257.0).clip(0, 255).astype(np.uint8)  # 16-bit: 65535 -> 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.round(np.nan_to_num(a.astype(np.float64)).clip(0.0, 1.0) * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        a = a.clip(0, 255).astype(np.uint8) if a.dtype != np.bool_ else a.astype(np.uint8) * 255
    else:
        raise MediaError(f"{origin}: unsupported pixel type {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise MediaError(f"{origin}: unsupported image shape {a.shape}; expected an RGB(A) or greyscale image")
    alpha = a[..., -1] if a.shape[-1] in (2, 4) else None
    if alpha is not None and alpha.min() == 255:
        alpha = None  # an opaque alpha channel carries nothing to put back
    rgb = np.repeat(a[..., :1], 3, axis=-1) if a.shape[-1] in (1, 2) else a[..., :3]
    return np.ascontiguousarray(rgb), None if alpha is None else np.ascontiguousarray(alpha)


def to_rgb8(array: np.ndarray, origin: str | Path = "image") -> np.ndarray:
    """:func:`to_rgba8` without the alpha."""
    return to_rgba8(array, origin)[0]


def _pil_to_rgba8(image: Image.Image, origin: Path) -> tuple[np.ndarray, np.ndarray | None]:
    # 16-bit and float modes must be scaled by us: PIL's convert("RGB") clips them to white.
    if image.mode.startswith(("I", "F")):
        return to_rgba8(np.asarray(image), origin)
    # RGBA, LA, a palette or RGB with a transparent colour (Image.has_transparency_data, Pillow >= 10.1 only)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return to_rgba8(np.asarray(image.convert("RGBA"), dtype=np.uint8), origin)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy(), None


@contextmanager
def _our_size_limit() -> Iterator[None]:
    """PIL's decompression-bomb guard off while opening: :func:`check_pixels` is the one limit."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def read_image_alpha(
    path: str | Path, what: str = "input image", max_megapixels: float = MAX_MEGAPIXELS
) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file as ``uint8 [H, W, 3]`` and its alpha (or ``None``), turned as its EXIF orientation says."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MediaError(f"{what} {path} does not exist")
    if path.is_dir():
        raise MediaError(f"{what} {path} is a folder: pass an image file ({', '.join(IMAGE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise MediaError(f"cannot read {what} {path}: the file is empty")
    try:
        with _our_size_limit(), Image.open(path) as image:
            check_pixels(*image.size, max_megapixels, f"{what} {path}")  # from the header, before decoding
            image.load()
            return _pil_to_rgba8(ImageOps.exif_transpose(image), path)
    except UnidentifiedImageError:
        pass  # e.g. float TIFFs, which PIL cannot open and imageio's tifffile can
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"cannot read {what} {path}: {first_line(exc)} (corrupt or truncated?)") from None
    try:
        import imageio.v3 as iio

        shape = iio.improps(path).shape
        if len(shape) >= 2:
            check_pixels(shape[1], shape[0], max_megapixels, f"{what} {path}")
        return to_rgba8(iio.imread(path), path)
    except MediaError:
        raise
    except Exception:  # imageio's plugins raise many types for what is not an image
        raise MediaError(
            f"cannot read {what} {path}: not a readable image (corrupt, truncated, or not one of "
            f"{', '.join(IMAGE_SUFFIXES)})"
        ) from None


def read_image(path: str | Path, what: str = "input image", max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """An image file as ``uint8 [H, W, 3]`` (its alpha dropped; :func:`read_image_alpha` keeps it)."""
    return read_image_alpha(path, what, max_megapixels)[0]


def write_image(path: str | Path, image: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Write ``uint8 [H, W, 3]`` (with ``alpha [H, W]``: RGBA, PNG only) as PNG or JPEG, chosen by the suffix.

    A failed write (a full disk) is a :class:`MediaError` naming ``path``.
    """
    path = Path(path)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    if alpha is not None:
        if jpeg:
            raise ValueError(f"{path}: JPEG has no alpha channel; write a PNG")
        image = np.dstack([image, alpha])
    with writing(path):
        Image.fromarray(image).save(path, **({"quality": 95} if jpeg else {}))
