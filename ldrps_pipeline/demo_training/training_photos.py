"""The demo model's training photos: the packaged ones and Creative Commons photos from two Debian packages.

Two sources, chosen with ``ldrps-train-demo --training-photos``:

* ``packaged``: the 9 training photos of ``ldrps_pipeline.evaluation.photos.TRAIN_PHOTOS`` (scikit-image,
  scikit-learn, matplotlib; the ``bench`` extra);
* ``packaged+debian``: those and the 15 photographs of ``DEBIAN_PHOTOS``, wallpapers of the Debian packages
  ``lomiri-wallpapers-16.04`` and ``lomiri-wallpapers-20.04`` (the Ubuntu Touch wallpaper collections:
  CC-BY-4.0, CC-BY-SA-4.0, CC-BY-SA-3.0 and CC0-1.0, each photo's author and licence below and in the
  packages' ``/usr/share/doc/<package>/copyright``). Their abstract and illustrated wallpapers are left out.

The Debian photos are read from ``<root>/usr/share/backgrounds/...``: with ``root`` ``/`` after
``apt-get install lomiri-wallpapers-16.04 lomiri-wallpapers-20.04``, or, on a machine without apt (a lent GPU),
from a folder made elsewhere with ``apt-get download`` and ``dpkg-deb -x <package>.deb <folder>`` and copied
there. They are several megapixels, so each is reduced (Pillow, Lanczos) to a shorter side of
``DEBIAN_SHORT_SIDE`` pixels, about the packaged photos' scale, after Pillow applies its EXIF orientation.
The held-out photos of the benchmark are never among the training photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldrps_pipeline.evaluation.photos import CAPTIONS, TRAIN_PHOTOS, load_photo

__all__ = [
    "DEBIAN_PHOTOS",
    "DEBIAN_SHORT_SIDE",
    "PHOTO_SOURCES",
    "DebianPhoto",
    "TrainingPhoto",
    "load_debian_photo",
    "training_photos",
]

DEBIAN_SHORT_SIDE = 512
"""Shorter side, in pixels, to which each Debian photo is reduced."""


@dataclass(frozen=True)
class DebianPhoto:
    """A photograph that a Debian package installs under ``/usr/share/backgrounds``."""

    name: str
    package: str
    path: str
    author: str
    licence: str
    caption: str


@dataclass(frozen=True)
class TrainingPhoto:
    """One training photo: its name, caption and pixels, (H, W, 3) ``float32`` in [0, 1]."""

    name: str
    caption: str
    image: np.ndarray


def _lomiri_1604(name: str, filename: str, author: str, licence: str, caption: str) -> DebianPhoto:
    return DebianPhoto(name, "lomiri-wallpapers-16.04", filename, author, licence, caption)


DEBIAN_PHOTOS: tuple[DebianPhoto, ...] = (
    _lomiri_1604(
        "bridge", "Bridge_by_Sander_Klootwijk.jpg", "Sander Klootwijk", "CC-BY-SA-4.0",
        "a photo of a beach and a blue sky seen through the cables of a bridge",
    ),
    _lomiri_1604(
        "dragonfly", "Dragonfly_by_Bolly.jpg", "Bolly", "CC-BY-SA-4.0",
        "a photo of the green leaves of a tree against a blue sky",
    ),
    _lomiri_1604(
        "fig_bowl", "Picture_0B_by_freespace.jpg", 'Trevor "Freespace"', "CC-BY-4.0",
        "a photo of a red bowl with a halved fig on a grey table",
    ),
    _lomiri_1604(
        "paint_brushes", "Picture_1A_by_freespace.jpg", 'Trevor "Freespace"', "CC-BY-4.0",
        "a close-up photo of colourful paint brushes",
    ),
    _lomiri_1604(
        "wine_room", "Wine_by_Jakkub_Mede.jpg", "Jakub Mede", "CC-BY-4.0",
        "a photo of a room with a wooden table, a bottle of wine and a cushion",
    ),
    _lomiri_1604(
        "aitzgorri", "aitzgorri_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0",
        "a photo of a green meadow and autumn trees below a mountain",
    ),
    _lomiri_1604(
        "analog_pattern", "analogpattern_by_Peter_Nerlich.jpg", "Peter Nerlich", "CC-BY-SA-4.0",
        "a blurry photo of purple and green light",
    ),
    _lomiri_1604(
        "free_bird", "free_by_Peter_Nerlich.jpg", "Peter Nerlich", "CC-BY-SA-4.0",
        "a photo of a small bird figure hanging below white lamps",
    ),
    _lomiri_1604(
        "friends", "friends_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0",
        "a photo of two brown dogs looking out of a wooden house",
    ),
    _lomiri_1604(
        "greentock", "greentock_by_Peter_Nerlich.jpg", "Peter Nerlich", "CC-BY-SA-4.0",
        "a photo of a grey wall clock in green light",
    ),
    _lomiri_1604(
        "forest_stream", "life_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0",
        "a photo of a stream with rocks in a forest",
    ),
    _lomiri_1604(
        "picos_de_europa", "picosdeeuropa_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0",
        "a photo of a mountain path below rocky peaks and clouds",
    ),
    _lomiri_1604(
        "dandelions", "seeding_by_Clements_Engelhardt.jpg", "Clemens Engelhardt", "CC0-1.0",
        "a photo of dandelion seed heads in a meadow",
    ),
    _lomiri_1604(
        "sunset", "sunset_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0",
        "a photo of the sun setting over hills",
    ),
    DebianPhoto(
        "nuthatch", "lomiri-wallpapers-20.04", "Kleiber_by_Lukas_Baubkus.jpg", "Lukas Baubkus",
        "CC-BY-SA-3.0", "a photo of a small bird on a tree trunk",
    ),
)  # fmt: skip
"""The Debian photographs of ``packaged+debian``; ``path`` is relative to ``/usr/share/backgrounds``."""

PHOTO_SOURCES = ("packaged", "packaged+debian")
"""The values of ``ldrps-train-demo --training-photos``."""


def load_debian_photo(photo: DebianPhoto, root: Path = Path("/")) -> np.ndarray:
    """Read one Debian photo, EXIF-oriented and reduced to a shorter side of ``DEBIAN_SHORT_SIDE`` pixels.

    Args:
        photo: an entry of ``DEBIAN_PHOTOS``.
        root: the folder holding ``usr/share/backgrounds`` (``/`` where the packages are installed).

    Returns:
        A ``float32`` array of shape (H, W, 3) in [0, 1].

    Raises:
        FileNotFoundError: naming the file, its package and both ways to get it.
    """
    from PIL import Image, ImageOps

    path = Path(root) / "usr/share/backgrounds" / photo.path
    if not path.is_file():
        raise FileNotFoundError(
            f"training photo {photo.name!r} not found at {path}: it is in the Debian package {photo.package} "
            f"(`apt-get install {photo.package}`; on a machine without apt, `apt-get download {photo.package}` "
            "elsewhere, `dpkg-deb -x` it into a folder, copy that folder over and pass it as "
            "--debian-photo-root), or train with --training-photos packaged"
        )
    with Image.open(path) as handle:
        handle.draft("RGB", (2 * DEBIAN_SHORT_SIDE, 2 * DEBIAN_SHORT_SIDE))
        image = ImageOps.exif_transpose(handle).convert("RGB")
    scale = DEBIAN_SHORT_SIDE / min(image.size)
    if scale < 1.0:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def training_photos(source: str, debian_root: Path = Path("/")) -> list[TrainingPhoto]:
    """The training photos of ``source`` (one of ``PHOTO_SOURCES``), packaged ones first.

    Raises:
        ValueError: for an unknown source.
        FileNotFoundError: when a Debian photo is missing (see :func:`load_debian_photo`).
    """
    if source not in PHOTO_SOURCES:
        raise ValueError(f"unknown training-photo source {source!r}; choose from {', '.join(PHOTO_SOURCES)}")
    photos = [TrainingPhoto(name, CAPTIONS[name], load_photo(name)) for name in TRAIN_PHOTOS]
    if source == "packaged+debian":
        photos += [TrainingPhoto(p.name, p.caption, load_debian_photo(p, debian_root)) for p in DEBIAN_PHOTOS]
    return photos
