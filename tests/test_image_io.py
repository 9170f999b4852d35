"""load_image: modes, EXIF, and every failure mapped to ImageError naming the file."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from step_ris.data.image_io import ImageError, load_image


def _png_header_only(path: Path, width: int, height: int, bit_depth: int = 1, colour: int = 0) -> None:
    """A PNG whose IHDR claims width x height but that carries (almost) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def _check(a: np.ndarray, shape: tuple[int, int]) -> None:
    assert a.dtype == np.uint8 and a.shape == (*shape, 3)


def test_rgb_from_path_bytes_pil_and_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    for src in (p, str(p), p.read_bytes(), Image.fromarray(arr), arr):
        out = load_image(src)
        _check(out, (12, 17))
        np.testing.assert_array_equal(out, arr)


def test_grey_and_bilevel(tmp_path: Path) -> None:
    p = tmp_path / "g.png"
    Image.new("L", (5, 4), 100).save(p)
    out = load_image(p)
    _check(out, (4, 5))
    assert (out == 100).all()
    p1 = tmp_path / "b.png"
    Image.new("1", (5, 4), 1).save(p1)
    assert (load_image(p1) == 255).all()


def test_sixteen_bit_png_scaled(tmp_path: Path) -> None:
    a = np.array([[0, 65535, 128 * 257, 257]], dtype=np.uint16)
    p = tmp_path / "d16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load_image(p)
    _check(out, (1, 4))
    assert out[0, :, 0].tolist() == [0, 255, 128, 1]
    np.testing.assert_array_equal(load_image(a)[0, :, 1], [0, 255, 128, 1])


def test_int32_and_float_modes() -> None:
    i32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert i32.mode == "I"
    assert load_image(i32)[0, :, 0].tolist() == [0, 255]
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert f01.mode == "F"
    assert load_image(f01)[0, :, 0].tolist() == [0, 128, 255]
    f255 = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32))
    assert load_image(f255)[0, :, 0].tolist() == [0, 100, 255]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    _check(out, (16, 16))
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 6


def test_rgba_png_composited_over_white_or_black(tmp_path: Path) -> None:
    a = np.zeros((2, 2, 4), dtype=np.uint8)
    a[0, 0] = (255, 0, 0, 255)  # opaque red
    a[0, 1] = (255, 0, 0, 0)  # fully transparent
    a[1, 0] = (255, 0, 0, 128)  # half transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    white = load_image(p)
    assert white[0, 0].tolist() == [255, 0, 0]
    assert white[0, 1].tolist() == [255, 255, 255]
    assert white[1, 0, 0] == 255 and abs(int(white[1, 0, 1]) - 127) <= 1
    black = load_image(p, background="black")
    assert black[0, 1].tolist() == [0, 0, 0]
    assert abs(int(black[1, 0, 0]) - 128) <= 1 and black[1, 0, 1] == 0
    np.testing.assert_array_equal(load_image(a), white)  # arrays follow the same rule


def test_grey_alpha_and_palette_transparency(tmp_path: Path) -> None:
    la = Image.new("LA", (3, 3), (0, 0))
    assert (load_image(la) == 255).all()
    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert load_image(pal)[0, 0].tolist() == [10, 20, 30]
    pal.info["transparency"] = 0
    p = tmp_path / "pt.png"
    pal.save(p, transparency=0)
    assert load_image(p)[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    Image.fromarray(img).save(p, exif=exif, quality=95)
    out = load_image(p)
    _check(out, (40, 20))  # transposed
    assert out[:15].mean() > 200 and out[25:].mean() < 50  # left half became the top half
    _check(load_image(p, apply_exif=False), (20, 40))


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg.*not found"):
        load_image(p)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="notes.jpg.*not an image"):
        load_image(p)
    with pytest.raises(ImageError, match="bytes"):
        load_image(b"")


def test_truncated_jpeg(tmp_path: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.jpg.*truncated"):
        load_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_header_checked_before_decoding(tmp_path: Path) -> None:
    # 9000 x 9000 = 81 Mpx: under Pillow's own limit, over ours (64 Mpx).
    p = tmp_path / "bomb.png"
    _png_header_only(p, 9000, 9000)
    with pytest.raises(ImageError, match="bomb.png.*decompression bomb"):
        load_image(p)
    # 100000 x 100000: Pillow itself refuses at open(); still an ImageError naming the file.
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 100_000, 100_000)
    with pytest.raises(ImageError, match="huge.png.*decompression bomb"):
        load_image(huge, max_pixels=None)


def test_real_large_bilevel_png_with_lower_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("1", (3000, 2000), 0).save(p)
    with pytest.raises(ImageError, match="6,000,000 pixels"):
        load_image(p, max_pixels=1_000_000)
    _check(load_image(p, max_pixels=6_000_000), (2000, 3000))


def test_zero_size() -> None:
    with pytest.raises(ImageError, match="zero size"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 4)))


def test_bad_array_layout_and_type() -> None:
    with pytest.raises(ImageError, match="channels last"):
        load_image(np.zeros((3, 8, 8, 2), dtype=np.uint8))
    with pytest.raises(ImageError, match="int"):
        load_image(42)  # type: ignore[arg-type]
