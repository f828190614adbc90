"""Helpers for the loading tests: a tiny restoration, and the same restoration in a fresh interpreter (as a user
would run a remote-code pipeline), optionally where ldrps_pipeline is not importable."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import ldrps_pipeline
from tiny_components import tiny_image

PIPELINE_FILE = Path(ldrps_pipeline.__file__).parent / "pipeline_ldrps.py"
CALL = {"prompt": "a photo", "num_inference_steps": 6, "recurrences": 1, "output_type": "pt"}


def restore(pipe) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(tiny_image(12, 20), generator=torch.Generator().manual_seed(0), **CALL).images


def run_fresh(tmp_path: Path, body: str, block_package: bool = False) -> torch.Tensor:
    """Run ``body`` in a new interpreter that saves its result as ``images``; return that tensor."""
    result = tmp_path / "result.pt"
    lines = ["import sys", "sys.modules['ldrps_pipeline'] = None  # not importable"] if block_package else []
    lines += [
        "import torch",
        "torch.set_num_threads(1)",
        "from diffusers import DiffusionPipeline",
        "image = torch.nn.functional.interpolate(",
        "    torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)), size=(12, 20), mode='bilinear'",
        ")",
        *textwrap.dedent(body).strip().splitlines(),
        "pipe.set_progress_bar_config(disable=True)",
        f"images = pipe(image, generator=torch.Generator().manual_seed(0), **{CALL!r}).images",
        f"torch.save({{'images': images, 'class': type(pipe).__module__}}, {str(result)!r})",
    ]
    script = "\n".join(lines)
    # The child imports ldrps_pipeline from where this process did (installed or the source tree).
    package_root = str(Path(ldrps_pipeline.__file__).parent.parent)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": package_root}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    saved = torch.load(result)
    return saved["images"], saved["class"]
