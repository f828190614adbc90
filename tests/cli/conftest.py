"""What the command-line tests share: a tiny saved pipeline to restore with."""

import pytest

from tiny_components import tiny_pipeline


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> str:
    """The folder of a tiny saved LDRPSPipeline (safetensors weights)."""
    folder = tmp_path_factory.mktemp("model")
    tiny_pipeline().save_pretrained(folder)
    return str(folder)
