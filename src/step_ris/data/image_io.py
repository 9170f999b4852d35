"""Robust image decoding: every input becomes an ``(H, W, 3)`` uint8 RGB array.

``load_image`` accepts a path, encoded bytes, a PIL image or a numpy array and

- applies the EXIF orientation tag (``PIL.ImageOps.exif_transpose``) unless told not to;
- converts every Pillow mode to RGB: grey ``1``/``L``/``I;16*``/``I``/``F`` (16-bit data is
  scaled to 8 bits, ``v * 255 / 65535`` rounded), ``P`` (palette), ``CMYK``, ``YCbCr``, and
  images with an alpha channel (``RGBA``, ``LA``, ``PA``, ``P`` with transparency), which are
  composited over **white** (the way viewers and browsers show a transparent image on a page;
  ``background="black"`` is available);
- decodes the whole file (``.load()``), so a truncated file fails here rather than later;
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never changed by this module;
- refuses decompression bombs: images whose header claims more than ``max_pixels`` pixels
  (default 64 megapixels) are rejected before any pixel is decoded; Pillow's own
  ``DecompressionBombError`` is reported the same way.

Every failure is an :class:`ImageError` (a ``ValueError``) whose message names the file.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
"""Default decompression-bomb limit: 64 megapixels (e.g. 8000 x 8000)."""

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
Background = Literal["white", "black"]

_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


class ImageError(ValueError):
    """An input could not be decoded as an image (the message names the file and the cause)."""


def load_image(
    src: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    apply_exif: bool = True,
    background: Background = "white",
) -> np.ndarray:
    """Decode ``src`` into an ``(H, W, 3)`` uint8 RGB array.

    Args:
        src: a file path, the encoded bytes of an image file, a PIL image, or a numpy array
            (``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``; uint8, uint16 (scaled to
            8 bits), bool, or float (``[0, 1]`` when every value lies there, else ``[0, 255]``)).
        max_pixels: largest accepted ``width * height``; ``None`` disables this module's check
            (Pillow's own hard limit, ``2 * Image.MAX_IMAGE_PIXELS``, still applies).
        apply_exif: rotate/flip according to the EXIF orientation tag.
        background: colour transparent pixels are composited over ("white" or "black").

    Raises:
        ImageError: missing or unreadable file, not an image, truncated file, too many pixels,
            zero-size image, or an unsupported array layout.
    """
    if background not in _BACKGROUNDS:
        raise ValueError(f"background must be 'white' or 'black', got {background!r}")
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by other code): truncated images "
            "will be decoded with grey fill instead of being reported"
        )

    if isinstance(src, np.ndarray):
        return _from_array(src, "<numpy array>", max_pixels, background)
    if isinstance(src, Image.Image):
        name = getattr(src, "filename", "") or "<PIL image>"
        _check_size(src.size, name, max_pixels)
        _full_load(src, name)
        return _pil_to_rgb(src, name, apply_exif, background)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageError("<bytes>: empty input (0 bytes), not an image")
        return _decode(io.BytesIO(data), "<bytes>", max_pixels, apply_exif, background)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = str(path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise ImageError(f"{name}: image file not found") from None
        except IsADirectoryError:
            raise ImageError(f"{name}: is a directory, not an image file") from None
        except PermissionError:
            raise ImageError(f"{name}: permission denied while opening the image file") from None
        except OSError as exc:
            raise ImageError(f"{name}: cannot open the image file ({exc.strerror or exc})") from None
        with fh:
            return _decode(fh, name, max_pixels, apply_exif, background)
    raise ImageError(
        f"cannot load an image from a {type(src).__name__}; pass a path, bytes, a PIL image or a numpy array"
    )


def _check_size(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has zero size ({width} x {height} pixels)")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: image is {width} x {height} = {width * height:,} pixels, more than the limit "
            f"of {max_pixels:,} (possible decompression bomb); shrink the image or raise "
            "max_pixels if you trust the file"
        )


def _decode(fh: io.IOBase, name: str, max_pixels: int | None, apply_exif: bool, background: str) -> np.ndarray:
    # Pillow warns (DecompressionBombWarning) above MAX_IMAGE_PIXELS and raises above twice that.
    # Our own limit, checked against the header right after opening, is the authority: the
    # warning is silenced (an image past our limit is refused anyway), the error is mapped.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(fh) as im:
                _check_size(im.size, name, max_pixels)
                _full_load(im, name)
                return _pil_to_rgb(im, name, apply_exif, background)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file Pillow can read (unknown or unsupported format)") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: refused by Pillow as a decompression bomb ({exc})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{name}: cannot decode the image ({exc})") from None


def _full_load(im: Image.Image, name: str) -> None:
    """Decode every pixel now, so that truncated or corrupt data fails here."""
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused by Pillow as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise ImageError(
                f"{name}: image file is truncated or incomplete ({msg}); re-download or re-export it"
            ) from None
        raise ImageError(f"{name}: image data is corrupt and cannot be decoded ({msg})") from None


def _pil_to_rgb(im: Image.Image, name: str, apply_exif: bool, background: str) -> np.ndarray:
    if apply_exif:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as exc:  # malformed EXIF must not make a readable image unusable
            log.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
    try:
        rgb = _to_rgb(im, background)
    except ImageError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: cannot convert image mode {im.mode!r} to RGB ({exc})") from None
    arr = np.array(rgb, dtype=np.uint8)  # copy: independent of the PIL buffer
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{name}: decoding gave an array of shape {arr.shape}, expected (H, W, 3)")
    return arr


def _to_rgb(im: Image.Image, background: str) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PNG/TIFF); "I" holds 32-bit ints, taken to be 16-bit data, clipped.
        a = np.asarray(im).astype(np.float64)
        return _grey_to_rgb_image(np.clip(a, 0, 65535) * (255.0 / 65535.0))
    if mode == "F":
        return _grey_to_rgb_image(_float_to_255(np.asarray(im, dtype=np.float64)))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, _BACKGROUNDS[background] + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "HSV", "RGBX"):
        return im.convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        return ImageCms.applyTransform(
            im, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        )
    return im.convert("RGB")


def _float_to_255(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    if a.size and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(a, 0.0, 255.0)


def _grey_to_rgb_image(a: np.ndarray) -> Image.Image:
    g = np.rint(a).astype(np.uint8)
    return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2))


def _from_array(a: np.ndarray, name: str, max_pixels: int | None, background: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(
            f"{name}: array of shape {a.shape} is not an image; expected (H, W), (H, W, 1), "
            "(H, W, 3) or (H, W, 4) (channels last)"
        )
    _check_size((a.shape[1], a.shape[0]), name, max_pixels)
    if a.dtype == np.uint8:
        a8 = a
    elif a.dtype == np.bool_:
        a8 = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a8 = np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a8 = np.rint(_float_to_255(a.astype(np.float64))).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        a8 = np.clip(a, 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"{name}: unsupported array dtype {a.dtype}")
    if a8.ndim == 2:
        return np.repeat(a8[:, :, None], 3, axis=2).copy()
    if a8.shape[2] == 4:
        rgb = a8[:, :, :3].astype(np.float64)
        alpha = a8[:, :, 3:].astype(np.float64) / 255.0
        bg = np.asarray(_BACKGROUNDS[background], dtype=np.float64)
        return np.rint(rgb * alpha + bg * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a8).copy()
