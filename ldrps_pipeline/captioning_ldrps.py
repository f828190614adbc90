"""Turning a degraded image into a prompt with any transformers image-text-to-text model.

The captioner is asked what the clean image should look like (ALGORITHM.md, "Captioner
instruction"). Generation is greedy, so a caption is reproducible. A processor with a chat
template gets the instruction as a user turn with the image; a processor without one (BLIP-style
captioners) gets the image alone and captions it unconditionally.

This module imports no sibling module, so the Hub export can copy it beside the pipeline file.
"""

from typing import Any

import PIL.Image
import torch

CAPTION_INSTRUCTION = (
    "This is a low-quality image. Please briefly describe what the content should look like under normal "
    "and high-quality condition. Please reply with words or phrases, not exceeding 20 words. Please "
    "emphasize the main subject in the description and try to include details such as color and orientation."
)


def _processor_inputs(processor: Any, image: PIL.Image.Image, instruction: str) -> dict[str, Any]:
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]},
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        return processor(images=image, text=text, return_tensors="pt")
    return processor(images=image, return_tensors="pt")


@torch.no_grad()
def caption_images(
    model: Any,
    processor: Any,
    images: list[PIL.Image.Image],
    instruction: str = CAPTION_INSTRUCTION,
    max_new_tokens: int = 40,
) -> list[str]:
    """Caption each image with greedy decoding; returns one stripped string per image.

    Args:
        model: a transformers model with ``generate`` (image-text-to-text or image captioning).
        processor: its processor (``processor(images=..., text=...)``, ``batch_decode``).
        images: RGB images.
        instruction: the question asked of chat-style models.
        max_new_tokens: the generation budget (the instruction asks for at most 20 words).
    """
    device = model.device
    dtype = next(model.parameters()).dtype
    captions = []
    for image in images:
        inputs = _processor_inputs(processor, image, instruction)
        inputs = {
            k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and output.shape[1] >= prompt_ids.shape[1]:
            if torch.equal(output[:, : prompt_ids.shape[1]], prompt_ids):
                output = output[:, prompt_ids.shape[1] :]
        captions.append(processor.batch_decode(output, skip_special_tokens=True)[0].strip())
    return captions
