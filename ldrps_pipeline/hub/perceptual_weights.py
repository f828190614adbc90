"""Perceptual features in one call: VGG16 ``features[:9]`` from torchvision, a safetensors file, or a folder/Hub repo.

The perceptual terms of the ``default``, ``lowlight`` and ``dehaze`` presets need VGG16's ImageNet features through
relu2_2 (:class:`~ldrps_pipeline.perceptual_ldrps.PerceptualFeatures`). They come from, in the order ``"auto"`` tries:

1. ``"torchvision"``: torchvision's ``vgg16(weights=VGG16_Weights.IMAGENET1K_V1)`` (downloaded once by torchvision
   into its cache), where torchvision is installed;
2. a ``.safetensors`` file of a VGG16 state dict in torchvision's key layout (``features.N.weight``; other keys are
   ignored), e.g. written once with ``safetensors.torch.save_file(vgg16(weights=...).state_dict(), "vgg16.safetensors")``
   on a machine with torchvision;
3. a folder or Hub repo saved with ``PerceptualFeatures.save_pretrained`` (or an LD-RPS pipeline folder, whose
   ``perceptual/`` sub-folder is used).

Only safetensors weights are read: pickle files (``.bin``, ``.pt``, ``.pth``) are refused, since loading one can run code.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

from ldrps_pipeline.hub.optional_dependencies import torchvision_available
from ldrps_pipeline.perceptual_ldrps import HOW_TO_GET_PERCEPTUAL_FEATURES, PerceptualFeatures

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def vgg16_from_torchvision() -> PerceptualFeatures:
    """The ImageNet VGG16 features of torchvision (``VGG16_Weights.IMAGENET1K_V1``)."""
    try:
        from torchvision.models import VGG16_Weights, vgg16
    except ImportError as error:
        raise ValueError(
            f"perceptual='torchvision' needs torchvision, which is not installed: {HOW_TO_GET_PERCEPTUAL_FEATURES}"
        ) from error
    return PerceptualFeatures.from_vgg16_state_dict(vgg16(weights=VGG16_Weights.IMAGENET1K_V1).state_dict())


def load_perceptual_features(source: str, *, dtype: torch.dtype = torch.float32) -> PerceptualFeatures | None:
    """Perceptual features from ``source`` (see the module docstring), in ``dtype`` and eval mode.

    Args:
        source: ``"auto"`` (torchvision when installed, else ``None``), ``"torchvision"``, ``"none"``, a
            ``.safetensors`` file, or a folder or Hub repo id.
        dtype: the weights' dtype.

    Returns:
        The features, or ``None`` for ``"none"`` and for ``"auto"`` without torchvision.

    Raises:
        ValueError: naming ``source`` for a pickle file, a file of another kind, or torchvision asked for but missing.
    """
    if source == "none" or (source == "auto" and not torchvision_available()):
        return None
    if source in ("auto", "torchvision"):
        features = vgg16_from_torchvision()
    else:
        path = Path(source)
        if path.is_file():
            if path.suffix in PICKLE_SUFFIXES:
                raise ValueError(
                    f"{path} is a pickle file, which is not loaded (it can run code): convert it to safetensors "
                    "(safetensors.torch.save_file(torch.load(path), 'vgg16.safetensors')) where you trust it"
                )
            if path.suffix != ".safetensors":
                raise ValueError(f"{path} is not a .safetensors file; {HOW_TO_GET_PERCEPTUAL_FEATURES}")
            features = PerceptualFeatures.from_vgg16_state_dict(load_file(path))
        else:
            subfolder = "perceptual" if (path / "perceptual" / "config.json").is_file() else None
            features = PerceptualFeatures.from_pretrained(source, subfolder=subfolder, use_safetensors=True)
    if features.dtype != dtype:
        features = features.to(dtype)
    return features.eval().requires_grad_(False)
