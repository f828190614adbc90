"""Hub-ready export: a folder that ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``
loads where ``ldrps_pipeline`` is not installed.

``save_pretrained`` alone records the package's own classes (``["ldrps_pipeline.alignment_ldrps",
"AlignmentModule"]``), which only load where the package is imported, and copies no code. The
export therefore (1) saves the pipeline, (2) copies the pipeline file and the sibling modules it
imports beside ``model_index.json``, (3) copies each custom component's module into that
component's folder, and (4) rewrites ``model_index.json`` to the remote-code form
(``_class_name = ["pipeline_ldrps", "LDRPSPipeline"]``, ``aligner = ["alignment_ldrps", "AlignmentModule"]``, ...).
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from diffusers.utils.dynamic_modules_utils import get_relative_imports

from ldrps_pipeline import pipeline_ldrps
from ldrps_pipeline.hub.loading import load_pipeline, resolve_model
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline

PACKAGE_DIR = Path(pipeline_ldrps.__file__).parent
PIPELINE_FILE = Path(pipeline_ldrps.__file__).name
PACKAGE_NAME = __name__.split(".")[0]


def check_output_dir(output_dir: Path) -> None:
    """Raise ``FileExistsError`` naming ``output_dir`` unless it is new or an empty folder."""
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} exists and is not an empty folder; choose a new one")


def export_for_hub(pipeline: LDRPSPipeline, output_dir: str | Path, *, safe_serialization: bool = True) -> Path:
    """Write a Hub-ready folder for ``pipeline`` into ``output_dir``, which must not exist or be empty.

    Args:
        pipeline: the pipeline to export (loaded with the package, not as remote code).
        output_dir: the new folder.
        safe_serialization: save weights as safetensors.

    Returns:
        The folder, ready for ``huggingface_hub.upload_folder`` or for loading with
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    # Write into a temporary sibling first so that a failure leaves nothing half-written.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ldrps-export-", dir=output_dir.parent))
    try:
        pipeline.save_pretrained(staging, safe_serialization=safe_serialization)
        module_names = [PIPELINE_FILE[:-3], *get_relative_imports(PACKAGE_DIR / PIPELINE_FILE)]
        for name in module_names:
            shutil.copyfile(PACKAGE_DIR / f"{name}.py", staging / f"{name}.py")
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
            if module not in module_names:
                raise ValueError(
                    f"component {component!r} comes from {entry[0]}, which the pipeline file does not import"
                )
            shutil.copyfile(PACKAGE_DIR / f"{module}.py", staging / component / f"{module}.py")
            index[component] = [module, entry[1]]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if output_dir.exists():
            output_dir.rmdir()
        staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    """``ldrps-export-hub SOURCE OUTPUT_DIR``: export a saved pipeline folder (or ``demo``) for the Hub."""
    parser = argparse.ArgumentParser(prog="ldrps-export-hub", description=main.__doc__)
    parser.add_argument("source", help="a folder saved by LDRPSPipeline.save_pretrained, or 'demo'")
    parser.add_argument("output_dir", help="the new folder to write (must not exist or be empty)")
    args = parser.parse_args(argv)
    try:
        resolve_model(args.source)
        check_output_dir(Path(args.output_dir))
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.error(str(error))
    try:
        pipeline = load_pipeline(args.source)
    except OSError as error:
        print(f"ldrps-export-hub: error: {error}", file=sys.stderr)
        return 2
    folder = export_for_hub(pipeline, args.output_dir)
    print(f"exported to {folder}")
    return 0
