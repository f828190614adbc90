"""One entry point from a model name to a ready LDRPSPipeline: the bundled demo, an LD-RPS folder or
Hub repository, or any Stable-Diffusion-family text-to-image model (wrapped with ``from_pipe``)."""

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import hf_hub_download

from .alignment_ldrps import AlignmentModule
from .demo import demo_model_path
from .pipeline_ldrps import LDRPSPipeline
from .scheduling_ldrps import RecurrentPosteriorScheduler


def _model_index(model: str) -> dict:
    local = Path(model) / "model_index.json"
    path = local if local.is_file() else Path(hf_hub_download(model, "model_index.json"))
    return json.loads(path.read_text())


DTYPE_CHOICES = ("auto", "bfloat16", "float32")
"""The ``--dtype`` choices of the command-line tools (see :func:`resolve_dtype`)."""


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The weights' dtype for ``name``, one of :data:`DTYPE_CHOICES`.

    ``"auto"`` is bfloat16 on a CUDA device that supports it (the UNet and VAE in bf16; latents,
    the x0 clip and the losses stay float32 inside the pipeline), else float32.
    """
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {name!r}")
    if name == "auto":
        bf16 = torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, name)


def load_pipeline(model: str, *, dtype: torch.dtype = torch.float32) -> LDRPSPipeline:
    """Load ``model`` as an :class:`LDRPSPipeline`.

    Args:
        model: ``"demo"`` (the bundled model), a folder or Hub id of a saved LDRPSPipeline, or a
            folder or Hub id of a Stable-Diffusion-family pipeline (e.g.
            ``"stabilityai/stable-diffusion-2-1-base"``), which gets a default alignment module and
            posterior scheduler.
        dtype: the weights' dtype.
    """
    if model == "demo":
        model = str(demo_model_path())
    class_name = _model_index(model)["_class_name"]
    if "LDRPSPipeline" in (class_name if isinstance(class_name, list) else [class_name]):
        return LDRPSPipeline.from_pretrained(model, dtype=dtype)
    base = DiffusionPipeline.from_pretrained(model, dtype=dtype)
    return LDRPSPipeline.from_pipe(
        base, aligner=AlignmentModule(), posterior_scheduler=RecurrentPosteriorScheduler(), dtype=dtype
    )
