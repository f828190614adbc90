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
