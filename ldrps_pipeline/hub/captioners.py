"""Loading a captioner and its processor by Hub id or folder, and the captioners the project recommends.

Captioners load with transformers' own classes (``AutoModelForImageTextToText``, ``AutoProcessor``),
weights from safetensors only, and never with remote code. Sizes and memory in :data:`CAPTIONERS` are
estimates: bfloat16 weights (2 bytes a parameter) plus an allowance for one image's activations and
a 40-token caption.
"""

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from ldrps_pipeline.hub.optional_dependencies import torchvision_available


@dataclass(frozen=True)
class CaptionerChoice:
    """A captioner the project has checked: what it is, what it costs, how it is prompted.

    Attributes:
        repo_id: its Hub id.
        family: the transformers model type (``config.model_type``).
        parameters_billion: its parameter count, in billions.
        bf16_memory_gb: estimated accelerator memory to caption one image in bfloat16 (weights plus
            activations), in GB.
        licence: the licence of the weights, as the model card states it.
        notes: prompt convention, requirements, caveats.
    """

    repo_id: str
    family: str
    parameters_billion: float
    bf16_memory_gb: float
    licence: str
    notes: str

    @property
    def bf16_weights_gb(self) -> float:
        """The bfloat16 weights alone: 2 bytes a parameter, in GB."""
        return round(2 * self.parameters_billion, 1)

    @property
    def needs_torchvision(self) -> bool:
        """Whether its processor needs torchvision (see :func:`processor_needs_torchvision`)."""
        return processor_needs_torchvision(self.family)


CAPTIONERS: tuple[CaptionerChoice, ...] = (
    CaptionerChoice(
        "HuggingFaceTB/SmolVLM-Instruct",
        "idefics3",
        2.25,
        5.5,
        "Apache-2.0",
        "recommended: follows the LD-RPS instruction through its chat template",
    ),
    CaptionerChoice(
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        "idefics3",
        0.26,
        1.0,
        "Apache-2.0",
        "the smallest instruction-following choice, usable on a CPU; terser, less accurate captions",
    ),
    CaptionerChoice(
        "Qwen/Qwen2-VL-2B-Instruct",
        "qwen2_vl",
        2.21,
        6.0,
        "Apache-2.0",
        "chat template; its image tokens (and memory) grow with the image's pixels",
    ),
    CaptionerChoice(
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "qwen2_5_vl",
        3.75,
        9.0,
        "Qwen research licence (see its model card)",
        "chat template; its image tokens (and memory) grow with the image's pixels",
    ),
    CaptionerChoice(
        "OpenGVLab/InternVL3-1B-hf",
        "internvl",
        0.94,
        3.0,
        "see its model card",
        "chat template; the transformers-native ('-hf') conversion of the reference captioner's family",
    ),
    CaptionerChoice(
        "llava-hf/llava-1.5-7b-hf",
        "llava",
        7.06,
        15.5,
        "Llama 2 community licence",
        "chat template; large",
    ),
    CaptionerChoice(
        "Salesforce/blip2-opt-2.7b",
        "blip-2",
        3.87,
        8.5,
        "MIT",
        "prompted 'Question: <instruction> Answer:'; its OPT decoder is not instruction-tuned",
    ),
    CaptionerChoice(
        "florence-community/Florence-2-base",
        "florence2",
        0.23,
        1.0,
        "MIT",
        "takes a caption task token (default <DETAILED_CAPTION>), not the instruction; microsoft/Florence-2-* "
        "repos need remote code and are refused",
    ),
    CaptionerChoice(
        "google/paligemma-3b-mix-224",
        "paligemma",
        2.92,
        6.5,
        "Gemma terms (gated: accept them on the Hub and pass a token)",
        "takes a task prefix (default 'caption en'), not the instruction",
    ),
)
"""Checked captioners, the recommended one first."""

RECOMMENDED_CAPTIONER = CAPTIONERS[0].repo_id
"""The captioner the project recommends (see :data:`CAPTIONERS`)."""


def captioner_table() -> str:
    """:data:`CAPTIONERS` as a Markdown table, for the README and the model card."""
    rows = [
        "| captioner | parameters | bf16 weights | bf16 memory (est.) | needs torchvision | licence | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| `{c.repo_id}` | {c.parameters_billion:g} B | {c.bf16_weights_gb:g} GB | ~{c.bf16_memory_gb:g} GB | "
        f"{'yes' if c.needs_torchvision else 'no'} | {c.licence} | {c.notes} |"
        for c in CAPTIONERS
    ]
    return "\n".join(rows)


def _checked_source(captioner: str) -> str:
    """``captioner`` itself once it is known to be a model folder (with config.json) or a possible Hub id."""
    path = Path(captioner)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"captioner folder {captioner} is not a transformers model folder (it has no config.json)")
        return captioner
    if path.exists():
        raise ValueError(f"captioner {captioner} is a file, not a transformers model folder or Hub id")
    try:
        validate_repo_id(captioner)
    except HFValidationError:
        raise ValueError(
            f"captioner folder {captioner} does not exist (and it is not a Hub repo id like 'user/model')"
        ) from None
    return captioner


def _config(captioner: str, revision: str | None, token: str | bool | None) -> Any:
    try:
        config = AutoConfig.from_pretrained(captioner, revision=revision, token=token)
    except OSError as error:  # no connection, no such repository, no access (gated), no config.json
        raise OSError(f"cannot load captioner {captioner!r}: {error}") from error
    except ValueError as error:  # a model type transformers does not know: remote code
        raise ValueError(
            f"captioner {captioner!r} is not a model transformers knows without remote code, which the project does "
            f"not run ({error}); choose a transformers-native checkpoint, such as {RECOMMENDED_CAPTIONER}"
        ) from error
    if any(key.startswith("AutoModel") for key in (getattr(config, "auto_map", None) or {})):
        raise ValueError(
            f"captioner {captioner!r} ships its own modelling code (auto_map in its config.json), which the project "
            "does not run; choose its transformers-native conversion (for Florence-2: florence-community/"
            "Florence-2-base; for InternVL: the '-hf' repositories)"
        )
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ValueError(
            f"captioner {captioner!r} is a {config.model_type!r} model, not an image-text-to-text model that can "
            f"caption an image (for example {RECOMMENDED_CAPTIONER})"
        )
    return config


def processor_needs_torchvision(model_type: str) -> bool:
    """Whether the processor of the ``model_type`` family takes a video processor: transformers 5 then
    cannot build it without torchvision, even to process images alone."""
    processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES.get(model_type) or "", None)
    return processor_class is not None and "video_processor" in inspect.signature(processor_class.__init__).parameters


def _processor(captioner: str, config: Any, revision: str | None, token: str | bool | None) -> Any:
    if processor_needs_torchvision(config.model_type) and not torchvision_available():
        raise ImportError(
            f"the processor of captioner {captioner!r} ({config.model_type}) needs torchvision, which is not "
            "installed: install the torchvision build that matches your torch, or choose a captioner whose "
            f"processor does not need it, such as {RECOMMENDED_CAPTIONER}"
        )
    try:
        processor = AutoProcessor.from_pretrained(captioner, revision=revision, token=token)
    except OSError as error:
        raise OSError(f"cannot load the processor of captioner {captioner!r}: {error}") from error
    if not hasattr(processor, "image_processor"):
        raise ValueError(
            f"captioner {captioner!r} has no image processor (AutoProcessor gave a {type(processor).__name__})"
        )
    return processor


def load_captioner(
    captioner: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    revision: str | None = None,
    token: str | bool | None = None,
) -> tuple[Any, Any]:
    """Load a captioner and its processor, ready for ``caption_images`` or ``LDRPSPipeline(captioner=...)``.

    Args:
        captioner: a Hub id (e.g. :data:`RECOMMENDED_CAPTIONER`) or a local model folder.
        dtype: the weights' dtype (bfloat16 halves the memory on an accelerator).
        device: where the weights go.
        revision: a Hub branch, tag or commit.
        token: a Hub token, for gated or private repositories (e.g. PaliGemma).

    Returns:
        ``(model, processor)``: the model in eval mode with its parameters frozen, on ``device``.

    Raises:
        ValueError: naming ``captioner``, before any weights load, when it is neither a model folder
            nor a Hub id, needs remote code, is not an image-text-to-text model, or has no image processor.
        ImportError: naming ``captioner``, when its processor needs torchvision and it is missing.
        OSError: naming ``captioner``, when the Hub cannot be reached or refuses it (no such
            repository, gated), or it has no safetensors weights.
    """
    source = _checked_source(captioner)
    config = _config(source, revision, token)
    processor = _processor(source, config, revision, token)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source, revision=revision, token=token, dtype=dtype, use_safetensors=True
        )
    except OSError as error:
        raise OSError(f"cannot load the weights of captioner {captioner!r} (safetensors only): {error}") from error
    model.eval().requires_grad_(False)
    return model.to(device), processor
