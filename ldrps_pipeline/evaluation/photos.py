"""Real RGB photos that ship inside installed Python packages, with a fixed train / held-out split.

The project trains its own small latent diffusion model (``ldrps_pipeline.demo_training.command``) and
benchmarks restoration on photos that need no download: they are data files of scikit-image,
scikit-learn and matplotlib (the optional ``bench`` extra). Only real photographs are used;
synthetic images (scikit-image's ``colorwheel``, ``chessboard``, ...) and grey-scale images are
left out.

Split (fixed, never changes between runs):

* ``TRAIN_PHOTOS`` (9): ``astronaut``, ``motorcycle_left``, ``motorcycle_right``,
  ``hubble_deep_field``, ``immunohistochemistry``, ``retina`` (scikit-image), ``china``,
  ``flower`` (scikit-learn) and ``grace_hopper`` (matplotlib).
* ``HELDOUT_PHOTOS`` (3): ``chelsea`` (a cat: fur, whiskers, smooth background), ``coffee``
  (an indoor still life: a cup on a saucer, wood, smooth highlights) and ``rocket`` (an outdoor
  scene at dusk: a rocket on its launch pad, towers, lights, a smooth blue sky). They are natural
  photos of varied content that the demo model never sees during training, so benchmarks on them
  measure generalisation. The two
  motorcycle images are a stereo pair of almost the same scene, so both stay on the training side
  (holding out one would leak its content through the other).

Photos are returned as ``float32`` arrays of shape (H, W, 3) with values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ALL_PHOTOS",
    "CAPTIONS",
    "HELDOUT_PHOTOS",
    "TRAIN_PHOTOS",
    "crop_and_resize",
    "heldout_crops",
    "photo_crops",
    "load_photo",
]

TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "china",
    "flower",
    "grace_hopper",
)
"""Photos used to train the demo model."""

HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea", "coffee", "rocket")
"""Photos never seen in training; used for benchmarks and the VAE's held-out PSNR."""

ALL_PHOTOS: tuple[str, ...] = TRAIN_PHOTOS + HELDOUT_PHOTOS
"""Every photo that ``load_photo`` knows."""

CAPTIONS: dict[str, str] = {
    "astronaut": "a photo of a smiling woman astronaut in a white space suit with a flag",
    "motorcycle_left": "a photo of a red and blue motorcycle in a garage",
    "motorcycle_right": "a photo of a red and blue motorcycle in a garage",
    "hubble_deep_field": "a photo of many small galaxies and stars in a black sky",
    "immunohistochemistry": "a microscope photo of stained tissue with brown and blue cells",
    "retina": "a photo of an orange retina with red blood vessels",
    "china": "a photo of a chinese temple with green trees under a blue sky",
    "flower": "a close-up photo of an orange dahlia flower on a dark green background",
    "grace_hopper": "a portrait photo of a woman in a dark navy uniform",
    "chelsea": "a photo of a cat",
    "coffee": "a photo of a cup of coffee on a saucer",
    "rocket": "a photo of a white rocket on a launch pad at dusk with towers and lights",
}
"""A short caption for every photo, built from its name and content (the demo model's prompts)."""

_EXTRA_HINT = "install it with `pip install ldrps-pipeline[bench]`"


def _missing(package: str, error: ImportError) -> ImportError:
    message = f"the sample photos need the optional package `{package}`: {_EXTRA_HINT}"
    return ImportError(message, name=getattr(error, "name", None))


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from skimage import data
        except ImportError as error:
            raise _missing("scikit-image", error) from error
        if name == "motorcycle_left":
            return data.stereo_motorcycle()[0]
        if name == "motorcycle_right":
            return data.stereo_motorcycle()[1]
        return getattr(data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as error:
            raise _missing("scikit-learn", error) from error
        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from matplotlib import cbook
            from matplotlib.image import imread
        except ImportError as error:
            raise _missing("matplotlib", error) from error
        with cbook.get_sample_data(filename) as handle:
            return imread(handle, format=filename.rsplit(".", 1)[-1])

    return load


_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _skimage("motorcycle_left"),
    "motorcycle_right": _skimage("motorcycle_right"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
}


def load_photo(name: str) -> np.ndarray:
    """Load one of the packaged photos.

    Args:
        name: one of ``ALL_PHOTOS``.

    Returns:
        The photo as a ``float32`` array of shape (H, W, 3) with values in [0, 1].

    Raises:
        KeyError: for an unknown name.
        ImportError: when the package that holds the photo is not installed.
    """
    if name not in _LOADERS:
        raise KeyError(f"unknown photo {name!r}; known photos: {', '.join(ALL_PHOTOS)}")
    image = np.asarray(_LOADERS[name]())
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"photo {name!r} is not an RGB image (shape {image.shape})")
    image = image[:, :, :3]
    if np.issubdtype(image.dtype, np.integer):
        image = image.astype(np.float32) / float(np.iinfo(image.dtype).max)
    return np.ascontiguousarray(np.clip(image.astype(np.float32), 0.0, 1.0))


def crop_and_resize(image: np.ndarray, top: int, left: int, side: int, size: int) -> np.ndarray:
    """Cut a square of ``side`` pixels at (top, left) and resize it to ``size`` x ``size``.

    Resizing uses antialiased bilinear interpolation (PIL's, through ``torch``), so the result
    matches the crops that the demo model is trained on.

    Args:
        image: (H, W, 3) float array in [0, 1].
        top: first row of the square.
        left: first column of the square.
        side: side length of the square in pixels of ``image``.
        size: output side length.

    Returns:
        A ``float32`` array of shape (size, size, 3) in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    patch = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(patch, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32)).permute(2, 0, 1)[None]
    tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return tensor[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy().astype(np.float32)


def photo_crops(
    photos: Sequence[str],
    size: int = 128,
    count_per_photo: int = 2,
    seed: int = 0,
    scale: tuple[float, float] | None = (0.5, 1.0),
) -> list[np.ndarray]:
    """Deterministic square crops of the named photos.

    With the default ``scale`` each crop covers a random square whose side is a fraction in
    ``scale`` of the photo's shorter side, resized to ``size`` (the same distribution that the demo
    model is trained on). With ``scale=None`` the crops are ``size`` x ``size`` pixels at the
    photo's native resolution (no resizing).

    Args:
        photos: names known to :func:`load_photo`.
        size: side length of every crop in pixels.
        count_per_photo: crops per photo.
        seed: seed of the crop positions; the same arguments always give the same crops.
        scale: range of the crop side as a fraction of the shorter side, or ``None`` for native
            resolution.

    Returns:
        ``len(photos) * count_per_photo`` arrays of shape (size, size, 3), ``float32`` in [0, 1],
        ordered photo by photo.
    """
    rng = np.random.default_rng(seed)
    crops: list[np.ndarray] = []
    for name in photos:
        image = load_photo(name)
        height, width = image.shape[:2]
        short = min(height, width)
        if size > short:
            raise ValueError(f"crop size {size} exceeds the shorter side {short} of photo {name!r}")
        for _ in range(count_per_photo):
            if scale is None:
                side = size
            else:
                # never upsample: a crop covers at least ``size`` pixels of the photo
                low = max(size, round(scale[0] * short))
                high = min(short, max(low, round(scale[1] * short)))
                side = int(rng.integers(low, high + 1))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            crops.append(crop_and_resize(image, top, left, side, size))
    return crops


def heldout_crops(
    size: int = 128,
    count_per_photo: int = 2,
    seed: int = 0,
    scale: tuple[float, float] | None = (0.5, 1.0),
) -> list[np.ndarray]:
    """:func:`photo_crops` of the held-out photos, in ``HELDOUT_PHOTOS`` order, for benchmarks."""
    return photo_crops(HELDOUT_PHOTOS, size, count_per_photo, seed, scale)
