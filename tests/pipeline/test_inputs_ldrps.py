"""The inputs of a call: images of every supported kind to one validated batch, one prompt and generator per image."""

import numpy as np
import PIL.Image
import pytest
import torch

from ldrps_pipeline.inputs_ldrps import image_to_tensor, per_image_inputs
from tiny_components import tiny_image


def test_every_image_kind_gives_the_same_float_batch():
    image = tiny_image(5, 7, batch=2)
    as_uint8 = (image.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    expected = torch.from_numpy(as_uint8).permute(0, 3, 1, 2).float() / 255
    kinds = [
        as_uint8,  # (B, H, W, 3) uint8
        list(as_uint8),  # a list of (H, W, 3) arrays
        [PIL.Image.fromarray(a) for a in as_uint8],  # a list of PIL images
        expected,  # (B, 3, H, W) float
        torch.from_numpy(as_uint8).permute(0, 3, 1, 2),  # (B, 3, H, W) uint8
    ]
    for kind in kinds:
        batch = image_to_tensor(kind)
        assert batch.dtype == torch.float32 and torch.equal(batch, expected)
    assert torch.equal(image_to_tensor(expected[0]), expected[:1])  # (3, H, W)
    assert torch.equal(
        image_to_tensor(PIL.Image.fromarray(as_uint8[0]).convert("L")),
        image_to_tensor(PIL.Image.fromarray(as_uint8[0]).convert("L").convert("RGB")),
    )


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.rand(8, 8), "shape"),
        (torch.rand(1, 1, 3, 8, 8), "shape"),
        (torch.rand(1, 4, 8, 8), "shape"),
        (np.random.rand(8, 8, 1), "shape"),
        (torch.full((3, 8, 8), float("nan")), "NaN"),
        (np.full((8, 8, 3), np.inf, dtype=np.float32), "NaN or infinite"),
        (torch.rand(3, 8, 8) * 2 - 1, r"\[0, 1\]"),
        ([tiny_image(8, 8)[0], tiny_image(8, 9)[0]], "same size"),
        ("image.png", "PIL image"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "uint8 or floating-point"),
        ([], "empty list"),
        (torch.zeros(3, 0, 8), "empty"),
        (torch.zeros(0, 3, 8, 8), "empty"),
        (np.zeros((0, 0, 3), dtype=np.uint8), "empty"),
        (PIL.Image.new("RGB", (0, 0)), "empty"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(ValueError, match=message):
        image_to_tensor(image)


def test_one_prompt_and_generator_per_image():
    generators = [torch.Generator(), torch.Generator()]
    degraded, prompts, negative_prompts, per_image = per_image_inputs(tiny_image(8, 8, batch=2), "a", None, generators)
    assert degraded.shape == (2, 3, 8, 8) and prompts == ["a", "a"] and negative_prompts == ["", ""]
    assert per_image == generators
    _, prompts, negative_prompts, per_image = per_image_inputs(tiny_image(8, 8, batch=2), None, ["x", "y"], None)
    assert prompts is None and negative_prompts == ["x", "y"] and per_image == [None, None]


@pytest.mark.parametrize(
    ("prompt", "negative_prompt", "generator", "message"),
    [
        (["a"], "", None, "prompt has 1 entries for a batch of 2 images"),
        ("a", 3, None, "negative_prompt must be a string"),
        ("a", "", [torch.Generator()], "got 1 generators for a batch of 2 images"),
    ],
)
def test_per_image_inputs_of_the_wrong_number_or_kind_are_refused(prompt, negative_prompt, generator, message):
    with pytest.raises(ValueError, match=message):
        per_image_inputs(tiny_image(8, 8, batch=2), prompt, negative_prompt, generator)
