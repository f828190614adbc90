"""The inputs of an LD-RPS call as the pipeline needs them: the images as one validated float batch, and the
prompts and generators one per image.

Bad input raises a ``ValueError`` that names the problem, before any model runs.

This module imports no sibling module, so the Hub export can copy it beside the pipeline file.
"""

import numpy as np
import PIL.Image
import torch

PipelineImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list[PIL.Image.Image] | list[np.ndarray]


def _validate_pixels(array: torch.Tensor, what: str) -> torch.Tensor:
    """Float32 pixels in [0, 1] from uint8 or float input; clear errors for anything else."""
    if not array.numel():
        raise ValueError(f"{what} is empty: it has shape {tuple(array.shape)}")
    if array.dtype == torch.uint8:
        return array.float() / 255.0
    if not array.is_floating_point():
        raise ValueError(f"{what} must hold uint8 or floating-point pixels, got dtype {array.dtype}")
    array = array.float()
    if not torch.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite pixel values")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(
            f"{what} must be in [0, 1] (floats) or 0-255 (uint8); got values in "
            f"[{array.min().item():.3g}, {array.max().item():.3g}]. A tensor in [-1, 1] needs (x + 1) / 2 first."
        )
    return array


def image_to_tensor(image: PipelineImageInput) -> torch.Tensor:
    """Convert the supported image inputs to one float32 batch (B, 3, H, W) in [0, 1], validating them.

    Accepted: a PIL image (any mode, converted to RGB); a numpy array (H, W, 3) or (B, H, W, 3),
    uint8 or float in [0, 1]; a torch tensor (3, H, W) or (B, 3, H, W), uint8 or float in [0, 1];
    a list of PIL images or of (H, W, 3) arrays. All images of a batch must share one size.
    """
    if isinstance(image, list):
        if not image:
            raise ValueError("image is an empty list")
        tensors = [image_to_tensor(item) for item in image]
        sizes = {tuple(t.shape[-2:]) for t in tensors}
        if len(sizes) > 1:
            raise ValueError(f"all images of a batch must have the same size, got sizes {sorted(sizes)}")
        return torch.cat(tensors)
    if isinstance(image, PIL.Image.Image):
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
        return _validate_pixels(pixels, "image").permute(2, 0, 1)[None]
    if isinstance(image, np.ndarray):
        if image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise ValueError(
                f"a numpy image must have shape (H, W, 3) or (B, H, W, 3) (RGB, channels last), got {image.shape}"
            )
        tensor = _validate_pixels(torch.from_numpy(np.ascontiguousarray(image)), "image")
        tensor = tensor[None] if tensor.ndim == 3 else tensor
        return tensor.permute(0, 3, 1, 2).contiguous()
    if isinstance(image, torch.Tensor):
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(
                f"a torch image must have shape (3, H, W) or (B, 3, H, W) (RGB, channels first), got {tuple(image.shape)}"
            )
        tensor = _validate_pixels(image.detach().cpu(), "image")
        return tensor[None] if tensor.ndim == 3 else tensor
    raise ValueError(f"image must be a PIL image, numpy array, torch tensor or a list of them, got {type(image)}")


def _per_image_texts(value: str | list[str] | None, batch_size: int, name: str) -> list[str] | None:
    """One text per image: a string for every image, or a list of ``batch_size`` strings (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value] * batch_size
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a string or a list of strings, got {type(value)}")
    if len(value) != batch_size:
        raise ValueError(f"{name} has {len(value)} entries for a batch of {batch_size} images")
    return value


def _per_image_generators(
    generator: torch.Generator | list[torch.Generator] | None, batch_size: int
) -> list[torch.Generator | None]:
    """One generator per image: a list of ``batch_size`` generators, or the one given (or ``None``) for every image."""
    if isinstance(generator, list):
        if len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size} images")
        return generator
    return [generator] * batch_size


def per_image_inputs(
    image: PipelineImageInput,
    prompt: str | list[str] | None,
    negative_prompt: str | list[str] | None,
    generator: torch.Generator | list[torch.Generator] | None,
) -> tuple[torch.Tensor, list[str] | None, list[str], list[torch.Generator | None]]:
    """The inputs of a call, validated: the images as one float32 batch (B, 3, H, W) in [0, 1]
    (:func:`image_to_tensor`), and one prompt (``None``: none given), one negative prompt (``None`` is ``""``)
    and one generator per image."""
    degraded = image_to_tensor(image)
    batch_size = degraded.shape[0]
    prompts = _per_image_texts(prompt, batch_size, "prompt")
    negative_prompts = _per_image_texts(
        "" if negative_prompt is None else negative_prompt, batch_size, "negative_prompt"
    )
    return degraded, prompts, negative_prompts, _per_image_generators(generator, batch_size)
