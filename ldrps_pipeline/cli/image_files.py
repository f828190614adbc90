"""Reading any image file into the pixels the pipeline takes: EXIF orientation applied, every mode at its full
precision, alpha kept aside, colour converted to sRGB (8-bit) or its ICC profile carried over (16-bit, float).

Pillow reads everything it holds at full precision; 16-bit PNGs go through pypng, TIFFs of more than 8 bits per
sample through tifffile, and binary PPMs (P6) with a maxval above 255 through numpy (after Pillow's reading of their
header), because Pillow keeps only 8 bits of 16-bit colour. The rules, in the order applied:

- orientation: the EXIF (or TIFF) Orientation tag is applied (Pillow's ``ImageOps.exif_transpose``), so a phone
  photo is restored upright and written upright, without the tag;
- modes: ``1`` and ``L`` are 8-bit gray; ``LA`` / ``La`` gray with alpha; ``P`` and ``PA`` become RGB, or RGBA
  when they have transparency; ``RGBA`` / ``RGBa`` keep their alpha; ``CMYK``, ``YCbCr``, ``LAB`` and ``HSV``
  become RGB; ``I;16*`` and 16-bit PNG / TIFF samples are 16-bit; ``I`` (32-bit integers, how some readers hold
  16-bit gray, PGMs with a maxval above 255 among them) is taken as 16-bit and refused outside 0-65535; ``F`` and
  float TIFFs are float and refused outside [0, 1] (HDR is not supported);
- netpbm: a PPM or PGM with a maxval above 255 (2 bytes a sample, big-endian, as the netpbm spec says) is 16-bit,
  its samples divided by its maxval; plain (ASCII, P3) PPMs are Pillow's, which reads their colour at 8 bits (a
  note says so when their maxval is above 255);
- alpha is taken off before the restoration and put back on the restored image unchanged;
- colour: 8-bit images with an ICC profile are converted to sRGB on the way in (``PIL.ImageCms``, perceptual
  intent), since the prior works in sRGB; their outputs are sRGB and carry no profile. 16-bit and float images
  keep their pixel values and their profile, which the output carries over (converting through an 8-bit
  colour engine would lose the precision they were saved for);
- grayscale: a gray input (by its mode) is flagged, so the command can colourise it (the paper's reading of a
  gray photo as a degradation) or keep it gray.
"""

import io
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import PIL.Image
import png
import tifffile
from PIL import ExifTags, ImageCms, ImageOps

Precision = Literal["8-bit", "16-bit", "float"]
"""How many bits a file's samples hold: the command writes the output back at the same precision where the
output format allows."""

MINIMUM_SIDE = 8
"""The smallest width and height restored, in pixels: one latent cell of Stable Diffusion's VAE (8 pixels);
a smaller image holds too little for the prior to restore."""

TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
"""The first four bytes of a TIFF (classic and BigTIFF, either byte order)."""

SRGB = ImageCms.createProfile("sRGB")


class ImageFileError(ValueError):
    """A file that cannot be restored: not an image, truncated or corrupt, of the wrong size or of pixels the
    pipeline cannot take. The message names the cause (the file's name is the caller's to add)."""


@dataclass(frozen=True)
class ImageFile:
    """The pixels of one image file, ready for the pipeline, and what writing the result back needs.

    Attributes:
        rgb: (H, W, 3), uint8 for 8-bit files, else float32 in [0, 1]; a gray image is repeated into 3 channels.
        alpha: (H, W) float32 in [0, 1], or ``None`` for an opaque image.
        precision: the file's sample precision.
        grayscale: whether the file is a gray image (mode ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F`` or gray
            16-bit / float samples).
        icc_profile: the file's ICC profile when its pixels were kept in that colour space (16-bit and float
            files), else ``None`` (sRGB).
        notes: what reading did that a user may want to know (orientation applied, profile converted, ...).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    precision: Precision
    grayscale: bool
    icc_profile: bytes | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, upright."""
        return self.rgb.shape[1], self.rgb.shape[0]


def read_image(data: bytes, *, max_pixels: int, minimum_side: int = MINIMUM_SIDE) -> ImageFile:
    """The image in the file bytes ``data``.

    The size is checked from the header, before any pixel is decoded. Pillow's decompression-bomb guard
    (``PIL.Image.MAX_IMAGE_PIXELS``) stays as Pillow sets it.

    Raises:
        ImageFileError: naming the cause, for a file that is not an image, is truncated or corrupt, has a side
            below ``minimum_side`` or more than ``max_pixels`` pixels, or pixels out of the supported range.
    """
    try:
        if data[:4] in TIFF_SIGNATURES:
            with tifffile.TiffFile(io.BytesIO(data)) as tiff:
                if tiff.pages[0].bitspersample > 8:
                    return _from_tifffile(tiff, max_pixels, minimum_side)
        try:
            image = PIL.Image.open(io.BytesIO(data))
        except PIL.Image.UnidentifiedImageError:
            raise ImageFileError("not an image file (Pillow cannot identify its format)") from None
        except PIL.Image.DecompressionBombError as error:
            raise ImageFileError(f"refused by Pillow's decompression-bomb guard: {error}") from None
        check_size(*image.size, max_pixels=max_pixels, minimum_side=minimum_side)
        if image.format == "PNG" and png.Reader(bytes=data).read()[3]["bitdepth"] == 16:
            return _from_pypng(data, image)
        if image.format == "PPM" and image.mode == "RGB" and _ppm_maxval(image) > 255:
            if image.tile[0].codec_name == "ppm":  # binary (P6); P3 is plain text
                return _from_deep_ppm(data, image)
            plain = _from_pillow(image)
            return replace(plain, notes=(*plain.notes, "plain (P3) PPM above 8 bits: read at 8 bits (Pillow's)"))
        return _from_pillow(image)
    except ImageFileError:
        raise
    except Exception as error:  # the decoders raise many types on damaged bytes; each is a damaged file here
        raise ImageFileError(f"truncated or corrupt ({type(error).__name__}: {error})") from None


def check_size(width: int, height: int, *, max_pixels: int, minimum_side: int = MINIMUM_SIDE) -> None:
    """Raise :class:`ImageFileError` for an image too small to restore or above the pixel limit."""
    if min(width, height) < minimum_side:
        raise ImageFileError(f"{width}x{height} px is below the minimum of {minimum_side} px on each side")
    if width * height > max_pixels:
        raise ImageFileError(
            f"{width}x{height} px ({width * height} pixels) is above the limit of {max_pixels} pixels: restoring "
            f"it whole needs much device memory and time, and tiling is not implemented; pass --max-pixels "
            f"{width * height} to restore it anyway, or make it smaller"
        )


def _from_pillow(image: PIL.Image.Image) -> ImageFile:
    image.load()
    notes = _orientation_notes(image.getexif().get(ExifTags.Base.Orientation, 1))
    icc_profile = image.info.get("icc_profile")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _deep(_sixteen_bit(np.asarray(image)), None, "16-bit", icc_profile, notes)
    if image.mode == "F":
        return _deep(_unit_floats(np.asarray(image)), None, "float", icc_profile, notes)
    if image.mode in ("P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    elif image.mode in ("1", "La", "RGBa", "RGBX", "YCbCr", "HSV"):
        image = image.convert({"1": "L", "La": "LA", "RGBa": "RGBA"}.get(image.mode, "RGB"))
    if image.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "LAB"):
        raise ImageFileError(f"image mode {image.mode} is not supported")
    alpha = None
    if image.mode in ("LA", "RGBA"):
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
        image = image.convert(image.mode[:-1])
    grayscale = image.mode == "L"
    colour = _to_srgb(image, icc_profile, notes)
    rgb = np.asarray(colour)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return ImageFile(np.array(rgb), alpha, "8-bit", grayscale, None, tuple(notes))  # a writable copy for torch


def _to_srgb(image: PIL.Image.Image, icc_profile: bytes | None, notes: list[str]) -> PIL.Image.Image:
    """An 8-bit L, RGB, CMYK or LAB image in sRGB (L stays L without a profile)."""
    if image.mode == "LAB":
        return ImageCms.applyTransform(
            image, ImageCms.buildTransform(ImageCms.createProfile("LAB"), SRGB, "LAB", "RGB")
        )
    if icc_profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            converted = ImageCms.profileToProfile(image, source, SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as error:
            notes.append(f"ICC profile not usable ({error}): pixels taken as sRGB")
        else:
            notes.append("converted from its ICC profile to sRGB")
            return converted
    if image.mode == "CMYK":
        notes.append("CMYK without an ICC profile: converted to RGB with Pillow's simple formula")
        return image.convert("RGB")
    return image


def _from_pypng(data: bytes, image: PIL.Image.Image) -> ImageFile:
    """A 16-bit PNG (Pillow reads its colour at 8 bits): pixels from pypng, orientation and profile from Pillow."""
    width, height, rows, info = png.Reader(bytes=data).asDirect()
    samples = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, info["planes"])
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    samples = _oriented(samples, orientation)
    alpha = samples[..., -1] / 65535.0 if info["alpha"] else None
    colour = samples[..., :-1] if info["alpha"] else samples
    return _deep(colour / 65535.0, alpha, "16-bit", image.info.get("icc_profile"), _orientation_notes(orientation))


def _ppm_maxval(image: PIL.Image.Image) -> int:
    """The maxval in the header of a PPM that Pillow opened (its decoder's argument; 255 for its raw decoder)."""
    args = image.tile[0].args
    return args[1] if isinstance(args, tuple) else 255


def _from_deep_ppm(data: bytes, image: PIL.Image.Image) -> ImageFile:
    """A binary PPM (P6) with a maxval above 255, which Pillow reads at 8 bits: 2-byte big-endian samples (the
    netpbm spec) from where Pillow's reading of the header ended, divided by the maxval."""
    width, height = image.size
    maxval, offset = _ppm_maxval(image), image.tile[0].offset
    count = width * height * 3
    if len(data) - offset < 2 * count:
        raise ImageFileError(f"truncated or corrupt (its {width}x{height} 16-bit PPM pixels end early)")
    samples = np.frombuffer(data, dtype=">u2", count=count, offset=offset).reshape(height, width, 3)
    if samples.max() > maxval:
        raise ImageFileError(f"truncated or corrupt (PPM samples up to {samples.max()}, above its maxval {maxval})")
    return _deep(samples / maxval, None, "16-bit", None, [])


def _from_tifffile(tiff: tifffile.TiffFile, max_pixels: int, minimum_side: int) -> ImageFile:
    """A TIFF of more than 8 bits per sample (Pillow reads 16-bit colour at 8 bits and float colour not at all)."""
    page = tiff.pages[0]
    check_size(page.imagewidth, page.imagelength, max_pixels=max_pixels, minimum_side=minimum_side)
    notes = [] if len(tiff.pages) == 1 else [f"first of its {len(tiff.pages)} pages"]
    samples = page.asarray()
    if "S" in page.axes:
        samples = np.moveaxis(samples, page.axes.index("S"), -1)
    samples = samples.reshape(page.imagelength, page.imagewidth, -1)
    photometric = tifffile.PHOTOMETRIC(page.photometric)
    colour_samples = {tifffile.PHOTOMETRIC.MINISBLACK: 1, tifffile.PHOTOMETRIC.MINISWHITE: 1}.get(photometric)
    if photometric == tifffile.PHOTOMETRIC.RGB:
        colour_samples = 3
    if colour_samples is None or samples.shape[-1] not in (colour_samples, colour_samples + 1):
        raise ImageFileError(
            f"{page.bitspersample}-bit TIFF with photometric {photometric.name} and {samples.shape[-1]} samples "
            "per pixel is not supported (gray or RGB, optionally with alpha)"
        )
    if samples.dtype.kind in "iu":
        values, precision = _sixteen_bit(samples), "16-bit"
    elif samples.dtype.kind == "f":
        values, precision = _unit_floats(samples), "float"
    else:
        raise ImageFileError(f"TIFF samples of type {samples.dtype} are not supported (integers or floats)")
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        values[..., :colour_samples] = 1.0 - values[..., :colour_samples]
    orientation_tag = page.tags.get(ExifTags.Base.Orientation)
    orientation = orientation_tag.value if orientation_tag is not None else 1
    values = _oriented(values, orientation)
    alpha = values[..., colour_samples] if values.shape[-1] > colour_samples else None
    notes += _orientation_notes(orientation)
    return _deep(values[..., :colour_samples], alpha, precision, page.iccprofile, notes)


def _deep(
    values: np.ndarray, alpha: np.ndarray | None, precision: Precision, icc_profile: bytes | None, notes: list[str]
) -> ImageFile:
    """A 16-bit or float image: ``values`` (H, W) or (H, W, 1 or 3) in [0, 1]."""
    values = values.astype(np.float32)
    if values.ndim == 2:
        values = values[..., None]
    grayscale = values.shape[-1] == 1
    rgb = np.repeat(values, 3, axis=2) if grayscale else values
    alpha = None if alpha is None else np.ascontiguousarray(alpha, dtype=np.float32)
    if icc_profile:
        notes = [*notes, "ICC profile carried over (pixels kept in its colour space)"]
    return ImageFile(np.ascontiguousarray(rgb), alpha, precision, grayscale, icc_profile or None, tuple(notes))


def _sixteen_bit(samples: np.ndarray) -> np.ndarray:
    """Integer samples read as 16-bit (0-65535, as 32-bit readers hold 16-bit gray), scaled to [0, 1]."""
    if samples.dtype != np.uint16 and (samples.min() < 0 or samples.max() > 65535):
        raise ImageFileError(
            f"{samples.dtype.itemsize * 8}-bit integer pixels in [{samples.min()}, {samples.max()}]; integer "
            "pixels wider than 16 bits are read as 16-bit, in 0-65535"
        )
    return samples / 65535.0


def _unit_floats(samples: np.ndarray) -> np.ndarray:
    values = samples.astype(np.float32)
    if not np.isfinite(values).all():
        raise ImageFileError("float pixels include NaN or infinity")
    if values.min() < 0 or values.max() > 1:
        raise ImageFileError(
            f"float pixels in [{values.min():.4g}, {values.max():.4g}]; only [0, 1] is supported (HDR is not)"
        )
    return values


def _oriented(samples: np.ndarray, orientation: int) -> np.ndarray:
    """``samples`` (H, W, C) turned upright for an EXIF ``orientation``: Pillow's ``exif_transpose`` applied to an
    image of pixel indices, which then picks the samples (so any sample type gets Pillow's own rule)."""
    height, width = samples.shape[:2]
    indices = PIL.Image.fromarray(np.arange(height * width, dtype=np.int32).reshape(height, width))
    indices.getexif()[ExifTags.Base.Orientation] = orientation
    upright = np.asarray(ImageOps.exif_transpose(indices))
    return samples.reshape(height * width, -1)[upright].reshape(*upright.shape, samples.shape[-1])


def _orientation_notes(orientation: int) -> list[str]:
    return [f"EXIF orientation {orientation} applied"] if orientation in range(2, 9) else []
