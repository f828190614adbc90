"""Hub-ready export: a folder that ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``
loads where ``ldrps_pipeline`` is not installed.

``save_pretrained`` alone records the package's own classes (``["ldrps_pipeline.alignment_ldrps",
"AlignmentModule"]``), which only load where the package is imported, and copies no code. The
export therefore (1) saves the pipeline, (2) copies the pipeline file and the sibling modules it
imports beside ``model_index.json``, (3) copies each custom component's module into that
component's folder, and (4) rewrites ``model_index.json`` to the remote-code form
(``_class_name = ["pipeline_ldrps", "LDRPSPipeline"]``, ``aligner = ["alignment_ldrps", "AlignmentModule"]``, ...).
Beside them it writes ``pipeline.py`` (a copy of the pipeline file: the name diffusers looks for when the folder
or Hub repo is used as ``custom_pipeline``) and the model card, ``README.md``
(:func:`~ldrps_pipeline.hub.model_card.model_card`). A code-only export (:func:`export_code`) writes the code
files and the card without weights: a repository to use as ``custom_pipeline`` over any Stable Diffusion
repository. ``ldrps-export-hub ... --push-to-hub REPO`` uploads the folder with ``huggingface_hub.upload_folder``.
"""

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from diffusers.utils.dynamic_modules_utils import get_relative_imports
from huggingface_hub import ModelCard, create_repo, upload_folder

from ldrps_pipeline import pipeline_ldrps
from ldrps_pipeline.hub.loading import ALLOW_PICKLE_HELP, load_pipeline, resolve_model
from ldrps_pipeline.hub.model_card import PAPER_BASE_MODEL, model_card
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline

PACKAGE_DIR = Path(pipeline_ldrps.__file__).parent
PIPELINE_FILE = Path(pipeline_ldrps.__file__).name
PACKAGE_NAME = __name__.split(".")[0]
CUSTOM_PIPELINE_FILE = "pipeline.py"
"""The file diffusers loads from a folder or Hub repo given as ``custom_pipeline``."""
CODE_MODULES = [PIPELINE_FILE[:-3], *get_relative_imports(PACKAGE_DIR / PIPELINE_FILE)]
"""The remote-code set: the pipeline file and the sibling modules it imports."""


def check_output_dir(output_dir: Path) -> None:
    """Raise ``FileExistsError`` naming ``output_dir`` unless it is new or an empty folder."""
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} exists and is not an empty folder; choose a new one")


def write_code_files(folder: Path, card: ModelCard) -> None:
    """Copy the remote-code set and ``pipeline.py`` into ``folder`` and write ``card`` as its ``README.md``."""
    for name in CODE_MODULES:
        shutil.copyfile(PACKAGE_DIR / f"{name}.py", folder / f"{name}.py")
    shutil.copyfile(PACKAGE_DIR / PIPELINE_FILE, folder / CUSTOM_PIPELINE_FILE)
    card.save(folder / "README.md")


@contextlib.contextmanager
def staged(output_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``output_dir`` to write into, renamed to ``output_dir`` when the block succeeds, so
    that a failure leaves nothing half-written; ``output_dir`` must not exist or be an empty folder."""
    check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ldrps-export-", dir=output_dir.parent))
    try:
        yield staging
        if output_dir.exists():
            output_dir.rmdir()
        staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def export_code(output_dir: str | Path, card: ModelCard | None = None) -> Path:
    """Write the pipeline's code alone (no weights) into ``output_dir``, which must not exist or be empty: a folder
    or Hub repo for ``DiffusionPipeline.from_pretrained(<SD repo>, custom_pipeline=<it>, trust_remote_code=True)``.

    Args:
        output_dir: the new folder.
        card: its model card (default: :func:`~ldrps_pipeline.hub.model_card.model_card` for the paper's prior).
    """
    output_dir = Path(output_dir)
    with staged(output_dir) as staging:
        write_code_files(staging, card or model_card(output_dir.name, code_only=True))
    return output_dir


def export_for_hub(
    pipeline: LDRPSPipeline,
    output_dir: str | Path,
    *,
    card: ModelCard | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Write a Hub-ready folder for ``pipeline`` into ``output_dir``, which must not exist or be empty.

    Args:
        pipeline: the pipeline to export (loaded with the package, not as remote code).
        output_dir: the new folder.
        card: its model card (default: :func:`~ldrps_pipeline.hub.model_card.model_card` without a named prior).
        safe_serialization: save weights as safetensors.

    Returns:
        The folder, ready for ``huggingface_hub.upload_folder`` or for loading with
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``.
    """
    output_dir = Path(output_dir)
    with staged(output_dir) as staging:
        pipeline.save_pretrained(staging, safe_serialization=safe_serialization)
        write_code_files(staging, card or model_card(output_dir.name, base_model=None))
        index_path = staging / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [PIPELINE_FILE[:-3], type(pipeline).__name__]
        for component, entry in index.items():
            if not isinstance(entry, list) or entry[0] is None:
                continue
            if entry[0].startswith("diffusers_modules"):
                raise ValueError(
                    f"component {component!r} was loaded as remote code; load the pipeline with the package"
                )
            if not entry[0].startswith(PACKAGE_NAME + "."):
                continue
            module = entry[0].split(".")[-1]
            if module not in CODE_MODULES:
                raise ValueError(
                    f"component {component!r} comes from {entry[0]}, which the pipeline file does not import"
                )
            shutil.copyfile(PACKAGE_DIR / f"{module}.py", staging / component / f"{module}.py")
            index[component] = [module, entry[1]]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return output_dir


def push_to_hub(folder: Path, repo_id: str, *, private: bool | None = None, token: str | None = None) -> str:
    """Create ``repo_id`` on the Hub if needed and upload ``folder`` to it; return the commit's URL."""
    create_repo(repo_id, private=private, token=token, exist_ok=True)
    commit = upload_folder(
        repo_id=repo_id, folder_path=folder, token=token, commit_message="Upload LD-RPS pipeline (ldrps-export-hub)"
    )
    return commit.commit_url


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ldrps-export-hub``."""
    parser = argparse.ArgumentParser(
        prog="ldrps-export-hub",
        description="Export an LD-RPS pipeline (or its code alone) as a Hub-ready folder, and optionally upload it.",
    )
    parser.add_argument(
        "source",
        help="a folder saved by LDRPSPipeline.save_pretrained, a Hub id, 'demo' (the bundled demo model), or 'code' "
        "(the code alone, no weights: a repo for custom_pipeline over any Stable Diffusion repo)",
    )
    parser.add_argument("output_dir", type=Path, help="the new folder to write (must not exist or be empty)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the folder to this Hub repo (created if needed)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    parser.add_argument(
        "--base-model",
        default=None,
        help=f"the prior's Hub id for the model card (default: {PAPER_BASE_MODEL} for 'code', none otherwise)",
    )
    parser.add_argument("--license", default=None, help="the weights' Hub licence id (default: the base model's)")
    parser.add_argument("--captioner", default=None, help="the captioner's Hub id, for the model card")
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``ldrps-export-hub SOURCE OUTPUT_DIR [--push-to-hub REPO]``: export for the Hub, and upload."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code_only = args.source == "code"
    try:
        if not code_only:
            resolve_model(args.source)
        check_output_dir(args.output_dir)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.error(str(error))
    base_model = args.base_model or (PAPER_BASE_MODEL if code_only else None)
    card = model_card(
        args.push_to_hub or args.output_dir.name,
        base_model=base_model,
        license=args.license,
        captioner=args.captioner,
        title="LD-RPS demo model" if args.source == "demo" else "LD-RPS image restoration",
        code_only=code_only,
    )
    if code_only:
        folder = export_code(args.output_dir, card)
    else:
        try:
            pipeline = load_pipeline(args.source, allow_pickle=args.allow_pickle)
        except OSError as error:
            print(f"ldrps-export-hub: error: {error}", file=sys.stderr)
            return 2
        folder = export_for_hub(pipeline, args.output_dir, card=card)
    print(f"exported to {folder}")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(folder, args.push_to_hub, private=args.private or None)}")
    return 0
