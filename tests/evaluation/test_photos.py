"""Tests of the packaged photos and their fixed train / held-out split."""

import sys

import numpy as np
import pytest

from ldrps_pipeline.evaluation import photos


def test_split_is_fixed_and_disjoint() -> None:
    assert set(photos.TRAIN_PHOTOS).isdisjoint(photos.HELDOUT_PHOTOS)
    assert len(photos.HELDOUT_PHOTOS) >= 3
    assert {"chelsea", "coffee"} <= set(photos.HELDOUT_PHOTOS)
    assert set(photos.ALL_PHOTOS) == set(photos.TRAIN_PHOTOS) | set(photos.HELDOUT_PHOTOS)
    assert len(set(photos.ALL_PHOTOS)) == len(photos.ALL_PHOTOS) == 12
    # the stereo pair must stay on one side of the split
    assert {"motorcycle_left", "motorcycle_right"} <= set(photos.TRAIN_PHOTOS)
    assert set(photos.CAPTIONS) == set(photos.ALL_PHOTOS)
    assert all(caption.strip() for caption in photos.CAPTIONS.values())


@pytest.mark.parametrize("name", photos.ALL_PHOTOS)
def test_every_photo_loads_as_rgb_float(name: str) -> None:
    image = photos.load_photo(name)
    assert image.dtype == np.float32
    assert image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) >= 256
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.05  # a real photo, not a constant


def test_heldout_crops_are_deterministic() -> None:
    first = photos.heldout_crops(size=128, count_per_photo=2, seed=3)
    again = photos.heldout_crops(size=128, count_per_photo=2, seed=3)
    other = photos.heldout_crops(size=128, count_per_photo=2, seed=4)
    assert len(first) == 2 * len(photos.HELDOUT_PHOTOS)
    for a, b in zip(first, again, strict=True):
        assert a.shape == (128, 128, 3) and a.dtype == np.float32
        assert 0.0 <= a.min() and a.max() <= 1.0
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_native_resolution_crops_are_not_resampled() -> None:
    native = photos.heldout_crops(size=64, count_per_photo=1, seed=0, scale=None)
    resized = photos.heldout_crops(size=64, count_per_photo=1, seed=0)
    # the packaged photos are 8-bit, so unresampled pixels lie exactly on the 1/255 grid
    for crop in native:
        np.testing.assert_allclose(crop * 255.0, np.round(crop * 255.0), atol=1e-3)
    assert any(np.abs(c * 255.0 - np.round(c * 255.0)).max() > 0.01 for c in resized)


def test_unknown_photo_raises() -> None:
    with pytest.raises(KeyError, match="unknown photo"):
        photos.load_photo("moon_landing")


def test_missing_optional_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(ImportError, match="scikit-image"):
        photos.load_photo("chelsea")
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="scikit-learn"):
        photos.load_photo("china")
