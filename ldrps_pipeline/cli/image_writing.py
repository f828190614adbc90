"""Encoding a restored image into the bytes of a PNG, JPEG, WebP, TIFF or PPM file, at the input's precision where
the format allows, with its alpha put back and its ICC profile carried over.

The rules:

- precision: PNG is written at 16 bit for 16-bit and float inputs (pypng), else 8 bit (Pillow); TIFF at the
  input's precision, float32 for float inputs (tifffile, deflate-compressed); PPM (binary, P6) with maxval 65535
  (2-byte big-endian samples) for 16-bit and float inputs, else 255; JPEG (quality 95) and WebP (lossy, quality
  95) are 8-bit formats, which a note says when the input had more;
- alpha: put back unchanged in PNG, TIFF and WebP; JPEG and PPM have none, so it is dropped with a note;
- gray: a gray output (``keep_gray``) is the Rec. 601 luma of the restored colours (the weights of Pillow's
  ``convert("L")``); WebP and PPM (a colour format: gray is PGM's) store it as equal RGB channels;
- ICC: a profile carried over from a 16-bit or float input is embedded; a gray profile on a colourised (RGB)
  output cannot describe it, and PPM cannot hold one: either is dropped with a note.
"""

import io
import zlib

import numpy as np
import PIL.Image
import png
import tifffile
from PIL import ImageCms

from ldrps_pipeline.cli.image_files import Precision

OUTPUT_EXTENSIONS = ("png", "jpg", "webp", "tiff", "ppm")
"""The output formats of ``--ext``, by file extension."""

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""Rec. 601 luma weights of R, G, B: those of Pillow's ``convert("L")``."""

EIGHT_BIT_FORMATS = {"jpg": "JPEG", "webp": "WebP"}
NO_ALPHA_FORMATS = {"jpg": "JPEG", "ppm": "PPM"}


def encode_image(
    rgb: np.ndarray,
    *,
    extension: str,
    alpha: np.ndarray | None = None,
    gray: bool = False,
    precision: Precision = "8-bit",
    icc_profile: bytes | None = None,
) -> tuple[bytes, list[str]]:
    """The file bytes of a restored image, and notes on what the format could not keep.

    Args:
        rgb: (H, W, 3) float in [0, 1], the restored colours.
        extension: one of :data:`OUTPUT_EXTENSIONS`.
        alpha: (H, W) float in [0, 1], put back beside the colours; ``None``: opaque.
        gray: write the luma only (a gray image).
        precision: the input's precision, kept where the format allows.
        icc_profile: the profile the pixels are in (``None``: sRGB, untagged).
    """
    if extension not in OUTPUT_EXTENSIONS:
        raise ValueError(f"output extension must be one of {OUTPUT_EXTENSIONS}, got {extension!r}")
    notes: list[str] = []
    channels = (rgb @ LUMA_WEIGHTS)[..., None] if gray else rgb
    if alpha is not None and extension in NO_ALPHA_FORMATS:
        notes.append(f"alpha dropped: {NO_ALPHA_FORMATS[extension]} has no alpha channel")
        alpha = None
    if alpha is not None:
        channels = np.concatenate([channels, alpha[..., None]], axis=2)
    if icc_profile is not None and _profile_colour_space(icc_profile) != ("GRAY" if gray else "RGB"):
        notes.append("ICC profile dropped: it cannot be read or does not describe the output's colour space")
        icc_profile = None
    if extension == "tiff":
        return _tiff(channels, precision, icc_profile), notes
    if extension == "ppm":
        if icc_profile is not None:
            notes.append("ICC profile dropped: PPM cannot hold one")
        return _ppm(channels, precision), notes
    if extension == "png" and precision != "8-bit":
        return _png16(channels, icc_profile), notes
    if extension in EIGHT_BIT_FORMATS and precision != "8-bit":
        notes.append(f"written at 8 bit: {EIGHT_BIT_FORMATS[extension]} has no {precision} samples")
    return _pillow(channels, extension, icc_profile), notes


def _quantised(channels: np.ndarray, maximum: int, dtype: type) -> np.ndarray:
    """Round [0, 1] samples to integers in [0, maximum] as diffusers does (``(x * 255).round()``)."""
    return (np.clip(channels, 0.0, 1.0) * maximum).round().astype(dtype)


def _pillow(channels: np.ndarray, extension: str, icc_profile: bytes | None) -> bytes:
    samples = _quantised(channels, 255, np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[samples.shape[-1]]
    image = PIL.Image.fromarray(samples[..., 0] if mode == "L" else samples, mode)
    if extension == "webp" and mode in ("L", "LA"):
        image = image.convert("RGBA" if mode == "LA" else "RGB")
    options = {"png": {}, "jpg": {"quality": 95}, "webp": {"quality": 95}}[extension]
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    image.save(buffer, format={"png": "PNG", **EIGHT_BIT_FORMATS}[extension], **options)
    return buffer.getvalue()


def _png16(channels: np.ndarray, icc_profile: bytes | None) -> bytes:
    height, width, planes = channels.shape
    samples = _quantised(channels, 65535, np.uint16)
    writer = png.Writer(width, height, greyscale=planes in (1, 2), alpha=planes in (2, 4), bitdepth=16)
    buffer = io.BytesIO()
    writer.write(buffer, samples.reshape(height, width * planes))
    if icc_profile is None:
        return buffer.getvalue()
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    # iCCP: profile name, a NUL, compression method 0 (zlib), the compressed profile; it must precede IDAT.
    iccp = (b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))
    tagged = io.BytesIO()
    png.write_chunks(tagged, [chunks[0], iccp, *chunks[1:]])
    return tagged.getvalue()


def _ppm(channels: np.ndarray, precision: Precision) -> bytes:
    """A binary PPM (P6): 2-byte big-endian samples with maxval 65535 above 8 bits (the netpbm spec), else bytes."""
    maxval, dtype = (255, np.uint8) if precision == "8-bit" else (65535, ">u2")
    samples = _quantised(np.broadcast_to(channels, (*channels.shape[:2], 3)), maxval, dtype)
    height, width = samples.shape[:2]
    return b"P6\n%d %d\n%d\n" % (width, height, maxval) + samples.tobytes()


def _tiff(channels: np.ndarray, precision: Precision, icc_profile: bytes | None) -> bytes:
    if precision == "float":
        samples = np.clip(channels, 0.0, 1.0).astype(np.float32)
    else:
        samples = _quantised(
            channels, 65535 if precision == "16-bit" else 255, {"16-bit": np.uint16}.get(precision, np.uint8)
        )
    planes = samples.shape[-1]
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        samples[..., 0] if planes == 1 else samples,
        photometric="minisblack" if planes in (1, 2) else "rgb",
        planarconfig="contig",
        extrasamples=["unassalpha"] if planes in (2, 4) else None,
        compression="zlib",
        iccprofile=icc_profile,
    )
    return buffer.getvalue()


def _profile_colour_space(icc_profile: bytes) -> str | None:
    """The colour space an ICC profile describes ('RGB', 'GRAY', 'CMYK', ...), or ``None`` if unreadable."""
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)).profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
