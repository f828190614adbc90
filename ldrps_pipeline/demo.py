"""The project's own small latent diffusion model, shipped inside the package (see demo_model/README.md)."""

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "demo_model"


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
