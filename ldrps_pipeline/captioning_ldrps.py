"""Turning a degraded image into a prompt with a transformers image-text-to-text model.

The captioner is asked what the clean image should look like (ALGORITHM.md, "Captioner
instruction"), in the prompt convention of its family (:func:`caption_prompt`):

- a processor with a chat template (Qwen2-VL, Qwen2.5-VL, LLaVA, Idefics3 / SmolVLM, InternVL-hf...)
  gets the instruction as a user turn with the image;
- BLIP-2 gets it as ``"Question: <instruction> Answer:"``;
- Florence-2 follows task tokens, not free text: ``"<DETAILED_CAPTION>"`` unless another caption task is named;
- PaliGemma follows task prefixes: ``"caption en"`` unless another caption prefix is named;
- any other model without a chat template (BLIP) captions the image alone and takes no instruction.

Generation is greedy and each image is captioned on its own, so a caption is reproducible and
does not depend on the other images of the batch. This module imports no sibling module, so the
Hub export can copy it beside the pipeline file.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import PIL.Image
import torch

CAPTION_INSTRUCTION = (
    "This is a low-quality image. Please briefly describe what the content should look like under normal "
    "and high-quality condition. Please reply with words or phrases, not exceeding 20 words. Please "
    "emphasize the main subject in the description and try to include details such as color and orientation."
)
"""The question asked of instruction-following captioners (ALGORITHM.md, "Captioner instruction")."""

CAPTION_MAX_NEW_TOKENS = 40
"""The default generation budget: the instruction asks for at most 20 words."""

FLORENCE2_CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
"""The Florence-2 task tokens that caption an image; the default is the detailed one (colours, layout)."""

PALIGEMMA_CAPTION_PREFIXES = ("caption ", "describe ", "answer ")
"""The PaliGemma task prefixes that describe an image ("caption en", "describe en", "answer en <question>")."""


def check_instruction(instruction: str | None) -> None:
    """Raise ``ValueError`` unless ``instruction`` is ``None`` or a non-empty string."""
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise ValueError(f"the caption instruction must be a non-empty string or None, got {instruction!r}")


def caption_prompt(model: Any, processor: Any, instruction: str | None = None) -> str | None:
    """The text that goes with the image to ``processor``, in the prompt convention of ``model``'s family.

    Args:
        model: the captioner (its ``config.model_type`` names the family).
        processor: its processor (a chat template, when it has one, formats the instruction).
        instruction: what to ask; ``None``: the family's default (:data:`CAPTION_INSTRUCTION` for
            instruction-following models, ``"<DETAILED_CAPTION>"`` for Florence-2, ``"caption en"`` for
            PaliGemma, no text for models that caption the image alone).

    Returns:
        The prompt text, or ``None`` when the image goes alone.

    Raises:
        ValueError: naming the family, for an instruction it cannot follow: free text for Florence-2
            (which takes one of :data:`FLORENCE2_CAPTION_TASKS`) or PaliGemma (a prefix from
            :data:`PALIGEMMA_CAPTION_PREFIXES`), or any instruction for a model that captions the image
            alone (BLIP); or an empty instruction.
    """
    check_instruction(instruction)
    model_type = getattr(model.config, "model_type", "")
    if model_type == "florence2":
        task = instruction or "<DETAILED_CAPTION>"
        if task not in FLORENCE2_CAPTION_TASKS:
            raise ValueError(
                f"Florence-2 follows task tokens, not free instructions: give one of {FLORENCE2_CAPTION_TASKS} "
                f"(or None for <DETAILED_CAPTION>), got {instruction!r}"
            )
        return task
    if model_type == "paligemma":
        prefix = instruction or "caption en"
        if not prefix.startswith(PALIGEMMA_CAPTION_PREFIXES):
            raise ValueError(
                "PaliGemma follows task prefixes, not free instructions: give one starting with "
                f"{PALIGEMMA_CAPTION_PREFIXES} such as 'caption en' (or None for it), got {instruction!r}"
            )
        return "<image>" + prefix
    if model_type == "blip-2":
        return f"Question: {instruction or CAPTION_INSTRUCTION} Answer:"
    if getattr(processor, "chat_template", None):
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": instruction or CAPTION_INSTRUCTION}],
            },
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    if instruction is not None:
        raise ValueError(
            f"{type(model).__name__} ({model_type or 'no model type'}) has no chat template and no known prompt "
            "convention: it captions the image alone and takes no instruction (leave the instruction unset)"
        )
    return None


def _model_inputs(processor: Any, image: PIL.Image.Image, prompt: str | None, model: Any) -> dict[str, torch.Tensor]:
    """The processor's tensors for one image, on the model's device, floating ones in its dtype (no labels)."""
    encoded = processor(images=image, return_tensors="pt", **({} if prompt is None else {"text": prompt}))
    device, dtype = model.device, model.dtype
    return {
        key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        for key, value in encoded.items()
        if isinstance(value, torch.Tensor) and key != "labels"
    }


def _new_tokens(output: torch.Tensor, prompt_ids: torch.Tensor | None) -> torch.Tensor:
    """The generated tokens without the prompt (decoder-only models return the prompt first; encoder-decoders do not)."""
    if prompt_ids is not None and output.shape[1] >= prompt_ids.shape[1]:
        if torch.equal(output[:, : prompt_ids.shape[1]], prompt_ids):
            return output[:, prompt_ids.shape[1] :]
    return output


@torch.no_grad()
def caption_images(
    model: Any,
    processor: Any,
    images: list[PIL.Image.Image],
    instruction: str | None = None,
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS,
) -> list[str]:
    """Caption each image with greedy decoding; returns one stripped string per image.

    Args:
        model: a transformers model with ``generate`` (image-text-to-text or image captioning), on the
            device it should run on.
        processor: its processor (``processor(images=..., text=...)``, ``batch_decode``).
        images: RGB images, each captioned on its own.
        instruction: what to ask, in the model family's convention (see :func:`caption_prompt`);
            ``None``: the family's default.
        max_new_tokens: the most tokens a caption may have.

    Raises:
        ValueError: for an instruction the family cannot follow (:func:`caption_prompt`), or a
            ``max_new_tokens`` that is not a positive integer.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    prompt = caption_prompt(model, processor, instruction)
    captions = []
    for image in images:
        inputs = _model_inputs(processor, image, prompt, model)
        output = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        new_tokens = _new_tokens(output, inputs.get("input_ids"))
        captions.append(processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip())
    return captions


def _device_of(model: Any) -> torch.device | None:
    """Where ``model``'s weights are (``model.device``, else its first parameter's device), ``None`` if unknown."""
    device = getattr(model, "device", None)
    if device is None and isinstance(model, torch.nn.Module):
        device = next((parameter.device for parameter in model.parameters()), None)
    return None if device is None else torch.device(device)


def _is_on(model: Any, device: torch.device) -> bool:
    """Whether ``model``'s weights are on ``device`` (``cuda`` without an index matches every CUDA index: the
    current one)."""
    current = _device_of(model)
    if current is None or current.type != device.type:
        return False
    return current.index == device.index or None in (current.index, device.index)


@contextlib.contextmanager
def captioner_on(model: Any, device: torch.device | str) -> Iterator[None]:
    """Keep ``model`` on ``device`` for the block, then move it back to the CPU, so that it holds no
    accelerator memory between caption batches.

    Nothing moves on the CPU, for a model under accelerate's offload hooks (which move it themselves), or
    for a model already on ``device`` (an outer block keeps it there: a folder run that captions image after
    image wraps the whole run in one block, and each caption inside it moves nothing). Caption a whole batch
    inside one block: the weights cross once each way.
    """
    device = torch.device(device)
    moves = device.type != "cpu" and not hasattr(model, "_hf_hook") and not _is_on(model, device)
    if moves:
        model.to(device)
    try:
        yield
    finally:
        if moves:
            model.to("cpu")


class PromptCaptioning:
    """Step 1 of :class:`LDRPSPipeline` (ALGORITHM.md, "Components: text prompt"): the prompts of a call, given or
    written by the captioner. A mixin of the pipeline, which supplies the ``captioner`` and ``captioner_processor``
    components, ``image_processor``, the config's ``caption_instruction`` and ``caption_max_new_tokens``, and
    ``_warn_once``."""

    def _prompts(self, prompts: list[str] | None, degraded: torch.Tensor, posterior: Any) -> list[str]:
        """The given prompts, else the captioner's (when the call's posterior scheduler, ``posterior``, uses
        captions: its config's ``use_caption``), else ``""``."""
        if prompts is not None:
            return prompts
        if posterior.config.use_caption and self.captioner is not None:
            return self.caption(degraded)
        if posterior.config.use_caption:
            self._warn_once("no captioner", "No prompt and no captioner: restoring with the empty prompt.")
        return [""] * degraded.shape[0]

    def caption(self, images: torch.Tensor) -> list[str]:
        """Ask the captioner what the clean version of each image (B, 3, H, W in [0, 1]) shows, with the
        config's ``caption_instruction`` and ``caption_max_new_tokens``.

        On an accelerator, a captioner that is not under diffusers' offload hooks is moved there for the
        batch's captions and back to the CPU right after, so that it holds no accelerator memory while sampling
        (:func:`captioner_on`; inside an outer ``captioner_on`` block it stays where it is).
        """
        pil_images = self.image_processor.numpy_to_pil(images.permute(0, 2, 3, 1).cpu().numpy())
        with captioner_on(self.captioner, self._execution_device):
            return caption_images(
                self.captioner,
                self.captioner_processor,
                pil_images,
                instruction=self.config.caption_instruction,
                max_new_tokens=self.config.caption_max_new_tokens,
            )
