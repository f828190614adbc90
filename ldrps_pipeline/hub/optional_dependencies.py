"""Optional dependencies that the loaders look for: the project itself runs without them."""


def torchvision_available() -> bool:
    """Whether torchvision imports here: its VGG16 weights (``perceptual="auto"``) and the processors of some
    captioner families need it. A torchvision built for another torch fails to import (``RuntimeError``: an
    operator does not exist), which counts as not available."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True
