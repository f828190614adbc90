"""The training photos (``demo_training.training_photos``): the packaged ones and the Debian ones, read from a root."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldrps_pipeline.demo_training.training_photos import (
    DEBIAN_PHOTOS,
    DEBIAN_SHORT_SIDE,
    load_debian_photo,
    training_photos,
)
from ldrps_pipeline.evaluation.photos import ALL_PHOTOS, HELDOUT_PHOTOS, TRAIN_PHOTOS

ORIENTATION = 0x0112
ROTATED_90 = 6  # EXIF: the stored pixels must be turned 90 degrees clockwise to display upright


def write_photo(root: Path, filename: str, size: tuple[int, int], orientation: int | None = None) -> None:
    path = root / "usr/share/backgrounds" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[: size[1] // 2] = (250, 0, 0)  # top half red, bottom half blue, in stored orientation
    pixels[size[1] // 2 :] = (0, 0, 250)
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)


def test_the_debian_photos_are_named_licensed_captioned_and_never_held_out() -> None:
    names = [photo.name for photo in DEBIAN_PHOTOS]
    assert len(names) == len(set(names)) == 15
    assert set(names).isdisjoint(ALL_PHOTOS)
    assert {photo.licence for photo in DEBIAN_PHOTOS} <= {"CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-SA-3.0", "CC0-1.0"}
    assert {photo.package for photo in DEBIAN_PHOTOS} == {"lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"}
    assert all(photo.caption.startswith("a ") and photo.author for photo in DEBIAN_PHOTOS)


def test_a_large_photo_is_oriented_by_its_exif_then_reduced(tmp_path: Path) -> None:
    photo = DEBIAN_PHOTOS[0]
    write_photo(tmp_path, photo.path, (1200, 800), orientation=ROTATED_90)
    image = load_debian_photo(photo, tmp_path)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    # Stored 1200 wide x 800 high, shown upright 800 x 1200, reduced to a shorter side of 512.
    assert image.shape == (1200 * DEBIAN_SHORT_SIDE // 800, DEBIAN_SHORT_SIDE, 3)
    # The stored top (red) is on the right once turned clockwise.
    left, right = image[:, :100].mean(axis=(0, 1)), image[:, -100:].mean(axis=(0, 1))
    assert right[0] > 0.9 and right[2] < 0.1 and left[2] > 0.9 and left[0] < 0.1


def test_a_small_photo_is_not_enlarged(tmp_path: Path) -> None:
    photo = DEBIAN_PHOTOS[1]
    write_photo(tmp_path, photo.path, (300, 200))
    assert load_debian_photo(photo, tmp_path).shape == (200, 300, 3)


def test_a_missing_photo_names_its_package_and_how_to_get_it(tmp_path: Path) -> None:
    photo = DEBIAN_PHOTOS[-1]
    with pytest.raises(FileNotFoundError) as error:
        load_debian_photo(photo, tmp_path)
    message = str(error.value)
    assert photo.package in message and "apt-get install" in message and "--debian-photo-root" in message
    assert str(tmp_path / "usr/share/backgrounds" / photo.path) in message


def test_the_sources_list_packaged_photos_first_then_the_debian_ones(tmp_path: Path) -> None:
    for photo in DEBIAN_PHOTOS:
        write_photo(tmp_path, photo.path, (96, 64))
    packaged = training_photos("packaged")
    both = training_photos("packaged+debian", tmp_path)
    assert [photo.name for photo in packaged] == list(TRAIN_PHOTOS)
    assert [photo.name for photo in both] == [*TRAIN_PHOTOS, *(photo.name for photo in DEBIAN_PHOTOS)]
    assert {photo.name for photo in both}.isdisjoint(HELDOUT_PHOTOS)
    assert both[-1].caption == DEBIAN_PHOTOS[-1].caption and both[-1].image.shape == (64, 96, 3)
    with pytest.raises(ValueError, match="packaged\\+debian"):
        training_photos("everything")
