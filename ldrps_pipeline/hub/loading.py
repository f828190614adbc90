"""One entry point from a model name to a ready LDRPSPipeline: the bundled demo, an LD-RPS folder or
Hub repository, or any Stable-Diffusion-family text-to-image model (wrapped with ``from_pipe``)."""

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from ldrps_pipeline.hub.captioners import load_captioner
from ldrps_pipeline.hub.perceptual_weights import load_perceptual_features
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline

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


def _model_index(model: str, revision: str | None = None, token: str | bool | None = None) -> dict:
    local = Path(model) / "model_index.json"
    if local.is_file():
        return json.loads(local.read_text())
    try:
        path = Path(hf_hub_download(model, "model_index.json", revision=revision, token=token))
    except (OSError, EntryNotFoundError) as error:  # no connection, no such repo, no access, no model_index.json
        raise OSError(f"cannot load {model!r} from the Hugging Face Hub: {error}") from error
    return json.loads(path.read_text())


ALLOW_PICKLE_HELP = "also load weights from pickle files (.bin, .pt), which can run code: only for a model you trust"
"""The help of ``--allow-pickle``, the same in every command that loads a model (:func:`load_pipeline`'s
``allow_pickle``)."""

DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
"""The ``--dtype`` choices of the command-line tools (see :func:`resolve_dtype`)."""


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The weights' dtype for ``name``, one of :data:`DTYPE_CHOICES`.

    ``"auto"`` is bfloat16 on a CUDA device with native bfloat16 (Ampere and newer; the UNet and VAE in bf16;
    latents, the x0 clip and the losses stay float32 inside the pipeline), else float32: cards that only emulate
    bfloat16 (T4, V100) would run it slowly, and ``"float16"`` is their choice, asked for explicitly.
    """
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {name!r}")
    if name == "auto":
        bf16 = torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
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


def load_pipeline(
    model: str,
    *,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    variant: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    captioner: str | None = None,
    perceptual: str | None = "auto",
    caption_instruction: str | None = None,
    caption_max_new_tokens: int | None = None,
) -> LDRPSPipeline:
    """Load ``model`` as an :class:`LDRPSPipeline`, with a captioner and perceptual features when asked.

    Args:
        model: ``"demo"`` (the bundled model), a folder or Hub id of a saved LDRPSPipeline, or a folder or Hub id of
            a Stable-Diffusion-family pipeline (SD 1.x, SD 2.x-base, SD 2.x 768 with v-prediction; e.g.
            :data:`~ldrps_pipeline.hub.model_card.PAPER_BASE_MODEL`), which gets the paper's alignment module and
            posterior scheduler.
        dtype: the weights' dtype (the latents, the x0 clip and the guidance losses stay float32 inside the pipeline).
        allow_pickle: also load weights from pickle files (``.bin``, ``.pt``), which can run arbitrary code when
            loaded; by default only safetensors weights are loaded.
        variant: the weights' variant (``"fp16"`` loads ``*.fp16.safetensors``), as in ``from_pretrained``.
        revision: the Hub branch, tag or commit of ``model``.
        token: a Hub token for gated or private repositories (of ``model`` and of ``captioner``).
        captioner: a captioner's Hub id or folder (e.g. :data:`~ldrps_pipeline.hub.captioners.RECOMMENDED_CAPTIONER`),
            loaded with :func:`~ldrps_pipeline.hub.captioners.load_captioner` in ``dtype`` on the CPU (the pipeline
            moves it to its device for each batch of captions); ``"none"``: no captioner; ``None``: the one
            ``model`` carries, if any.
        perceptual: where the perceptual features come from
            (:func:`~ldrps_pipeline.hub.perceptual_weights.load_perceptual_features`: ``"torchvision"``, a
            ``.safetensors`` file, a folder or Hub repo); ``"auto"``: the ones ``model`` carries, else torchvision's
            where it is installed, else none; ``"none"``: none; ``None``: the ones ``model`` carries, if any.
        caption_instruction: what the captioner is asked (``None``: the model's setting, else the paper's instruction).
        caption_max_new_tokens: the caption's token budget (``None``: the model's setting, else 40).

    Raises:
        ValueError: for a ``model``, ``captioner`` or ``perceptual`` source that is refused before any weights load.
        OSError: naming ``model``, when it is a Hub id that cannot be loaded (no connection, no such
            repository, no access), or when it has weights only in pickle files and ``allow_pickle`` is false.
    """
    model = resolve_model(model)
    class_name = _model_index(model, revision, token)["_class_name"]
    # The captioner and the perceptual features that were asked for load first: a bad source fails before the model.
    captioner_parts = None
    if captioner is not None:
        captioner_parts = (None, None) if captioner == "none" else load_captioner(captioner, dtype=dtype, token=token)
    features = None if perceptual in (None, "auto") else load_perceptual_features(perceptual, dtype=dtype)
    # use_safetensors=True refuses pickle weights; None prefers safetensors and falls back to pickle files.
    options = {
        "dtype": dtype,
        "use_safetensors": None if allow_pickle else True,
        "variant": variant,
        "revision": revision,
        "token": token,
    }
    caption_settings = {
        key: value
        for key, value in (
            ("caption_instruction", caption_instruction),
            ("caption_max_new_tokens", caption_max_new_tokens),
        )
        if value is not None
    }
    try:
        if "LDRPSPipeline" in (class_name if isinstance(class_name, list) else [class_name]):
            pipe = LDRPSPipeline.from_pretrained(model, **options, **caption_settings)
        else:
            base = DiffusionPipeline.from_pretrained(model, **options)
            pipe = LDRPSPipeline.from_pipe(base, dtype=dtype, **caption_settings)
    except OSError as error:
        if allow_pickle or "safetensors" not in str(error):
            raise
        raise OSError(
            f"{model}: only safetensors weights are loaded, and some are missing ({error}); if it holds a variant "
            "(such as *.fp16.safetensors), name it (--variant fp16, load_pipeline(variant='fp16')); pickle weights "
            "can run code when loaded: allow them (--allow-pickle, load_pipeline(allow_pickle=True)) only for a model "
            "you trust"
        ) from error
    # register_modules (not attribute assignment, which keeps a missing component's (None, None) in the config)
    # records the new components, so that save_pretrained writes them.
    if captioner_parts is not None:
        pipe.register_modules(captioner=captioner_parts[0], captioner_processor=captioner_parts[1])
    if perceptual == "auto" and pipe.perceptual is None:
        features = load_perceptual_features("auto", dtype=dtype)  # torchvision's VGG16 where it is installed
    if features is not None or perceptual == "none":
        pipe.register_modules(perceptual=features)
    return pipe
