"""What the package's commands (``ldrps-restore``, ``ldrps-benchmark``, ``ldrps-speed-benchmark``) share:
argparse number types with ranges, the up-front checks of the model, the device and a new output file, and
``--quiet``'s silencing of the libraries."""

import argparse
import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import huggingface_hub.utils
import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from ldrps_pipeline.hub.captioners import RECOMMENDED_CAPTIONER
from ldrps_pipeline.hub.loading import ALLOW_PICKLE_HELP, DTYPE_CHOICES, resolve_device, resolve_dtype, resolve_model
from ldrps_pipeline.hub.model_card import PAPER_BASE_MODEL

SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds ``torch.Generator.manual_seed`` accepts."""


def number_in(
    kind: type[int] | type[float], minimum: float, maximum: float | None = None, *, above_minimum: bool = False
) -> Callable[[str], int | float]:
    """An argparse ``type``: a number of ``kind`` (``int``, or ``float``: finite) from ``minimum`` (excluded if
    ``above_minimum``) to ``maximum`` (no upper bound for ``None``)."""
    what, shown = ("an integer", str) if kind is int else ("a finite number", "{:g}".format)
    if maximum is None:
        expected = f"{what} {'>' if above_minimum else '>='} {shown(minimum)}"
    else:
        expected = f"{what} in {'(' if above_minimum else '['}{shown(minimum)}, {shown(maximum)}]"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        too_low = value <= minimum if above_minimum else value < minimum
        if not math.isfinite(value) or too_low or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


def int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[minimum, maximum]`` (no upper bound for ``None``)."""
    return number_in(int, minimum, maximum)


def float_in(minimum: float, maximum: float | None = None, *, above_minimum: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``minimum`` (excluded if ``above_minimum``) to ``maximum``
    (no upper bound for ``None``)."""
    return number_in(float, minimum, maximum, above_minimum=above_minimum)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which model loads and with what (:func:`model_loading_options` reads them): the model,
    its variant, revision and dtype, pickle weights, the captioner and its instruction, the perceptual features."""
    group = parser.add_argument_group("the model")
    group.add_argument(
        "--model",
        default="demo",
        help=f"'demo', a local folder or a Hub id: an LD-RPS pipeline, or a Stable Diffusion one such as "
        f"{PAPER_BASE_MODEL} (default: demo)",
    )
    group.add_argument("--variant", default=None, help="the model's weight variant, such as fp16 (default: none)")
    group.add_argument(
        "--revision", default=None, help="the model's Hub branch, tag or commit (a Hub token comes from HF_TOKEN)"
    )
    group.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="weights' dtype (default auto: bfloat16 on a CUDA card with native bfloat16, else float32; float16 for "
        "older cards such as T4 or V100)",
    )
    group.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    group.add_argument(
        "--captioner",
        default=None,
        help=f"a captioner's Hub id or folder that writes each image's prompt (recommended: {RECOMMENDED_CAPTIONER}; "
        "see the README's captioner table), or none (default: the model's own, if it has one)",
    )
    group.add_argument(
        "--caption-instruction",
        default=None,
        help="what the captioner is asked (default: the paper's instruction; Florence-2 takes a task token such as "
        "<DETAILED_CAPTION>, PaliGemma a prefix such as 'caption en')",
    )
    group.add_argument(
        "--caption-max-tokens", type=int_in(1), default=None, help="the most tokens a caption may have (default 40)"
    )
    group.add_argument(
        "--perceptual",
        default="auto",
        help="the VGG16 perceptual features: torchvision, a .safetensors VGG16 state dict, a folder or Hub repo, or "
        "none (default auto: the model's own, else torchvision's where it is installed)",
    )


def model_loading_options(args: argparse.Namespace, device: torch.device) -> dict:
    """The keyword arguments of :func:`~ldrps_pipeline.hub.loading.load_pipeline` that the options of
    :func:`add_model_arguments` give, for a pipeline on ``device``."""
    return {
        "dtype": resolve_dtype(args.dtype, device),
        "allow_pickle": args.allow_pickle,
        "variant": args.variant,
        "revision": args.revision,
        "captioner": args.captioner,
        "perceptual": args.perceptual,
        "caption_instruction": args.caption_instruction,
        "caption_max_new_tokens": args.caption_max_tokens,
    }


def nearest_existing_folder(path: Path) -> Path:
    """The nearest of ``path`` and its ancestors that exists, where ``path`` (a new file or folder) would be
    created; raises ``ValueError`` naming it when it is a file, not a folder."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{existing} is a file, not a folder")
    return existing


def check_new_file(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless a new file can be created there (as the commands' ``--json``
    needs): nothing is there yet (not a file, a folder or a link) and its nearest existing ancestor is a folder."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the path of a new file")
    if path.exists() or path.is_symlink():
        raise ValueError(f"{path} exists; give the path of a new file (an existing one is never overwritten)")
    try:
        nearest_existing_folder(path.parent)
    except ValueError as error:
        raise ValueError(f"{path} cannot be created: {error}") from None


def checked_json_path(parser: argparse.ArgumentParser, path: Path) -> None:
    """End the command through ``parser.error`` (exit status 2), naming ``--json``, unless ``path`` can be a new
    file (:func:`check_new_file`)."""
    try:
        check_new_file(path)
    except ValueError as error:
        parser.error(f"argument --json: {error}")


def checked_device(parser: argparse.ArgumentParser, device: str | None) -> torch.device:
    """The torch device ``device`` (:func:`~ldrps_pipeline.hub.loading.resolve_device`); one this machine cannot
    use ends the command through ``parser.error`` (exit status 2), before anything is built."""
    try:
        return resolve_device(device)
    except ValueError as error:
        parser.error(str(error))


def checked_model_and_device(parser: argparse.ArgumentParser, model: str, device: str | None) -> torch.device:
    """The torch device ``device`` (:func:`checked_device`), once it and ``model``
    (:func:`~ldrps_pipeline.hub.loading.resolve_model`) are checked: either failing ends the command through
    ``parser.error`` (exit status 2), before anything is loaded."""
    resolved = checked_device(parser, device)
    try:
        resolve_model(model)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    return resolved


@contextlib.contextmanager
def silenced_libraries() -> Iterator[None]:
    """Inside the block, no progress bars or warnings from diffusers, transformers, huggingface_hub
    (downloads) or this package: errors only. Their settings are restored on exit."""
    package_logger = logging.getLogger(__name__.split(".")[0])
    saved_levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity(), package_logger.level)
    saved_bars = (
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
        huggingface_hub.utils.are_progress_bars_disabled(),
    )
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    package_logger.setLevel(logging.ERROR)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(saved_levels[0])
        transformers_logging.set_verbosity(saved_levels[1])
        package_logger.setLevel(saved_levels[2])
        if saved_bars[0]:
            diffusers_logging.enable_progress_bar()
        if saved_bars[1]:
            transformers_logging.enable_progress_bar()
        if not saved_bars[2]:
            huggingface_hub.utils.enable_progress_bars()
