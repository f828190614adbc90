"""Reading any image file (ldrps_pipeline/cli/image_files.py) and writing it back (image_writing.py): modes,
precision, orientation, alpha, ICC, sizes and damaged bytes, with hypothesis over all of them."""

import io

import numpy as np
import PIL.Image
import png
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, ImageCms

from ldrps_pipeline.cli.image_files import MINIMUM_SIDE, ImageFileError, read_image
from ldrps_pipeline.cli.image_writing import OUTPUT_EXTENSIONS, encode_image

LIMIT = 10**6


def saved(image: PIL.Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def png16(samples: np.ndarray, greyscale: bool, alpha: bool) -> bytes:
    height, width = samples.shape[:2]
    buffer = io.BytesIO()
    png.Writer(width, height, greyscale=greyscale, alpha=alpha, bitdepth=16).write(buffer, samples.reshape(height, -1))
    return buffer.getvalue()


def netpbm(samples: np.ndarray, maxval: int, header: bytes = b"") -> bytes:
    """A binary PGM (P5, for (H, W) samples) or PPM (P6, (H, W, 3)): samples of 2 bytes, big-endian, above 255."""
    height, width = samples.shape[:2]
    magic = b"P5" if samples.ndim == 2 else b"P6"
    raster = samples.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    return magic + b"\n" + header + b"%d %d\n%d\n" % (width, height, maxval) + raster


def tiff(samples: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, samples, **options)
    return buffer.getvalue()


def as_unit(rgb: np.ndarray) -> np.ndarray:
    return rgb / 255.0 if rgb.dtype == np.uint8 else rgb


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def ramps(height: int, width: int) -> np.ndarray:
    """Red rising to the right, green rising downwards: any rotation or flip shows."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 128)], axis=2).astype(np.uint8)


def test_exif_orientation_is_applied_so_a_phone_photo_is_upright():
    # A sideways photo: stored 12 wide and 8 high with orientation 6 (rotate 90 clockwise to view).
    stored = ramps(8, 12)
    exif = PIL.Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    image = read_image(saved(PIL.Image.fromarray(stored), "JPEG", exif=exif, quality=100), max_pixels=LIMIT)
    assert image.size == (8, 12) and "EXIF orientation 6 applied" in image.notes
    expected = np.asarray(PIL.Image.fromarray(stored).transpose(PIL.Image.Transpose.ROTATE_270))
    assert np.abs(image.rgb.astype(int) - expected).mean() < 8  # JPEG's loss only, not a rotation's


def test_16_bit_png_is_read_at_full_precision_with_its_orientation():
    samples = np.random.default_rng(1).integers(0, 65536, (8, 10, 3), dtype=np.uint16)
    data = png16(samples, greyscale=False, alpha=False)
    image = read_image(data, max_pixels=LIMIT)
    assert image.precision == "16-bit" and not image.grayscale
    assert np.array_equal(np.round(image.rgb * 65535).astype(np.uint16), samples)  # not the 8 bits Pillow keeps


def test_16_bit_ppm_and_pgm_are_read_at_full_precision_and_written_back_at_16_bit():
    samples = np.random.default_rng(4).integers(0, 1024, (8, 10, 3))
    image = read_image(netpbm(samples, 1023, header=b"# a 10-bit scan\n"), max_pixels=LIMIT)
    assert image.precision == "16-bit" and not image.grayscale and image.notes == ()
    assert np.abs(image.rgb * 1023 - samples).max() < 1e-3  # not the 8 bits Pillow reads them at
    data, notes = encode_image(image.rgb, extension="ppm", precision=image.precision)
    assert data.startswith(b"P6\n10 8\n65535\n") and notes == []
    assert np.abs(read_image(data, max_pixels=LIMIT).rgb - image.rgb).max() <= 0.5 / 65535 + 1e-7
    gray = read_image(netpbm(samples[..., 0] * 64, 65535), max_pixels=LIMIT)  # P5: Pillow's own 16-bit reading
    assert gray.precision == "16-bit" and gray.grayscale
    assert np.array_equal(np.round(gray.rgb[..., 0] * 65535), samples[..., 0] * 64)


def test_damaged_16_bit_ppms_and_plain_ones_are_named():
    samples = np.full((8, 8, 3), 700)
    with pytest.raises(ImageFileError, match="16-bit PPM pixels end early"):
        read_image(netpbm(samples, 1023)[:-1], max_pixels=LIMIT)
    with pytest.raises(ImageFileError, match="PPM samples up to 700, above its maxval 600"):
        read_image(netpbm(samples, 600), max_pixels=LIMIT)
    plain = b"P3\n8 8\n1023\n" + b" ".join(b"700" for _ in range(8 * 8 * 3))
    image = read_image(plain, max_pixels=LIMIT)
    assert image.precision == "8-bit" and "plain (P3) PPM above 8 bits: read at 8 bits (Pillow's)" in image.notes


def test_16_bit_gray_png_is_not_a_white_image():
    samples = np.full((9, 9), 1000, dtype=np.uint16)  # dark: 1000 / 65535
    image = read_image(saved(PIL.Image.fromarray(samples)), max_pixels=LIMIT)
    assert image.grayscale and image.precision == "16-bit"
    assert np.allclose(image.rgb, 1000 / 65535)


@pytest.mark.parametrize(
    ("samples", "options", "precision", "gray", "has_alpha"),
    [
        (np.arange(8 * 9 * 3, dtype=np.uint16).reshape(8, 9, 3) * 200, {"photometric": "rgb"}, "16-bit", False, False),
        (
            np.linspace(0, 1, 8 * 9 * 4, dtype=np.float32).reshape(8, 9, 4),
            {"photometric": "rgb", "extrasamples": ["unassalpha"]},
            "float",
            False,
            True,
        ),
        (np.linspace(0, 1, 8 * 9, dtype=np.float32).reshape(8, 9), {}, "float", True, False),
    ],
)
def test_16_bit_and_float_tiffs_keep_their_precision_and_alpha(samples, options, precision, gray, has_alpha):
    image = read_image(tiff(samples, **options), max_pixels=LIMIT)
    assert (image.precision, image.grayscale, image.alpha is not None) == (precision, gray, has_alpha)
    scale = 65535.0 if samples.dtype == np.uint16 else 1.0
    colour = samples[..., :3] if samples.ndim == 3 else samples[..., None]
    assert np.allclose(image.rgb, np.broadcast_to(colour / scale, image.rgb.shape), atol=1e-7)


def test_float_pixels_outside_the_unit_range_are_refused():
    with pytest.raises(ImageFileError, match=r"only \[0, 1\] is supported"):
        read_image(tiff(np.full((8, 8, 3), 2.5, dtype=np.float32), photometric="rgb"), max_pixels=LIMIT)


def test_palette_transparency_becomes_alpha_and_is_written_back():
    palette = PIL.Image.fromarray(noise(8, 10)).convert("P")
    image = read_image(saved(palette, transparency=palette.getpixel((0, 0))), max_pixels=LIMIT)
    assert image.alpha is not None and set(np.unique(image.alpha)) == {0.0, 1.0} and image.alpha[0, 0] == 0
    data, notes = encode_image(as_unit(image.rgb), extension="png", alpha=image.alpha)
    assert PIL.Image.open(io.BytesIO(data)).mode == "RGBA" and notes == []
    assert np.array_equal(read_image(data, max_pixels=LIMIT).alpha, image.alpha)


def test_icc_profiles_convert_8_bit_to_srgb_and_carry_16_bit_over():
    adobe_like = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # any non-sRGB profile
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    eight = read_image(saved(PIL.Image.fromarray(noise(8, 8)), icc_profile=srgb), max_pixels=LIMIT)
    assert eight.icc_profile is None and "converted from its ICC profile to sRGB" in eight.notes
    broken = read_image(saved(PIL.Image.fromarray(noise(8, 8)), icc_profile=b"not a profile"), max_pixels=LIMIT)
    assert broken.icc_profile is None and any("ICC profile not usable" in note for note in broken.notes)
    deep = read_image(tiff(np.zeros((8, 8, 3), np.uint16), photometric="rgb", iccprofile=srgb), max_pixels=LIMIT)
    assert deep.icc_profile == srgb
    data, notes = encode_image(deep.rgb, extension="png", precision="16-bit", icc_profile=srgb)
    assert PIL.Image.open(io.BytesIO(data)).info["icc_profile"] == srgb and notes == []
    _, notes = encode_image(deep.rgb, extension="tiff", precision="16-bit", icc_profile=adobe_like)
    assert any("ICC profile dropped" in note for note in notes)  # a LAB profile cannot describe RGB samples


def test_cmyk_and_gray_modes():
    cmyk = read_image(saved(PIL.Image.fromarray(noise(8, 8)).convert("CMYK"), "JPEG"), max_pixels=LIMIT)
    assert cmyk.rgb.shape == (8, 8, 3) and not cmyk.grayscale
    for mode in ("1", "L", "LA"):
        image = read_image(saved(PIL.Image.fromarray(noise(8, 8)).convert(mode)), max_pixels=LIMIT)
        assert image.grayscale and (image.alpha is not None) == (mode == "LA")
        assert np.array_equal(image.rgb[..., 0], image.rgb[..., 2])


def test_sizes_below_the_minimum_and_above_the_limit_are_refused_by_name():
    with pytest.raises(ImageFileError, match=f"1x1 px is below the minimum of {MINIMUM_SIDE} px"):
        read_image(saved(PIL.Image.new("RGB", (1, 1))), max_pixels=LIMIT)
    with pytest.raises(ImageFileError, match="above the limit of 100 pixels.*--max-pixels 120"):
        read_image(saved(PIL.Image.new("RGB", (12, 10))), max_pixels=100)
    with pytest.raises(ImageFileError, match="above the limit of 100 pixels"):
        read_image(tiff(np.zeros((10, 12, 3), np.uint16), photometric="rgb"), max_pixels=100)


def test_damaged_files_are_named_by_cause():
    good = saved(PIL.Image.fromarray(noise(32, 32)))
    with pytest.raises(ImageFileError, match="not an image file"):
        read_image(b"just some text", max_pixels=LIMIT)
    with pytest.raises(ImageFileError, match="truncated or corrupt"):
        read_image(good[: len(good) // 2], max_pixels=LIMIT)


@pytest.mark.parametrize("extension", OUTPUT_EXTENSIONS)
def test_precision_and_alpha_written_where_the_format_allows(extension):
    rgb = np.random.default_rng(2).random((8, 10, 3)).astype(np.float32)
    alpha = np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10)
    data, notes = encode_image(rgb, extension=extension, alpha=alpha, precision="16-bit")
    back = read_image(data, max_pixels=LIMIT)
    lossless_deep = extension in ("png", "tiff", "ppm")
    assert back.precision == ("16-bit" if lossless_deep else "8-bit")
    assert (back.alpha is None) == (extension in ("jpg", "ppm"))
    assert any("alpha dropped" in note for note in notes) == (extension in ("jpg", "ppm"))
    if lossless_deep:
        assert np.abs(back.rgb - rgb).max() <= 0.5 / 65535 + 1e-7
    else:
        assert any("written at 8 bit" in note for note in notes)


def test_keep_gray_writes_a_gray_image_at_16_bit():
    rgb = np.random.default_rng(3).random((8, 8, 3)).astype(np.float32)
    data, _ = encode_image(rgb, extension="png", gray=True, precision="16-bit")
    back = read_image(data, max_pixels=LIMIT)
    assert back.grayscale and back.precision == "16-bit"
    assert np.allclose(back.rgb[..., 0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-4)


MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
FORMATS = {"1": "PNG", "L": "PNG", "LA": "PNG", "P": "PNG", "RGB": "PNG", "RGBA": "PNG", "CMYK": "TIFF"}


def image_of(mode: str, width: int, height: int, seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return PIL.Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return PIL.Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.int32))
    if mode == "F":
        return PIL.Image.fromarray(rng.random((height, width)).astype(np.float32))
    return PIL.Image.fromarray((rng.random((height, width, 4)) * 255).astype(np.uint8), "RGBA").convert(mode)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(MODES),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    orientation=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_every_mode_size_and_orientation_reads_upright_or_is_refused_by_size(mode, width, height, orientation, seed):
    source = image_of(mode, width, height, seed)
    exif = PIL.Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    data = saved(source, FORMATS.get(mode, "TIFF"), exif=exif)
    if min(width, height) < MINIMUM_SIDE:
        with pytest.raises(ImageFileError, match="below the minimum"):
            read_image(data, max_pixels=LIMIT)
        return
    image = read_image(data, max_pixels=LIMIT)
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    assert image.size == upright
    assert image.rgb.shape == (upright[1], upright[0], 3)
    assert image.rgb.dtype in (np.uint8, np.float32) and np.isfinite(image.rgb).all()
    values = as_unit(image.rgb)
    assert values.min() >= 0 and values.max() <= 1
    assert image.grayscale == (mode in ("1", "L", "LA", "I;16", "I", "F"))
    assert image.precision == {"I;16": "16-bit", "I": "16-bit", "F": "float"}.get(mode, "8-bit")
    # The pixels are the source's, turned upright with Pillow's own rule.
    reference = np.asarray(PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(data))).convert("RGBA"))
    if mode in ("L", "RGB", "1"):
        assert np.array_equal(image.rgb, reference[..., :3])
    for extension in OUTPUT_EXTENSIONS:
        encoded, _ = encode_image(
            values, extension=extension, alpha=image.alpha, gray=image.grayscale, precision=image.precision
        )
        assert read_image(encoded, max_pixels=LIMIT).size == upright


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(8, 24),
    height=st.integers(8, 24),
    maxval=st.integers(256, 65535),
    gray=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_deep_netpbm_reads_its_samples_over_its_maxval(width, height, maxval, gray, seed):
    samples = np.random.default_rng(seed).integers(0, maxval + 1, (height, width) if gray else (height, width, 3))
    image = read_image(netpbm(samples, maxval), max_pixels=LIMIT)
    assert image.precision == "16-bit" and image.grayscale == gray and image.size == (width, height)
    expected = samples[..., None] if gray else samples
    # P6 is read exactly; Pillow scales a P5's samples to 0-65535 (rounded) before they are divided.
    assert np.abs(image.rgb - np.broadcast_to(expected / maxval, image.rgb.shape)).max() <= 0.5 / 65535 + 1e-6
    data, _ = encode_image(image.rgb, extension="ppm", precision=image.precision)
    assert np.abs(read_image(data, max_pixels=LIMIT).rgb - image.rgb).max() <= 0.5 / 65535 + 1e-7


@settings(max_examples=150, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["png", "jpeg", "tiff16", "png16", "ppm16", "webp", "gif"]))
def test_damaged_bytes_give_an_image_file_error_or_an_image_never_another_exception(data, kind):
    base = {
        "png": lambda: saved(PIL.Image.fromarray(noise(16, 16))),
        "jpeg": lambda: saved(PIL.Image.fromarray(noise(16, 16)), "JPEG"),
        "webp": lambda: saved(PIL.Image.fromarray(noise(16, 16)), "WEBP"),
        "gif": lambda: saved(PIL.Image.fromarray(noise(16, 16)).convert("P"), "GIF"),
        "tiff16": lambda: tiff(np.zeros((16, 16, 3), np.uint16), photometric="rgb", compression="zlib"),
        "png16": lambda: png16(np.zeros((16, 16, 3), np.uint16), greyscale=False, alpha=False),
        "ppm16": lambda: netpbm(np.full((16, 16, 3), 1000), 4095),
    }[kind]()
    cut = data.draw(st.integers(0, len(base)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=4))
    damaged = bytearray(base[:cut])
    for position, value in flips:
        if position < len(damaged):
            damaged[position] = value
    try:
        image = read_image(bytes(damaged), max_pixels=LIMIT)
    except ImageFileError as error:
        assert str(error)
    else:
        assert image.rgb.ndim == 3 and image.rgb.shape[2] == 3 and np.isfinite(as_unit(image.rgb)).all()
